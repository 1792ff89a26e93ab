"""Building parts without weights and filling them once from a checkpoint.

A part with `pretrained:` is built with its parameters on the meta device (buffers such
as RoPE tables stay real: they are computed, not stored) and with every random
initialiser switched off. Its weights are later read from the checkpoint, cast once to
the dtype the run wants, and assigned in place: nothing is ever initialised at random and
then overwritten. Weights are read with safetensors, or `torch.load(weights_only=True)`
for `.bin` / `.ckpt` files, never unpickled otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn
from transformers.initialization import no_init_weights

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_FILE = "model.safetensors"
BIN_INDEX = "pytorch_model.bin.index.json"
BIN_FILE = "pytorch_model.bin"


@contextmanager
def registered_on_meta() -> Iterator[None]:
    """Every parameter registered inside goes to the meta device (no memory); buffers are
    created normally. Initialisers still run (on meta, where they cost nothing but time):
    `parameters_on_meta` and `minivlm.model.weights.empty_parameters` add how to skip them."""
    register = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(module, name, param)
        if param is not None and not param.is_meta:
            module._parameters[name] = type(param)(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = register_on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Every parameter registered inside goes to the meta device, no transformers initialiser
    runs; buffers are created normally (they are derived from the config, not stored)."""
    with registered_on_meta(), no_init_weights():
        yield


def has_meta_parameters(module: nn.Module) -> bool:
    return any(p.is_meta for p in module.parameters())


def resolve_checkpoint_dir(name_or_path: str) -> Path:
    """A local directory as is; otherwise a Hub repo id fetched (explicitly, now) to the local cache."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if path.exists() or name_or_path.count("/") != 1:
        raise FileNotFoundError(f"{name_or_path} is neither a local directory nor a Hub repo id (owner/name)")
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(name_or_path, allow_patterns=["*.json", "*.safetensors", "*.bin"]))


def checkpoint_files(directory: Path) -> list[Path]:
    """The weight files of a transformers model directory: sharded or single, safetensors preferred."""
    for index, single in ((SAFETENSORS_INDEX, SAFETENSORS_FILE), (BIN_INDEX, BIN_FILE)):
        if (directory / index).is_file():
            shards = sorted(set(json.loads((directory / index).read_text())["weight_map"].values()))
            return [directory / shard for shard in shards]
        if (directory / single).is_file():
            return [directory / single]
    raise FileNotFoundError(f"{directory} holds no weights ({SAFETENSORS_FILE}, {BIN_FILE} or a sharded index)")


def read_tensors(files: list[Path], keep: Callable[[str], bool] = lambda key: True) -> dict[str, torch.Tensor]:
    """Tensors whose key `keep` accepts, from safetensors files (read lazily, key by key)
    or torch files (memory-mapped, weights only)."""
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        if file.suffix == ".safetensors":
            with safe_open(str(file), framework="pt") as handle:
                for key in handle.keys():
                    if keep(key):
                        tensors[key] = handle.get_tensor(key)
        else:
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            tensors.update({key: value for key, value in state.items() if keep(key)})
    return tensors


def _aliases(module: nn.Module) -> dict[str, str]:
    """Parameter names that share one tensor with an earlier name (tied embeddings), alias -> owner."""
    owners: dict[int, str] = {}
    aliases = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        if id(param) in owners:
            aliases[name] = owners[id(param)]
        else:
            owners[id(param)] = name
    return aliases


def _set_parameter(module: nn.Module, name: str, param: nn.Parameter) -> None:
    owner, _, leaf = name.rpartition(".")
    setattr(module.get_submodule(owner) if owner else module, leaf, param)


def load_state(module: nn.Module, state: dict[str, torch.Tensor], dtype: torch.dtype | None, source: str) -> None:
    """Loads `state` into `module` strictly, casting floating tensors to `dtype` (None keeps the
    file's dtype). Meta parameters are replaced by the loaded tensors (no copy, no random
    init); real ones are copied into. Tied parameters stay tied; a tied alias may be absent."""
    aliases = _aliases(module)
    expected = set(module.state_dict())
    missing = sorted(expected - set(state) - set(aliases))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f"{source} does not match {type(module).__name__}: missing {missing}, unexpected {unexpected}")
    state = {
        key: value.to(dtype) if dtype is not None and value.is_floating_point() else value
        for key, value in state.items()
        if key not in aliases
    }
    module.load_state_dict(state, strict=False, assign=has_meta_parameters(module))
    for alias, owner in aliases.items():
        _set_parameter(module, alias, module.get_parameter(owner))
