"""Pre-fusion built from blocks of the language model's own decoder-layer class."""

from __future__ import annotations

import copy
from typing import Literal, get_args

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from minivlm.fusion.base import PreFusion
from minivlm.fusion.mlp import InPlaceGatedMLP, is_gated_mlp
from minivlm.fusion.rows import layer_rows, supports_row_subset
from minivlm.llms.base import LanguageModel


# How DecoderPreFusion's layers start (see its docstring).
PreFusionInit = Literal["random", "copy", "identity"]

# Attention implementations that are causal when given no mask; any other gets an explicit one.
_CAUSAL_WITHOUT_MASK = {"sdpa", "flash_attention_2", "flash_attention_3"}


def compact_text(text: torch.Tensor, fuse_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reorders each sample's text slots so the fused ones come first, in order: returns the
    reordered (B, M, D) text and the index (B, L) of every slot in it (M = L on the meta
    device; otherwise the longest fused run, at least 1, so masked slots at the end are cut).

    Masked slots are neither keys nor kept outputs. Placed after every fused slot, a causal
    mask keeps them out of every fused slot's view, so pre-fusion needs no (B, T, T) mask.
    """
    count = fuse_mask.sum(dim=1, keepdim=True)
    fused_slot = fuse_mask.long().cumsum(dim=1) - 1
    masked_slot = count + (~fuse_mask).long().cumsum(dim=1) - 1
    order = torch.where(fuse_mask, fused_slot, masked_slot)
    compact = torch.empty_like(text).scatter(1, order[..., None].expand_as(text), text)
    if not compact.is_meta:  # cutting needs the counts on the host; on meta every row stays (same result)
        compact = compact[:, : max(1, int(count.max()))]
    return compact, order


# Where decoder layers keep the last projection of their attention and MLP branches.
ATTENTION_OUTPUTS = ("self_attn.o_proj", "self_attn.out_proj", "self_attn.dense")
MLP_OUTPUTS = ("mlp.down_proj", "mlp.fc2", "mlp.dense_4h_to_h")


def zero_branch_outputs(layer: nn.Module) -> None:
    """Zero the output projections of `layer`'s attention and MLP branches, so that the
    residual layer passes its input through unchanged until training moves them."""
    for names in (ATTENTION_OUTPUTS, MLP_OUTPUTS):
        found = [module for name in names if isinstance(module := _submodule(layer, name), nn.Linear)]
        if not found:
            raise ValueError(
                f"cannot start {type(layer).__name__} as the identity: it has none of {', '.join(names)} as a "
                "linear layer; use DecoderPreFusion(init='random'), or init='copy' with no more layers than the LLM has"
            )
        projection = found[0]
        nn.init.zeros_(projection.weight)
        if projection.bias is not None:
            nn.init.zeros_(projection.bias)


def _submodule(module: nn.Module, name: str) -> nn.Module | None:
    try:
        return module.get_submodule(name)
    except AttributeError:
        return None


class DecoderPreFusion(PreFusion):
    """`num_layers` decoder blocks of the LLM's own class and config, with weights of their own.

    Input order is [vision ; compressed ; text] under a causal mask that hides masked text
    slots; the compressed and text outputs are taken from the last block (no final norm,
    as in the LLaVA-Mini release). Masked text slots are dropped before the blocks run (so
    attention is plain causal, with no (B, T, T) mask), and the last block computes its
    queries and MLP only for the compressed and text rows when its layout allows it. Gated
    (Llama-style) MLPs become `InPlaceGatedMLP`s, which at inference write the activation and
    product into their own buffers. `init="copy"` starts from the LLM's first `num_layers`
    layers; a stack deeper than the LLM continues with copies of its layers in turn whose
    attention and MLP output projections start at zero, so each extra layer is the identity at
    the start (LLaMA Pro's block expansion) and the stack computes what the LLM's layers do.
    `init="identity"` zeroes those projections in every copied layer, so pre-fusion starts by
    passing the text and compressed tokens through unchanged (the model starts as it would
    without pre-fusion) while its attention and MLP inputs start as the LLM's.
    `"random"` (the release's behaviour) initialises like the LLM does.
    Text embeddings are detached on the way in (`detach_text`), as in the release.
    """

    def __init__(
        self, num_layers: int = 4, init: PreFusionInit = "random", detach_text: bool = True
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"DecoderPreFusion needs num_layers >= 1, got {num_layers}")
        if init not in get_args(PreFusionInit):
            raise ValueError(f"DecoderPreFusion init must be 'random', 'copy' or 'identity', got {init!r}")
        self.num_layers = num_layers
        self.init = init
        self.detach_text = detach_text
        self.layers = nn.ModuleList()
        self.rotary_embedding: nn.Module | None = None
        self.layer_config = None

    def attach(self, llm: LanguageModel) -> None:
        config = llm.layer_config
        self.layer_config = config
        layer_class = llm.decoder_layer_class
        self.layers = nn.ModuleList(layer_class(config, layer_idx=i) for i in range(self.num_layers))
        if self.init != "random":
            depth = len(llm.decoder_layers)
            for i, ours in enumerate(self.layers):
                ours.load_state_dict(llm.decoder_layers[i % depth].state_dict())
                if i >= depth or self.init == "identity":
                    zero_branch_outputs(ours)
        else:
            std = getattr(config, "initializer_range", 0.02)
            for module in self.layers.modules():
                if isinstance(module, nn.Linear):
                    nn.init.normal_(module.weight, std=std)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
        for layer in self.layers:
            # Same parameters and values; at inference the MLP writes into its own largest buffers.
            if is_gated_mlp(getattr(layer, "mlp", nn.Module())):
                layer.mlp = InPlaceGatedMLP(layer.mlp)
        # The rotary module holds only non-persistent buffers; a copy keeps pre-fusion self-contained.
        self.rotary_embedding = copy.deepcopy(llm.rotary_embedding)
        self.requires_grad_(True)

    def shard_units(self) -> list[nn.Module]:
        return list(self.layers)

    def forward(
        self, vision: torch.Tensor, compressed: torch.Tensor, text: torch.Tensor, fuse_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.rotary_embedding is None:
            raise RuntimeError("DecoderPreFusion.attach(llm) was not called; MiniVLM does this at construction")
        n, k = vision.shape[1], compressed.shape[1]
        if self.detach_text:
            text = text.detach()
        dtype = vision.dtype
        compact, order = compact_text(text.to(dtype), fuse_mask)
        hidden = torch.cat([vision, compressed.to(dtype), compact], dim=1)
        t = hidden.shape[1]
        # Fused text continues the prefix's positions with no gaps, so positions are 0..t-1.
        position_ids = torch.arange(t, device=hidden.device).expand(hidden.shape[0], t)
        position_embeddings = self.rotary_embedding(hidden, position_ids=position_ids)
        mask = self._causal_mask(t, hidden)
        *first, last = self.layers
        for layer in first:
            hidden = layer(hidden, attention_mask=mask, position_ids=position_ids, position_embeddings=position_embeddings)
        # A layer wrapped for activation checkpointing keeps the row subset, checkpointed here
        # the same way (non-reentrant, RNG state replayed), so both give the same numbers.
        wrapped = getattr(last, "_checkpoint_wrapped_module", None)
        if wrapped is not None and supports_row_subset(wrapped):
            kept = checkpoint(layer_rows, wrapped, hidden, n, position_embeddings, use_reentrant=False)
        elif supports_row_subset(last):
            kept = layer_rows(last, hidden, n, position_embeddings)
        else:
            out = last(hidden, attention_mask=mask, position_ids=position_ids, position_embeddings=position_embeddings)
            kept = out[:, n:]
        index = order.clamp(max=max(0, compact.shape[1] - 1))  # masked slots read any row; `where` drops it
        fused = kept[:, k:].gather(1, index[..., None].expand(-1, -1, kept.shape[-1]))
        fused_text = torch.where(fuse_mask[..., None], fused, text.to(kept.dtype))
        return kept[:, :k], fused_text

    def _causal_mask(self, t: int, hidden: torch.Tensor) -> torch.Tensor | None:
        """None where the attention implementation is causal by itself, else a (1, 1, t, t) additive mask."""
        if getattr(self.layer_config, "_attn_implementation", None) in _CAUSAL_WITHOUT_MASK:
            return None
        causal = torch.ones(t, t, dtype=torch.bool, device=hidden.device).tril()
        mask = torch.zeros(1, 1, t, t, dtype=hidden.dtype, device=hidden.device)
        return mask.masked_fill(~causal, torch.finfo(hidden.dtype).min)
