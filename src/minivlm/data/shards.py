"""`minivlm shards`: LLaVA JSON/JSONL + a media folder -> WebDataset tar shards and a manifest.

Records are cut into blocks of `max_count`; block u is written by one process to
`{prefix}-{u:06d}.tar` (and `{prefix}-{u:06d}_{p}.tar` for p >= 1 when `max_size` splits it),
first under a `.partial` name, then renamed, and finally recorded in `{prefix}-{u:06d}.done.json`.
A re-run skips every block that has its `.done.json` (written with the same options), so an
interrupted conversion resumes where it stopped. `manifest.json` lists every shard with its
sample count, the source, the options and the records skipped by reason.

A sample in a shard is `{key}.json` (id, conversations, media member names) plus one member
per media file: `{key}.m{i}.{ext}` for an image or a whole video, `{key}.m{i}.f{j:04d}.jpg`
for the frames of a pre-sampled video. Keys are the record's index in the annotations file.
"""

from __future__ import annotations

import io
import json
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import webdataset as wds
from PIL import Image
from tqdm import tqdm

from minivlm.data.records import BadSample, MediaRef, Record, parse_llava, read_annotations
from minivlm.data.samples import VideoOptions, decode_image, decode_video

MANIFEST = "manifest.json"
FORMAT = "minivlm-shards/1"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


@dataclass(frozen=True)
class ShardOptions:
    """What a conversion does; stored in the manifest and compared on re-runs."""

    max_count: int = 1000
    max_size: int = 1_000_000_000
    images: Literal["keep", "jpeg", "png"] = "keep"
    jpeg_quality: int = 95
    max_image_side: int | None = None
    videos: Literal["keep", "frames"] = "keep"
    fps: float = 1.0
    max_frames: int = 1000
    prefix: str = "data"


def _encode(image: Image.Image, fmt: str, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG" if fmt == "jpeg" else "PNG", **({"quality": quality} if fmt == "jpeg" else {}))
    return buffer.getvalue()


def _media_members(index: int, ref: MediaRef, root: Path, options: ShardOptions, where: str) -> tuple[str, dict]:
    """(stored kind, {member name: bytes}) for media item `index` of a record."""
    path = root / ref.names[0]
    if not path.is_file():
        raise BadSample("missing_media", f"{where}: {path} does not exist")
    suffix = path.suffix.lower()
    if ref.kind == "image":
        if options.images == "keep":
            # Passed through untouched (no decode): a broken image is caught and counted when read.
            name = f"m{index}{suffix if suffix in IMAGE_SUFFIXES else '.img'}"
            return "image", {name: path.read_bytes()}
        image = decode_image(path, where)
        if options.max_image_side and max(image.size) > options.max_image_side:
            image.thumbnail((options.max_image_side, options.max_image_side), Image.Resampling.BICUBIC)
        name = f"m{index}.{'jpg' if options.images == 'jpeg' else 'png'}"
        return "image", {name: _encode(image, options.images, options.jpeg_quality)}
    if options.videos == "keep":
        name = f"m{index}{suffix or '.mp4'}"
        return "video", {name: path.read_bytes()}
    video = decode_video(path, path.name, VideoOptions(options.fps, options.max_frames), where)
    frames = [frame if isinstance(frame, Image.Image) else Image.fromarray(frame) for frame in video.frames]
    return "frames", {f"m{index}.f{j:04d}.jpg": _encode(f, "jpeg", options.jpeg_quality) for j, f in enumerate(frames)}


def _sample(index: int, obj: Any, root: Path, options: ShardOptions, source: str) -> dict[str, Any]:
    """The tar members of one record; raises BadSample for a record that cannot be stored."""
    if isinstance(obj, BadSample):
        raise obj
    where = f"{source} record {index}"
    record: Record = parse_llava(obj, where)
    key = f"{index:09d}"
    stored, members = [], {}
    for i, ref in enumerate(record.media):
        kind, files = _media_members(i, ref, root, options, where)
        stored.append({"kind": kind, "names": list(files)})
        members.update(files)
    conversations = obj["conversations"]
    header = {"id": record.id, "conversations": conversations, "media": stored}
    return {"__key__": key, "json": json.dumps(header, ensure_ascii=True).encode(), **members}


def _write_block(block: int, start: int, records: list[Any], root: str, out: str, options: ShardOptions, source: str,
                 progress: Any = None) -> dict[str, Any]:
    """Writes one block of records; returns its part of the manifest (also saved as .done.json)."""
    stem = Path(out) / f"{options.prefix}-{block:06d}"
    skipped: Counter[str] = Counter()
    counts: list[int] = []
    with wds.ShardWriter(f"{stem}_%d.tar.partial", maxcount=options.max_count, maxsize=options.max_size,
                         verbose=0, encoder=False, mtime=0.0) as writer:
        for offset, obj in enumerate(records):
            try:
                sample = _sample(start + offset, obj, Path(root), options, source)
            except BadSample as error:
                skipped[error.reason] += 1
            else:
                if writer.count >= writer.maxcount or writer.size >= writer.maxsize:
                    counts.append(writer.count)
                writer.write(sample)
            if progress is not None:
                progress.update(1)
        counts.append(writer.count)
    shards = []
    for part, count in enumerate(counts):
        name = f"{stem.name}.tar" if part == 0 else f"{stem.name}_{part}.tar"
        os.replace(f"{stem}_{part}.tar.partial", Path(out) / name)
        shards.append({"name": name, "samples": count})
    done = {"block": block, "records": len(records), "shards": shards, "skipped": dict(skipped), "options": asdict(options)}
    Path(f"{stem}.done.json").write_text(json.dumps(done) + "\n")
    return done


def write_shards(annotations: str | Path, media_root: str | Path, out: str | Path, options: ShardOptions,
                 processes: int = 1, progress: bool = True) -> dict[str, Any]:
    """Converts an annotations file to shards under `out`; returns (and writes) the manifest."""
    if options.max_count < 1 or options.max_size < 1:
        raise ValueError("max_count and max_size must be positive")
    root, out = Path(media_root), Path(out)
    if not root.is_dir():
        raise FileNotFoundError(f"media root {root} is not a directory")
    records = read_annotations(annotations)
    out.mkdir(parents=True, exist_ok=True)
    blocks = range(0, len(records), options.max_count)
    done: dict[int, dict[str, Any]] = {}
    for block, start in enumerate(blocks):
        marker = out / f"{options.prefix}-{block:06d}.done.json"
        if marker.is_file():
            previous = json.loads(marker.read_text())
            if previous["options"] != asdict(options):
                raise ValueError(f"{out} holds shards written with other options ({marker}); use another --out")
            done[block] = previous
    todo = [(b, s) for b, s in enumerate(blocks) if b not in done]
    bar = tqdm(total=len(records), initial=sum(d["records"] for d in done.values()), unit="sample",
               desc="shards", disable=not progress, smoothing=0.1)
    source = str(annotations)
    with bar:
        if processes <= 1:
            for block, start in todo:
                done[block] = _write_block(block, start, records[start:start + options.max_count], str(root), str(out),
                                           options, source, bar)
        else:
            with ProcessPoolExecutor(processes) as pool:
                futures = {pool.submit(_write_block, b, s, records[s:s + options.max_count], str(root), str(out),
                                       options, source): b for b, s in todo}
                for future in as_completed(futures):
                    done[futures[future]] = future.result()
                    bar.update(done[futures[future]]["records"])
    skipped: Counter[str] = Counter()
    for part in done.values():
        skipped.update(part["skipped"])
    shards = [shard for block in sorted(done) for shard in done[block]["shards"] if shard["samples"] > 0]
    manifest = {
        "format": FORMAT,
        "source": str(Path(annotations).resolve()),
        "media_root": str(root.resolve()),
        "options": asdict(options),
        "records": len(records),
        "samples": sum(s["samples"] for s in shards),
        "skipped": dict(sorted(skipped.items())),
        "shards": shards,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def shards_command(
    *,
    annotations: str,
    media_root: str,
    out: str,
    max_count: int = 1000,
    max_size: int = 1_000_000_000,
    images: Literal["keep", "jpeg", "png"] = "keep",
    jpeg_quality: int = 95,
    max_image_side: int | None = None,
    videos: Literal["keep", "frames"] = "keep",
    fps: float = 1.0,
    max_frames: int = 1000,
    prefix: str = "data",
    processes: int = 1,
    progress: bool = True,
) -> None:
    """Convert LLaVA annotations (.json or .jsonl) and their media folder into WebDataset shards.

    Args:
        annotations: LLaVA JSON array or JSONL file (records with id, image/video, conversations).
        media_root: folder the records' image and video paths are relative to.
        out: output folder for the shards, their .done.json markers and manifest.json.
        max_count: records per block; a block is one shard unless max_size splits it.
        max_size: bytes after which a shard is closed and the next one started.
        images: keep (copy the file, checked when read) or re-encode as jpeg / png (checked now).
        jpeg_quality: JPEG quality when re-encoding images or video frames.
        max_image_side: when re-encoding, shrink images whose longer side exceeds this.
        videos: keep (store the whole file) or frames (pre-sample frames at fps, stored as JPEGs).
        fps: frames per second sampled when videos=frames.
        max_frames: at most this many frames per video when videos=frames.
        prefix: shard file name prefix.
        processes: blocks written in parallel by this many processes.
        progress: show a progress bar with samples/s.
    """
    options = ShardOptions(max_count, max_size, images, jpeg_quality, max_image_side, videos, fps, max_frames, prefix)
    manifest = write_shards(annotations, media_root, out, options, processes=processes, progress=progress)
    skipped = ", ".join(f"{reason} {n}" for reason, n in manifest["skipped"].items()) or "none"
    print(f"wrote {manifest['samples']} samples of {manifest['records']} records in {len(manifest['shards'])} shards "
          f"to {out}; skipped: {skipped}")
