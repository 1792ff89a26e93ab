"""The contract of modality pre-fusion (LLAVA_MINI.md section 4)."""

from __future__ import annotations

import torch
from torch import nn

from minivlm.llms.base import LanguageModel


class PreFusion(nn.Module):
    """Fuses visual content into the text tokens before the language model sees them.

    forward(vision (B, N, D), compressed (B, K, D), text (B, L, D), fuse_mask (B, L))
    -> (compressed' (B, K, D), text' (B, L, D)). Text slots where `fuse_mask` is False
    (placeholders, padding, assistant answers) come back as they went in.

    A pre-fusion module may need the language model it sits in front of (to copy its layer
    class and config); MiniVLM calls `attach(llm)` once at construction.
    """

    uses_vision: bool = True

    def attach(self, llm: LanguageModel) -> None:
        """Builds whatever depends on the language model. The default needs nothing."""

    def forward(
        self, vision: torch.Tensor, compressed: torch.Tensor, text: torch.Tensor, fuse_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class NoPreFusion(PreFusion):
    """No pre-fusion: the compressed tokens and the text reach the LLM unchanged (LLaVA-1.5, or the
    paper's "1 token without pre-fusion" ablation)."""

    uses_vision = False

    def forward(
        self, vision: torch.Tensor, compressed: torch.Tensor, text: torch.Tensor, fuse_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return compressed, text
