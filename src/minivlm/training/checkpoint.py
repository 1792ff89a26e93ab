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

from minivlm.hub.export import ExportInfo, export_model, has_lora_adapters
from minivlm.model.vlm import MiniVLM
from minivlm.model.weights import DEFAULT_MAX_SHARD_SIZE
from minivlm.training.consolidate import build_module, find_config, read_checkpoint


@dataclass
class TrainedModel:
    """The model of a checkpoint, the recipe text it was trained from, and what the run did."""

    model: MiniVLM
    recipe: str
    trained_parts: list[str]
    global_step: int
    epoch: int


def load_trained_model(checkpoint: str | Path, recipe: str | Path | None = None) -> TrainedModel:
    """Rebuilds the MiniVLM of a Lightning checkpoint (a `.ckpt` file or a sharded FSDP2
    directory), strictly: every tensor must match. LoRA adapters are rebuilt as the recipe's
    stage says, and stay unmerged."""
    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    weights, progress = read_checkpoint(checkpoint)
    recipe_path = Path(recipe) if recipe is not None else find_config(checkpoint)
    module = build_module(recipe_path)
    try:
        module.model.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as error:
        raise ValueError(f"{checkpoint} does not match the model of {recipe_path}: {error}") from error
    module.processor  # built on first use; it also becomes module.model.processor
    return TrainedModel(
        model=module.model.eval(),
        recipe=recipe_path.read_text(),
        trained_parts=list(module.stage.trained),
        global_step=progress.get("global_step", 0),
        epoch=progress.get("epoch", 0),
    )


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    recipe: str | Path | None = None,
    merge_lora: bool | None = False,
    dtype: str | None = None,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
) -> list[Path]:
    """`minivlm export`: the model directory of a training checkpoint; returns the files written.
    `merge_lora` None merges exactly when the recipe trains LoRA adapters."""
    trained = load_trained_model(checkpoint, recipe)
    if merge_lora is None:
        merge_lora = has_lora_adapters(trained.model)
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
