"""`init_from`: start a run from the parts of an earlier one (stage 2 from stage 1).

The source is a model directory written by `MiniVLM.save_pretrained` (keys `<part>.…` in
model.safetensors) or a Lightning `.ckpt` of `MiniVLMModule` (keys `model.<part>.…`).
Each part is loaded strictly on its own; parts the file does not hold keep whatever
they were built with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from minivlm.training.stages import PARTS, Part
from minivlm.weights import read_tensors

MODEL_WEIGHTS = "model.safetensors"
CKPT_PREFIX = "model."


@dataclass
class InitFrom:
    """Where to take weights from (`path`: a model directory or a `.ckpt`) and which parts
    (`parts`; None takes every part the file holds)."""

    path: str
    parts: list[Part] | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.parts or ()) - set(PARTS))
        if unknown:
            raise ValueError(f"init_from.parts: unknown parts {unknown}; parts are {', '.join(PARTS)}")


def _read(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the file, keyed `<part>.…`."""
    if path.is_dir():
        weights = path / MODEL_WEIGHTS
        if not weights.is_file():
            raise FileNotFoundError(f"init_from: {path} is not a minivlm model directory (no {MODEL_WEIGHTS})")
        return read_tensors([weights])
    if path.suffix == ".ckpt" and path.is_file():
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        if "state_dict" not in checkpoint:
            raise ValueError(f"init_from: {path} is not a Lightning checkpoint (no state_dict)")
        state = checkpoint["state_dict"]
        return {key[len(CKPT_PREFIX) :]: value for key, value in state.items() if key.startswith(CKPT_PREFIX)}
    raise FileNotFoundError(f"init_from: {path} is neither a model directory nor a .ckpt file")


def read_parts(init_from: InitFrom) -> dict[Part, dict[str, torch.Tensor]]:
    """The state of each selected part found in `init_from.path`, keys relative to the part.

    A part asked for by name but absent from the file is an error; with `parts` None,
    absent parts are simply not returned.
    """
    path = Path(init_from.path)
    tensors = _read(path)
    found: dict[Part, dict[str, torch.Tensor]] = {}
    for part in PARTS:
        prefix = f"{part}."
        state = {key[len(prefix) :]: value for key, value in tensors.items() if key.startswith(prefix)}
        if state:
            found[part] = state
    if init_from.parts is None:
        return found
    missing = [part for part in init_from.parts if part not in found]
    if missing:
        raise ValueError(f"init_from: {path} holds no weights for {', '.join(missing)} (it has {', '.join(found)})")
    return {part: found[part] for part in init_from.parts}
