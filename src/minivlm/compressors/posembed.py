"""Fixed 2-D sin-cos positional tables (MAE style), shared by the query compressor's two semantics."""

from __future__ import annotations

import torch


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """(M,) positions -> (M, dim) table [sin(p·ω), cos(p·ω)] with ω_k = 10000^(−k/(dim/2))."""
    if dim % 2:
        raise ValueError(f"a 1-D sin-cos table needs an even width, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim // 2))
    angles = positions.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d(dim: int, grid: tuple[int, int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The (h·w, dim) table for integer positions on a grid (h, w), flattened row-major.

    The first half of the channels encodes the column (x), the second half the row (y),
    each as `sincos_1d`, so ω_k = 10000^(−k/(dim/4)) for k = 0…dim/4−1.
    """
    if dim % 4:
        raise ValueError(f"a 2-D sin-cos table needs a width divisible by 4, got {dim}")
    h, w = grid
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    table = torch.cat([sincos_1d(dim // 2, cols.flatten()), sincos_1d(dim // 2, rows.flatten())], dim=1)
    # Built in float64 like MAE's numpy version, then cast once.
    return table.to(dtype)
