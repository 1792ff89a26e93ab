"""`minivlm profile`: table, JSON and PNG; latency through generate; bad input fails in one line."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import tiny_vlm
from minivlm.cli import main
from minivlm.profiling import count_flops, measure_latency
from minivlm.profiling.inputs import synthetic_batch

ROOT = Path(__file__).resolve().parents[2]
SHAPES = str(ROOT / "recipes" / "tiny-shapes.yaml")
MINI = str(ROOT / "recipes" / "llava-mini" / "vicuna-7b" / "stage2.yaml")


def test_profile_writes_table_json_and_plot(tmp_path, capsys):
    out, png = tmp_path / "p.json", tmp_path / "p.png"
    main([
        "profile", "--config", SHAPES, "--compare", MINI, "--prompt-tokens", "12", "--sweep-tokens", "1", "4",
        "--latency-repeats", "1", "--json", str(out), "--plot", str(png),
    ])
    table = capsys.readouterr().out
    assert "llava-mini/vicuna-7b/stage2" in table and "not measured: float32 weights need" in table
    payload = json.loads(out.read_text())
    shapes, mini = payload["profiles"]
    assert [p["tokens_per_image"] for p in payload["sweep"]] == [1, 4]
    # The JSON holds the same counts as the Python API on the same recipe.
    from minivlm.profiling import build_from_recipe

    built = build_from_recipe(SHAPES)
    expected = count_flops(built.model.half(), prompt_tokens=12)
    assert shapes["flops"]["parts"] == expected.parts
    assert shapes["flops"]["prefill"] == sum(shapes["flops"]["parts"].values())
    assert shapes["latency"]["ttft_min_ms"] <= shapes["latency"]["ttft_ms"] <= shapes["latency"]["ttft_max_ms"]
    assert mini["latency"] is None and mini["memory"]["kv_bytes_per_token"] == 512 * 1024
    # More vision tokens cost more.
    assert payload["sweep"][1]["flops"]["prefill"] > payload["sweep"][0]["flops"]["prefill"]
    image = Image.open(png)
    assert image.size == (1040, 380)
    assert len(set(image.convert("RGB").getdata())) > 3  # axes, labels and coloured points drawn


def test_latency_is_measured_through_generate():
    model = tiny_vlm().eval()
    calls = []
    original = model.generate
    model.generate = lambda batch, max_new_tokens: calls.append(max_new_tokens) or original(batch, max_new_tokens)
    latency = measure_latency(model, synthetic_batch(model, 1, 5), repeats=3, warmup=1, decode_tokens=4)
    assert calls == [5] + [1, 5] * 3
    assert 0 < latency.ttft_min_ms <= latency.ttft_ms <= latency.ttft_max_ms
    assert latency.decode_min_ms <= latency.decode_max_ms
    with pytest.raises(ValueError, match="repeats"):
        measure_latency(model, synthetic_batch(model, 1, 5), repeats=0)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config", "recipes/no-such.yaml"], "recipes/no-such.yaml does not exist"),
        (["--config", SHAPES, "--sweep-tokens", "3"], "3 is not a square"),
        (["--config", str(ROOT / "recipes/llava-v1.5/vicuna-7b/finetune.yaml"), "--sweep-tokens", "4"], "no `size`"),
        (["--config", SHAPES, "--prompt-tokens", "0"], "prompt_tokens must be >= 1"),
        (["--compare", SHAPES], "config"),
    ],
    ids=["missing-file", "not-square", "no-size", "bad-prompt", "no-config"],
)
def test_bad_input_fails_with_one_line(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["profile", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("minivlm: error:") and message in err and "\n" not in err


def test_prompt_tokens_change_the_llm_and_prefusion_counts_only():
    model = tiny_vlm()
    short, long = count_flops(model, prompt_tokens=4), count_flops(model, prompt_tokens=9)
    for part in ("encoder", "compressor", "projector"):
        assert short.parts[part] == long.parts[part]
    assert long.parts["llm"] > short.parts["llm"] and long.parts["prefusion"] > short.parts["prefusion"]
    assert torch.is_grad_enabled()
