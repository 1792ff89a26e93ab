"""The one type that crosses the data -> model boundary."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Literal, Protocol

import torch

# Token id that marks where a media item goes. It is not a vocabulary entry (as in the
# LLaVA release), so it can never collide with real text; embedding lookups skip it.
PLACEHOLDER_ID = -200
IGNORE_INDEX = -100

# How a media item's encoder passes are used: one image; HD tiles (n×n crops, row-major,
# then the whole image); or video frames in time order.
MediaKind = Literal["image", "hd", "video"]
MEDIA_KINDS: tuple[MediaKind, ...] = ("image", "hd", "video")


class PassSource(Protocol):
    """Encoder passes produced on demand (e.g. `VideoFrames`, decoded from a video file)."""

    def __len__(self) -> int: ...

    def take(self, positions: list[int]) -> torch.Tensor:
        """(len(positions), 3, S, S) uint8: the passes at `positions`, in that order."""
        ...


class LazyPixels:
    """The encoder passes of a batch as segments: uint8 tensors (P_i, 3, S, S) already in
    memory, and `PassSource`s read only when asked for. `take(indices)` gives the passes at
    batch-wide pass indices, as `Batch.pixel_values[indices]` would; the model reads one
    chunk at a time, so a long video's frames are decoded while it is encoded.
    """

    def __init__(self, segments: Sequence[torch.Tensor | PassSource]) -> None:
        if not segments:
            raise ValueError("LazyPixels needs at least one segment")
        for segment in segments:
            if isinstance(segment, torch.Tensor) and (segment.ndim != 4 or segment.dtype != torch.uint8):
                shape = tuple(segment.shape)
                raise ValueError(f"LazyPixels tensors must be (P, 3, S, S) uint8, got {shape} {segment.dtype}")
        self.segments = list(segments)
        self._starts = [0]
        for segment in self.segments:
            self._starts.append(self._starts[-1] + len(segment))

    def __len__(self) -> int:
        return self._starts[-1]

    def __repr__(self) -> str:
        return f"LazyPixels({len(self)} passes in {len(self.segments)} segments)"

    def take(self, indices: list[int]) -> torch.Tensor:
        """(len(indices), 3, S, S) uint8: the passes at `indices`, in that order. Consecutive
        indices in one segment are read together."""
        bad = [i for i in indices if not 0 <= i < len(self)]
        if bad or not indices:
            raise IndexError(f"pass indices {bad[:4] or indices} out of range for {len(self)} passes")
        runs: list[tuple[int, list[int]]] = []
        for index in indices:
            segment = bisect.bisect_right(self._starts, index) - 1
            if not runs or runs[-1][0] != segment:
                runs.append((segment, []))
            runs[-1][1].append(index - self._starts[segment])
        parts = []
        for segment, positions in runs:
            source = self.segments[segment]
            parts.append(source[positions] if isinstance(source, torch.Tensor) else source.take(positions))
        return parts[0] if len(parts) == 1 else torch.cat(parts)


@dataclass
class Batch:
    """A padded batch of tokenised conversations and the pixels of every encoder pass.

    Shapes: B samples, L text positions, P encoder passes.

    - `input_ids` (B, L): token ids, `PLACEHOLDER_ID` where a media item goes, pad elsewhere.
    - `attention_mask` (B, L) bool: True at real tokens (placeholders included).
    - `labels` (B, L): target ids at assistant tokens, `IGNORE_INDEX` elsewhere. None at inference.
    - `prefusion_mask` (B, L) bool: text positions that take part in modality pre-fusion
      (not padding, not placeholders, not assistant answers).
    - `pixel_values` (P, 3, H, W) or None for a text-only batch: uint8 as the Processor makes
      them (the model normalises each chunk with its encoder's mean and std), or float
      values already normalised; or `LazyPixels` (uint8, read chunk by chunk while the model
      encodes them) when a video came as a `VideoFile`.
    - `media_passes` (M,) long: for the m-th placeholder in row-major order, how many
      consecutive encoder passes of `pixel_values` belong to it (1 for a single image).
    - `media_kinds`: the kind of each of the M items; None means every item is an "image".
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    prefusion_mask: torch.Tensor
    labels: torch.Tensor | None = None
    pixel_values: torch.Tensor | LazyPixels | None = None
    media_passes: torch.Tensor | None = None
    media_kinds: tuple[MediaKind, ...] | None = None

    def __post_init__(self) -> None:
        b, l = self.input_ids.shape
        for name in ("attention_mask", "prefusion_mask", "labels"):
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != (b, l):
                raise ValueError(f"Batch.{name} has shape {tuple(value.shape)}, expected {(b, l)} like input_ids")
        placeholders = int((self.input_ids == PLACEHOLDER_ID).sum())
        media = 0 if self.media_passes is None else len(self.media_passes)
        if placeholders != media:
            raise ValueError(f"Batch has {placeholders} media placeholders but {media} media items")
        if self.media_kinds is not None:
            if len(self.media_kinds) != media:
                raise ValueError(f"Batch has {media} media items but {len(self.media_kinds)} media kinds")
            unknown = set(self.media_kinds) - set(MEDIA_KINDS)
            if unknown:
                raise ValueError(f"unknown media kinds {sorted(unknown)}; known: {', '.join(MEDIA_KINDS)}")
        passes = 0 if self.pixel_values is None else len(self.pixel_values)
        wanted = 0 if self.media_passes is None else int(self.media_passes.sum())
        if passes != wanted:
            raise ValueError(f"Batch.media_passes asks for {wanted} encoder passes, pixel_values holds {passes}")

    @property
    def batch_size(self) -> int:
        return self.input_ids.shape[0]

    @property
    def kinds(self) -> tuple[MediaKind, ...]:
        """The kind of every media item (all "image" when `media_kinds` is None)."""
        count = 0 if self.media_passes is None else len(self.media_passes)
        return self.media_kinds if self.media_kinds is not None else ("image",) * count

    @property
    def placeholder_mask(self) -> torch.Tensor:
        return self.input_ids == PLACEHOLDER_ID

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Batch:
        """Moves every tensor to `device`; `dtype` applies to float pixels only (uint8 pixels are
        normalised in float32 by the model before any cast). `LazyPixels` stay as they are:
        the model moves each chunk to its encoder's device when it reads it."""
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                is_pixels = f.name == "pixel_values" and dtype is not None and value.is_floating_point()
                value = value.to(device=device, dtype=dtype) if is_pixels else value.to(device)
            moved[f.name] = value
        return replace(self, **moved)
