"""fit -> export -> from_pretrained in a fresh process: the same model, bit for bit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from minivlm.cli import main
from minivlm.data.synthetic import ShapesTask
from minivlm.hub.export import ExportInfo, export_model
from minivlm.model import MiniVLM
from minivlm.model.weights import WEIGHTS_FILE, read_header
from minivlm.processing.templates import Turn
from minivlm.training.checkpoint import load_trained_model

# One source for the batch, used here and by the fresh interpreter below (hence a string).
FIXED_BATCH = """
def fixed_batch(processor):
    task = ShapesTask(image_size=32, seed=5)
    samples = [task.sample(0), task.sample(1)]
    conversations = [[Turn("user", f"<image> {s.question}"), Turn("assistant", s.answer)] for s in samples]
    return processor(conversations, [[s.image] for s in samples])
"""
exec(FIXED_BATCH)

# Runs in a fresh interpreter that never imports Lightning: only what a user of the directory needs.
LOGITS = """
import sys, torch
from safetensors.torch import save_file
from minivlm.data.synthetic import ShapesTask
from minivlm.model import MiniVLM
from minivlm.processing.templates import Turn
""" + FIXED_BATCH + """
assert "lightning" not in sys.modules
model = MiniVLM.from_pretrained(sys.argv[1])
with torch.no_grad():
    logits = model(fixed_batch(model.processor)).logits
save_file({"logits": logits.contiguous()}, sys.argv[2])
"""


def export(*args: str) -> None:
    """`minivlm export ARGS`, in this process (the command-line path, without a second interpreter start)."""
    main(["export", *args])


def logits_in_fresh_process(directory: Path, tmp_path: Path) -> dict[str, torch.Tensor]:
    out = tmp_path / "logits.safetensors"
    subprocess.run([sys.executable, "-c", LOGITS, str(directory), str(out)], check=True, env=os.environ)
    return load_file(out)


def test_export_then_from_pretrained_in_a_fresh_process_is_bit_exact(run, tmp_path):
    checkpoint = run / "checkpoints" / "last.ckpt"
    export("--checkpoint", str(checkpoint), "--out", str(tmp_path / "model"))
    files = sorted(p.name for p in (tmp_path / "model").iterdir())
    assert files == ["README.md", "config.json", "model.safetensors", "processor.json", "recipe.yaml",
                     "tokenizer.json", "tokenizer_config.json"]
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["minivlm_version"] == "0.1.0"
    assert config["compressor"]["class_path"] == "minivlm.compressors.query.QueryCompressor"
    assert yaml.safe_load((tmp_path / "model" / "recipe.yaml").read_text())["trainer"]["max_steps"] == 2
    card = (tmp_path / "model" / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "minivlm" and front["vision_tokens_per_image"] == 1
    assert front["training_steps"] == 2 and front["trained_parts"] == ["encoder", "compressor", "projector", "prefusion", "llm"]
    assert "MiniVLM.from_pretrained" in card

    trained = load_trained_model(checkpoint).model
    with torch.no_grad():
        expected = trained(fixed_batch(trained.processor)).logits
    assert torch.equal(logits_in_fresh_process(tmp_path / "model", tmp_path)["logits"], expected)


def test_bf16_export_stores_and_loads_bf16(run, tmp_path):
    export("--checkpoint", str(run / "checkpoints" / "last.ckpt"), "--out", str(tmp_path / "m"), "--dtype", "bf16")
    header, _ = read_header(tmp_path / "m" / WEIGHTS_FILE)
    assert {v["dtype"] for v in header.values()} == {"BF16"}
    loaded = MiniVLM.from_pretrained(tmp_path / "m")
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    trained = load_trained_model(run / "checkpoints" / "last.ckpt").model
    assert all(torch.equal(p, trained.get_parameter(n).to(torch.bfloat16)) for n, p in loaded.named_parameters())


def test_merged_lora_export_matches_the_unmerged_model(run, tmp_path):
    from peft import LoraConfig, inject_adapter_in_model

    model = load_trained_model(run / "checkpoints" / "last.ckpt").model
    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    inject_adapter_in_model(lora, model.llm.model)
    batch = fixed_batch(model.processor)
    with torch.no_grad():
        unmerged = model(batch).logits
    with pytest.raises(ValueError, match="has LoRA adapters; export with --merge-lora"):
        export_model(model, tmp_path / "refused")
    export_model(model, tmp_path / "merged", ExportInfo(), merge_lora_adapters=True)
    loaded = MiniVLM.from_pretrained(tmp_path / "merged")
    with torch.no_grad():
        merged = loaded(batch).logits
    assert (merged - unmerged).abs().max() <= 1e-5
    base = load_trained_model(run / "checkpoints" / "last.ckpt").model
    with torch.no_grad():
        assert (base(batch).logits - unmerged).abs().max() > 1e-3  # the adapters did change the model
    with pytest.raises(ValueError, match="no LoRA adapters"):
        export_model(base, tmp_path / "none", merge_lora_adapters=True)


def test_export_without_a_recipe_names_where_it_looked(run, tmp_path, capsys):
    checkpoint = tmp_path / "lonely.ckpt"
    checkpoint.write_bytes((run / "checkpoints" / "last.ckpt").read_bytes())
    (tmp_path / "sub").mkdir()
    moved = tmp_path / "sub" / "lonely.ckpt"
    checkpoint.rename(moved)
    with pytest.raises(SystemExit) as exit_info:
        export("--checkpoint", str(moved), "--out", str(tmp_path / "m"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("minivlm export: error: no config.yaml found above") and "--recipe" in err
    assert not (tmp_path / "m").exists()


def test_model_card_names_the_base_models_of_the_recipe(run):
    from minivlm.hub.export import base_models, model_card

    recipe = {"model": {"encoder": {"init_args": {"pretrained": "openai/clip-vit-large-patch14-336"}},
                        "llm": {"init_args": {"pretrained": "lmsys/vicuna-7b-v1.5"}},
                        "projector": {"init_args": {"in_dim": 4}}}}
    assert base_models(recipe) == ["openai/clip-vit-large-patch14-336", "lmsys/vicuna-7b-v1.5"]
    model = load_trained_model(run / "checkpoints" / "last.ckpt").model
    card = model_card(model, ExportInfo(recipe=yaml.safe_dump(recipe), trained_parts=["projector"], global_step=7))
    front = yaml.safe_load(card.split("---")[1])
    assert front["base_model"] == base_models(recipe) and front["trained_parts"] == ["projector"]
    assert "flops_per_image" not in front  # only when the profiler measured it
