"""Decoding's matrix products on CPU with the weight row-major (PyTorch's default) against
column-major (`W.t()` contiguous): the measurement behind `minivlm.llms.layout`.

`F.linear(x, W)` with x of 1 and 8 rows (a decoding step at batch 1 and 8), for the weight
shapes of the benchmarks' LLMs (width 512), of Vicuna-7B, of a 2048-wide Llama and of
Qwen2-0.5B: output heads, attention projections, MLP gate/up (wide) and down (narrow). Each
shape is cycled through enough copies (`--stream-mb`) that the weights come from memory, not
from cache, as they do in a real model; the two layouts alternate within every repeat; one
thread by default. float32 for every shape, bfloat16 and float16 for the width-512 shapes.
Outputs are compared between layouts (largest difference relative to the largest output).

    .venv/bin/python benchmarks/weight_layout.py [--repeats 7] [--stream-mb 200] [--threads 1]

Prints a table and writes benchmarks/results/weight_layout.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

SHAPES = {  # (out_features, in_features): what it is
    (32000, 512): "width-512 head", (1376, 512): "width-512 gate/up", (512, 1376): "width-512 down",
    (512, 512): "width-512 attention", (4096, 4096): "Vicuna-7B attention", (11008, 4096): "Vicuna-7B gate/up",
    (4096, 11008): "Vicuna-7B down", (32000, 4096): "Vicuna-7B head", (5632, 2048): "2048-wide gate/up",
    (2048, 5632): "2048-wide down", (2048, 2048): "2048-wide attention", (151936, 896): "Qwen2-0.5B head",
    (4864, 896): "Qwen2-0.5B gate/up", (896, 4864): "Qwen2-0.5B down",
}
SMALL = [(32000, 512), (1376, 512), (512, 1376), (512, 512)]
ROWS = (1, 8)


def measure(shape: tuple[int, int], dtype: torch.dtype, rows: int, repeats: int, stream_bytes: float) -> dict:
    out_features, in_features = shape
    copies = max(1, int(stream_bytes // (out_features * in_features * dtype.itemsize)))
    generator = torch.Generator().manual_seed(0)
    row_major = [torch.randn(shape, generator=generator).to(dtype) for _ in range(copies)]
    column_major = [w.t().contiguous().t() for w in row_major]
    x = torch.randn(rows, in_features, generator=generator).to(dtype)
    want, got = F.linear(x, row_major[0]).float(), F.linear(x, column_major[0]).float()
    times: dict[str, list[float]] = {"row": [], "column": []}
    for _ in range(repeats + 1):  # the first round warms up
        for name, weights in (("row", row_major), ("column", column_major)):
            start = time.perf_counter()
            for weight in weights:
                F.linear(x, weight)
            times[name].append((time.perf_counter() - start) / copies * 1e3)
    row, column = statistics.median(times["row"][1:]), statistics.median(times["column"][1:])
    return {
        "shape": list(shape), "what": SHAPES[shape], "dtype": str(dtype).removeprefix("torch."), "rows": rows,
        "copies": copies, "row_major_ms": row, "column_major_ms": column, "row_over_column": row / column,
        "relative_difference": float((got - want).abs().max() / want.abs().max()),
    }


def stream_options(description: str, out: str) -> argparse.Namespace:
    """The command line shared by the benchmarks that stream weights through matrix products."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--stream-mb", type=float, default=200.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=out)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    return args


def write_results(args: argparse.Namespace, results: list[dict]) -> None:
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(), "threads": args.threads, "repeats": args.repeats,
        "stream_mb": args.stream_mb, "results": results,
    }, indent=1))
    print(f"wrote {args.out}")


def main() -> None:
    args = stream_options(__doc__.splitlines()[0], "benchmarks/results/weight_layout.json")
    cases = [(s, torch.float32) for s in SHAPES] + [(s, d) for d in (torch.bfloat16, torch.float16) for s in SMALL]
    results = []
    print("| weight | shape | dtype | rows | row-major ms | column-major ms | row / column | rel. difference |")
    print("|---|---|---|---|---|---|---|---|")
    for shape, dtype in cases:
        for rows in ROWS:
            r = measure(shape, dtype, rows, args.repeats, args.stream_mb * 2**20)
            results.append(r)
            print(f"| {r['what']} | {shape[0]} × {shape[1]} | {r['dtype']} | {rows} | {r['row_major_ms']:.3f} | "
                  f"{r['column_major_ms']:.3f} | {r['row_over_column']:.2f} | {r['relative_difference']:.1e} |",
                  flush=True)
    write_results(args, results)

if __name__ == "__main__":
    main()
