"""Loading a ~200 M-parameter model costs about its weights in memory, measured in a fresh process."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

from conftest import tiny_encoder
from minivlm import HFLanguageModel, MiniVLM, MLPProjector, NoPreFusion, QueryCompressor
from minivlm.model import pretrained
from minivlm.model.weights import WEIGHTS_FILE, empty_parameters

LLM = dict(model_type="llama", vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=12,
           num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=512)

MEASURE = """
import json, sys, torch
from minivlm import MiniVLM

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

before = status("VmRSS")
model = MiniVLM.from_pretrained(sys.argv[1])
print(json.dumps({"before": before, "peak": status("VmHWM"),
                  "dtypes": sorted({str(p.dtype) for p in model.parameters()}),
                  "params": sum(p.numel() for p in model.parameters())}))
"""


def write_zero_model(directory: Path) -> int:
    """A model directory whose bf16 weights are all zero, written as a sparse file (no memory, no time)."""
    with empty_parameters():
        model = MiniVLM(tiny_encoder(), QueryCompressor(dim=32, size=1, num_heads=4), MLPProjector(32, 1024), NoPreFusion(),
                        HFLanguageModel(config=LLM))
    directory.mkdir()
    pretrained.write_config(directory, {n: getattr(model, n) for n in pretrained.PART_NAMES}, {})
    header, offset = {}, 0
    for name, tensor in model.state_dict().items():
        size = tensor.numel() * 2
        header[name] = {"dtype": "BF16", "shape": list(tensor.shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header).encode()
    with (directory / WEIGHTS_FILE).open("wb") as file:
        file.write(struct.pack("<Q", len(encoded)) + encoded)
        file.truncate(8 + len(encoded) + offset)
    return offset


def test_peak_memory_of_from_pretrained_stays_within_1_3x_the_weights(tmp_path):
    weights = write_zero_model(tmp_path / "big")
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, str(tmp_path / "big")], capture_output=True, text=True, env=os.environ, check=True
    )
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    assert measured["params"] > 190_000_000 and measured["dtypes"] == ["torch.bfloat16"]
    # An fp32 detour or a second copy of the weights would need >= 2x.
    assert measured["peak"] - measured["before"] <= 1.3 * weights, (measured, weights)
