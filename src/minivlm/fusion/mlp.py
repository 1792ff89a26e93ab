"""The gated MLP of Llama-family decoder layers, computed in place when autograd does not need it."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from transformers.activations import ACT2FN

_GATED_CHILDREN = {"gate_proj", "up_proj", "down_proj", "act_fn"}


def is_gated_mlp(mlp: nn.Module) -> bool:
    """True for the transformers block down_proj(act_fn(gate_proj(x)) * up_proj(x)) (Llama, Mistral,
    Qwen2/3 and their descendants), recognised by its submodules."""
    return {name for name, _ in mlp.named_children()} == _GATED_CHILDREN


class InPlaceGatedMLP(nn.Module):
    """down_proj(act_fn(gate_proj(x)) * up_proj(x)) with the submodules (and parameter names) of the
    layer's own MLP, whose activation and product overwrite gate_proj's output when autograd
    does not need them.

    The transformers block allocates a new (B, T, intermediate) tensor for the activation and
    another for the product, the largest tensors of the layer; here neither is allocated (SiLU
    runs in place; another activation keeps its own output and only the product is in place).
    Values are the same, bit for bit.
    """

    def __init__(self, mlp: nn.Module) -> None:
        super().__init__()
        if not is_gated_mlp(mlp):
            children = sorted(name for name, _ in mlp.named_children())
            raise ValueError(f"{type(mlp).__name__} is not a gate/up/down MLP: it has {children}")
        self.gate_proj = mlp.gate_proj
        self.up_proj = mlp.up_proj
        self.down_proj = mlp.down_proj
        self.act_fn = mlp.act_fn
        self._silu = isinstance(mlp.act_fn, (nn.SiLU, type(ACT2FN["silu"])))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_proj(x), self.up_proj(x)
        if torch.is_grad_enabled() and (gate.requires_grad or up.requires_grad):
            return self.down_proj(self.act_fn(gate) * up)
        activated = F.silu(gate, inplace=True) if self._silu else self.act_fn(gate)
        return self.down_proj(activated.mul_(up))
