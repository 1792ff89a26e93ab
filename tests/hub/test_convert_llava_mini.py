"""`minivlm convert llava-mini` on tiny checkpoints written in the release's layout (LLAVA_MINI.md §9)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModel, PreTrainedTokenizerFast

from conftest import VISION, WIDTH, tiny_llm_config
from minivlm.cli import main
from minivlm.compressors import QueryCompressor
from minivlm.processing.templates import Turn
from minivlm.fusion import DecoderPreFusion
from minivlm.hub.convert.llava_mini import convert_llava_mini
from minivlm.llms import HFLanguageModel
from minivlm.model import MiniVLM
from minivlm.projectors import MLPProjector

TOWER_CONFIG = dict(
    hidden_size=VISION, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8
)
SHARD_VISION = "model.vision_tower.vision_tower.vision_model."
# Our part prefixes -> the release's parameter names.
RELEASE_NAMES = (
    ("compressor.", "model.compressor."),
    ("projector.layers.", "model.mm_projector."),
    ("prefusion.layers.", "model.prefusion_layers."),
    ("llm.model.model.", "model."),
    ("llm.model.lm_head.", "lm_head."),
)
QA = [Turn("user", "<image>\nwhat is in the image ?"), Turn("assistant", "a red circle")]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level stand-in for the Llama-3.1 tokenizer: its special tokens, no pad, "!" at id 0."""
    special = ["!", "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<unk>"]
    words = "system user assistant what is in the image ? a red circle".split()
    backend = Tokenizer(models.WordLevel({t: i for i, t in enumerate(special + words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
        additional_special_tokens=["<|start_header_id|>", "<|end_header_id|>"],
    )


def write_tower(path: Path, full_clip: bool = False) -> dict[str, torch.Tensor]:
    """A CLIP vision tower directory (a CLIPVisionModel, or a full CLIPModel); returns its tensors."""
    if full_clip:
        text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, vocab_size=50,
                    bos_token_id=0, eos_token_id=1)
        CLIPModel(CLIPConfig(vision_config=TOWER_CONFIG, text_config=text, projection_dim=16)).save_pretrained(path)
    else:
        CLIPVisionModel(CLIPVisionConfig(**TOWER_CONFIG)).save_pretrained(path)
    return load_file(path / "model.safetensors")


def release_parts(size: int) -> dict[str, torch.Tensor]:
    """Random compressor, projector, pre-fusion and LLM weights under our names (every tensor distinct)."""
    llm = HFLanguageModel(config=tiny_llm_config())
    prefusion = DecoderPreFusion(num_layers=2)
    prefusion.attach(llm)
    parts = {"compressor": QueryCompressor(VISION, size, num_heads=8), "projector": MLPProjector(VISION, WIDTH),
             "prefusion": prefusion, "llm": llm}
    state = {}
    for name, part in parts.items():
        for key, value in part.state_dict().items():
            # The sin-cos table is fixed; every learned tensor gets its own random values.
            state[f"{name}.{key}"] = value if key == "pos_embed" else torch.randn_like(value) * 0.1
    return state


def to_release(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    renamed = {}
    for key, value in state.items():
        ours, theirs = next((o, t) for o, t in RELEASE_NAMES if key.startswith(o))
        renamed[theirs + key.removeprefix(ours)] = value.unsqueeze(0) if key.endswith("pos_embed") else value
    return renamed


def write_release(
    src: Path, tensors: dict[str, torch.Tensor], tower: str, sharded: bool = True, **overrides
) -> None:
    """config.json (Llama fields + the §9 keys), safetensors (two shards + index, or one file), tokenizer."""
    src.mkdir(parents=True)
    config = {k: v for k, v in tiny_llm_config().items() if k != "model_type"} | dict(
        model_type="llava_mini_llama", architectures=["LlavaMiniLlamaForCausalLM"], torch_dtype="bfloat16",
        mm_vision_tower=tower, mm_vision_select_layer=-2, mm_vision_select_feature="patch",
        mm_projector_type="mlp2x_gelu", mm_hidden_size=VISION, compressor_size=1, prefusion_layer_num=2,
        resolution_ratio=1, image_aspect_ratio="pad", tune_mm_mlp_adapter=False, mm_use_im_start_end=False,
    ) | overrides
    (src / "config.json").write_text(json.dumps(config))
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    if sharded:
        keys = sorted(tensors)
        files = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
        for name, shard in files.items():
            save_file({k: tensors[k] for k in shard}, src / name)
        weight_map = {k: name for name, shard in files.items() for k in shard}
        (src / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    else:
        save_file(tensors, src / "model.safetensors")
    tiny_tokenizer().save_pretrained(src)


def check_vision(model: MiniVLM, tower: dict[str, torch.Tensor], prefix: str = "") -> None:
    """Every kept vision tensor equals the tower's; layer 1 (past select_layer -2) is gone."""
    converted = {k.removeprefix("encoder.vision_model."): v for k, v in model.state_dict().items()
                 if k.startswith("encoder.")}
    assert len(model.encoder.vision_model.encoder.layers) == 1
    assert converted and all(torch.equal(v, tower[prefix + k]) for k, v in converted.items())


def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)


@pytest.mark.parametrize("size", [1, 2])
def test_release_layout_converts_strictly_and_runs(tmp_path, size):
    tower = write_tower(tmp_path / "tower")
    ours = release_parts(size)
    source = to_release(ours) | {SHARD_VISION + k: v for k, v in tower.items()}
    write_release(tmp_path / "src", source, "openai/clip-vit-large-patch14-336", compressor_size=size)

    src, dst, tower_dir = (str(tmp_path / name) for name in ("src", "dst", "tower"))
    main(["convert", "llava-mini", src, dst, "--vision_tower", tower_dir])
    model = MiniVLM.from_pretrained(tmp_path / "dst")

    converted = model.state_dict()
    assert all(torch.equal(converted[k], v) for k, v in ours.items())
    assert torch.equal(converted["compressor.query"], source["model.compressor.query"])
    assert torch.equal(converted["prefusion.layers.1.mlp.down_proj.weight"],
                       source["model.prefusion_layers.1.mlp.down_proj.weight"])
    check_vision(model, tower)
    assert model.vision_tokens == "prefused" and model.compressor.semantics == "release"
    assert model.tokens_per_image == size * size and model.compressor.num_heads == 8
    processor = model.processor
    assert processor.template.name == "llama3" and processor.tokenizer.pad_token_id == 0

    out = model(processor([QA], [[image()]]))
    assert torch.isfinite(out.loss)
    prompt = processor([QA[:1]], [[image()]], add_generation_prompt=True)
    tokens = model.generate(prompt, max_new_tokens=3, eos_token_id=processor.eos_token_id)
    assert tokens.shape[0] == 1 and 1 <= tokens.shape[1] <= 3


def test_missing_and_extra_tensors_are_named(tmp_path):
    tower = write_tower(tmp_path / "tower")
    source = to_release(release_parts(1)) | {SHARD_VISION + k: v for k, v in tower.items()}
    missing = "model.prefusion_layers.1.mlp.down_proj.weight"
    write_release(tmp_path / "a", {k: v for k, v in source.items() if k != missing}, str(tmp_path / "tower"))
    with pytest.raises(ValueError, match=r"unfilled target tensors: prefusion\.layers\.1\.mlp\.down_proj\.weight"):
        convert_llava_mini(str(tmp_path / "a"), str(tmp_path / "out"))
    write_release(tmp_path / "b", source | {"model.extra.weight": torch.zeros(2)}, str(tmp_path / "tower"))
    with pytest.raises(ValueError, match=r"unused source tensors: model\.extra\.weight"):
        convert_llava_mini(str(tmp_path / "b"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("full_clip", [False, True])
def test_vision_weights_come_from_the_tower_directory(tmp_path, full_clip):
    tower = write_tower(tmp_path / "tower", full_clip)
    # No vision tensors in the checkpoint: mm_vision_tower (a local directory here) supplies them.
    write_release(tmp_path / "src", to_release(release_parts(1)), str(tmp_path / "tower"), sharded=False)
    convert_llava_mini(str(tmp_path / "src"), str(tmp_path / "dst"))
    model = MiniVLM.from_pretrained(tmp_path / "dst")
    check_vision(model, tower, prefix="vision_model." if full_clip else "")


def test_an_unreachable_vision_tower_asks_for_the_option(tmp_path):
    source = to_release(release_parts(1))
    write_release(tmp_path / "src", source, "openai/clip-vit-large-patch14-336")
    with pytest.raises(FileNotFoundError, match="pass --vision_tower"):
        convert_llava_mini(str(tmp_path / "src"), str(tmp_path / "dst"))


@pytest.mark.parametrize(
    ("override", "message"),
    [({"mm_projector_type": "identity"}, "'identity'"), ({"resolution_ratio": 2}, "resolution_ratio=2"),
     ({"mm_vision_select_feature": "cls"}, "'cls'")],
)
def test_unsupported_settings_raise_naming_the_value(tmp_path, override, message):
    write_release(tmp_path / "src", {"lm_head.weight": torch.zeros(64, WIDTH)}, str(tmp_path / "tower"), **override)
    with pytest.raises(NotImplementedError, match=message):
        convert_llava_mini(str(tmp_path / "src"), str(tmp_path / "dst"))
