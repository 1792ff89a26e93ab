"""Llama-layout decoder layers evaluated by pre-fusion's own code: whole, or at a suffix of rows.

Pre-fusion keeps only the outputs at the compressed and text slots of its last layer, so that
layer needs queries, output projection and MLP for those rows alone; every row still serves
as a key and a value (`layer_rows`). The layers before it run whole (`layer_whole`), as the
transformers layer does with SDPA, except for the rotary embedding: transformers builds
`rotate_half(x)` with a concatenation of strided halves, which on CPU takes 2.9 ms per layer
for 617 rows of width 512, and `rotate` gives the same values, bit for bit, in 0.37 ms. Both
are exact for Llama-layout layers (pre-norm attention with q/k/v/o projections and rotary
embeddings, then a pre-norm MLP), which is what `supports_row_subset` checks; other layers
run as their own modules.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.nn import functional as F
from transformers.integrations.sdpa_attention import sdpa_attention_forward

_LAYER_CHILDREN = {"self_attn", "mlp", "input_layernorm", "post_attention_layernorm"}
_ATTENTION_CHILDREN = {"q_proj", "k_proj", "v_proj", "o_proj"}


def supports_row_subset(layer: nn.Module) -> bool:
    """True for a Llama-layout layer with plain global attention (no q/k norms, no sliding window)
    that is not sharded by FSDP (whose hooks run only when the layer itself is called)."""
    if isinstance(layer, FSDPModule):
        return False
    attention = getattr(layer, "self_attn", None)
    if attention is None or {name for name, _ in layer.named_children()} != _LAYER_CHILDREN:
        return False
    if {name for name, _ in attention.named_children()} != _ATTENTION_CHILDREN:
        return False
    has_rope = hasattr(sys.modules[type(attention).__module__], "apply_rotary_pos_emb")
    needed = all(hasattr(attention, a) for a in ("head_dim", "num_key_value_groups", "scaling", "attention_dropout"))
    return has_rope and needed and getattr(attention, "sliding_window", None) is None


def layer_rows(
    layer: nn.Module, hidden: torch.Tensor, start: int, position_embeddings: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """`layer(hidden)[:, start:]` under a causal mask, computing queries, the output projection
    and the MLP only for rows `start:` (keys and values for all rows)."""
    attention = layer.self_attn
    rope = rotary_for(attention)
    b, t, _ = hidden.shape
    rows = t - start
    normed = layer.input_layernorm(hidden)
    query = attention.q_proj(normed[:, start:]).view(b, rows, -1, attention.head_dim).transpose(1, 2)
    key = attention.k_proj(normed).view(b, t, -1, attention.head_dim).transpose(1, 2)
    value = attention.v_proj(normed).view(b, t, -1, attention.head_dim).transpose(1, 2)
    cos, sin = position_embeddings
    query, key = rope(query, cos[:, start:], sin[:, start:]), rope(key, cos, sin)
    groups = attention.num_key_value_groups
    if groups > 1:  # grouped-query attention: each key/value head serves `groups` query heads
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    # Row `start + i` sees keys 0..start + i: a (rows, t) mask, small since rows << t.
    allowed = torch.arange(t, device=hidden.device)[None, :] <= torch.arange(start, t, device=hidden.device)[:, None]
    scores = (query @ key.transpose(-1, -2)) * attention.scaling
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    probs = scores.softmax(dim=-1, dtype=torch.float32).to(query.dtype)
    probs = F.dropout(probs, p=attention.attention_dropout if layer.training else 0.0, training=layer.training)
    attended = (probs @ value).transpose(1, 2).reshape(b, rows, -1)
    out = hidden[:, start:] + attention.o_proj(attended)
    return out + layer.mlp(layer.post_attention_layernorm(out))


def layer_whole(layer: nn.Module, hidden: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """`layer(hidden)` under causal attention for a Llama-layout layer whose attention runs SDPA
    (`supports_row_subset`, no mask): the transformers layer's computation, op for op, with the
    faster `rotate` in place of its rotary embedding."""
    attention = layer.self_attn
    rope = rotary_for(attention)
    b, t, _ = hidden.shape
    normed = layer.input_layernorm(hidden)
    query = attention.q_proj(normed).view(b, t, -1, attention.head_dim).transpose(1, 2)
    key = attention.k_proj(normed).view(b, t, -1, attention.head_dim).transpose(1, 2)
    value = attention.v_proj(normed).view(b, t, -1, attention.head_dim).transpose(1, 2)
    cos, sin = position_embeddings
    query, key = rope(query, cos, sin), rope(key, cos, sin)
    dropout = attention.attention_dropout if layer.training else 0.0
    attended, _ = sdpa_attention_forward(attention, query, key, value, None, dropout=dropout, scaling=attention.scaling)
    out = hidden + attention.o_proj(attended.reshape(b, t, -1).contiguous())
    return out + layer.mlp(layer.post_attention_layernorm(out))


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Llama's rotary embedding of x (B, H, T, D) at (B, T, D) `cos` and `sin`:
    x * cos + rotate_half(x) * sin, where rotate_half(x) = [-x2, x1] for the halves x1, x2.

    Written per half, x1 * cos1 - x2 * sin1 and x2 * cos2 + x1 * sin2, into one output: the
    same roundings as the transformers function (negation is exact, and a + (-b) is a - b), so
    the same bits, without concatenating strided halves."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    half = x.shape[-1] // 2
    out = x * cos
    out[..., :half].sub_(x[..., half:] * sin[..., :half])
    out[..., half:].add_(x[..., :half] * sin[..., half:])
    return out


@functools.cache
def _rotary_of_module(module_name: str) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """`rotate` if it reproduces the rotary embedding of the transformers module `module_name`
    bit for bit on a probe, else that module's own `apply_rotary_pos_emb` applied to one tensor."""
    apply_rope = sys.modules[module_name].apply_rotary_pos_emb

    def own(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return apply_rope(x, x, cos, sin)[0]

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 8, generator=generator)
    cos, sin = torch.randn(2, 5, 8, generator=generator), torch.randn(2, 5, 8, generator=generator)
    try:
        same = torch.equal(rotate(x, cos, sin), own(x, cos, sin))
    except (RuntimeError, IndexError, ValueError, TypeError):  # another convention: the model's own
        same = False
    return rotate if same else own


def rotary_for(attention: nn.Module) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """The rotary embedding to apply to one (B, H, T, D) tensor in `attention`'s layer."""
    return _rotary_of_module(type(attention).__module__)
