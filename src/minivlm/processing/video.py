"""Videos as media items: frames sampled at about one per second (LLAVA_MINI.md section 5)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minivlm.processing.images import ImageInput


@dataclass(frozen=True)
class Video:
    """A video as its sampled frames, in time order. Each frame becomes K tokens."""

    frames: tuple[ImageInput, ...]

    def __post_init__(self) -> None:
        if not self.frames:
            raise ValueError("a Video needs at least one frame")


def segment_midpoints(num_frames: int, count: int) -> list[int]:
    """Indices of the midpoints of `count` equal segments of `num_frames` frames."""
    if num_frames < 1 or count < 1:
        raise ValueError(f"cannot sample {count} frames from {num_frames}")
    count = min(count, num_frames)
    edges = np.linspace(0, num_frames, count + 1)
    return [int((a + b) / 2) for a, b in zip(edges[:-1], edges[1:])]


def load_video(path: str | Path, fps: float = 1.0, max_frames: int = 1000, num_frames: int | None = None) -> Video:
    """Decodes `path` with PyAV and samples M = ⌊duration × fps⌋ frames (at least 1, at most
    `max_frames`) at segment midpoints, or exactly `num_frames` if given (training in the
    release uses 8). Only the sampled frames are kept in memory."""
    import av

    path = Path(path)
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            native_fps = float(stream.average_rate or 0) or 1.0
            # Count by demuxing (cheap, no decoding) when the container does not say.
            total = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
            if total == 0:
                raise ValueError(f"{path}: the video has no frames")
            wanted = num_frames if num_frames is not None else int(total / native_fps * fps)
            keep = set(segment_midpoints(total, max(1, min(wanted, max_frames))))
            container.seek(0)
            frames = [
                frame.to_ndarray(format="rgb24")
                for index, frame in enumerate(container.decode(stream))
                if index in keep
            ]
    except (av.error.FFmpegError, IndexError) as error:
        raise ValueError(f"{path}: cannot decode a video stream ({error})") from error
    return Video(tuple(frames))
