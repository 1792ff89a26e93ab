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


def test_data_page_converts_streams_and_counts_bad_records(tmp_path, monkeypatch):
    import json
    import os
    import subprocess
    import sys

    import yaml

    import minivlm
    from minivlm.data.llava import LlavaDataModule

    # The command must run this checkout's minivlm from the temp dir the page works in.
    source = str(Path(minivlm.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([source, os.environ.get("PYTHONPATH", "")])}
    monkeypatch.chdir(tmp_path)  # the page writes ./llava-data and ./llava-shards
    page = (DOCS / "data.md").read_text()
    namespace: dict = {}
    # Python and shell blocks run in page order: make data, convert it, stream it.
    for kind, block in re.findall(r"```(python|bash)\n(.*?)```", page, re.S):
        if kind == "python":
            exec(compile(block, "docs/data.md", "exec"), namespace)
            continue
        command = block.replace("\\\n", " ").split()
        assert command[0] == "minivlm"
        result = subprocess.run([sys.executable, "-m", "minivlm", *command[1:]], capture_output=True, text=True, env=env)
        assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "llava-shards" / "manifest.json").read_text())
    assert manifest["skipped"] == {"missing_media": 1} and manifest["samples"] == 42
    assert [s["samples"] for s in manifest["shards"]] == [16, 16, 10]
    # Videos were stored as frames at 2 fps: 3 s -> 6 frames.
    videos = [b for b in namespace["batches"] if "video" in (b.batch.media_kinds or ())]
    assert videos and all(p == 6 for b in videos for p, k in zip(b.batch.media_passes.tolist(), b.batch.media_kinds)
                          if k == "video")
    assert len(namespace["streamed"]) == 21 and len(namespace["batches"]) == len(namespace["rank0"])
    assert [(s.id, s.reason) for s in namespace["skipped"]] == [("broken", "missing_media")]
    # The recipe snippet names real LlavaDataModule arguments.
    recipe = yaml.safe_load(re.search(r"```yaml\n(.*?)```", page, re.S).group(1))
    assert recipe["data"]["class_path"] == "minivlm.data.llava.LlavaDataModule"
    module = LlavaDataModule(**recipe["data"]["init_args"])
    assert module.shards == ["/data/llava-665k-shards"] and module.options.num_frames == 8
