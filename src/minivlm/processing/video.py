"""Videos as media items: frames sampled at about one per second (LLAVA_MINI.md section 5).

A `Video` holds its sampled frames in memory. A `VideoFile` (from `open_video`) holds only
the path and which frames to sample; its frames are decoded chunk by chunk while the model
encodes them (`VideoFrames`), so a long video never sits in memory as pixels.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from minivlm.processing.images import ImageInput, SquareMode, image_to_pixels
from minivlm.specs import ImageSpec


@dataclass(frozen=True)
class Video:
    """A video as its sampled frames, in time order. Each frame becomes K tokens."""

    frames: tuple[ImageInput, ...]

    def __post_init__(self) -> None:
        if not self.frames:
            raise ValueError("a Video needs at least one frame")


@dataclass(frozen=True)
class VideoFile:
    """A video file and the stream indices of its sampled frames (ascending), not yet decoded.
    Made by `open_video`; the Processor turns it into `VideoFrames`, decoded lazily."""

    path: Path
    indices: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.indices:
            raise ValueError(f"{self.path}: a VideoFile needs at least one frame")
        if any(b <= a for a, b in zip(self.indices, self.indices[1:])):
            raise ValueError(f"{self.path}: frame indices must be strictly ascending")

    def __len__(self) -> int:
        return len(self.indices)

    def decode(self, strict: bool = True) -> Iterator[np.ndarray]:
        """The sampled frames as (H, W, 3) uint8 arrays, in order, decoded one by one. A stream
        that ends before the last sampled frame (its header over-counted) raises, unless not
        `strict`: then the frames it has are all there is."""
        import av

        wanted = iter(self.indices)
        target = next(wanted)
        delivered = 0
        try:
            with av.open(str(self.path)) as container:
                stream = container.streams.video[0]
                for index, frame in enumerate(container.decode(stream)):
                    if index == target:
                        yield frame.to_ndarray(format="rgb24")
                        delivered += 1
                        target = next(wanted, None)
                        if target is None:
                            return
        except (av.error.FFmpegError, IndexError) as error:
            raise ValueError(f"{self.path}: cannot decode a video stream ({error})") from error
        if not strict:
            return
        raise ValueError(
            f"{self.path}: the stream ended after {delivered} of {len(self.indices)} sampled frames "
            f"(frame {self.indices[delivered]} was asked for)"
        )


def segment_midpoints(num_frames: int, count: int) -> list[int]:
    """Indices of the midpoints of `count` equal segments of `num_frames` frames."""
    if num_frames < 1 or count < 1:
        raise ValueError(f"cannot sample {count} frames from {num_frames}")
    count = min(count, num_frames)
    edges = np.linspace(0, num_frames, count + 1)
    return [int((a + b) / 2) for a, b in zip(edges[:-1], edges[1:])]


def open_video(path: str | Path, fps: float = 1.0, max_frames: int = 1000, num_frames: int | None = None) -> VideoFile:
    """Picks the frames `load_video` would keep (M = ⌊duration × fps⌋, at least 1, at most
    `max_frames`, at segment midpoints; or exactly `num_frames`) without decoding any: the
    frames are counted by demuxing when the container does not say how many it has."""
    import av

    path = Path(path)
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            native_fps = float(stream.average_rate or 0) or 1.0
            total = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
    except (av.error.FFmpegError, IndexError) as error:
        raise ValueError(f"{path}: cannot decode a video stream ({error})") from error
    if total == 0:
        raise ValueError(f"{path}: the video has no frames")
    wanted = num_frames if num_frames is not None else int(total / native_fps * fps)
    return VideoFile(path, tuple(segment_midpoints(total, max(1, min(wanted, max_frames)))))


def load_video(path: str | Path, fps: float = 1.0, max_frames: int = 1000, num_frames: int | None = None) -> Video:
    """Decodes `path` with PyAV and samples M = ⌊duration × fps⌋ frames (at least 1, at most
    `max_frames`) at segment midpoints, or exactly `num_frames` if given (training in the
    release uses 8). Only the sampled frames are kept in memory; for a long video use
    `open_video`, which keeps none."""
    frames = tuple(open_video(path, fps, max_frames, num_frames).decode(strict=False))
    if not frames:
        raise ValueError(f"{path}: no frame decodes")
    return Video(frames)


class VideoFrames:
    """The encoder passes of a `VideoFile`: `take(positions)` decodes the frames at those
    positions (0 … len-1) and returns them as (n, 3, S, S) uint8, transformed exactly as the
    Processor transforms the frames of an in-memory `Video`.

    Decoding is sequential: the decoder stays open between calls, so reading the frames in
    chunks, in order (as `MiniVLM.assemble` does), decodes the file once. Asking for an
    earlier frame starts over from the beginning of the file. Only the frames asked for
    are kept, and only until they are returned.
    """

    def __init__(self, video: VideoFile, spec: ImageSpec, square: SquareMode = "resize") -> None:
        self.video = video
        self.spec = spec
        self.square = square
        self._frames: Iterator[np.ndarray] | None = None
        self._next = 0  # position of the frame `_frames` yields next

    def __len__(self) -> int:
        return len(self.video)

    def __repr__(self) -> str:
        return f"VideoFrames({str(self.video.path)!r}, {len(self)} frames, {self.spec.size} px)"

    def take(self, positions: list[int]) -> torch.Tensor:
        """(len(positions), 3, S, S) uint8: the frames at `positions`, in that order."""
        if not positions:
            raise ValueError("VideoFrames.take needs at least one position")
        bad = [p for p in positions if not 0 <= p < len(self)]
        if bad:
            raise IndexError(f"{self.video.path}: frame positions {bad[:4]} out of range for {len(self)} frames")
        wanted = set(positions)
        found: dict[int, torch.Tensor] = {}
        if min(wanted) < self._next:
            self.close()
        if self._frames is None:
            self._frames = self.video.decode()
            self._next = 0
        last = max(wanted)
        while self._next <= last:
            frame = next(self._frames)
            if self._next in wanted:
                found[self._next] = image_to_pixels(frame, self.spec, self.square)
            self._next += 1
        if self._next == len(self):
            self.close()  # frees the decoder as soon as the last frame is out
        return torch.stack([found[p] for p in positions])

    def close(self) -> None:
        """Closes the decoder (the next `take` opens the file again)."""
        if self._frames is not None:
            self._frames.close()
        self._frames = None
        self._next = 0

    def __getstate__(self) -> dict[str, Any]:
        # An open decoder cannot cross a process boundary (DataLoader workers); the copy starts over.
        return {"video": self.video, "spec": self.spec, "square": self.square}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["video"], state["spec"], state["square"])
