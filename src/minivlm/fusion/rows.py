"""A decoder layer evaluated at a suffix of its rows only.

Pre-fusion keeps only the outputs at the compressed and text slots of its last layer, so that
layer needs queries, output projection and MLP for those rows alone; every row still serves
as a key and a value. This is exact for Llama-layout layers (pre-norm attention with
q/k/v/o projections and rotary embeddings, then a pre-norm MLP), which is what
`supports_row_subset` checks; other layers run whole.
"""

from __future__ import annotations

import sys

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.nn import functional as F

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
    apply_rope = sys.modules[type(attention).__module__].apply_rotary_pos_emb
    b, t, _ = hidden.shape
    rows = t - start
    normed = layer.input_layernorm(hidden)
    query = attention.q_proj(normed[:, start:]).view(b, rows, -1, attention.head_dim).transpose(1, 2)
    key = attention.k_proj(normed).view(b, t, -1, attention.head_dim).transpose(1, 2)
    value = attention.v_proj(normed).view(b, t, -1, attention.head_dim).transpose(1, 2)
    cos, sin = position_embeddings
    query, _ = apply_rope(query, query, cos[:, start:], sin[:, start:])
    _, key = apply_rope(key, key, cos, sin)
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
