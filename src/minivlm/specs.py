"""Small value types shared by the parts and processing/ (which must not import each other's code)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ImageSpec:
    """How pixels must be prepared for an encoder: square size and per-channel normalisation."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
