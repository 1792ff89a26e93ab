"""Model weights on disk: sharded safetensors files, written and read without copies to spare.

Reading uses a small safetensors reader of our own (header JSON + raw bytes read straight
into each tensor): no pickle, no mmap whose resident pages would count twice, so loading
an N-byte model costs about N bytes of memory. Building a model to load into happens under
`empty_parameters()`: parameters go to the meta device as they are registered and random
initialisers are skipped, while buffers (rotary frequencies, position ids, fixed sin-cos
tables) are computed for real, so nothing but the file's tensors has to be filled in.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from torch.overrides import TorchFunctionMode

from minivlm.weights import registered_on_meta

WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_SIZE = 5 * 2**30
_SIZE_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
# Header sizes above this are not safetensors files (a pickle's first 8 bytes decode to a huge number).
_MAX_HEADER = 100 * 2**20
# Tensor methods and torch.nn.init functions that fill a tensor with random values (a mode sees
# only the outermost call, so the nn.init wrappers are listed besides the methods they use).
_RANDOM_IN_PLACE = {
    "normal_", "uniform_", "random_", "bernoulli_", "exponential_", "cauchy_", "log_normal_", "geometric_",
    "trunc_normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_", "xavier_normal_", "orthogonal_", "sparse_",
}
_RANDOM_FACTORIES = {torch.randn: torch.empty, torch.rand: torch.empty, torch.randn_like: torch.empty_like, torch.rand_like: torch.empty_like}


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string such as "500MB" or "5GiB"."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?I?B)\s*", size.upper())
    if not match:
        raise ValueError(f"size {size!r} is not a number of bytes or a size like '500MB' or '5GiB'")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


class _SkipRandomInit(TorchFunctionMode):
    """Random initialisers do nothing: weights are about to be overwritten by the file's."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") in _RANDOM_IN_PLACE:
            return args[0] if args else kwargs["tensor"]
        if func in _RANDOM_FACTORIES:
            kwargs.pop("generator", None)
            return _RANDOM_FACTORIES[func](*args, **kwargs)
        return func(*args, **kwargs)


@contextmanager
def empty_parameters() -> Iterator[None]:
    """Modules built inside get meta parameters (no memory, no random init) and real buffers.
    Unlike `minivlm.weights.parameters_on_meta`, random initialisers are skipped for any module
    (a user's own part too), not only transformers ones."""
    with registered_on_meta(), _SkipRandomInit():
        yield


def _unique_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with each shared tensor (tied weights) once, under its first name."""
    seen: set[tuple] = set()
    unique = {}
    for name, tensor in model.state_dict().items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.dtype)
        if key not in seen:
            seen.add(key)
            unique[name] = tensor
    return unique


def save_weights(
    model: nn.Module, directory: Path, max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE, dtype: torch.dtype | None = None
) -> list[str]:
    """Writes model.safetensors, or numbered shards + an index above `max_shard_size`; returns file names.

    `dtype` converts floating tensors one at a time as they are written.
    """
    limit = parse_size(max_shard_size)
    shards: list[dict[str, torch.Tensor]] = [{}]
    sizes = [0]
    total = 0
    for name, tensor in _unique_tensors(model).items():
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and sizes[-1] + nbytes > limit:
            shards.append({})
            sizes.append(0)
        shards[-1][name] = tensor.detach().contiguous().cpu()
        sizes[-1] += nbytes
        total += nbytes
    for stale in [*directory.glob("model-*-of-*.safetensors"), directory / WEIGHTS_FILE, directory / INDEX_FILE]:
        stale.unlink(missing_ok=True)
    if len(shards) == 1:
        save_file(shards[0], str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
        return [WEIGHTS_FILE]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for name, shard in zip(names, shards):
        save_file(shard, str(directory / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return [*names, INDEX_FILE]


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a model directory (the index's shards, or model.safetensors)."""
    index = directory / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index} has no weight_map")
        files = [directory / name for name in dict.fromkeys(weight_map.values())]
        for file in files:
            if file.parent != directory or not file.is_file():
                raise FileNotFoundError(f"{index} names {file.name}, which is not in {directory}")
        return files
    if (directory / WEIGHTS_FILE).is_file():
        return [directory / WEIGHTS_FILE]
    present = sorted(p.name for p in directory.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl"))
    hint = f" (found {', '.join(present)}; minivlm reads safetensors only and never unpickles)" if present else ""
    raise FileNotFoundError(f"{directory} has no {WEIGHTS_FILE} or {INDEX_FILE}{hint}")


def read_header(path: Path) -> tuple[dict, int]:
    """The safetensors header of `path` and the offset where tensor data starts."""
    with path.open("rb") as file:
        prefix = file.read(8)
        size = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else -1
        if not 0 < size <= _MAX_HEADER:
            raise ValueError(f"{path} is not a safetensors file (bad header length)")
        try:
            header = json.loads(file.read(size))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path} is not a safetensors file (header is not JSON: {error})") from error
    if not isinstance(header, dict):
        raise ValueError(f"{path} is not a safetensors file (header is not a JSON object)")
    header.pop("__metadata__", None)
    return header, 8 + size


def read_tensors(path: Path, names: set[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Yields (name, CPU tensor) for the tensors of `path` (those in `names`, if given), one at a time."""
    header, start = read_header(path)
    data_size = path.stat().st_size - start
    with path.open("rb") as file:
        for name, info in header.items():
            if names is not None and name not in names:
                continue
            dtype = _DTYPES.get(info.get("dtype"))
            shape, (begin, end) = info.get("shape"), info.get("data_offsets", (0, -1))
            if dtype is None or not isinstance(shape, list):
                raise ValueError(f"{path}: tensor {name} has an unsupported dtype {info.get('dtype')!r} or no shape")
            tensor = torch.empty(shape, dtype=dtype)
            if end - begin != tensor.numel() * tensor.element_size() or not 0 <= begin <= end <= data_size:
                raise ValueError(f"{path}: tensor {name} has data offsets that do not match its shape {shape}")
            file.seek(start + begin)
            if end > begin and file.readinto(memoryview(tensor.view(-1).view(torch.uint8).numpy())) != end - begin:
                raise ValueError(f"{path}: tensor {name} is truncated")
            yield name, tensor


def load_weights(
    model: nn.Module, directory: Path, dtype: torch.dtype | None = None, device: torch.device | str | None = None
) -> None:
    """Fills `model` (typically with meta parameters) from the directory's safetensors files, strictly.

    Each tensor is read once, converted to `dtype` (floating tensors only; None keeps the
    stored dtype) and moved to `device`. Tied weights end up shared again. A tensor the
    model lacks, a tensor the files lack, or a shape that differs is an error naming it.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    expected = model.state_dict(keep_vars=True)
    groups: dict[int, list[str]] = {}
    for name, tensor in expected.items():
        groups.setdefault(id(tensor), []).append(name)
    loaded: dict[str, torch.Tensor] = {}
    unexpected = []
    for path in weight_files(directory):
        for name, tensor in read_tensors(path):
            if name not in expected:
                unexpected.append(name)
                continue
            if tuple(tensor.shape) != tuple(expected[name].shape):
                raise ValueError(
                    f"{path.name}: tensor {name} has shape {tuple(tensor.shape)} but the model built from "
                    f"config.json expects {tuple(expected[name].shape)}"
                )
            if dtype is not None and tensor.is_floating_point():
                tensor = tensor.to(dtype)
            loaded[name] = tensor.to(device)
    missing = [
        name for name in expected if name not in loaded and not any(n in loaded for n in groups[id(expected[name])])
    ]
    if missing or unexpected:
        raise ValueError(
            f"the weights in {directory} do not match the model built from config.json: "
            f"missing {sorted(missing)}, unexpected {sorted(unexpected)}"
        )
    for names in groups.values():
        value = loaded[next(n for n in names if n in loaded)]
        shared: nn.Parameter | None = None
        for name in names:
            module_name, _, leaf = name.rpartition(".")
            module = model.get_submodule(module_name)
            if leaf in module._parameters:
                # One Parameter per group, so tied weights (e.g. input and output embeddings) stay tied.
                if shared is None:
                    shared = nn.Parameter(value, requires_grad=module._parameters[leaf].requires_grad)
                module._parameters[leaf] = shared
            else:
                module._buffers[leaf] = value
    # Buffers outside the state dict (non-persistent) were computed at build time; move them along.
    for module in model.modules():
        for leaf, buffer in module._buffers.items():
            if buffer is not None and buffer.device != device:
                module._buffers[leaf] = buffer.to(device)
