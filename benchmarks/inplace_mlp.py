"""The vision tower and pre-fusion of `latency.py`'s Mini model with minivlm's in-place MLPs
against the same weights with the transformers MLP classes, alternating in one process, at
inference (no autograd).

    .venv/bin/python benchmarks/inplace_mlp.py [--repeats 15] [--threads 1] [--prime]

Each row: median and minimum CPU milliseconds per call (the process's CPU time, all threads)
and median minor page faults per call. `--prime` first allocates and frees 28 MB, which raises
glibc's thresholds for returning freed memory to the system the way `latency.py`'s FLOP count
(eager attention over 617 tokens) does; without it the process starts as a fresh one.
Outputs of both variants are checked equal. Writes benchmarks/results/inplace_mlp.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers.models.clip.modeling_clip import CLIPMLP

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency import build_minivlm, make_inputs  # noqa: E402


def with_transformers_mlps(model):
    """A copy whose encoder and pre-fusion layers have the transformers MLP classes back."""
    reference = copy.deepcopy(model)
    for layer in reference.encoder.vision_model.encoder.layers:
        plain = CLIPMLP(reference.encoder.vision_model.config)
        plain.load_state_dict(layer.mlp.state_dict())
        layer.mlp = plain
    mlp_class = type(reference.llm.decoder_layers[0].mlp)
    for layer in reference.prefusion.layers:
        plain = mlp_class(reference.prefusion.layer_config)
        plain.load_state_dict(layer.mlp.state_dict())
        layer.mlp = plain
    return reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prime", action="store_true", help="allocate and free 28 MB before timing")
    parser.add_argument("--out", default="benchmarks/results/inplace_mlp.json")
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    torch.set_grad_enabled(False)

    model = build_minivlm(mini=True)
    reference = with_transformers_mlps(model)
    batch, pixels, text_ids = make_inputs(model)
    if options.prime:
        torch.empty(7_000_000).fill_(1.0)  # touched, then freed at once
    features = model.encoder(pixels)
    vision = model.projector(features)
    compressed = model.projector(model.compressor(features, model.encoder.grid).tokens)
    text = model.llm.embed(text_ids)
    fuse = torch.ones(text.shape[:2], dtype=torch.bool)
    runs = {
        "encoder, in place": lambda: model.encoder(pixels),
        "encoder, transformers MLP": lambda: reference.encoder(pixels),
        "pre-fusion, in place": lambda: model.prefusion(vision, compressed, text, fuse),
        "pre-fusion, transformers MLP": lambda: reference.prefusion(vision, compressed, text, fuse),
    }
    keys = list(runs)
    for ours, theirs in ((keys[0], keys[1]), (keys[2], keys[3])):
        a, b = runs[ours](), runs[theirs]()
        same = torch.equal(a, b) if isinstance(a, torch.Tensor) else all(map(torch.equal, a, b))
        if not same:
            raise RuntimeError(f"{ours} and {theirs} differ")

    cpu: dict[str, list[float]] = {key: [] for key in runs}
    faults: dict[str, list[int]] = {key: [] for key in runs}
    for repeat in range(options.repeats):
        for key in keys if repeat % 2 == 0 else reversed(keys):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start = time.process_time()
            runs[key]()
            cpu[key].append((time.process_time() - start) * 1000)
            faults[key].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

    rows = [
        {"variant": key, "cpu_ms": round(statistics.median(cpu[key]), 1), "min_ms": round(min(cpu[key]), 1),
         "page_faults": int(statistics.median(faults[key]))}
        for key in runs
    ]
    print(f"\n{'variant':<30} {'CPU ms':>8} {'min':>8} {'faults':>8}")
    for r in rows:
        print(f"{r['variant']:<30} {r['cpu_ms']:>8.1f} {r['min_ms']:>8.1f} {r['page_faults']:>8}")
    ratios = {
        part: round(rows[i]["cpu_ms"] / rows[i + 1]["cpu_ms"], 3) for part, i in (("encoder", 0), ("pre-fusion", 2))
    }
    print("in place / transformers MLP, CPU time: " + ", ".join(f"{p} {r:.3f}" for p, r in ratios.items()))
    result = {
        "repeats": options.repeats, "threads": torch.get_num_threads(), "prime": options.prime, "rows": rows,
        "ratios": ratios, "load_average": os.getloadavg(),
    }
    Path(options.out).parent.mkdir(parents=True, exist_ok=True)
    Path(options.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {options.out}")


if __name__ == "__main__":
    main()
