"""`minivlm convert hf-llava`: a transformers `LlavaForConditionalGeneration` directory -> a minivlm
model directory (the LLaVA-1.5 architecture: every patch token reaches the LLM, no pre-fusion)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from transformers import LlavaConfig, PretrainedConfig

from minivlm.compressors import IdentityCompressor
from minivlm.processing.templates import get_template
from minivlm.encoders import HFVisionEncoder
from minivlm.fusion import NoPreFusion
from minivlm.hub.convert.common import apply_key_mapping, architecture_only, load_safetensors_dir, load_tokenizer
from minivlm.llms import HFLanguageModel
from minivlm.model import MiniVLM
from minivlm.processing import Processor
from minivlm.projectors import MLPProjector

logger = logging.getLogger(__name__)


# Source prefix -> minivlm prefix. Three on-disk layouts exist: transformers 4.x before 4.52
# (`language_model.model.*`, `vision_tower.vision_model.*`, the layout of the llava-hf Hub
# repos), 4.52+ in-memory names (`model.language_model.*`, `lm_head.*`), and what 5.x
# save_pretrained writes (the old top-level prefixes, but CLIP without its `vision_model.`).
VISION_PREFIX = r"^(?:model\.)?vision_tower\.(?:vision_model\.)?"
KEY_RULES = (
    (VISION_PREFIX, "encoder.vision_model."),
    (r"^(?:model\.)?multi_modal_projector\.linear_1\.", "projector.layers.0."),
    (r"^(?:model\.)?multi_modal_projector\.linear_2\.", "projector.layers.2."),
    (r"^(?:language_model\.model|model\.language_model)\.", "llm.model.model."),
    (r"^(?:language_model\.)?lm_head\.", "llm.model.lm_head."),
)
VISION_HAS_CLS = {"clip_vision_model": True, "siglip_vision_model": False}
LM_HEAD = "llm.model.lm_head.weight"
EMBEDDINGS = "llm.model.model.embed_tokens.weight"


def _check_supported(config: LlavaConfig) -> None:
    """Raises NotImplementedError naming any setting the minivlm parts cannot reproduce exactly."""
    if config.projector_hidden_act != "gelu":
        raise NotImplementedError(
            f"projector_hidden_act={config.projector_hidden_act!r} is not supported: MLPProjector uses exact 'gelu'"
        )
    if not config.multimodal_projector_bias:
        raise NotImplementedError("multimodal_projector_bias=False is not supported: MLPProjector's layers have biases")
    if not isinstance(config.vision_feature_layer, int):
        raise NotImplementedError(
            f"vision_feature_layer={config.vision_feature_layer!r} is not supported: HFVisionEncoder takes one layer"
        )
    vision_type = config.vision_config.model_type
    if vision_type not in VISION_HAS_CLS:
        raise NotImplementedError(
            f"vision_config.model_type={vision_type!r} is not supported; supported: {', '.join(VISION_HAS_CLS)}"
        )
    # IdentityCompressor passes exactly the h x w patch grid, so the strategy must yield it:
    # CLIP's CLS token dropped ("default"), SigLIP's patches all kept ("full").
    strategy = config.vision_feature_select_strategy
    if (strategy == "default") != VISION_HAS_CLS[vision_type]:
        raise NotImplementedError(
            f"vision_feature_select_strategy={strategy!r} is not supported with {vision_type}: "
            "the LLM would not see exactly the patch grid"
        )


def _part_config(config: PretrainedConfig) -> dict[str, Any]:
    """A sub-config as the dict a minivlm part takes."""
    return architecture_only(config.to_diff_dict()) | {"model_type": config.model_type}


def _build_model(config: LlavaConfig) -> MiniVLM:
    """The minivlm parts that compute what `LlavaForConditionalGeneration` computes, on the meta
    device: every weight comes from the checkpoint, so random initialisation would be wasted."""
    text_width = config.text_config.hidden_size
    with torch.device("meta"):
        return MiniVLM(
            encoder=HFVisionEncoder(
                config=_part_config(config.vision_config),
                select_layer=config.vision_feature_layer,
                drop_cls=config.vision_feature_select_strategy == "default",
            ),
            compressor=IdentityCompressor(dim=text_width, placement="after_projector"),
            projector=MLPProjector(config.vision_config.hidden_size, text_width, depth=2),
            prefusion=NoPreFusion(),
            llm=HFLanguageModel(config=_part_config(config.text_config)),
        )


def _ignored_source_keys(model: MiniVLM, num_layers: int) -> list[str]:
    """Regexes of the vision tensors LLaVA never uses: layers after the feature layer, the
    post-LayerNorm and SigLIP's pooling head (HFVisionEncoder removes all three)."""
    kept = len(model.encoder.vision_model.encoder.layers)
    dropped_layers = "|".join(str(i) for i in range(kept, num_layers))
    patterns = [VISION_PREFIX + r"post_layernorm\.", VISION_PREFIX + r"head\."]
    if dropped_layers:
        patterns.append(VISION_PREFIX + rf"encoder\.layers\.(?:{dropped_layers})\.")
    return patterns


def convert_hf_llava(src: str, dst: str, tokenizer: str | None = None, template: str = "vicuna_v1") -> None:
    """Convert a transformers LLaVA checkpoint (LlavaForConditionalGeneration) into a minivlm model directory.

    The result is the LLaVA-1.5 architecture as minivlm parts (HFVisionEncoder,
    IdentityCompressor, MLPProjector, NoPreFusion, HFLanguageModel) with the same weights,
    loadable with `MiniVLM.from_pretrained(dst)`. Weights are read with safetensors only.

    Args:
        src: Directory written by `LlavaForConditionalGeneration.save_pretrained` (config.json and
            model.safetensors, or shards with model.safetensors.index.json).
        dst: Directory to write the minivlm model to (created if missing).
        tokenizer: Hub id or path of a tokenizer to use instead of the tokenizer files in `src` (needed when
            `src` has none).
        template: Chat template the model's processor uses (e.g. vicuna_v1 for LLaVA-1.5).
    """
    src_dir = Path(src)
    config_path = src_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} is missing; is {src} a transformers LLaVA directory?")
    model_type = json.loads(config_path.read_text()).get("model_type")
    if model_type != "llava":
        raise ValueError(f"{config_path} has model_type {model_type!r}; hf-llava converts model_type 'llava' only")
    config = LlavaConfig.from_pretrained(src_dir)
    _check_supported(config)
    chat_template = get_template(template)
    # Padding positions are masked out; unk never ends a turn, so it is the safest fallback.
    loaded_tokenizer = load_tokenizer(src_dir, tokenizer, lambda t: [t.unk_token, t.eos_token])

    model = _build_model(config)
    source = load_safetensors_dir(src_dir)
    target = model.state_dict()
    # transformers does not save an output embedding tied to the input one; fill it from there.
    tied = config.text_config.tie_word_embeddings and not any(key.endswith("lm_head.weight") for key in source)
    if tied:
        target = {key: value for key, value in target.items() if key != LM_HEAD}
    ignore = _ignored_source_keys(model, config.vision_config.num_hidden_layers)
    state = apply_key_mapping(source, KEY_RULES, target, ignore=ignore)
    if tied:
        state[LM_HEAD] = state[EMBEDDINGS]
    model.load_state_dict(state, strict=True, assign=True)

    model.processor = Processor(
        loaded_tokenizer, chat_template, model.encoder.image_spec, model.tokens_per_image, square="crop"
    )
    model.save_pretrained(dst)
    logger.info("converted %s -> %s (%d image tokens per image)", src, dst, model.tokens_per_image)
