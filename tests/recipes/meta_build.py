"""Builds recipes on the meta device in one process and prints, as JSON, what each one built.

Run as `python tests/recipes/meta_build.py OUT.json RECIPE...`. The trainer is rebuilt for
this machine (one CPU, default strategy), since the GPUs a recipe names are not here; a
`data:` class that does not exist yet is replaced by the shapes DataModule, and reported.
Peak RSS covers the whole process, i.e. every recipe built in it.
"""

from __future__ import annotations

import importlib
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from jsonargparse import ArgumentParser
from lightning.pytorch.strategies import Strategy

from minivlm.cli import MiniVLMCLI
from minivlm.training.module import MiniVLMModule
from minivlm.training.stages import PARTS

CPU_TRAINER = {"accelerator": "cpu", "devices": 1, "num_nodes": 1, "strategy": "auto", "logger": False}
STAND_IN_DATA = {"class_path": "minivlm.data.datamodule.ShapesDataModule"}


def importable(class_path: str) -> bool:
    module, _, name = class_path.rpartition(".")
    try:
        return hasattr(importlib.import_module(module), name)
    except ImportError:
        return False


def strategy_as_written(strategy: str | dict) -> dict:
    """The recipe's strategy, instantiated as written (the trainer here gets a CPU one instead)."""
    if isinstance(strategy, str):
        return {"strategy": strategy}
    parser = ArgumentParser()
    parser.add_subclass_arguments(Strategy, "strategy")
    built = parser.instantiate(parser.parse_object({"strategy": strategy})).strategy
    wrapped = getattr(built.kwargs.get("auto_wrap_policy"), "_module_classes", ())
    return {"strategy": type(built).__name__, "wraps": sorted(cls.__name__ for cls in wrapped)}


def build(recipe: Path, workdir: Path) -> dict:
    config = yaml.safe_load(recipe.read_text())
    strategy = strategy_as_written(config["trainer"].get("strategy", "auto"))
    data_found = importable(config["data"]["class_path"])
    if not data_found:
        config["data"] = STAND_IN_DATA
    config["trainer"] = {**config["trainer"], **CPU_TRAINER, "default_root_dir": str(workdir)}
    config["trainer"]["callbacks"] = [c for c in config["trainer"].get("callbacks", []) if "LearningRateMonitor" not in c["class_path"]]
    path = workdir / recipe.name
    path.write_text(yaml.safe_dump(config))
    start = time.perf_counter()
    with torch.device("meta"):
        cli = MiniVLMCLI(MiniVLMModule, subclass_mode_data=True, args=["--config", str(path)], run=False)
    seconds = time.perf_counter() - start
    module = cli.model
    return {
        "seconds": seconds,
        "data_class_found": data_found,
        "all_meta": all(p.is_meta for p in module.parameters()),
        "parameters": {part: sum(p.numel() for p in module.part(part).parameters()) for part in PARTS},
        "trained": module.stage.trained,
        "no_grad_parts": module.no_grad_parts,
        "tokens_per_image": module.model.tokens_per_image,
        **strategy,
    }


def main() -> None:
    out, recipes = Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for recipe in recipes:
            results[str(recipe)] = build(recipe, Path(tmp))
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    out.write_text(json.dumps({"recipes": results, "peak_rss_gb": peak_gb}, indent=2))


if __name__ == "__main__":
    main()
