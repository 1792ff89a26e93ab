"""What trains in a run, and how fast: the stage, as data in the recipe.

A recipe's `model.stage` names, for each of the five parts, how it trains (`frozen`,
`full`, or `lora` for the LLM and pre-fusion) and its learning rate. This is the only
place that decides freezing: parts carry no trainable flag of their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

Part = Literal["encoder", "compressor", "projector", "prefusion", "llm"]
PARTS: tuple[Part, ...] = ("encoder", "compressor", "projector", "prefusion", "llm")
Mode = Literal["frozen", "full", "lora"]
# LoRA adapts linear layers of transformer blocks; only these parts are built of them.
LORA_PARTS: tuple[Part, ...] = ("prefusion", "llm")


@dataclass
class PartStage:
    """How one part trains: `mode` frozen / full / lora, at learning rate `lr` (needed unless frozen)."""

    mode: Mode = "frozen"
    lr: float | None = None


@dataclass
class Stage:
    """How each part trains in this run (all frozen unless named), plus the AdamW schedule:
    linear warmup over `warmup_ratio` of the steps, then cosine decay to `min_lr_ratio`
    times each group's learning rate. `weight_decay` applies to matrices only, never to
    norms, biases or other 1-D parameters."""

    encoder: PartStage = field(default_factory=PartStage)
    compressor: PartStage = field(default_factory=PartStage)
    projector: PartStage = field(default_factory=PartStage)
    prefusion: PartStage = field(default_factory=PartStage)
    llm: PartStage = field(default_factory=PartStage)
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        for part in PARTS:
            setting = self.of(part)
            if setting.mode not in ("frozen", "full", "lora"):
                raise ValueError(f"stage.{part}.mode must be frozen, full or lora, got {setting.mode!r}")
            if setting.mode == "lora" and part not in LORA_PARTS:
                raise ValueError(f"stage.{part}.mode is lora, but LoRA applies to {' and '.join(LORA_PARTS)} only")
            if setting.mode != "frozen" and (setting.lr is None or setting.lr <= 0):
                raise ValueError(f"stage.{part} trains ({setting.mode}) and needs a learning rate > 0, got {setting.lr}")
        if not self.trained:
            raise ValueError("the stage trains nothing: give at least one part a mode full or lora")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"stage.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"stage.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")

    def of(self, part: Part) -> PartStage:
        return getattr(self, part)

    @property
    def trained(self) -> list[Part]:
        """Parts that learn, in full or through LoRA adapters."""
        return [part for part in PARTS if self.of(part).mode != "frozen"]


def data_flow(placement: str) -> list[Part]:
    """The parts in the order data passes through them (the compressor runs on encoder
    features before the projector, or on projected ones after it)."""
    middle: list[Part] = ["compressor", "projector"] if placement == "before_projector" else ["projector", "compressor"]
    return ["encoder", *middle, "prefusion", "llm"]


def parts_without_grad(stage: Stage, placement: str) -> list[Part]:
    """Frozen parts that can run under no_grad: those with no trained part before them in the
    data flow. A frozen part after a trained one keeps grad mode on, so gradients flow
    through it to the parts that learn (its own parameters still get none)."""
    result = []
    for part in data_flow(placement):
        if stage.of(part).mode != "frozen":
            break
        result.append(part)
    return result


class _NoGrad:
    """Forward hooks that switch grad mode off for one module's forward and restore it after."""

    def __init__(self) -> None:
        self.saved: list[bool] = []

    def before(self, module: nn.Module, args) -> None:
        self.saved.append(torch.is_grad_enabled())
        torch.set_grad_enabled(False)

    def after(self, module: nn.Module, args, output) -> None:
        torch.set_grad_enabled(self.saved.pop())


def run_without_grad(module: nn.Module) -> list[RemovableHandle]:
    """Makes `module` run under no_grad from now on; returns the hook handles."""
    hooks = _NoGrad()
    return [
        module.register_forward_pre_hook(hooks.before),
        module.register_forward_hook(hooks.after, always_call=True),
    ]
