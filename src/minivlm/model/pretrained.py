"""The model directory's config.json: each part by class_path and init_args, plus the minivlm version.

A directory is rebuilt from it alone (see `MiniVLM.from_pretrained`): no Lightning, no
`trust_remote_code`, no unpickling, and nothing but config.json and the weights is read
(a `recipe.yaml` or any code in the directory is documentation, never run or imported).
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
from pathlib import Path
from typing import Any

from torch import nn

CONFIG_FILE = "config.json"
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
    init_args = spec.get("init_args", {})
    if not isinstance(init_args, dict):
        raise ValueError(f"config.json: {role} init_args must be a mapping, got {type(init_args).__name__}")
    try:
        return cls(**init_args)
    except TypeError as error:
        raise ValueError(f"config.json: {role} {class_path} rejects its init_args: {error}") from error


def _version() -> str:
    from minivlm import __version__  # at call time the package is fully imported

    return __version__


def write_config(directory: Path, parts: dict[str, nn.Module], extra: dict[str, Any]) -> None:
    config = {
        "format": FORMAT,
        "minivlm_version": _version(),
        **{name: part_spec(parts[name]) for name in PART_NAMES},
        **extra,
    }
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def read_config(directory: Path) -> dict[str, Any]:
    """config.json of a model directory, checked to be a minivlm config this version can read."""
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a minivlm model directory: no {CONFIG_FILE}")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        found = config.get("format") if isinstance(config, dict) else None
        raise ValueError(f"{path} is not a minivlm config (format {found!r}); convert it first")
    written_by = str(config.get("minivlm_version", "0"))
    if _release(written_by) > _release(_version()):
        raise ValueError(
            f"{path} was written by minivlm {written_by}, newer than the installed {_version()}; upgrade minivlm to load it"
        )
    return config


def resolve_directory(path_or_id: str | Path, revision: str | None = None) -> Path:
    """A local directory as is, otherwise a Hub repo id fetched (explicitly) through the Hub cache."""
    path = Path(path_or_id)
    if path.is_dir():
        if revision is not None:
            raise ValueError(f"revision={revision!r} applies to Hub repo ids, but {path_or_id} is a local directory")
        return path
    if path.exists() or str(path_or_id).count("/") != 1:
        raise FileNotFoundError(f"{path_or_id} is neither a model directory nor a Hub repo id (owner/name)")
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(str(path_or_id), revision=revision))
