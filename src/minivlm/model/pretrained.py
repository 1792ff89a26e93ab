"""The model directory: config.json (parts by class_path) + model.safetensors + processor files.

A directory written here is rebuilt by `load_pretrained` alone: no Lightning, no
`trust_remote_code`, no unpickling (weights are read with safetensors only).
"""

from __future__ import annotations

import importlib
import inspect
import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_model, save_model
from torch import nn

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "minivlm"
PART_NAMES = ("encoder", "compressor", "projector", "prefusion", "llm")


def part_spec(part: nn.Module) -> dict[str, Any]:
    """`{"class_path": ..., "init_args": ...}` that rebuilds `part` without downloading anything.

    A part either has `init_args_for_export()` or keeps each constructor argument as an
    attribute of the same name (the convention the built-in parts follow).
    """
    cls = type(part)
    if hasattr(part, "init_args_for_export"):
        init_args = part.init_args_for_export()
    else:
        init_args = {}
        for name, parameter in inspect.signature(cls.__init__).parameters.items():
            if name == "self" or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                continue
            if not hasattr(part, name):
                raise TypeError(
                    f"cannot export {cls.__name__}: constructor argument {name!r} is not kept as an attribute; "
                    "store it or define init_args_for_export()"
                )
            init_args[name] = getattr(part, name)
    try:
        json.dumps(init_args)
    except TypeError as error:
        raise TypeError(f"cannot export {cls.__name__}: its constructor arguments are not plain JSON ({error})") from error
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": init_args}


def build_part(spec: dict[str, Any], base: type[nn.Module], role: str) -> nn.Module:
    """Imports `spec["class_path"]`, checks it is a `base`, and calls it with `init_args`."""
    class_path = spec.get("class_path")
    if not isinstance(class_path, str) or "." not in class_path:
        raise ValueError(f"config.json: {role} needs a class_path like 'package.module.Class', got {class_path!r}")
    module_name, _, class_name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"config.json: {role} class_path {class_path!r} cannot be imported: {error}") from error
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ValueError(f"config.json: {role} class_path {class_path!r} is not a {base.__name__}")
    return cls(**spec.get("init_args", {}))


def write_config(directory: Path, parts: dict[str, nn.Module], extra: dict[str, Any]) -> None:
    config = {"format": FORMAT, **{name: part_spec(parts[name]) for name in PART_NAMES}, **extra}
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")


def read_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a minivlm model directory: no {CONFIG_FILE}")
    config = json.loads(path.read_text())
    if config.get("format") != FORMAT:
        raise ValueError(f"{path} is not a minivlm config (format {config.get('format')!r}); convert it first")
    return config


def save_weights(model: nn.Module, directory: Path) -> None:
    # save_model handles tied weights (e.g. input and output embeddings) that save_file rejects.
    save_model(model, str(directory / WEIGHTS_FILE))


def load_weights(model: nn.Module, directory: Path) -> None:
    """Strict safetensors load: a missing or unexpected tensor is an error naming it."""
    path = directory / WEIGHTS_FILE
    missing, unexpected = load_model(model, str(path), strict=False)
    if missing or unexpected:
        raise ValueError(f"{path} does not match the model: missing {sorted(missing)}, unexpected {sorted(unexpected)}")


def resolve_directory(path_or_id: str | Path) -> Path:
    """A local directory as is, otherwise a Hub repo id downloaded (explicitly) to the cache."""
    path = Path(path_or_id)
    if path.is_dir():
        return path
    if path.exists() or str(path_or_id).count("/") != 1:
        raise FileNotFoundError(f"{path_or_id} is neither a model directory nor a Hub repo id (owner/name)")
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(str(path_or_id)))
