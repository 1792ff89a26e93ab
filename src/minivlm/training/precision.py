"""One precision policy for the whole model, derived from the trainer's `precision`.

- `*-true` (e.g. `bf16-true`, `32-true`): every parameter in that dtype, nothing else.
- `*-mixed` (e.g. `bf16-mixed`): everything that trains keeps fp32 master weights
  (autocast computes in bf16); frozen parts are held in `frozen_dtype` if given (bf16
  halves their memory and nothing updates them), else in fp32 too.

Pretrained parts are materialised directly in their dtype; other parts are cast once in
`configure_model`.
"""

from __future__ import annotations

from typing import Literal

import torch

FrozenDtype = Literal["bfloat16", "float16", "float32"]

_TRUE_DTYPES = {
    "32-true": torch.float32,
    "32": torch.float32,
    "64-true": torch.float64,
    "64": torch.float64,
    "bf16-true": torch.bfloat16,
    "16-true": torch.float16,
}
_MIXED = ("bf16-mixed", "16-mixed", "bf16", "16")


def part_dtype(precision: str, trained: bool, frozen_dtype: FrozenDtype | None) -> torch.dtype:
    """The parameter dtype of a part under the trainer's `precision`."""
    precision = str(precision)
    if precision in _TRUE_DTYPES:
        if frozen_dtype is not None:
            # Without autocast, a part held in another dtype would meet inputs it cannot multiply.
            raise ValueError(f"frozen_dtype applies to mixed precision only; precision {precision} sets every dtype")
        return _TRUE_DTYPES[precision]
    if precision in _MIXED:
        if trained or frozen_dtype is None:
            return torch.float32
        return getattr(torch, frozen_dtype)
    raise ValueError(f"precision {precision!r} is not supported; use one of {', '.join([*_TRUE_DTYPES, *_MIXED])}")
