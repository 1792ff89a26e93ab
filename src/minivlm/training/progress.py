"""A progress bar whose total is the number of batches that will actually run.

Lightning counts an epoch's batches even when `max_steps` ends training sooner, so a
3000-step run over 3125 batches shows `3000/3125`; these bars cap the total at the steps
left (times gradient accumulation).
"""

from __future__ import annotations

from lightning.pytorch.callbacks import ProgressBar, RichProgressBar, TQDMProgressBar
from lightning.pytorch.utilities.imports import _RICH_AVAILABLE


class _StepsLeftTotal:
    @property
    def total_train_batches(self) -> int | float:
        total = super().total_train_batches
        max_steps = self.trainer.max_steps
        if max_steps is not None and max_steps > 0:
            left = (max_steps - self.trainer.global_step) * self.trainer.accumulate_grad_batches
            return min(total, left)
        return total


class StepRichProgressBar(_StepsLeftTotal, RichProgressBar):
    """RichProgressBar with a total capped by `max_steps`."""


class StepTQDMProgressBar(_StepsLeftTotal, TQDMProgressBar):
    """TQDMProgressBar with a total capped by `max_steps`."""


def step_progress_bar() -> ProgressBar:
    """The bar Lightning would pick (rich when installed), with an honest total."""
    return StepRichProgressBar() if _RICH_AVAILABLE else StepTQDMProgressBar()
