"""The contract every projector fulfils: (..., in_dim) -> (..., out_dim)."""

from __future__ import annotations

from torch import nn


class Projector(nn.Module):
    """Maps vision features of width `in_dim` to the language model's width `out_dim`."""

    in_dim: int
    out_dim: int
