"""AdamW parameter groups per part, and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

from minivlm.training.stages import Part, Stage


@dataclass
class ParamGroup:
    """One AdamW group: a part's matrices (decayed) or its 1-D parameters (never decayed)."""

    name: str
    params: list[nn.Parameter]
    lr: float
    weight_decay: float

    def as_dict(self) -> dict:
        return {"name": self.name, "params": self.params, "lr": self.lr, "weight_decay": self.weight_decay}


def param_groups(trainable: dict[Part, list[nn.Parameter]], stage: Stage) -> list[ParamGroup]:
    """Two groups per trained part: `<part>` (weight decay) and `<part>/no_decay` (norms,
    biases, every parameter with fewer than 2 dimensions). Empty groups are left out."""
    groups = []
    for part, params in trainable.items():
        lr = stage.of(part).lr
        assert lr is not None  # Stage checks that every trained part has one
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        if decay:
            groups.append(ParamGroup(part, decay, lr, stage.weight_decay))
        if no_decay:
            groups.append(ParamGroup(f"{part}/no_decay", no_decay, lr, 0.0))
    if not groups:
        raise ValueError(f"nothing to train: the stage trains {', '.join(stage.trained)}, which have no parameters")
    return groups


def warmup_cosine(step: int, total_steps: int, warmup_ratio: float, min_ratio: float = 0.0) -> float:
    """The factor on each group's learning rate at optimizer step `step` (0-based): linear
    warmup from 1/warmup to 1 over the first `warmup_ratio` of `total_steps`, then cosine
    decay to `min_ratio` at the last step."""
    warmup = int(warmup_ratio * total_steps)
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def adamw_implementation(params: list[torch.Tensor]) -> dict[str, bool]:
    """The fastest AdamW kernel that computes the same update as the for-loop one: `fused`
    when every parameter is a plain floating-point tensor and all share one device type with
    fused kernels (CPU, CUDA, ...), `foreach` otherwise (FSDP2's DTensors, mixed devices).

    torch only picks `foreach` by itself on CUDA and never picks `fused`; on CPU its default is
    the per-parameter loop. DTensors get `foreach`: their sharding rules cover the fused ops, but
    that path is not exercised here, and `foreach` is what torch itself picks for DTensors on CUDA."""
    device_types = {p.device.type for p in params}
    plain = all(type(p) in (torch.Tensor, nn.Parameter) and torch.is_floating_point(p) for p in params)
    if plain and len(device_types) == 1 and device_types <= set(_get_fused_kernels_supported_devices()):
        return {"fused": True, "foreach": False}
    return {"fused": False, "foreach": True}


def build_optimizer(
    trainable: dict[Part, list[nn.Parameter]], stage: Stage, total_steps: int
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over the per-part groups (fused or foreach kernel, see `adamw_implementation`),
    with a step-wise warmup + cosine schedule."""
    groups = [group.as_dict() for group in param_groups(trainable, stage)]
    optimizer = torch.optim.AdamW(groups, **adamw_implementation([p for group in groups for p in group["params"]]))
    total = max(1, total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, total, stage.warmup_ratio, stage.min_lr_ratio)
    )
    return optimizer, scheduler
