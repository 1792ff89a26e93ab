"""Any transformers causal LM (Llama, Qwen2, Mistral, ...) as a minivlm language model."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, StaticCache
from transformers.cache_utils import get_layer_types_and_kwargs

from minivlm.llms.base import LanguageModel
from minivlm.weights import checkpoint_files, has_meta_parameters, load_state, parameters_on_meta, read_tensors
from minivlm.weights import resolve_checkpoint_dir

# Transformers < 4.36 stored each layer's RoPE table in the checkpoint; it is computed now, never loaded.
_LEGACY_ROPE_BUFFER = ".rotary_emb.inv_freq"


class HFLanguageModel(LanguageModel):
    """Wraps `AutoModelForCausalLM` with the architecture from `config` (a dict with a
    `model_type`) and, with `pretrained` (a Hub id or a local directory), the weights from there.

    `config` alone: random initialisation. `pretrained`: the model is built on the meta
    device (no memory, no initialiser) and `load_pretrained_weights(dtype)` fills it once
    from the checkpoint; `MiniVLMModule.configure_model` does this. Give `config` too and
    building never reads anything from `pretrained` (so recipes build offline); without it,
    the config is read from `pretrained` at construction.

    The decoder stack must follow the common transformers layout (`model.layers`,
    `model.rotary_emb`), which covers the Llama family and its many descendants.
    """

    def __init__(
        self,
        config: dict[str, Any] | None = None,
        pretrained: str | None = None,
        attn_implementation: str = "sdpa",
    ) -> None:
        super().__init__()
        if config is None and pretrained is None:
            raise ValueError("HFLanguageModel needs `config` (a dict), `pretrained` (a Hub id or path), or both")
        if config is not None:
            config = dict(config)
            if "model_type" not in config:
                raise ValueError("HFLanguageModel config needs a `model_type`, e.g. 'llama'")
            hf_config = AutoConfig.for_model(config.pop("model_type"), **config)
        else:
            hf_config = AutoConfig.from_pretrained(pretrained)
        if pretrained is None:
            self.model = AutoModelForCausalLM.from_config(hf_config, attn_implementation=attn_implementation)
        else:
            with parameters_on_meta():
                self.model = AutoModelForCausalLM.from_config(hf_config, attn_implementation=attn_implementation)
        backbone = getattr(self.model, "model", None)
        if backbone is None or not hasattr(backbone, "layers") or not hasattr(backbone, "rotary_emb"):
            raise ValueError(
                f"{type(self.model).__name__} does not have the `model.layers` / `model.rotary_emb` layout "
                "HFLanguageModel supports"
            )
        self.attn_implementation = attn_implementation
        self.pretrained = pretrained
        self.hidden_size = self.model.config.hidden_size
        self.vocab_size = self.model.config.vocab_size

    @property
    def weights_pending(self) -> bool:
        """True while the `pretrained` weights have not been loaded (parameters still on meta)."""
        return self.pretrained is not None and has_meta_parameters(self)

    def load_pretrained_weights(self, dtype: torch.dtype | None = None) -> None:
        """Reads the `pretrained` checkpoint once, strictly, straight into `dtype` (None: as stored)."""
        if self.pretrained is None:
            raise ValueError("HFLanguageModel was built from a config only: it has no `pretrained` weights to load")
        files = checkpoint_files(resolve_checkpoint_dir(self.pretrained))
        state = read_tensors(files, keep=lambda key: not key.endswith(_LEGACY_ROPE_BUFFER))
        load_state(self.model, state, dtype, f"checkpoint {self.pretrained}")

    def init_args_for_export(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this architecture offline (weights are saved apart)."""
        config = self.model.config.to_diff_dict()
        config.pop("transformers_version", None)
        config["model_type"] = self.model.config.model_type
        return {"config": config, "attn_implementation": self.attn_implementation}

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

    @property
    def output_head(self) -> nn.Module:
        return self.model.get_output_embeddings()

    def check_static_cache(self) -> None:
        """transformers' `StaticCache` with full attention in every layer: the model class must
        declare that it compiles as one graph (`_can_compile_fullgraph`, true of Llama, Qwen2,
        Mistral, ...), and sliding-window or other layer kinds are refused, since their cache
        keeps a window, not the whole sequence that the attention mask here describes."""
        name = type(self.model).__name__
        if not getattr(self.model, "_can_compile_fullgraph", False):
            raise ValueError(f"{name} does not support transformers' static KV cache: decode with cache='dynamic'")
        layer_types, _ = get_layer_types_and_kwargs(self.model.config.get_text_config(decoder=True))
        other = sorted(set(layer_types) - {"full_attention"})
        if other:
            raise ValueError(
                f"{name} has {', '.join(other)} layers; the static KV cache supports full-attention layers only: "
                "decode with cache='dynamic'"
            )

    def static_cache(self, batch_size: int, max_length: int) -> StaticCache:
        self.check_static_cache()
        # The layers allocate their tensors on the first update, with that update's dtype and device.
        return StaticCache(config=self.model.config, max_cache_len=max_length)

    def _check_loaded(self, inputs_embeds: torch.Tensor) -> None:
        if inputs_embeds.device.type != "meta" and self.weights_pending:
            raise RuntimeError(
                f"the weights of {self.pretrained} are not loaded yet: call load_pretrained_weights() "
                "(MiniVLMModule does it in configure_model)"
            )

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
        self._check_loaded(inputs_embeds)
        if hidden_only:
            out = self.model.model(
                inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                cache=cache, use_cache=use_cache,
            )
            return out.last_hidden_state, out.cache
        out = self.model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
        )
        return out.logits, out.cache
