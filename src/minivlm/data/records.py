"""LLaVA annotation records -> conversations (`Turn`s) and the media they reference.

A LLaVA record is `{"id", "image": path | [paths], "video": path | [paths], "conversations":
[{"from": "human" | "gpt" | "system", "value": text}, ...]}`. "human" becomes a user turn,
"gpt" an assistant turn; a leading "system" message is folded into the first user turn
(the templates carry their own system prompt). `<image>` / `<video>` tags stay where the
annotation put them. A video record whose text only uses `<image>` (common in video
instruction sets) has those tags read as `<video>`.

Everything that is wrong with a record raises `BadSample` with a short reason; the data
pipeline counts it and moves on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from minivlm.processing.templates import Turn

IMAGE_TAG = "<image>"
VIDEO_TAG = "<video>"
_TAGS = re.compile(f"{IMAGE_TAG}|{VIDEO_TAG}")
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}

# Every reason a sample can be skipped for; metrics are logged under these exact names.
REASONS = (
    "bad_record",  # not an object, no conversations, unknown roles, turns out of order
    "bad_text",  # text that is not valid UTF-8
    "placeholder_mismatch",  # number of <image>/<video> tags differs from the media given
    "missing_media",  # a referenced file is not in the media folder or the shard
    "unreadable_image",  # an image that does not decode (corrupt, truncated, not an image)
    "no_video_frames",  # a video with no decodable frame
    "too_long",  # longer than the processor's max_length once media are expanded
    "bad_conversation",  # rejected by the processor's chat template
    "unreadable_shard",  # a shard that cannot be opened or read (counted once per shard)
    "other",  # any other processor rejection (its message is logged)
)

MediaKind = Literal["image", "video", "frames"]


class BadSample(Exception):
    """A sample that cannot be used; `reason` is one of `REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason if reason in REASONS else "other"


@dataclass(frozen=True)
class MediaRef:
    """One media item of a record: an image file, a whole video file, or a video pre-sampled
    to frames (`names` holds one file per frame, in time order)."""

    kind: MediaKind
    names: tuple[str, ...]


@dataclass
class Record:
    """A parsed record: its id, its turns and its media, in tag order."""

    id: str
    turns: list[Turn]
    media: list[MediaRef] = field(default_factory=list)


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise BadSample("bad_record", f"{where}: expected text, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise BadSample("bad_text", f"{where}: text is not valid UTF-8 ({error.reason})") from None
    return value


def _paths(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise BadSample("bad_record", f"{where}: media must be a path or a non-empty list of paths")
    return [_text(item, where) for item in items]


def conversation_turns(conversations: Any, where: str, video: bool = False) -> list[Turn]:
    """LLaVA `conversations` -> alternating user/assistant turns starting with the user.

    With `video`, `<image>` tags are read as `<video>` when the text has no `<video>` tag.
    """
    if not isinstance(conversations, list) or not conversations:
        raise BadSample("bad_record", f"{where}: no conversations")
    system = ""
    turns: list[Turn] = []
    for i, message in enumerate(conversations):
        if not isinstance(message, dict) or "from" not in message or "value" not in message:
            raise BadSample("bad_record", f"{where}: message {i} needs 'from' and 'value'")
        text = _text(message["value"], f"{where}, message {i}")
        if message["from"] == "system" and i == 0:
            system = text.strip() + "\n"
            continue
        role = ROLES.get(message["from"])
        if role is None:
            raise BadSample("bad_record", f"{where}: message {i} is from {message['from']!r}")
        turns.append(Turn(role, text))
    if not turns or turns[0].role != "user" or any(t.role == turns[i - 1].role for i, t in enumerate(turns) if i):
        raise BadSample("bad_record", f"{where}: turns must alternate human, gpt, human, ...")
    if system:
        turns[0] = Turn("user", system + turns[0].text)
    if video and not any(VIDEO_TAG in t.text for t in turns):
        turns = [Turn(t.role, t.text.replace(IMAGE_TAG, VIDEO_TAG)) for t in turns]
    return turns


def check_placeholders(turns: list[Turn], media: list[MediaRef], where: str) -> None:
    """Raises `placeholder_mismatch` unless the tags match the media one to one, in kind."""
    tags = [tag for turn in turns for tag in _TAGS.findall(turn.text)]
    wanted = [VIDEO_TAG if ref.kind in ("video", "frames") else IMAGE_TAG for ref in media]
    if tags != wanted:
        raise BadSample("placeholder_mismatch", f"{where}: tags {tags} but media {[r.kind for r in media]}")


def parse_llava(obj: Any, where: str) -> Record:
    """A LLaVA annotation record (media named by paths relative to the media root)."""
    if not isinstance(obj, dict):
        raise BadSample("bad_record", f"{where}: a record must be a JSON object")
    images = _paths(obj.get("image"), f"{where}, image")
    videos = _paths(obj.get("video"), f"{where}, video")
    if images and videos:
        raise BadSample("bad_record", f"{where}: a record has images or videos, not both")
    record_id = str(obj.get("id", where))
    turns = conversation_turns(obj.get("conversations"), f"{where} (id {record_id})", video=bool(videos))
    media = [MediaRef("image", (p,)) for p in images] + [MediaRef("video", (p,)) for p in videos]
    check_placeholders(turns, media, f"{where} (id {record_id})")
    return Record(record_id, turns, media)


def parse_shard_record(data: bytes, where: str) -> Record:
    """The `.json` member written by `minivlm shards`: id, conversations and media member names."""
    try:
        obj = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise BadSample("bad_text", f"{where}: record is not valid UTF-8 ({error.reason})") from None
    except json.JSONDecodeError as error:
        raise BadSample("bad_record", f"{where}: record is not JSON ({error})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("media", []), list):
        raise BadSample("bad_record", f"{where}: a record must be a JSON object with a media list")
    try:
        media = [MediaRef(m["kind"], tuple(m["names"])) for m in obj.get("media", [])]
    except (KeyError, TypeError) as error:
        raise BadSample("bad_record", f"{where}: bad media entry ({error})") from None
    record_id = str(obj.get("id", where))
    video = any(m.kind != "image" for m in media)
    turns = conversation_turns(obj.get("conversations"), f"{where} (id {record_id})", video=video)
    check_placeholders(turns, media, f"{where} (id {record_id})")
    return Record(record_id, turns, media)


def read_annotations(path: str | Path) -> list[Any]:
    """The records of a LLaVA `.json` (one array) or `.jsonl` (one record per line) file.

    Text is decoded with `surrogateescape`, so a record holding invalid UTF-8 is still
    read (and later rejected as `bad_text` by `parse_llava`) instead of failing the whole
    file; a JSONL line that is not JSON becomes a `BadSample`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotations file {path} does not exist")
    text = path.read_bytes().decode("utf-8", errors="surrogateescape")
    if path.suffix == ".jsonl":
        return list(_jsonl(text, path))
    try:
        records = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(records, list):
        raise ValueError(f"{path} must hold a JSON array of records (or use .jsonl)")
    return records


def _jsonl(text: str, path: Path) -> Iterator[Any]:
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError as error:
                yield BadSample("bad_record", f"{path}:{number}: not JSON ({error})")
