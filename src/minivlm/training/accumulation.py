"""Exact loss normalisation over a whole optimizer step (all micro-batches, all ranks).

Averaging each micro-batch's mean loss weights a label token of a short micro-batch more
than one of a long micro-batch. The exact step loss is Σ token losses / Σ label tokens
over every micro-batch of the accumulated batch on every rank. The total count is only
known after the last micro-batch, so each micro-batch backpropagates its *summed* loss
(scaled to cancel the averaging Lightning and DDP/FSDP apply), and the gradients are
divided by the global token count just before the optimizer step (before clipping).
"""

from __future__ import annotations

import lightning as L
import torch


def data_parallel_size(trainer: L.Trainer) -> int:
    """How many processes average the gradients (DDP ranks or FSDP's data-parallel mesh)."""
    kwargs = getattr(trainer.strategy, "distributed_sampler_kwargs", None) or {}
    return int(kwargs.get("num_replicas", 1))


class TokenNormalisedLoss:
    """Collects summed losses and label counts over one optimizer step; rescales the gradients."""

    def __init__(self) -> None:
        self.loss_sum: torch.Tensor | None = None
        self.count: torch.Tensor | None = None

    def micro_batch(self, loss_sum: torch.Tensor, count: torch.Tensor, trainer: L.Trainer) -> torch.Tensor:
        """Records one micro-batch; returns the loss to backpropagate: its summed loss, times
        the factors by which Lightning (accumulation) and DDP/FSDP (ranks) divide gradients."""
        detached = torch.stack([loss_sum.detach().float(), count.detach().float()])
        if self.loss_sum is None:
            self.loss_sum, self.count = detached[0], detached[1]
        else:
            self.loss_sum, self.count = self.loss_sum + detached[0], self.count + detached[1]
        return loss_sum * (trainer.accumulate_grad_batches * data_parallel_size(trainer))

    def finish_step(self, module: L.LightningModule) -> torch.Tensor:
        """Divides every gradient by the step's global label count; returns the step's mean
        loss over all label tokens of all ranks (identical on every rank)."""
        if self.loss_sum is None or self.count is None:
            raise RuntimeError("finish_step() before any micro-batch of this optimizer step")
        totals = torch.stack([self.loss_sum, self.count])
        totals = module.trainer.strategy.reduce(totals, reduce_op="sum")
        self.loss_sum = self.count = None
        count = totals[1].clamp(min=1)
        for param in module.parameters():
            if param.grad is not None:
                param.grad.div_(count.to(param.grad.device))
        return totals[0] / count
