"""Helpers for tests that run `minivlm fit` in subprocesses (DDP / FSDP2 / kill and resume).

Runs use the tiny-shapes recipe with a small data set, no validation, a CSV logger flushed
every step (so a killed run keeps its losses) and a ModelCheckpoint every `every` steps.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SHAPES = ROOT / "recipes" / "tiny-shapes.yaml"


def overlay(path: Path, every: int, callbacks: list[dict] | None = None, lr: float | None = None) -> Path:
    """A second --config: checkpoints every `every` steps into path's directory/checkpoints
    (last.ckpt kept, so `--ckpt_path last` finds it whatever the logger's version), extra
    callbacks, and optionally one learning rate for every part."""
    config: dict = {
        "trainer": {
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {
                        "dirpath": str(path.parent / "checkpoints"), "every_n_train_steps": every,
                        "save_last": True, "save_top_k": 0,
                    },
                },
                *(callbacks or []),
            ]
        }
    }
    if lr is not None:
        parts = ("encoder", "compressor", "projector", "prefusion", "llm")
        config["model"] = {"stage": {part: {"mode": "full", "lr": lr} for part in parts}}
    path.write_text(yaml.safe_dump(config))
    return path


def fit(
    root: Path,
    *args: str,
    steps: int = 4,
    batch_size: int = 8,
    devices: int = 1,
    strategy: str | None = None,
    every: int = 2,
    callbacks: list[dict] | None = None,
    lr: float | None = None,
    version: str = "run",
    check: bool = True,
    recipe: Path = SHAPES,
) -> subprocess.CompletedProcess:
    """`python -m minivlm fit` on CPU; logs (metrics.csv, config.yaml, checkpoints) under root/version."""
    root.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "minivlm", "fit", "--config", str(recipe),
        "--config", str(overlay(root / f"overlay-{version}.yaml", every, callbacks, lr)),
        f"--trainer.max_steps={steps}", "--trainer.limit_val_batches=0", "--data.init_args.train_size=96",
        f"--data.init_args.batch_size={batch_size}", f"--trainer.devices={devices}",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger", f"--trainer.logger.init_args.save_dir={root}",
        "--trainer.logger.init_args.name=logs", f"--trainer.logger.init_args.version={version}",
        "--trainer.logger.init_args.flush_logs_every_n_steps=1", "--trainer.log_every_n_steps=1",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={root}", *args,
    ]
    if strategy is not None:
        command.append(f"--trainer.strategy={strategy}")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(HERE), env.get("PYTHONPATH", "")])
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"minivlm fit failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


def log_dir(root: Path, version: str = "run") -> Path:
    return root / "logs" / version


def losses(root: Path, version: str = "run") -> dict[int, float]:
    """Per-step train/loss as logged in metrics.csv."""
    with open(log_dir(root, version) / "metrics.csv") as file:
        return {int(row["step"]): float(row["train/loss"]) for row in csv.DictReader(file) if row.get("train/loss")}


def last_checkpoint(root: Path) -> Path:
    return root / "checkpoints" / "last.ckpt"
