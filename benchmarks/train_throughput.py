"""Training throughput of the tiny-shapes recipe: 1 process, DDP x2 and FSDP2 x2 on CPU.

    .venv/bin/python benchmarks/train_throughput.py [--steps 40] [--global-batch 32] [--threads 1]

Each configuration runs `minivlm fit` in a subprocess (the way a user launches it) with the
same global batch and `ThroughputMonitor` logging every 10 steps; the first window (start-up)
is left out. Prints a table and writes benchmarks/results/train_throughput.json.
A GPU row (the tiny recipe on one GPU, bf16-mixed) is added only when CUDA is available;
the issue's ~1 B-parameter GPU configuration and MFU are not implemented (minivlm has no
FLOPs count yet).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "tiny-shapes.yaml"
METRICS = ("perf/samples_per_s", "perf/llm_tokens_per_s", "perf/prefusion_tokens_per_s", "perf/peak_memory_gib")


def run(
    name: str, devices: int, strategy: str | None, accelerator: str, precision: str,
    steps: int, global_batch: int, threads: int, work: Path,
) -> dict:
    overlay = work / f"{name}.yaml"
    overlay.write_text(yaml.safe_dump({"trainer": {"callbacks": [
        {"class_path": "minivlm.training.throughput.ThroughputMonitor", "init_args": {"every_n_steps": 10}},
    ]}}))
    command = [
        sys.executable, "-m", "minivlm", "fit", "--config", str(RECIPE), "--config", str(overlay),
        f"--trainer.max_steps={steps}", "--trainer.limit_val_batches=0", "--trainer.enable_checkpointing=false",
        f"--trainer.devices={devices}", f"--trainer.accelerator={accelerator}", f"--trainer.precision={precision}",
        f"--data.init_args.batch_size={global_batch // devices}", f"--data.init_args.train_size={global_batch * (steps + 1)}",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger", f"--trainer.logger.init_args.save_dir={work}",
        f"--trainer.logger.init_args.name={name}", "--trainer.log_every_n_steps=1",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", f"--trainer.default_root_dir={work}",
    ]
    if strategy is not None:
        command.append(f"--trainer.strategy={strategy}")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    # One intra-op thread per process in every configuration: on a shared CPU, more threads
    # than free cores make a single process spin-wait and look tens of times slower.
    env["OMP_NUM_THREADS"] = str(threads)
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - start
    with open(next((work / name).rglob("metrics.csv"))) as file:
        rows = [row for row in csv.DictReader(file) if row.get(METRICS[0])]
    means = {key: sum(float(row[key]) for row in rows) / len(rows) for key in METRICS}
    return {
        "config": name, "processes": devices, "strategy": strategy or "single", "precision": precision,
        "global_batch": global_batch, "steps": steps, "threads_per_process": threads, "windows": len(rows), "wall_seconds": round(wall, 1),
        **{key.split("/")[1]: round(value, 2) for key, value in means.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--global-batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per process")
    parser.add_argument("--only", default=None, help="run only the configuration with this name")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train_throughput.json"))
    options = parser.parse_args()

    configs = [("cpu-1", 1, None, "cpu", "32-true"), ("cpu-ddp-2", 2, "ddp", "cpu", "32-true"),
               ("cpu-fsdp2-2", 2, "fsdp2", "cpu", "32-true")]
    if options.only is not None:
        configs = [config for config in configs if config[0] == options.only]
    if torch.cuda.is_available():
        configs.append(("gpu-1-bf16", 1, None, "gpu", "bf16-mixed"))
    else:
        print("no GPU on this machine: GPU rows skipped")
    with tempfile.TemporaryDirectory() as work:
        rows = [run(*config, options.steps, options.global_batch, options.threads, Path(work)) for config in configs]

    header = f"{'config':<12} {'samples/s':>10} {'LLM tok/s':>10} {'pre-fusion tok/s':>17} {'peak GiB':>9} {'wall s':>7}"
    print(header)
    for row in rows:
        print(
            f"{row['config']:<12} {row['samples_per_s']:>10.1f} {row['llm_tokens_per_s']:>10.0f} "
            f"{row['prefusion_tokens_per_s']:>17.0f} {row['peak_memory_gib']:>9.2f} {row['wall_seconds']:>7.1f}"
        )
    result = {
        "recipe": str(RECIPE.relative_to(ROOT)), "runs": rows,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
    }
    Path(options.out).parent.mkdir(parents=True, exist_ok=True)
    Path(options.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {options.out}")


if __name__ == "__main__":
    main()
