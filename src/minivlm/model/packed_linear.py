"""Linear layers that run through oneDNN with their weights packed once, at CPU inference.

`F.linear` on CPU hands each float32 product to MKL's GEMM, which reorders the weight into
its blocked working format on every call. oneDNN can do that reordering once
(`torch.ops.mkldnn._reorder_linear_weight`) and then multiply straight from the packed copy.
On this project's CPU (`benchmarks/packed_linear.py`: the shapes of `benchmarks/latency.py`'s
model, CLIP ViT-L and Vicuna-7B, weights streamed from memory) the packed product is 1.11-1.23
times faster at 617 rows (a LLaVA-1.5 prompt, pre-fusion's sequence), 1.25-1.96 times at 41 (a
LLaVA-Mini prompt) and 1.05-2.6 times at two to eight rows (a batch decoding). At one row MKL's
matrix-vector kernel is often faster (0.65-1.3 times), so single rows keep `F.linear`.

`pack_linears` turns every plain `nn.Linear` with a float32 CPU weight into a `PackedLinear`
in place (same Parameters, names and state dict); each packs its weight at its first call
under no grad with two rows or more, and packs again when the weight changes. Anything else
(training, gradients, other dtypes or devices, one row, `torch.compile` tracing) runs
`F.linear` as before. The packed copies are extra memory, as much as the packed weights
themselves, and packing takes about 0.6 ms per MB once (about 16 s for Vicuna-7B in float32).
`train()` turns them back into `nn.Linear`s and frees the copies. A weight changed through
`.data` in place keeps its version, so its stale copy would stay: change weights under
`torch.no_grad()` instead, or call `train()` (or `unpack_linears`) first. Weights made under
`torch.inference_mode()` track no version at all: the same holds for in-place changes to them.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import register_flop_formula

from minivlm.llms.layout import plain_float32_cpu

logger = logging.getLogger(__name__)

# Below this many rows MKL's matrix-vector kernel beats the packed product.
MIN_ROWS = 2

_available = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


if _available:

    # Without a formula, `FlopCounterMode` (and so `minivlm profile`) would count packed products as free.
    @register_flop_formula(torch.ops.mkldnn._linear_pointwise)
    def _packed_linear_flops(input_shape: torch.Size, weight_shape: torch.Size, *args: Any, **kwargs: Any) -> int:
        return 2 * math.prod(input_shape[:-1]) * weight_shape[0] * weight_shape[1]


class PackedLinear(nn.Linear):
    """An `nn.Linear` that multiplies through a oneDNN-packed copy of its weight at CPU inference
    (see the module docstring). Made by `pack_linears`; `train()` makes it an `nn.Linear` again."""

    _packed: tuple[tuple[int, int], torch.Tensor] | None = None

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if (
            _available
            and not self.training
            and not torch.is_grad_enabled()
            and not torch.compiler.is_compiling()
            and input.dtype == torch.float32
            and input.device.type == "cpu"
            and input.numel() >= MIN_ROWS * self.in_features
            and plain_float32_cpu(self.weight)
        ):
            packed = self._packed_weight()
            if packed is not None:
                return torch.ops.mkldnn._linear_pointwise(input, packed, self.bias, "none", [], "")
        return F.linear(input, self.weight, self.bias)

    def _packed_weight(self) -> torch.Tensor | None:
        global _available
        # In-place updates (an optimizer step, load_state_dict) bump the version; a new tensor
        # (Module.to, a layout change) has another address. Either way the copy is stale. A weight
        # made under inference mode has no version, and can only change in place inside it.
        weight = self.weight
        key = (weight.data_ptr(), -1 if weight.is_inference() else weight._version)
        if self._packed is None or self._packed[0] != key:
            self._packed = None
            try:
                self._packed = (key, torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None))
            except RuntimeError as error:
                _available = False
                logger.warning("oneDNN cannot pack linear weights here (%s); linears run F.linear", error)
                return None
        return self._packed[1]

    def train(self, mode: bool = True) -> nn.Module:
        super().train(mode)
        if mode:
            _unpack(self)
        return self

    def _apply(self, fn: Any, recurse: bool = True) -> nn.Module:
        # A moved or converted weight makes the copy stale; free it now rather than at the next call.
        self._packed = None
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict[str, Any]:
        # The packed copy is an opaque oneDNN tensor (no storage to copy or pickle) and is rebuilt on demand.
        return {k: v for k, v in super().__getstate__().items() if k != "_packed"}


def _unpack(layer: PackedLinear) -> None:
    layer.__dict__.pop("_packed", None)
    layer.__class__ = nn.Linear


def pack_linears(module: nn.Module) -> int:
    """Makes every plain `nn.Linear` of `module` with a float32 CPU weight a `PackedLinear`, in
    place; returns how many changed (none where torch has no oneDNN)."""
    if not _available:
        return 0
    changed = 0
    for layer in module.modules():
        if type(layer) is nn.Linear and plain_float32_cpu(layer.weight):
            layer.__class__ = PackedLinear
            changed += 1
    return changed


def unpack_linears(module: nn.Module) -> int:
    """Undoes `pack_linears`: every `PackedLinear` of `module` becomes an `nn.Linear` and frees its
    packed copy; returns how many changed."""
    layers = [layer for layer in module.modules() if type(layer) is PackedLinear]
    for layer in layers:
        _unpack(layer)
    return len(layers)
