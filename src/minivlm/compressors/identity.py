"""The no-op compressor (K = N, the LLaVA-1.5 baseline)."""

from __future__ import annotations

import torch

from minivlm.compressors.base import Compressor, CompressorOutput, Placement, check_features, check_placement


class IdentityCompressor(Compressor):
    """Passes all N features through unchanged, so K depends on the grid (K = h·w)."""

    def __init__(self, dim: int, placement: Placement = "after_projector") -> None:
        super().__init__()
        self.dim = dim
        self.placement = check_placement(placement)

    @property
    def num_tokens(self) -> int:
        raise ValueError("IdentityCompressor keeps every token, so its count depends on the grid; use tokens_for_grid")

    def tokens_for_grid(self, grid: tuple[int, int]) -> int:
        return grid[0] * grid[1]

    def init_args_for_export(self) -> dict:
        return {"dim": self.dim, "placement": self.placement}

    def forward(self, features: torch.Tensor, grid: tuple[int, int]) -> CompressorOutput:
        check_features(self, features, grid)
        return CompressorOutput(tokens=features)
