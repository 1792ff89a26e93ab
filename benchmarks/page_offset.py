"""How much one matrix-vector product depends on where its weight starts within a memory page.

`benchmarks/decode.py` found minivlm's batch-1 decoding 3-7 % slower than transformers' on the
same weights, and the same matmuls faster on transformers' tensors than on minivlm's. This
script isolates the cause: for each weight shape, copies of one random matrix are placed to
start at different byte offsets within a 4096-byte page (values equal, nothing else changed),
and `F.linear` with a one-row input (a decoding step at batch 1) is timed on each, the copies
alternating within every repeat, one thread.

    .venv/bin/python benchmarks/page_offset.py [--repeats 15] [--offsets 0 512 ...]

Prints the median milliseconds per offset and shape, and the spread (slowest / fastest), and
writes benchmarks/results/page_offset.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

PAGE = 4096
# (rows, row length): decode.py's output head and MLP shapes, and rows of other lengths.
SHAPES = [(32000, 512), (1376, 512), (512, 1376), (16384, 1024), (64000, 256), (21000, 768), (4096, 4096)]


def placed(weight: torch.Tensor, offset: int) -> torch.Tensor:
    """A copy of `weight` whose first byte sits `offset` bytes into a page."""
    size = weight.numel() * weight.element_size()
    buffer = torch.empty(size + PAGE, dtype=torch.uint8)
    shift = (offset - buffer.data_ptr()) % PAGE
    copy = buffer[shift: shift + size].view(weight.dtype).view(weight.shape)
    copy.copy_(weight)
    return copy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--offsets", type=int, nargs="+", default=list(range(0, PAGE, 512)))
    parser.add_argument("--out", default="benchmarks/results/page_offset.json")
    options = parser.parse_args()
    if any(offset % 4 or not 0 <= offset < PAGE for offset in options.offsets):
        parser.error(f"offsets must be multiples of 4 in [0, {PAGE})")
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    rows = []
    for shape in SHAPES:
        weight = torch.randn(shape, generator=generator)
        copies = {offset: placed(weight, offset) for offset in options.offsets}
        times: dict[int, list[float]] = {offset: [] for offset in copies}
        for _ in range(options.repeats):
            x = torch.randn(1, shape[1], generator=generator)
            reference = torch.nn.functional.linear(x, weight)
            for offset, copy in copies.items():
                start = time.perf_counter()
                out = torch.nn.functional.linear(x, copy)
                times[offset].append((time.perf_counter() - start) * 1e3)
                if not torch.equal(out, reference):
                    raise RuntimeError(f"offset {offset} changed the result of {shape}")
        medians = {offset: statistics.median(values) for offset, values in times.items()}
        rows.append({"shape": list(shape), "megabytes": weight.numel() * 4 / 1e6, "median_ms": medians,
                     "best_offset": min(medians, key=medians.get),
                     "slowest_over_fastest": max(medians.values()) / min(medians.values())})
    print("| weight | MB | " + " | ".join(f"offset {o}" for o in options.offsets) + " | best | slowest / fastest |")
    print("|---|---|" + "---|" * len(options.offsets) + "---|---|")
    for row in rows:
        cells = " | ".join(f"{row['median_ms'][o]:.2f}" for o in options.offsets)
        print(f"| {row['shape'][0]} × {row['shape'][1]} | {row['megabytes']:.0f} | {cells} | {row['best_offset']} | "
              f"{row['slowest_over_fastest']:.2f} |")
    Path(options.out).parent.mkdir(parents=True, exist_ok=True)
    Path(options.out).write_text(json.dumps({
        "repeats": options.repeats, "threads": 1, "torch": torch.__version__, "machine": platform.processor()
        or platform.machine(), "cpus": os.cpu_count(), "load_average": os.getloadavg(),
        "rows": [{**row, "median_ms": {str(k): v for k, v in row["median_ms"].items()}} for row in rows],
    }, indent=2) + "\n")
    print(f"wrote {options.out}")


if __name__ == "__main__":
    main()
