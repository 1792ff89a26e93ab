"""Any transformers causal LM (Llama, Qwen2, Mistral, ...) as a minivlm language model."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from minivlm.llms.base import LanguageModel


class HFLanguageModel(LanguageModel):
    """Wraps `AutoModelForCausalLM`, built from a config dict (random init) or loaded from
    `pretrained` (a Hub id or a local directory). Exactly one of the two is given.

    The decoder stack must follow the common transformers layout (`model.layers`,
    `model.rotary_emb`), which covers the Llama family and its many descendants.
    """

    def __init__(
        self,
        config: dict[str, Any] | None = None,
        pretrained: str | None = None,
        attn_implementation: str = "sdpa",
        trainable: bool = True,
    ) -> None:
        super().__init__()
        if (config is None) == (pretrained is None):
            raise ValueError("HFLanguageModel needs exactly one of `config` (a dict) or `pretrained` (a Hub id or path)")
        if config is not None:
            config = dict(config)
            if "model_type" not in config:
                raise ValueError("HFLanguageModel config needs a `model_type`, e.g. 'llama'")
            hf_config = AutoConfig.for_model(config.pop("model_type"), **config)
            self.model = AutoModelForCausalLM.from_config(hf_config, attn_implementation=attn_implementation)
        else:
            self.model = AutoModelForCausalLM.from_pretrained(pretrained, attn_implementation=attn_implementation)
        backbone = getattr(self.model, "model", None)
        if backbone is None or not hasattr(backbone, "layers") or not hasattr(backbone, "rotary_emb"):
            raise ValueError(
                f"{type(self.model).__name__} does not have the `model.layers` / `model.rotary_emb` layout "
                "HFLanguageModel supports"
            )
        self.attn_implementation = attn_implementation
        self.hidden_size = self.model.config.hidden_size
        self.vocab_size = self.model.config.vocab_size
        self.trainable = trainable
        self.requires_grad_(trainable)

    def init_args_for_export(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this architecture offline (weights are saved apart)."""
        config = self.model.config.to_diff_dict()
        config.pop("transformers_version", None)
        config["model_type"] = self.model.config.model_type
        return {"config": config, "attn_implementation": self.attn_implementation, "trainable": self.trainable}

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(input_ids)

    @property
    def decoder_layers(self) -> nn.ModuleList:
        return self.model.model.layers

    @property
    def layer_config(self) -> Any:
        return self.model.config

    @property
    def rotary_embedding(self) -> nn.Module:
        return self.model.model.rotary_emb

    def shard_units(self) -> list[nn.Module]:
        return list(self.decoder_layers)

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: Any = None,
        use_cache: bool = False,
        logits_to_keep: int = 0,
    ) -> tuple[torch.Tensor, Any]:
        out = self.model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
        )
        return out.logits, out.cache
