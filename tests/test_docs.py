"""The Python examples in docs/ run as written and do what the page says."""

import re
from pathlib import Path

import torch

DOCS = Path(__file__).resolve().parents[1] / "docs"


def run_python_blocks(page: str) -> dict:
    namespace: dict = {}
    for block in re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), re.S):
        exec(compile(block, f"docs/{page}", "exec"), namespace)
    return namespace


def test_model_page_example_trains_generates_saves_and_loads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the page saves to ./my-model
    ns = run_python_blocks("model.md")
    assert torch.isfinite(ns["out"].loss)
    assert ns["model"].tokens_per_image == 1
    assert ns["tokens"].shape[0] == 1 and 1 <= ns["tokens"].shape[1] <= 4
    assert all(p.grad is not None for p in ns["model"].compressor.parameters())
    assert (tmp_path / "my-model" / "model.safetensors").is_file()
    with torch.no_grad():
        assert torch.equal(ns["same"](ns["batch"]).logits, ns["model"](ns["batch"]).logits)


def test_parts_page_compressor_plugs_into_minivlm():
    ns = run_python_blocks("parts.md")
    from conftest import VISION, WIDTH, tiny_encoder, tiny_llm_config
    from minivlm import HFLanguageModel, MiniVLM, MLPProjector, NoPreFusion

    compressor = ns["MaxPoolCompressor"](dim=WIDTH)
    features = torch.randn(2, 16, WIDTH)
    assert torch.equal(compressor(features, (4, 4)).tokens[:, 0], features.amax(dim=1))
    model = MiniVLM(tiny_encoder(), compressor, MLPProjector(VISION, WIDTH), NoPreFusion(),
                    HFLanguageModel(config=tiny_llm_config()))
    assert model.tokens_per_image == 1


def test_media_page_example_builds_a_mixed_batch():
    from conftest import shapes_processor, tiny_vlm

    ns = run_python_blocks("media.md")
    model = tiny_vlm()
    batch = shapes_processor(model)(ns["conversations"], ns["media"])
    assert batch.kinds == ("video", "image", "image") and batch.media_passes.tolist() == [8, 1, 1]
    out = model(batch)
    assert torch.isfinite(out.loss)
    assert out.logits.shape[0] == 3


def test_conversations_page_labels_only_the_answer_and_its_end(capsys):
    ns = run_python_blocks("conversations.md")
    assert capsys.readouterr().out.strip() == "['yes', '<|end|>']"
    assert ns["processor"].square == "pad" and ns["processor"].max_length == 32
