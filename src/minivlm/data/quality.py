"""Bad-data accounting: counts of good and skipped samples by reason, summed over DataLoader
workers (the counts travel inside each `SampleBatch`) and over ranks (reduced by the
callback), logged as metrics, printed at the end of every epoch, and checked against
`max_bad_fraction`.
"""

from __future__ import annotations

import logging
from collections import Counter

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from minivlm.data.records import REASONS
from minivlm.data.streaming import SampleBatch

log = logging.getLogger(__name__)
MESSAGES_SHOWN = 20  # per process and epoch: enough to see what is wrong without flooding the log
MIN_SAMPLES_TO_STOP = 1000  # mid-epoch, the fraction is only trusted after this many samples
CHECK_EVERY = 50  # batches between mid-epoch checks (each is one small all-reduce)


class TooMuchBadData(RuntimeError):
    """More than `max_bad_fraction` of the samples were skipped."""


class DataQuality:
    """Good and skipped sample counts of one split on this process, since the epoch began."""

    def __init__(self) -> None:
        self.good = 0
        self.skipped: Counter[str] = Counter()
        self.shown = 0

    def add(self, batch: SampleBatch) -> None:
        self.good += len(batch.ids) - len(batch.repeated)
        for item in batch.skipped:
            self.skipped[item.reason] += 1
            if self.shown < MESSAGES_SHOWN:
                self.shown += 1
                log.warning("skipped (%s): %s", item.reason, item)

    def vector(self) -> list[int]:
        """[good, one count per REASONS entry]: a fixed layout every rank can reduce."""
        return [self.good] + [self.skipped[reason] for reason in REASONS]

    def load(self, vector: list[int]) -> None:
        self.good = vector[0]
        self.skipped = Counter({r: n for r, n in zip(REASONS, vector[1:]) if n})

    def reset(self) -> None:
        self.__init__()


def summary(vector: list[int]) -> tuple[float, str]:
    """Bad fraction (shard failures do not count as samples) and a line naming the reasons, worst first."""
    good, counts = vector[0], dict(zip(REASONS, vector[1:]))
    bad = sum(n for r, n in counts.items() if r != "unreadable_shard")
    worst = sorted(((n, r) for r, n in counts.items() if n), reverse=True)
    reasons = ", ".join(f"{r} {n}" for n, r in worst) or "none"
    return bad / max(1, good + bad), f"{good} good samples, {bad} skipped ({reasons})"


def check(vector: list[int], max_bad_fraction: float, final: bool) -> None:
    """Raises TooMuchBadData when the skipped fraction is over the limit (mid-epoch only once
    enough samples were seen for the fraction to mean something)."""
    fraction, line = summary(vector)
    seen = vector[0] + sum(vector[1:])
    if fraction > max_bad_fraction and (final or seen >= MIN_SAMPLES_TO_STOP):
        raise TooMuchBadData(
            f"{fraction:.1%} of the training samples are bad, over max_bad_fraction={max_bad_fraction:.1%}: {line}. "
            "Fix the data (the warnings above name the first files) or raise max_bad_fraction."
        )


class DataQualityCallback(L.Callback):
    """Reduces the training counts over ranks, logs `data/good` and `data/skipped_<reason>`,
    prints a summary at the end of each epoch and stops the run above `max_bad_fraction`.
    Added to the trainer by `LlavaDataModule.setup`."""

    def __init__(self, quality: DataQuality, max_bad_fraction: float) -> None:
        self.quality = quality
        self.max_bad_fraction = max_bad_fraction

    def _reduced(self, trainer: L.Trainer, module: L.LightningModule) -> list[int]:
        local = torch.tensor(self.quality.vector(), dtype=torch.float64, device=module.device)
        return [int(v) for v in trainer.strategy.reduce(local, reduce_op="sum").tolist()]

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if (batch_idx + 1) % CHECK_EVERY == 0:
            check(self._reduced(trainer, module), self.max_bad_fraction, final=False)

    def on_train_epoch_end(self, trainer, module) -> None:
        vector = self._reduced(trainer, module)
        module.log("data/good", float(vector[0]), rank_zero_only=True)
        for reason, count in zip(REASONS, vector[1:]):
            module.log(f"data/skipped_{reason}", float(count), rank_zero_only=True)
        fraction, line = summary(vector)
        rank_zero_info(f"epoch {trainer.current_epoch} data: {line}, {fraction:.2%} bad")
        check(vector, self.max_bad_fraction, final=True)
        self.quality.reset()
