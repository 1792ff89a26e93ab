"""Stages as data: validation, the no_grad rule, AdamW groups and the warmup + cosine schedule."""

import math

import pytest
import torch
from torch import nn

from minivlm.training.optim import build_optimizer, param_groups
from minivlm.training.stages import PartStage, Stage, data_flow, parts_without_grad, run_without_grad


def stage(**modes) -> Stage:
    return Stage(**{part: PartStage(mode, lr) for part, (mode, lr) in modes.items()})


@pytest.mark.parametrize(
    "modes, message",
    [
        ({}, "trains nothing"),
        ({"encoder": ("lora", 1e-4)}, "LoRA applies to prefusion and llm only"),
        ({"llm": ("full", None)}, r"stage.llm trains \(full\) and needs a learning rate"),
        ({"projector": ("full", 0.0)}, "needs a learning rate > 0"),
    ],
)
def test_bad_stage_fails_with_a_message_naming_the_part(modes, message):
    with pytest.raises(ValueError, match=message):
        stage(**modes)


def test_trained_lists_full_and_lora_parts_in_part_order():
    assert stage(llm=("lora", 1e-4), projector=("full", 1e-3)).trained == ["projector", "llm"]


@pytest.mark.parametrize(
    "placement, modes, expected",
    [
        # stage 1: only the projector trains; the frozen LLM after it must keep grad mode on
        ("after_projector", {"projector": ("full", 1e-3)}, ["encoder"]),
        ("before_projector", {"projector": ("full", 1e-3)}, ["encoder", "compressor"]),
        ("before_projector", {"compressor": ("full", 1e-3)}, ["encoder"]),
        ("before_projector", {"encoder": ("full", 1e-3)}, []),
        ("before_projector", {"llm": ("lora", 1e-4)}, ["encoder", "compressor", "projector", "prefusion"]),
    ],
)
def test_frozen_parts_before_every_trained_part_run_without_grad(placement, modes, expected):
    assert parts_without_grad(stage(**modes), placement) == expected


def test_data_flow_follows_the_compressor_placement():
    assert data_flow("before_projector")[1:3] == ["compressor", "projector"]
    assert data_flow("after_projector")[1:3] == ["projector", "compressor"]


def test_no_grad_hook_restores_grad_mode_even_when_forward_raises():
    class Boom(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    seen = []
    layer = nn.Linear(2, 2)
    layer.register_forward_hook(lambda m, a, o: seen.append(torch.is_grad_enabled()))
    run_without_grad(layer)
    out = layer(torch.ones(1, 2))
    assert seen == [False] and not out.requires_grad and torch.is_grad_enabled()
    boom = Boom()
    run_without_grad(boom)
    with pytest.raises(RuntimeError, match="boom"):
        boom(torch.ones(1))
    assert torch.is_grad_enabled()


def two_parts() -> dict:
    torch.manual_seed(0)
    projector = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 8))
    llm = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 10, bias=False))
    return {"projector": list(projector.parameters()), "llm": list(llm.parameters())}


def test_groups_per_part_with_no_decay_on_one_dimensional_parameters():
    params = two_parts()
    groups = {g.name: g for g in param_groups(params, Stage(
        projector=PartStage("full", 1e-3), llm=PartStage("full", 1e-4), weight_decay=0.1))}
    assert set(groups) == {"projector", "projector/no_decay", "llm"}  # the llm has no 1-D parameter
    assert all(p.ndim >= 2 for p in groups["projector"].params) and len(groups["projector"].params) == 2
    assert all(p.ndim == 1 for p in groups["projector/no_decay"].params) and len(groups["projector/no_decay"].params) == 4
    assert (groups["projector"].weight_decay, groups["projector/no_decay"].weight_decay) == (0.1, 0.0)
    assert (groups["projector"].lr, groups["llm"].lr) == (1e-3, 1e-4)
    assert groups["llm"].weight_decay == 0.1


def expected_factor(step: int, total: int, warmup: int, floor: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / (total - warmup)
    return floor + (1 - floor) * (1 + math.cos(math.pi * t)) / 2


@pytest.mark.parametrize("floor", [0.0, 0.1])
def test_each_group_warms_up_linearly_then_follows_a_cosine(floor):
    total, warmup = 100, 10
    optimizer, scheduler = build_optimizer(
        two_parts(),
        Stage(projector=PartStage("full", 1e-3), llm=PartStage("full", 1e-4), warmup_ratio=0.1, min_lr_ratio=floor),
        total,
    )
    base = {g["name"]: g["initial_lr"] for g in optimizer.param_groups}
    assert base == {"projector": 1e-3, "projector/no_decay": 1e-3, "llm": 1e-4}
    seen = {}
    for step in range(total):
        seen[step] = {g["name"]: g["lr"] for g in optimizer.param_groups}
        optimizer.step()
        scheduler.step()
    for step in (0, 4, 9, 10, 30, 55, 99):
        for name, lr in seen[step].items():
            assert lr == pytest.approx(base[name] * expected_factor(step, total, warmup, floor), rel=1e-9), (step, name)
    assert seen[9]["llm"] == pytest.approx(1e-4) and seen[10]["llm"] == pytest.approx(1e-4)  # the peak
    assert seen[55]["projector"] == pytest.approx(1e-3 * (floor + (1 - floor) * 0.5))  # half-way down the cosine
