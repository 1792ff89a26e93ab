"""A MiniVLM from a recipe's `model:` section, without Lightning, a tokenizer or a data module.

This is the one place that knows how a recipe spells the model; when the recipe format
changes, only `build_from_recipe` changes.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from jsonargparse import ArgumentParser

from minivlm.model.vlm import MiniVLM

# MiniVLM's constructor arguments that a recipe sets; `processor` is built from the tokenizer.
_MODEL_KEYS = tuple(name for name in inspect.signature(MiniVLM).parameters if name != "processor")


@dataclass
class BuiltRecipe:
    """A model built from a recipe, with what the recipe says about its inputs: `hd_grid` n > 1
    means every image is n×n crops + the whole image."""

    name: str
    model: MiniVLM
    hd_grid: int
    model_config: dict[str, Any]


def read_model_section(path: str | Path) -> dict[str, Any]:
    """The `model:` mapping of a recipe, or a ValueError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe {path} does not exist")
    recipe = yaml.safe_load(path.read_text())
    if not isinstance(recipe, dict) or not isinstance(recipe.get("model"), dict):
        raise ValueError(f"recipe {path} has no `model:` mapping")
    return recipe["model"]


def build_from_recipe(
    path: str | Path, device: torch.device | str = "meta", section: dict[str, Any] | None = None
) -> BuiltRecipe:
    """Parses the recipe's five parts (and `vision_tokens`, `frames_per_chunk`) with jsonargparse,
    exactly as `minivlm fit` would, and builds the MiniVLM on `device`.

    On "meta" no weight is allocated, so a 7 B recipe builds in seconds. `section` replaces the
    recipe's `model:` mapping (used to vary one value, e.g. the compressor size).
    """
    section = read_model_section(path) if section is None else section
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(MiniVLM, "model", skip={"processor"})
    try:
        config = parser.parse_object({"model": {k: v for k, v in section.items() if k in _MODEL_KEYS}})
    except Exception as error:  # jsonargparse explains what is wrong; say which file
        raise ValueError(f"recipe {path}: {error}") from error
    with torch.device(device):
        model = parser.instantiate(config).model
    hd_grid = int(section.get("hd_grid", 1))
    if hd_grid < 1:
        raise ValueError(f"recipe {path}: hd_grid must be >= 1, got {hd_grid}")
    return BuiltRecipe(name=str(path), model=model, hd_grid=hd_grid, model_config=section)
