"""`build_optimizer` runs AdamW's fused (or foreach) kernel, and its update equals the for-loop one."""

import copy

import pytest
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from minivlm.training import optim
from minivlm.training.optim import adamw_implementation, build_optimizer, param_groups, warmup_cosine
from minivlm.training.stages import PartStage, Stage


def parts() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {"projector": nn.Sequential(nn.Linear(12, 16), nn.LayerNorm(16), nn.Linear(16, 8)),
            "llm": nn.Sequential(nn.Embedding(20, 8), nn.Linear(8, 20, bias=False))}


def loss_of(modules: dict[str, nn.Module], step: int) -> torch.Tensor:
    """A loss whose gradients differ per parameter and per step (two differing samples)."""
    g = torch.Generator().manual_seed(step)
    x = torch.randn(2, 12, generator=g)
    ids = torch.tensor([[step % 20, 3], [7, (5 * step) % 20]])
    hidden = modules["llm"][0](ids).sum(1) + modules["projector"](x)
    return (modules["llm"][1](hidden) ** 2).mean() + hidden.pow(3).mean()


STAGE = Stage(projector=PartStage("full", 3e-2), llm=PartStage("full", 1e-2), weight_decay=0.1, warmup_ratio=0.25)


def run(modules: dict[str, nn.Module], make_optimizer, steps: int = 6) -> torch.optim.Optimizer:
    trainable = {part: list(module.parameters()) for part, module in modules.items()}
    optimizer, scheduler = make_optimizer(trainable)
    for step in range(steps):
        optimizer.zero_grad()
        loss_of(modules, step).backward()
        optimizer.step()
        scheduler.step()
    return optimizer


@pytest.mark.parametrize("kernel", ["fused", "foreach"])
def test_fast_update_equals_the_for_loop_adamw(kernel, monkeypatch):
    if kernel == "foreach":  # the branch FSDP2's DTensors take, here on plain tensors
        monkeypatch.setattr(optim, "adamw_implementation", lambda params: {"fused": False, "foreach": True})
    fast, slow = parts(), parts()
    reference = copy.deepcopy(slow)
    optimizer = run(fast, lambda trainable: build_optimizer(trainable, STAGE, total_steps=8))
    assert all(group[kernel] for group in optimizer.param_groups)

    def for_loop(trainable):
        plain = torch.optim.AdamW([g.as_dict() for g in param_groups(trainable, STAGE)], foreach=False, fused=False)
        return plain, LambdaLR(plain, lambda step: warmup_cosine(step, 8, STAGE.warmup_ratio, STAGE.min_lr_ratio))

    run(slow, for_loop)
    for part in fast:
        for (name, a), b, start in zip(fast[part].named_parameters(), slow[part].parameters(), reference[part].parameters()):
            assert not torch.equal(a, start), name  # the steps moved every parameter
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=f"{part}.{name}")


def test_foreach_when_parameters_are_not_plain_tensors_on_one_device_type():
    plain = [nn.Parameter(torch.zeros(2, 2)), nn.Parameter(torch.zeros(3))]
    assert adamw_implementation(plain) == {"fused": True, "foreach": False}
    meta = [nn.Parameter(torch.zeros(2, device="meta"))]
    assert adamw_implementation(plain + meta) == {"fused": False, "foreach": True}

    class Wrapped(torch.Tensor):  # stands for FSDP2's DTensor: a tensor subclass
        pass

    assert adamw_implementation([torch.zeros(2).as_subclass(Wrapped)]) == {"fused": False, "foreach": True}
    assert adamw_implementation([torch.zeros(2, dtype=torch.int64)]) == {"fused": False, "foreach": True}

