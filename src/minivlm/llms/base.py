"""The contract every language model fulfils."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from minivlm.llms.layout import to_decoding_layout, to_training_layout


class LanguageModel(nn.Module):
    """A causal LM that consumes embeddings: (B, T, D) -> logits (B, T, V), with a KV cache.

    Besides `forward`, it exposes what the rest of the model composes with: its width
    (`hidden_size`), its embedding table (`embed`), and, for pre-fusion built from the
    LLM's own layers, `decoder_layers`, `decoder_layer_class`, `layer_config` and a
    `rotary_embedding` module that maps position ids to the layers' (cos, sin).
    `forward(..., logits_to_keep=n)` computes logits for the last n positions only (0: all).
    A model that can also decode with a preallocated cache overrides `check_static_cache` and
    `static_cache`.

    Generation calls `prepare_decoding` before the prompt's forward: in eval mode, on CPU, it
    stores the wide float32 linear weights column-major, where decoding reads them faster
    (`minivlm.llms.layout`); `train()` puts them back. Set `decode_column_major = False` on an
    instance (or subclass) to keep every weight as it is.
    """

    hidden_size: int
    vocab_size: int
    decode_column_major: bool = True

    def prepare_decoding(self) -> None:
        """Lays the weights out for decoding; see the class docstring. A no-op in train mode."""
        if self.decode_column_major and not self.training:
            to_decoding_layout(self)

    def train(self, mode: bool = True) -> LanguageModel:
        """Sets train (or eval) mode as `nn.Module.train` does; entering train mode also puts the
        weights `prepare_decoding` moved back to row-major, the layout training expects."""
        super().train(mode)
        if mode:
            to_training_layout(self)
        return self

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def decoder_layers(self) -> nn.ModuleList:
        raise NotImplementedError

    @property
    def decoder_layer_class(self) -> type[nn.Module]:
        return type(self.decoder_layers[0])

    @property
    def layer_config(self) -> Any:
        raise NotImplementedError

    @property
    def rotary_embedding(self) -> nn.Module:
        raise NotImplementedError

    @property
    def output_head(self) -> nn.Module:
        """The layer that maps final hidden states (…, D) to logits (…, V)."""
        raise NotImplementedError

    def check_static_cache(self) -> None:
        """Returns if `static_cache` works for this model; otherwise raises ValueError saying why."""
        raise ValueError(f"{type(self).__name__} has no static KV cache: decode with cache='dynamic'")

    def static_cache(self, batch_size: int, max_length: int) -> Any:
        """A KV cache preallocated for `max_length` positions of `batch_size` sequences, filled in
        place by `forward(cache=...)`. Every call on it takes an attention mask `max_length` wide
        (False at padding; slots not yet written are hidden by causality), so a decoding step
        keeps fixed shapes and a compiled one runs without recompiling."""
        self.check_static_cache()
        raise NotImplementedError

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: Any = None,
        use_cache: bool = False,
        logits_to_keep: int = 0,
        hidden_only: bool = False,
    ) -> tuple[torch.Tensor, Any]:
        """(logits (B, T, V), cache); with `hidden_only`, the final hidden states (B, T, D)
        before `output_head` instead of logits (the loss applies the head to label positions
        only: `minivlm.model.loss`)."""
        raise NotImplementedError
