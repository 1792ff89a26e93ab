"""Helpers every converter shares: reading a safetensors checkpoint directory, renaming its
tensors strictly onto a minivlm model's state dict, and loading a tokenizer with a pad token."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
# Config entries that describe a checkpoint, not an architecture. Parts are built in the
# default dtype like every minivlm part; the weights keep their own dtype on disk.
BOOKKEEPING_KEYS = frozenset({"architectures", "_name_or_path", "transformers_version", "torch_dtype", "dtype"})


def architecture_only(values: dict[str, Any]) -> dict[str, Any]:
    """A config dict without the checkpoint bookkeeping in `BOOKKEEPING_KEYS`."""
    return {key: value for key, value in values.items() if key not in BOOKKEEPING_KEYS}


def load_safetensors_dir(directory: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of the checkpoint in `directory`, read with safetensors only.

    The checkpoint is either sharded (`model.safetensors.index.json`, whose `weight_map`
    names the shard files) or a single `model.safetensors`. Raises FileNotFoundError
    naming the file that is missing.
    """
    directory = Path(directory)
    index = directory / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index} has no `weight_map` naming the shard of each tensor")
        files = [directory / name for name in sorted(set(weight_map.values()))]
    else:
        files = [directory / SINGLE_FILE]
    tensors: dict[str, torch.Tensor] = {}
    for path in files:
        if not path.is_file():
            what = f"a shard listed in {INDEX_FILE}" if index.is_file() else f"nor {INDEX_FILE}"
            raise FileNotFoundError(f"{path} is missing ({what}); is {directory} a safetensors checkpoint?")
        tensors.update(load_file(path))
    return tensors


def apply_key_mapping(
    source: Mapping[str, torch.Tensor],
    rules: Sequence[tuple[str, str]],
    target: Mapping[str, torch.Tensor],
    ignore: Sequence[str] = (),
) -> dict[str, torch.Tensor]:
    """Renames every `source` tensor onto a key of `target` (a model's state dict, possibly
    on the meta device) and returns the renamed state dict.

    `rules` are (regex, replacement) pairs tried in order; the first whose regex matches at
    the start of a source key renames it (`re.sub` with count 1, so groups may be used).
    Source keys matching one of the `ignore` regexes are dropped by design and listed in a
    log line. Strict: raises ValueError listing every source key that no rule maps to a
    target key, every target key left unfilled, two source keys mapped onto one target,
    and every shape that differs from the target's.
    """
    result: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    unused, ignored, clashes, shapes = [], [], [], []
    for key in sorted(source):
        if any(re.match(pattern, key) for pattern in ignore):
            ignored.append(key)
            continue
        renamed = next((re.sub(p, r, key, count=1) for p, r in rules if re.match(p, key)), None)
        if renamed is None or renamed not in target:
            unused.append(key if renamed is None else f"{key} (-> {renamed})")
            continue
        if renamed in result:
            clashes.append(f"{origin[renamed]} and {key} -> {renamed}")
            continue
        tensor = source[key]
        if tensor.shape != target[renamed].shape:
            shapes.append(f"{key} {tuple(tensor.shape)} -> {renamed} {tuple(target[renamed].shape)}")
        result[renamed] = tensor
        origin[renamed] = key
    unfilled = sorted(set(target) - set(result))
    problems = [
        f"{title}: {', '.join(items)}"
        for title, items in (
            ("unused source tensors", unused),
            ("unfilled target tensors", unfilled),
            ("several source tensors for one target", clashes),
            ("shape mismatches", shapes),
        )
        if items
    ]
    if problems:
        raise ValueError("the checkpoint does not map onto the model; " + "; ".join(problems))
    if ignored:
        logger.info("dropped %d source tensors by design: %s", len(ignored), ", ".join(ignored))
    return result



def load_tokenizer(
    src: Path, tokenizer: str | None, pad_candidates: Callable[[PreTrainedTokenizerBase], list[str | None]]
) -> PreTrainedTokenizerBase:
    """The tokenizer named by `tokenizer`, else the one in `src`, with a pad token guaranteed.

    Without a pad token, the first non-None of `pad_candidates(tokenizer)` becomes the pad;
    padding is masked by length, never by id, so this only has to be an existing token.
    """
    if tokenizer is None:
        if not any((src / name).is_file() for name in TOKENIZER_FILES):
            raise FileNotFoundError(
                f"{src} has no tokenizer files ({', '.join(TOKENIZER_FILES)}); pass --tokenizer with a Hub id or path"
            )
        tokenizer = str(src)
    loaded = AutoTokenizer.from_pretrained(tokenizer)
    if loaded.pad_token is None:
        pad = next((token for token in pad_candidates(loaded) if token is not None), None)
        if pad is None:
            raise ValueError(f"the tokenizer from {tokenizer} has no pad token and no fallback to pad with")
        loaded.pad_token = pad
        logger.warning("the tokenizer has no pad token; padding with %r (id %d)", pad, loaded.pad_token_id)
    return loaded
