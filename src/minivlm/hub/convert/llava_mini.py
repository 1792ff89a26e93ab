"""`minivlm convert llava-mini`: the released LLaVA-Mini checkpoint (the layout of
`ICTNLP/llava-mini-llama-3.1-8b`, LLAVA_MINI.md §9) -> a minivlm model directory with release
semantics (QueryCompressor before the projector, pre-fused vision tokens)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
from transformers import CLIPVisionConfig, PretrainedConfig, PreTrainedTokenizerBase

from minivlm.compressors import QueryCompressor
from minivlm.processing.templates import get_template
from minivlm.encoders import HFVisionEncoder
from minivlm.fusion import DecoderPreFusion
from minivlm.hub.convert.common import apply_key_mapping, architecture_only, load_safetensors_dir, load_tokenizer
from minivlm.llms import HFLanguageModel
from minivlm.model import MiniVLM
from minivlm.processing import Processor
from minivlm.model.pretrained import resolve_directory
from minivlm.projectors import LinearProjector, MLPProjector

logger = logging.getLogger(__name__)

MODEL_TYPE = "llava_mini_llama"
REQUIRED_KEYS = (
    "mm_hidden_size", "mm_vision_select_layer", "mm_projector_type", "compressor_size", "prefusion_layer_num",
)
# Keys LLaVA / LLaVA-Mini add to the Llama config (besides every `mm_*` key).
LLAVA_KEYS = frozenset({
    "compressor_size", "prefusion_layer_num", "resolution_ratio", "image_aspect_ratio", "image_grid_pinpoints",
    "tokenizer_padding_side", "tokenizer_model_max_length", "tune_mm_mlp_adapter", "freeze_mm_mlp_adapter",
    "use_mm_proj", "unfreeze_mm_vision_tower",
})
RELEASE_HEADS = 8  # the release's compressor is an 8-head nn.MultiheadAttention
SHARD_VISION = "model.vision_tower.vision_tower.vision_model."
POS_EMBED = "model.compressor.pos_embed"
KEY_RULES = (
    (r"^model\.compressor\.", "compressor."),
    (r"^model\.mm_projector\.(\d+)\.", r"projector.layers.\1."),
    (r"^model\.mm_projector\.", "projector.linear."),
    (r"^model\.prefusion_layers\.", "prefusion.layers."),
    (r"^model\.(embed_tokens|layers|norm)\.", r"llm.model.model.\1."),
    (r"^lm_head\.", "llm.model.lm_head."),
)
# What the release's Llama-3.1 training pads with (`pad_token_id = 128004`).
RELEASE_PAD = "<|finetune_right_pad_id|>"


def _read_config(src: Path) -> dict[str, Any]:
    """config.json of `src`, checked to be LLaVA-Mini's and to ask for nothing minivlm lacks."""
    path = src / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; is {src} a LLaVA-Mini checkpoint directory?")
    config = json.loads(path.read_text())
    if config.get("model_type") != MODEL_TYPE:
        raise ValueError(f"{path} has model_type {config.get('model_type')!r}; llava-mini converts {MODEL_TYPE!r} only")
    missing = [key for key in REQUIRED_KEYS if key not in config]
    if missing:
        raise ValueError(f"{path} lacks the LLaVA-Mini keys {', '.join(missing)}")
    ratio = config.get("resolution_ratio", 1)
    if ratio != 1:
        raise NotImplementedError(
            f"resolution_ratio={ratio} (LLaVA-Mini-HD) is not supported yet; no HD checkpoint is public"
        )
    return config


def _drop_cls(select_feature: str) -> bool:
    if select_feature not in ("patch", "cls_patch"):
        raise NotImplementedError(
            f"mm_vision_select_feature={select_feature!r} is not supported; use 'patch' or 'cls_patch'"
        )
    return select_feature == "patch"


def _projector_depth(projector_type: str) -> int | None:
    """MLP depth for LLaVA's `mlp{n}x_gelu`, None for `linear`."""
    if projector_type == "linear":
        return None
    match = re.fullmatch(r"mlp(\d+)x_gelu", projector_type)
    if match is None:
        raise NotImplementedError(
            f"mm_projector_type={projector_type!r} is not supported; supported: 'linear', 'mlp<n>x_gelu'"
        )
    return int(match[1])


def _llama_config(config: dict[str, Any]) -> dict[str, Any]:
    """The Llama config inside LLaVA-Mini's: config.json without the LLaVA keys."""
    llama = {k: v for k, v in architecture_only(config).items() if not k.startswith("mm_") and k not in LLAVA_KEYS}
    return llama | {"model_type": "llama"}


def _vision_tower_dir(vision_tower: str | None, config: dict[str, Any], src: Path, in_shards: bool) -> Path:
    """The directory of the CLIP vision tower: `vision_tower` (a Hub id is downloaded, since it was
    asked for explicitly), else `mm_vision_tower` from config.json when that is a local directory."""
    if vision_tower is not None:
        return resolve_directory(vision_tower)
    default = config.get("mm_vision_tower")
    if default and Path(default).is_dir():
        return Path(default)
    needed = "its config" if in_shards else "its config and weights (they are not in the shards)"
    hint = f", or --vision_tower {default} to download it from the Hub" if default else ""
    raise FileNotFoundError(
        f"the vision tower {default!r} (mm_vision_tower in {src / 'config.json'}) is not a local directory and "
        f"{needed} are needed; pass --vision_tower with the directory of a CLIPVisionModel or CLIPModel{hint}"
    )


def _vision_config(tower: Path) -> tuple[dict[str, Any], bool]:
    """(the CLIP vision config as a dict, whether `tower` is a full CLIPModel)."""
    model_type = PretrainedConfig.get_config_dict(str(tower))[0].get("model_type")
    if model_type not in ("clip", "clip_vision_model"):
        raise ValueError(f"the vision tower {tower} has model_type {model_type!r}; LLaVA-Mini uses a CLIP vision tower")
    values = architecture_only(CLIPVisionConfig.from_pretrained(tower).to_dict())
    return values, model_type == "clip"


def _vision_drops(prefix: str, num_layers: int, kept: int) -> list[str]:
    """Regexes of the vision tensors the release never uses: layers after the feature layer and
    the post-LayerNorm (HFVisionEncoder removes both), and the fixed position-id buffer that old
    checkpoints stored."""
    prefix = re.escape(prefix)
    patterns = [rf"^{prefix}post_layernorm\.", rf"^{prefix}embeddings\.position_ids$"]
    if kept < num_layers:
        patterns.append(rf"^{prefix}encoder\.layers\.(?:{'|'.join(str(i) for i in range(kept, num_layers))})\.")
    return patterns


def _fit_pos_embed(source: dict[str, torch.Tensor], shape: torch.Size) -> None:
    """The release stores the compressor's sin-cos table as (1, C², D); ours is (C², D)."""
    if POS_EMBED not in source or source[POS_EMBED].shape == shape:
        return  # a missing table is reported by the strict mapping
    theirs = tuple(source[POS_EMBED].shape)
    if theirs != (1, *shape):
        raise ValueError(f"{POS_EMBED} has shape {theirs}; the compressor needs {tuple(shape)} (or (1, *that))")
    source[POS_EMBED] = source[POS_EMBED].reshape(shape)


def _release_pad_candidates(tokenizer: PreTrainedTokenizerBase) -> list[str | None]:
    """The release's Llama-3.1 pad if the vocabulary has it, else id 0 (what its inference pads with), else eos."""
    release_pad = RELEASE_PAD if RELEASE_PAD in tokenizer.get_vocab() else None
    return [release_pad, tokenizer.convert_ids_to_tokens(0), tokenizer.eos_token]


def convert_llava_mini(src: str, dst: str, vision_tower: str | None = None, tokenizer: str | None = None) -> None:
    """Convert a released LLaVA-Mini checkpoint (model_type llava_mini_llama) into a minivlm model directory.

    The result uses release semantics: HFVisionEncoder, QueryCompressor(semantics="release") before
    the projector, MLPProjector, DecoderPreFusion and HFLanguageModel, with the pre-fusion outputs at
    the compressed slots as the vision tokens; it loads with `MiniVLM.from_pretrained(dst)`. Strict:
    every source tensor is used and every model tensor filled, except the vision layers after
    `mm_vision_select_layer`, CLIP's post-LayerNorm and, for a full CLIPModel, its non-vision parts.

    Args:
        src: Directory of the checkpoint (config.json, safetensors shards with
            model.safetensors.index.json or a single model.safetensors, tokenizer files).
        dst: Directory to write the minivlm model to (created if missing).
        vision_tower: Directory (or Hub id, then downloaded) of the CLIP vision tower
            (CLIPVisionModel or CLIPModel); it provides the vision config, and the vision weights
            when the shards lack them. Defaults to mm_vision_tower from config.json if that is a
            local directory.
        tokenizer: Hub id or path of the tokenizer; defaults to the tokenizer files in `src`.
    """
    src_dir = Path(src)
    config = _read_config(src_dir)
    drop_cls = _drop_cls(config.get("mm_vision_select_feature", "patch"))
    depth = _projector_depth(config["mm_projector_type"])
    loaded_tokenizer = load_tokenizer(src_dir, tokenizer, _release_pad_candidates)
    if config.get("image_aspect_ratio") == "pad":
        logger.warning("the release pads images to squares (image_aspect_ratio 'pad'); minivlm resizes them, so "
                       "pad non-square images yourself for exact parity")

    source = load_safetensors_dir(src_dir)
    in_shards = any(key.startswith(SHARD_VISION) for key in source)
    tower = _vision_tower_dir(vision_tower, config, src_dir, in_shards)
    vision_config, full_clip = _vision_config(tower)

    width, llm_width = config["mm_hidden_size"], config["hidden_size"]
    # Every weight comes from the checkpoint, so the parts are built on the meta device.
    with torch.device("meta"):
        model = MiniVLM(
            encoder=HFVisionEncoder(
                config=vision_config, select_layer=config["mm_vision_select_layer"], drop_cls=drop_cls
            ),
            compressor=QueryCompressor(width, config["compressor_size"], semantics="release", num_heads=RELEASE_HEADS),
            projector=LinearProjector(width, llm_width) if depth is None else MLPProjector(width, llm_width, depth),
            prefusion=DecoderPreFusion(num_layers=config["prefusion_layer_num"]),
            llm=HFLanguageModel(config=_llama_config(config)),
            vision_tokens="prefused",
        )
    target = model.state_dict()
    _fit_pos_embed(source, target["compressor.pos_embed"].shape)
    num_layers, kept = vision_config["num_hidden_layers"], len(model.encoder.vision_model.encoder.layers)
    if in_shards:
        rules = (*KEY_RULES, (rf"^{re.escape(SHARD_VISION)}", "encoder.vision_model."))
        state = apply_key_mapping(source, rules, target, ignore=_vision_drops(SHARD_VISION, num_layers, kept))
    else:
        vision_target = {key: value for key, value in target.items() if key.startswith("encoder.")}
        rest = {key: value for key, value in target.items() if not key.startswith("encoder.")}
        state = apply_key_mapping(source, KEY_RULES, rest)
        tower_tensors = load_safetensors_dir(tower)
        # transformers 4 saves CLIP's vision part under `vision_model.`; a 5.x CLIPVisionModel has no prefix.
        prefix = "vision_model." if any(key.startswith("vision_model.") for key in tower_tensors) else ""
        drops = _vision_drops(prefix, num_layers, kept) + ([r"^(?!vision_model\.)"] if full_clip else [])
        rules = ((rf"^{re.escape(prefix)}", "encoder.vision_model."),)
        state |= apply_key_mapping(tower_tensors, rules, vision_target, ignore=drops)
    model.load_state_dict(state, strict=True, assign=True)

    template = get_template("llama3")
    model.processor = Processor(
        loaded_tokenizer, template, model.encoder.image_spec, model.tokens_per_image, square="pad"
    )
    model.save_pretrained(dst)
    logger.info("converted %s -> %s (%d tokens per image)", src, dst, model.tokens_per_image)
