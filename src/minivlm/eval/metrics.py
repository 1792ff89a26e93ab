"""torchmetrics metrics for minivlm."""

from __future__ import annotations

import torch
from torchmetrics import Metric

from minivlm.processing.batch import IGNORE_INDEX


class ExactMatch(Metric):
    """Share of samples whose every label token is the model's argmax prediction.

    With teacher forcing this equals exact match of greedy decoding: if the argmax is right
    at every answer position (end-of-turn token included), greedy decoding reproduces the
    answer token by token and stops where it ends. Samples without label tokens are skipped.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("correct", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """`logits` (B, T, V) and `labels` (B, T) aligned as the model returns them (unshifted)."""
        predictions = logits[:, :-1].argmax(dim=-1)
        targets = labels[:, 1:]
        scored = targets != IGNORE_INDEX
        wrong = (predictions != targets) & scored
        has_labels = scored.any(dim=1)
        self.correct += (has_labels & ~wrong.any(dim=1)).sum()
        self.total += has_labels.sum()

    def compute(self) -> torch.Tensor:
        return self.correct.float() / self.total.clamp(min=1)
