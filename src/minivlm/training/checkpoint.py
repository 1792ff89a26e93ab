"""A training checkpoint read back as a MiniVLM: the recipe rebuilds the parts, the .ckpt fills them.

A Lightning `.ckpt` holds weights and training state but not how to build the parts; the
recipe LightningCLI saved next to the run (`config.yaml`, one level above `checkpoints/`)
does. Parts are built with meta parameters and the checkpoint's tensors are assigned, so
an export costs one copy of the weights. The checkpoint is read with `weights_only=True`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from jsonargparse import ArgumentParser

from minivlm.hub.export import ExportInfo, export_model
from minivlm.model.vlm import MiniVLM
from minivlm.model.weights import DEFAULT_MAX_SHARD_SIZE, empty_parameters
from minivlm.training.module import MiniVLMModule

RECIPE_FILE = "config.yaml"


@dataclass
class TrainedModel:
    """The model of a checkpoint, the recipe text it was trained from, and what the run did."""

    model: MiniVLM
    recipe: str
    trained_parts: list[str]
    global_step: int
    epoch: int


def find_recipe(checkpoint: Path) -> Path:
    """The config.yaml LightningCLI wrote for the run `checkpoint` belongs to."""
    for directory in (checkpoint.parent, checkpoint.parent.parent):
        if (directory / RECIPE_FILE).is_file():
            return directory / RECIPE_FILE
    raise FileNotFoundError(
        f"no {RECIPE_FILE} next to {checkpoint} (looked in {checkpoint.parent} and {checkpoint.parent.parent}); "
        "pass the recipe the run was trained with (--recipe)"
    )


def build_module(recipe: dict[str, Any], source: str) -> MiniVLMModule:
    """The LightningModule described by a recipe's `model:` section, with meta parameters."""
    if not isinstance(recipe, dict) or not isinstance(recipe.get("model"), dict):
        raise ValueError(f"{source} has no `model:` section")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(MiniVLMModule, "model")
    config = parser.parse_object({"model": recipe["model"]})
    with empty_parameters():
        return parser.instantiate_classes(config).model


def load_trained_model(checkpoint: str | Path, recipe: str | Path | None = None) -> TrainedModel:
    """Rebuilds the MiniVLM of a Lightning checkpoint (strictly: every tensor must match)."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    recipe_path = Path(recipe) if recipe is not None else find_recipe(checkpoint)
    recipe_text = recipe_path.read_text()
    module = build_module(yaml.safe_load(recipe_text), str(recipe_path))
    state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    if "state_dict" not in state:
        raise ValueError(f"{checkpoint} is not a Lightning checkpoint (no state_dict)")
    weights = {k.removeprefix("model."): v for k, v in state["state_dict"].items() if k.startswith("model.")}
    try:
        module.model.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as error:
        raise ValueError(f"{checkpoint} does not match the model of {recipe_path}: {error}") from error
    module.processor  # built on first use; it also becomes module.model.processor
    return TrainedModel(
        model=module.model.eval(),
        recipe=recipe_text,
        trained_parts=list(module.stage.trained),
        global_step=int(state.get("global_step", 0)),
        epoch=int(state.get("epoch", 0)),
    )


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    recipe: str | Path | None = None,
    merge_lora: bool = False,
    dtype: str | None = None,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
) -> list[Path]:
    """`minivlm export`: the model directory of a training checkpoint; returns the files written."""
    trained = load_trained_model(checkpoint, recipe)
    info = ExportInfo(recipe=trained.recipe, trained_parts=trained.trained_parts, global_step=trained.global_step)
    return export_model(trained.model, out, info, merge_lora_adapters=merge_lora, dtype=dtype, max_shard_size=max_shard_size)


@contextmanager
def model_directory(model: str | Path, recipe: str | Path | None = None) -> Iterator[Path]:
    """`model` as a model directory: a directory as is, a `.ckpt` exported to a temporary one."""
    path = Path(model)
    if path.suffix != ".ckpt":
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="minivlm-export-") as directory:
        export_checkpoint(path, directory, recipe)
        yield Path(directory)
