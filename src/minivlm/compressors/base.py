"""The contract every vision-token compressor fulfils."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import nn

Placement = Literal["before_projector", "after_projector"]


@dataclass
class CompressorOutput:
    """Compressed tokens (P, K, D) and, where the compressor has one, its attention map (P, K, N)."""

    tokens: torch.Tensor
    attention: torch.Tensor | None = None


def check_features(owner: Compressor, features: torch.Tensor, grid: tuple[int, int]) -> None:
    """Raise ValueError unless `features` is (P, h·w, owner.dim) for `grid` (h, w)."""
    name = type(owner).__name__
    if features.ndim != 3:
        raise ValueError(f"{name} expects features of shape (P, N, D), got {tuple(features.shape)}")
    h, w = grid
    if features.shape[1] != h * w:
        raise ValueError(f"{name} got N = {features.shape[1]} tokens but grid {h}x{w} has {h * w}")
    if features.shape[2] != owner.dim:
        raise ValueError(f"{name} expects feature width {owner.dim}, got {features.shape[2]}")


def check_placement(placement: str) -> Placement:
    """Return `placement` if it is a valid Placement, else raise ValueError listing the valid ones."""
    if placement not in get_args(Placement):
        raise ValueError(f"placement must be one of {get_args(Placement)}, got {placement!r}")
    return placement  # type: ignore[return-value]


class Compressor(nn.Module):
    """Maps features (P, N, D) on a grid (h, w) to K = `num_tokens` tokens (P, K, D).

    `placement` says whether it runs on raw encoder features ("before_projector", width
    D_v) or on projected features ("after_projector", width D_llm). `dim` is the width it
    expects, checked by MiniVLM against the neighbouring part.
    """

    dim: int
    placement: Placement

    @property
    def num_tokens(self) -> int:
        raise NotImplementedError

    def tokens_for_grid(self, grid: tuple[int, int]) -> int:
        """How many tokens features on `grid` become: `num_tokens` unless K depends on the grid."""
        return self.num_tokens

    def forward(self, features: torch.Tensor, grid: tuple[int, int]) -> CompressorOutput:
        raise NotImplementedError
