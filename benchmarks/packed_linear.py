"""CPU float32 matrix products through `F.linear` (MKL, which reorders the weight on every call)
against oneDNN with the weight packed once: the measurement behind `minivlm.model.packed_linear`.

Rows 1, 2 and 8 (decoding steps at batch 1, 2 and 8), 41 (a LLaVA-Mini prompt in
`latency.py`: one vision token and 40 text tokens) and 617 (its pre-fusion sequence, or a
LLaVA-1.5 prompt), for the weight shapes of `latency.py`'s encoder (width 256) and LLM (width
512), of CLIP ViT-L and of Vicuna-7B. Each shape is cycled through enough copies
(`--stream-mb`) that the weights come from memory, not from cache, as in a real model; the two
kernels alternate within every repeat; one thread by default. Also reported: the one-off time
to pack each weight, and the largest output difference relative to the largest output.

    .venv/bin/python benchmarks/packed_linear.py [--repeats 7] [--stream-mb 200] [--threads 1]

Prints a table and writes benchmarks/results/packed_linear.json.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F
from weight_layout import stream_options, write_results

SHAPES = {  # (out_features, in_features): what it is
    (256, 256): "width-256 encoder attention", (1024, 256): "width-256 encoder fc1",
    (256, 1024): "width-256 encoder fc2", (512, 512): "width-512 attention", (1376, 512): "width-512 gate/up",
    (512, 1376): "width-512 down", (1024, 1024): "CLIP-L attention", (4096, 1024): "CLIP-L fc1",
    (1024, 4096): "CLIP-L fc2", (4096, 4096): "Vicuna-7B attention", (11008, 4096): "Vicuna-7B gate/up",
    (4096, 11008): "Vicuna-7B down",
}
ROWS = (1, 2, 8, 41, 617)


def measure(shape: tuple[int, int], rows: int, repeats: int, stream_bytes: float) -> dict:
    out_features, in_features = shape
    copies = max(1, int(stream_bytes // (out_features * in_features * 4)))
    generator = torch.Generator().manual_seed(0)
    weights = [torch.randn(shape, generator=generator) / in_features**0.5 for _ in range(copies)]
    bias = torch.randn(out_features, generator=generator)
    start = time.perf_counter()
    packed = [torch.ops.mkldnn._reorder_linear_weight(w, None) for w in weights]
    pack_ms = (time.perf_counter() - start) / copies * 1e3
    x = torch.randn(rows, in_features, generator=generator)
    want = F.linear(x, weights[0], bias)
    got = torch.ops.mkldnn._linear_pointwise(x, packed[0], bias, "none", [], "")
    times: dict[str, list[float]] = {"plain": [], "packed": []}
    for _ in range(repeats + 1):  # the first round warms up
        start = time.perf_counter()
        for weight in weights:
            F.linear(x, weight, bias)
        times["plain"].append((time.perf_counter() - start) / copies * 1e3)
        start = time.perf_counter()
        for weight in packed:
            torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
        times["packed"].append((time.perf_counter() - start) / copies * 1e3)
    plain, packed_ms = statistics.median(times["plain"][1:]), statistics.median(times["packed"][1:])
    return {
        "shape": list(shape), "what": SHAPES[shape], "rows": rows, "copies": copies, "plain_ms": plain,
        "packed_ms": packed_ms, "plain_over_packed": plain / packed_ms, "pack_ms": pack_ms,
        "relative_difference": float((got - want).abs().max() / want.abs().max()),
    }


def main() -> None:
    args = stream_options(__doc__.splitlines()[0], "benchmarks/results/packed_linear.json")
    results = []
    print("| weight | shape | rows | F.linear ms | packed ms | F.linear / packed | pack ms (once) | rel. difference |")
    print("|---|---|---|---|---|---|---|---|")
    for shape in SHAPES:
        for rows in ROWS:
            r = measure(shape, rows, args.repeats, args.stream_mb * 2**20)
            results.append(r)
            print(f"| {r['what']} | {shape[0]} × {shape[1]} | {rows} | {r['plain_ms']:.3f} | {r['packed_ms']:.3f} | "
                  f"{r['plain_over_packed']:.2f} | {r['pack_ms']:.2f} | {r['relative_difference']:.1e} |", flush=True)
    write_results(args, results)

if __name__ == "__main__":
    main()
