"""Decoding a record's media and preparing it with the Processor; every failure becomes a `Skipped`.

Bad input is never zero-filled: a sample whose media or text cannot be used is dropped and
its reason counted (`minivlm.data.records.REASONS`).
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from minivlm.data.records import BadSample, Record
from minivlm.processing.processor import PreparedSample, Processor, SampleError
from minivlm.processing.video import Video, load_video

# A media file: its bytes (from a shard) or its path (from a folder).
MediaData = bytes | Path
MediaReader = Callable[[str], MediaData]


@dataclass(frozen=True)
class VideoOptions:
    """How whole videos are sampled to frames when read (pre-sampled frames are used as stored)."""

    fps: float = 1.0
    max_frames: int = 1000
    num_frames: int | None = None


@dataclass
class Prepared:
    """A usable sample: its id and what the Processor made of it."""

    id: str
    sample: PreparedSample


@dataclass
class Skipped:
    """A dropped sample: its id, why (one of REASONS) and the message naming what is wrong."""

    id: str
    reason: str
    message: str


def decode_image(data: MediaData, where: str) -> Image.Image:
    """An RGB image, fully decoded (a truncated file fails here, not later in a transform)."""
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as opened:
            return opened.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise BadSample("unreadable_image", f"{where}: cannot decode the image ({error})") from None


def decode_video(data: MediaData, name: str, options: VideoOptions, where: str) -> Video:
    """A whole video file sampled to frames with PyAV."""
    try:
        if isinstance(data, Path):
            return load_video(data, options.fps, options.max_frames, options.num_frames)
        # PyAV probes containers by name and seeks, so shard bytes go through a temporary file.
        with tempfile.NamedTemporaryFile(suffix=Path(name).suffix) as handle:
            handle.write(data)
            handle.flush()
            return load_video(handle.name, options.fps, options.max_frames, options.num_frames)
    except (ValueError, OSError) as error:
        raise BadSample("no_video_frames", f"{where}: no decodable frame ({error})") from None


def load_media(record: Record, read: MediaReader, options: VideoOptions, where: str) -> list[Image.Image | Video]:
    """The record's media, decoded, in tag order."""
    media: list[Image.Image | Video] = []
    for ref in record.media:
        if ref.kind == "image":
            media.append(decode_image(read(ref.names[0]), f"{where}, {ref.names[0]}"))
        elif ref.kind == "video":
            media.append(decode_video(read(ref.names[0]), ref.names[0], options, f"{where}, {ref.names[0]}"))
        else:
            frames = []
            for name in ref.names:
                try:
                    frames.append(decode_image(read(name), f"{where}, {name}"))
                except BadSample as error:
                    if error.reason != "unreadable_image":
                        raise
            if not frames:
                raise BadSample("no_video_frames", f"{where}: none of the {len(ref.names)} stored frames decodes")
            media.append(Video(tuple(frames)))
    return media


def prepare_record(
    record: Record, read: MediaReader, processor: Processor, options: VideoOptions, where: str
) -> Prepared | Skipped:
    """Decode and prepare one record; any problem with the data becomes a `Skipped`."""
    try:
        media = load_media(record, read, options, where)
        return Prepared(record.id, processor.prepare(record.turns, media))
    except BadSample as error:
        return Skipped(record.id, error.reason, str(error))
    except SampleError as error:
        return Skipped(record.id, BadSample(error.reason, "").reason, f"{where} (id {record.id}): {error}")


def folder_reader(root: Path, where: str) -> MediaReader:
    """Reads media files relative to `root`; a missing file is `missing_media`."""

    def read(name: str) -> MediaData:
        path = root / name
        if not path.is_file():
            raise BadSample("missing_media", f"{where}: {path} does not exist")
        return path

    return read


def member_reader(files: dict[str, bytes], where: str) -> MediaReader:
    """Reads media members of one shard sample; a missing member is `missing_media`."""

    def read(name: str) -> MediaData:
        if name not in files:
            raise BadSample("missing_media", f"{where}: the shard has no member {name!r}")
        return files[name]

    return read
