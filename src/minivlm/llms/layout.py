"""Where an LLM's linear weights sit in memory while it decodes on CPU.

A decoding step multiplies one row per sample by every weight matrix, so on CPU it runs as
fast as the weights stream from memory, and how fast they stream depends on their layout. For
float32 on this project's CPU (`benchmarks/weight_layout.py`, over the shapes of Llama and
Qwen2 models from width 512 to Vicuna-7B), `x @ W.T` with a *wide* W (more outputs than
inputs: the output head, the MLP's gate and up projections) runs 1.2 to 2 times faster at one
row, and 1.05 to 1.4 times at eight, when W is stored column-major (`W.t()` contiguous) than in
PyTorch's row-major default. Square and narrow W (attention, the down projection) gain at one
row in some shapes but lose up to a fifth at eight, so they stay row-major. In bfloat16 the
gain is at most a tenth, and in float16 column-major is 4.5 to 9 times slower, so only
float32 weights move.

`to_decoding_layout` stores the wide float32 CPU weights column-major in place: the same
Parameters with the same values and shapes, only their strides change, so the model's
outputs are the same up to float rounding (the matrix product sums in another order).
`to_training_layout` puts them back: PyTorch's kernels and optimizers assume row-major
weights, and `LanguageModel.train()` calls it.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn


def plain_float32_cpu(weight: torch.Tensor) -> bool:
    """A float32 weight in CPU memory that is neither a DTensor nor another tensor subclass."""
    data = weight.data
    return type(data) is torch.Tensor and data.device.type == "cpu" and data.dtype == torch.float32


def _wide_linears(module: nn.Module, float32_cpu_only: bool) -> Iterator[nn.Linear]:
    """The linear layers of `module` with more outputs than inputs whose weight is a plain tensor
    (not a DTensor, not on meta; with `float32_cpu_only`, a float32 CPU one) that no embedding
    shares (tied input embeddings are looked up by row, which needs rows contiguous)."""
    shared = {m.weight.data_ptr() for m in module.modules() if isinstance(m, nn.Embedding)}
    for layer in module.modules():
        if not isinstance(layer, nn.Linear) or layer.out_features <= layer.in_features:
            continue
        weight = layer.weight.data
        if type(weight) is not torch.Tensor or weight.device.type == "meta" or weight.data_ptr() in shared:
            continue
        if not float32_cpu_only or plain_float32_cpu(weight):
            yield layer


def _relayout(layer: nn.Linear, column_major: bool) -> None:
    """Copies `layer.weight`'s data into the layout asked for, in place. Working on `.data`, the
    copy is never recorded by autograd."""
    weight = layer.weight
    # A weight made outside inference mode gets a normal copy even when generation runs inside
    # it: an inference tensor as its data would make any later backward through the layer fail.
    # A weight made inside inference mode (a model built or loaded under it) needs an inference
    # copy: given normal data it has no version counter for it, and every product with it fails.
    with torch.inference_mode(weight.is_inference()):
        weight.data = weight.data.t().contiguous().t() if column_major else weight.data.contiguous()


def to_decoding_layout(module: nn.Module) -> int:
    """Stores the weight of every wide float32 linear layer of `module` on CPU column-major, in
    place (see the module docstring); returns how many moved. Already moved weights stay."""
    moved = 0
    for layer in _wide_linears(module, float32_cpu_only=True):
        if layer.weight.is_contiguous():
            _relayout(layer, column_major=True)
            moved += 1
    return moved


def to_training_layout(module: nn.Module) -> int:
    """Undoes `to_decoding_layout`: every wide weight of `module` that is not row-major becomes
    row-major (contiguous) again, in place, whatever its dtype and device (`Module.to` keeps a
    moved weight's strides); returns how many moved."""
    moved = 0
    for layer in _wide_linears(module, float32_cpu_only=False):
        if not layer.weight.is_contiguous():
            _relayout(layer, column_major=False)
            moved += 1
    return moved
