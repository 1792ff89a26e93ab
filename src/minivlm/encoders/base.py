"""The contract every vision encoder fulfils."""

from __future__ import annotations

import torch
from torch import nn

from minivlm.specs import ImageSpec

__all__ = ["ImageSpec", "VisionEncoder"]


class VisionEncoder(nn.Module):
    """Turns pixels (P, 3, H, W) into patch features (P, N, D_v) laid out on a `grid` (h, w), row-major.

    Subclasses set `feature_dim`, `grid` and `image_spec`, and implement `encode`.
    Whether the encoder trains is not its own business: the training stage decides
    (`minivlm.training.Stage`), and a frozen encoder then runs in eval mode under no_grad.
    """

    feature_dim: int
    grid: tuple[int, int]
    image_spec: ImageSpec

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"{type(self).__name__} expects pixels of shape (P, 3, H, W), got {tuple(pixels.shape)}")
        return self.encode(pixels)
