"""MLP and linear projectors from vision width to language-model width."""

from __future__ import annotations

import torch
from torch import nn

from minivlm.projectors.base import Projector


class MLPProjector(Projector):
    """Linear(in, out) followed by (GELU, Linear(out, out)) × (depth − 1); depth 2 is LLaVA's ``mlp2x_gelu``.

    The layers live in ``layers`` (an ``nn.Sequential``), so depth 2 has parameters
    ``layers.0.*`` and ``layers.2.*``, matching the release's ``mm_projector.0`` / ``.2``.
    """

    def __init__(self, in_dim: int, out_dim: int, depth: int = 2) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"MLPProjector depth must be at least 1, got {depth}")
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.depth = depth
        modules: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
        for _ in range(depth - 1):
            modules += [nn.GELU(), nn.Linear(out_dim, out_dim)]
        self.layers = nn.Sequential(*modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class LinearProjector(Projector):
    """A single Linear(in, out), LLaVA-1's projector."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.linear = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)
