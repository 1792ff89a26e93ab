"""Turn a training checkpoint (one file, or a sharded FSDP2 directory) into a model directory.

The model is rebuilt from the run's recipe (the `config.yaml` that `minivlm fit` writes next
to its checkpoints), without initialising or downloading any weight; every weight then comes
from the checkpoint, loaded strictly. LoRA adapters are merged into their layers, so the
directory loads with `MiniVLM.from_pretrained` like any other.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import yaml
from jsonargparse import ArgumentParser
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

from minivlm.training.lora import add_lora
from minivlm.training.module import MiniVLMModule
from minivlm.training.stages import PARTS
from minivlm.weights import parameters_on_meta

CONFIG_FILE = "config.yaml"
MODEL_PREFIX = "model."


def find_config(checkpoint: Path) -> Path:
    """The recipe `minivlm fit` saved for the run that wrote `checkpoint` (a few levels up)."""
    for directory in list(checkpoint.resolve().parents)[:4]:
        if (directory / CONFIG_FILE).is_file():
            return directory / CONFIG_FILE
    raise FileNotFoundError(f"no {CONFIG_FILE} found above {checkpoint}: pass the run's recipe with --recipe")


def read_checkpoint(checkpoint: Path) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """The MiniVLM weights of a Lightning checkpoint (a `.ckpt` file or a sharded directory),
    and its progress (`global_step`, `epoch`, where the checkpoint records them)."""
    if checkpoint.is_dir():
        if not (checkpoint / ".metadata").is_file():
            raise FileNotFoundError(f"{checkpoint} is a directory but not a sharded checkpoint (no .metadata)")
        with warnings.catch_warnings():
            # Reading in one process, without a process group, is exactly the intent here.
            warnings.filterwarnings("ignore", message="torch.distributed is unavailable or uninitialized")
            state = _load_state_dict_from_keys(keys={"state_dict"}, checkpoint_id=str(checkpoint))
    elif checkpoint.is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    else:
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    if "state_dict" not in state:
        raise ValueError(f"{checkpoint} is not a Lightning checkpoint (no state_dict)")
    weights = {key[len(MODEL_PREFIX) :]: value for key, value in state["state_dict"].items() if key.startswith(MODEL_PREFIX)}
    if not weights:
        raise ValueError(f"{checkpoint} holds no MiniVLM weights (no key starts with {MODEL_PREFIX!r})")
    progress = {key: int(state[key]) for key in ("global_step", "epoch") if key in state}
    return weights, progress


def build_module(config: Path) -> MiniVLMModule:
    """The recipe's MiniVLMModule with every parameter on the meta device (buffers are real)."""
    recipe = yaml.safe_load(config.read_text())
    if not isinstance(recipe, dict) or "model" not in recipe:
        raise ValueError(f"{config} has no `model:` section")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(MiniVLMModule, "model", fail_untyped=False)
    parsed = parser.parse_object({"model": recipe["model"]})
    with parameters_on_meta():
        module = parser.instantiate_classes(parsed).model
        for part in PARTS:
            if module.stage.of(part).mode == "lora":
                add_lora(module.part(part), module.lora, part)
    return module


def consolidate(checkpoint: Path, output: Path, recipe: Path | None = None) -> Path:
    """Writes the model directory of a training checkpoint (config.json, model.safetensors,
    tokenizer and processor files, recipe and model card), LoRA adapters merged; returns its path.

    Args:
        checkpoint: a `.ckpt` file, or a sharded checkpoint directory written by FSDP2.
        output: the model directory to write.
        recipe: the run's recipe; by default the `config.yaml` that `minivlm fit` saved
            in the run's log directory, found above the checkpoint.
    """
    from minivlm.training.checkpoint import export_checkpoint  # it reads checkpoints with this module

    export_checkpoint(checkpoint, output, recipe, merge_lora=None)
    return Path(output)
