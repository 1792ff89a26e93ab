"""Samples/s reading LLaVA shards with 0, 1 and 2 DataLoader workers.

Each sample is decoded, transformed to the encoder's size, tokenised and collated into a
`Batch` exactly as in training (`StreamingDataset`). Two data sets are generated: 64-px PNG
images read at 64 px, and 336-px JPEGs read at 336 px (CLIP-L). Time is wall clock over a
whole epoch, worker start-up included. Writes benchmarks/results/data_throughput.json.

    PYTHONPATH=src python benchmarks/data_throughput.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from minivlm.data.samples import VideoOptions
from minivlm.data.shards import ShardOptions, write_shards
from minivlm.data.sources import ShardSource
from minivlm.data.streaming import StreamingDataset
from minivlm.data.synthetic import build_shapes_tokenizer
from minivlm.processing import Processor
from minivlm.processing.templates import get_template
from minivlm.specs import ImageSpec

RESULTS = Path(__file__).parent / "results" / "data_throughput.json"
CLIP_MEAN, CLIP_STD = (0.4815, 0.4578, 0.4082), (0.2686, 0.2613, 0.2758)


def make_data(root: Path, count: int, size: int, fmt: str) -> Path:
    """`count` records with noisy size² images (noise keeps JPEG decoding honest)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    records = []
    for i in range(count):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        name = f"images/{i}.{'png' if fmt == 'PNG' else 'jpg'}"
        Image.fromarray(pixels).save(root / name, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        records.append({"id": str(i), "image": name, "conversations": [
            {"from": "human", "value": "<image>\nHow many red shapes are there?"},
            {"from": "gpt", "value": "two"},
        ]})
    path = root / "data.json"
    path.write_text(json.dumps(records))
    return path


def measure(shards: Path, size: int, workers: int, batch_size: int) -> dict:
    spec = ImageSpec(size=size, mean=CLIP_MEAN, std=CLIP_STD)
    processor = Processor(build_shapes_tokenizer(), get_template("shapes"), spec, tokens_per_image=1)
    dataset = StreamingDataset([ShardSource(str(shards), VideoOptions())], processor, batch_size=batch_size,
                               num_workers=workers, seed=0)
    start = time.perf_counter()
    samples = sum(len(b.ids) for b in DataLoader(dataset, batch_size=None, num_workers=workers))
    seconds = time.perf_counter() - start
    return {"image_px": size, "workers": workers, "samples": samples, "seconds": round(seconds, 3),
            "samples_per_s": round(samples / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples-64", type=int, default=3000)
    parser.add_argument("--samples-336", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)  # the workers are the parallelism; one thread each avoids oversubscription
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size, count, fmt in ((64, args.samples_64, "PNG"), (336, args.samples_336, "JPEG")):
            root = Path(tmp) / f"px{size}"
            annotations = make_data(root, count, size, fmt)
            write_shards(annotations, root, root / "shards", ShardOptions(max_count=500), progress=False)
            for workers in args.workers:
                rows.append(measure(root / "shards", size, workers, args.batch_size))
                print(f"{size:>4} px  {workers} workers  {rows[-1]['samples_per_s']:>8.1f} samples/s  "
                      f"({rows[-1]['samples']} samples in {rows[-1]['seconds']:.1f} s)", flush=True)
    result = {
        "rows": rows,
        "batch_size": args.batch_size,
        "cpus": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"load average before {result['load_average_before']}, after {result['load_average_after']}; "
          f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
