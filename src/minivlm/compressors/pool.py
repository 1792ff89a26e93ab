"""Average-pooling compressor: the paper's "average pooling instead of queries" ablation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from minivlm.compressors.base import Compressor, CompressorOutput, Placement, check_features, check_placement


class PoolCompressor(Compressor):
    """Adaptive average pooling of the (h, w) feature map to size×size tokens, row-major.

    Has no parameters and no attention map.
    """

    def __init__(self, dim: int, size: int = 1, placement: Placement = "after_projector") -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"size must be at least 1, got {size}")
        self.dim = dim
        self.size = size
        self.placement = check_placement(placement)

    @property
    def num_tokens(self) -> int:
        return self.size * self.size

    def init_args_for_export(self) -> dict:
        return {"dim": self.dim, "size": self.size, "placement": self.placement}

    def forward(self, features: torch.Tensor, grid: tuple[int, int]) -> CompressorOutput:
        check_features(self, features, grid)
        p, _, d = features.shape
        fmap = features.transpose(1, 2).reshape(p, d, *grid)
        pooled = F.adaptive_avg_pool2d(fmap, self.size)
        return CompressorOutput(tokens=pooled.flatten(2).transpose(1, 2))
