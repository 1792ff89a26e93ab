"""`minivlm convert hf-llava`: a transformers LLaVA checkpoint becomes a MiniVLM that computes the
same logits and generates the same tokens; anything that does not map is an error naming it."""

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import LlavaConfig, LlavaForConditionalGeneration

from minivlm.cli import main
from minivlm.data.synthetic import build_shapes_tokenizer
from minivlm.processing.templates import Turn
from minivlm.hub.convert.common import load_safetensors_dir
from minivlm.hub.convert.hf_llava import convert_hf_llava
from minivlm.model import MiniVLM
from minivlm.processing.batch import PLACEHOLDER_ID

IMAGE_TOKEN = 63  # inside the LLM's 64-entry vocabulary, as transformers' LLaVA requires
TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8)
TEXT = dict(vocab_size=64, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256)
# LLaVA-1.5 (CLIP, CLS dropped, second-to-last layer, untied Llama) and the llava-interleave
# kind (SigLIP, every patch, last layer, Qwen2 with tied embeddings).
CASES = {
    "clip-llama": dict(
        vision_config=dict(model_type="clip_vision_model", **TOWER), text_config=dict(model_type="llama", **TEXT),
        vision_feature_layer=-2, vision_feature_select_strategy="default",
    ),
    "siglip-qwen2-tied": dict(
        vision_config=dict(model_type="siglip_vision_model", **TOWER),
        text_config=dict(model_type="qwen2", tie_word_embeddings=True, **TEXT),
        vision_feature_layer=-1, vision_feature_select_strategy="full",
    ),
}
DROPPED = {
    "clip-llama": ["vision_tower.encoder.layers.1.mlp.fc1.weight", "vision_tower.post_layernorm.weight"],
    "siglip-qwen2-tied": ["vision_tower.head.probe", "vision_tower.post_layernorm.weight"],
}


def save_llava(directory: Path, case: str) -> LlavaForConditionalGeneration:
    """A tiny random LLaVA saved as transformers does, sharded, with a tokenizer that has no pad token."""
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(LlavaConfig(image_token_index=IMAGE_TOKEN, **CASES[case])).eval()
    model.save_pretrained(directory, max_shard_size="50KB")
    tokenizer = build_shapes_tokenizer()
    tokenizer.pad_token = None
    tokenizer.save_pretrained(directory)
    return model


@pytest.fixture(scope="module")
def clip_llama_src(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("hf_llava") / "src"
    save_llava(directory, "clip-llama")
    return directory


@pytest.mark.parametrize("case", CASES)
def test_converted_model_matches_transformers_logits_and_generation(case, tmp_path, caplog):
    hf = save_llava(tmp_path / "src", case)
    assert (tmp_path / "src" / "model.safetensors.index.json").is_file()
    with caplog.at_level(logging.INFO, logger="minivlm.hub.convert"):
        main(["convert", "hf-llava", str(tmp_path / "src"), str(tmp_path / "dst"), "--template", "shapes"])
    assert "no pad token; padding with '<unk>'" in caplog.text
    assert all(key in caplog.text for key in DROPPED[case])

    model = MiniVLM.from_pretrained(tmp_path / "dst").eval()
    processor = model.processor
    assert processor.template.name == "shapes" and processor.tokenizer.pad_token == "<unk>"
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    batch = processor([[Turn("user", "<image> What colour is the shape at the top left ?")]], [[image]],
                      add_generation_prompt=True)
    ids = batch.input_ids[0].tolist()
    at = ids.index(PLACEHOLDER_ID)
    hf_ids = torch.tensor([ids[:at] + [IMAGE_TOKEN] * model.tokens_per_image + ids[at + 1:]])
    pixels = model.encoder_input(batch.pixel_values)  # normalised as transformers' processor does
    with torch.no_grad():
        expected = hf(input_ids=hf_ids, pixel_values=pixels).logits
        logits = model(batch).logits
    assert logits.shape == expected.shape
    assert (logits - expected).abs().max() <= 1e-4

    hf_tokens = hf.generate(input_ids=hf_ids, pixel_values=pixels, attention_mask=torch.ones_like(hf_ids),
                            do_sample=False, max_new_tokens=5)[:, hf_ids.shape[1]:]
    tokens = model.generate(batch, max_new_tokens=5, eos_token_id=hf.generation_config.eos_token_id)
    assert tokens.tolist() == hf_tokens.tolist()


# Older on-disk names of the same tensors: transformers 4.x before 4.52 (the llava-hf Hub repos)
# and 4.52+ (the in-memory names, written as they are).
LAYOUTS = {
    "transformers<4.52": (("vision_tower.", "vision_tower.vision_model."),),
    "transformers>=4.52": (
        ("vision_tower.", "model.vision_tower.vision_model."), ("multi_modal_projector.", "model.multi_modal_projector."),
        ("language_model.model.", "model.language_model."), ("language_model.lm_head.", "lm_head."),
    ),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_older_key_layouts_convert_to_the_same_weights(clip_llama_src, tmp_path, layout):
    src = shutil.copytree(clip_llama_src, tmp_path / "src", ignore=shutil.ignore_patterns("model*.safetensors*"))
    renamed = {}
    for key, tensor in load_safetensors_dir(clip_llama_src).items():
        old, new = next(((old, new) for old, new in LAYOUTS[layout] if key.startswith(old)), ("", ""))
        renamed[new + key.removeprefix(old)] = tensor
    save_file(renamed, src / "model.safetensors", metadata={"format": "pt"})
    convert_hf_llava(str(clip_llama_src), str(tmp_path / "reference"))
    convert_hf_llava(str(src), str(tmp_path / "dst"))
    reference = load_file(tmp_path / "reference" / "model.safetensors")
    converted = load_file(tmp_path / "dst" / "model.safetensors")
    assert converted.keys() == reference.keys()
    assert all(torch.equal(converted[key], reference[key]) for key in reference)


def edit_tensors(directory: Path, shard_of: str, edit) -> None:
    """Applies `edit` to the tensors of the shard that holds the tensor named `shard_of`."""
    weight_map = json.loads((directory / "model.safetensors.index.json").read_text())["weight_map"]
    path = directory / weight_map[shard_of]
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.pop("language_model.model.norm.weight"), "unfilled target tensors: llm.model.model.norm.weight"),
        (lambda t: t.update({"multi_modal_projector.linear_3.weight": torch.zeros(2)}),
         "unused source tensors: multi_modal_projector.linear_3.weight"),
    ],
    ids=["missing", "extra"],
)
def test_missing_or_extra_source_tensor_is_named(clip_llama_src, tmp_path, edit, message):
    src = shutil.copytree(clip_llama_src, tmp_path / "src")
    edit_tensors(src, "language_model.model.norm.weight", edit)
    with pytest.raises(ValueError, match=message):
        convert_hf_llava(str(src), str(tmp_path / "dst"))
    assert not (tmp_path / "dst").exists()


@pytest.mark.parametrize(
    "setting, value, message",
    [
        ("projector_hidden_act", "relu", "projector_hidden_act='relu'"),
        ("multimodal_projector_bias", False, "multimodal_projector_bias=False"),
        ("vision_feature_layer", [-2, -1], r"vision_feature_layer=\[-2, -1\]"),
        ("vision_feature_select_strategy", "full", "vision_feature_select_strategy='full' .* clip_vision_model"),
    ],
)
def test_unsupported_setting_is_named(clip_llama_src, tmp_path, setting, value, message):
    src = shutil.copytree(clip_llama_src, tmp_path / "src")
    config = json.loads((src / "config.json").read_text()) | {setting: value}
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(NotImplementedError, match=message):
        convert_hf_llava(str(src), str(tmp_path / "dst"))


def test_missing_weights_or_tokenizer_are_named(clip_llama_src, tmp_path):
    src = shutil.copytree(clip_llama_src, tmp_path / "src")
    shard = json.loads((src / "model.safetensors.index.json").read_text())["weight_map"]["language_model.lm_head.weight"]
    (src / shard).unlink()
    with pytest.raises(FileNotFoundError, match=shard):
        load_safetensors_dir(src)
    (src / "model.safetensors.index.json").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors is missing"):
        load_safetensors_dir(src)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (src / name).unlink()
    with pytest.raises(FileNotFoundError, match="has no tokenizer files"):
        convert_hf_llava(str(src), str(tmp_path / "dst"))


def test_convert_help_lists_both_converters(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "hf-llava" in out and "llava-mini" in out
