"""Pre-fusion built from blocks of the language model's own decoder-layer class."""

from __future__ import annotations

import copy
from typing import Literal

import torch
from torch import nn

from minivlm.fusion.base import PreFusion
from minivlm.llms.base import LanguageModel


def prefusion_positions(num_prefix: int, fuse_mask: torch.Tensor) -> torch.Tensor:
    """Position ids for [prefix ; text]: the prefix takes 0..num_prefix-1 and each fused text
    token continues from there, counting only fused tokens (masked slots repeat the last one;
    their outputs are discarded)."""
    b = fuse_mask.shape[0]
    prefix = torch.arange(num_prefix, device=fuse_mask.device).expand(b, num_prefix)
    text = num_prefix + (fuse_mask.long().cumsum(dim=1) - 1).clamp(min=0)
    return torch.cat([prefix, text], dim=1)


def prefusion_attention_mask(num_prefix: int, fuse_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive (B, 1, T, T) mask: causal, and no query may attend to a masked text slot.

    Every query sees at least the vision prefix, so no row is fully masked.
    """
    b, l = fuse_mask.shape
    t = num_prefix + l
    keys = torch.cat([fuse_mask.new_ones(b, num_prefix), fuse_mask], dim=1)
    causal = torch.ones(t, t, dtype=torch.bool, device=fuse_mask.device).tril()
    allowed = causal[None] & keys[:, None, :]
    mask = torch.zeros(b, 1, t, t, dtype=dtype, device=fuse_mask.device)
    return mask.masked_fill(~allowed[:, None], torch.finfo(dtype).min)


class DecoderPreFusion(PreFusion):
    """`num_layers` decoder blocks of the LLM's own class and config, with weights of their own.

    Input order is [vision ; compressed ; text] under a causal mask that hides masked text
    slots; the compressed and text outputs are taken from the last block (no final norm,
    as in the LLaVA-Mini release). `init="copy"` starts from the LLM's first `num_layers`
    layers; `"random"` (the release's behaviour) initialises like the LLM does.
    Text embeddings are detached on the way in (`detach_text`), as in the release.
    """

    def __init__(self, num_layers: int = 4, init: Literal["random", "copy"] = "random", detach_text: bool = True) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"DecoderPreFusion needs num_layers >= 1, got {num_layers}")
        if init not in ("random", "copy"):
            raise ValueError(f"DecoderPreFusion init must be 'random' or 'copy', got {init!r}")
        self.num_layers = num_layers
        self.init = init
        self.detach_text = detach_text
        self.layers = nn.ModuleList()
        self.rotary_embedding: nn.Module | None = None

    def attach(self, llm: LanguageModel) -> None:
        if len(llm.decoder_layers) < self.num_layers and self.init == "copy":
            raise ValueError(
                f"DecoderPreFusion(init='copy') wants {self.num_layers} layers, the LLM has {len(llm.decoder_layers)}"
            )
        config = llm.layer_config
        layer_class = llm.decoder_layer_class
        self.layers = nn.ModuleList(layer_class(config, layer_idx=i) for i in range(self.num_layers))
        if self.init == "copy":
            for ours, theirs in zip(self.layers, llm.decoder_layers):
                ours.load_state_dict(theirs.state_dict())
        else:
            std = getattr(config, "initializer_range", 0.02)
            for module in self.layers.modules():
                if isinstance(module, nn.Linear):
                    nn.init.normal_(module.weight, std=std)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
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
        hidden = torch.cat([vision, compressed.to(vision.dtype), text.to(vision.dtype)], dim=1)
        position_ids = prefusion_positions(n + k, fuse_mask)
        mask = prefusion_attention_mask(n + k, fuse_mask, hidden.dtype)
        position_embeddings = self.rotary_embedding(hidden, position_ids=position_ids)
        for layer in self.layers:
            hidden = layer(hidden, attention_mask=mask, position_ids=position_ids, position_embeddings=position_embeddings)
        fused_text = torch.where(fuse_mask[..., None], hidden[:, n + k :], text.to(hidden.dtype))
        return hidden[:, n : n + k], fused_text
