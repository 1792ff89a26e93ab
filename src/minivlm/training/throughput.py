"""Training throughput: samples/s, LLM tokens/s, pre-fusion tokens/s and peak memory.

Tokens are counted where the work happens: forward hooks on the LLM (its non-padding
input positions, vision tokens included) and on pre-fusion (every position of its
[vision ; compressed ; text] sequences, the cost it pays). Counts are summed over all
ranks, time is wall-clock between logging points (data loading included), so the rates
are what the whole job achieves. Model FLOPs utilisation needs a FLOPs count per token,
which minivlm does not compute yet, so MFU is not logged.
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch


@dataclass
class WindowCounts:
    """What was processed between two logging points, summed over ranks."""

    samples: int = 0
    llm_tokens: int = 0
    prefusion_tokens: int = 0
    seconds: float = 0.0


def peak_memory_gib(device: torch.device) -> float:
    """Peak allocated memory on a CUDA device, else the process's peak resident memory."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in kilobytes on Linux, in bytes on macOS.
    return peak / (2**30 if sys.platform == "darwin" else 2**20)


class ThroughputMonitor(L.Callback):
    """Logs `perf/samples_per_s`, `perf/llm_tokens_per_s`, `perf/prefusion_tokens_per_s`
    and `perf/peak_memory_gib` every `every_n_steps` optimizer steps (first window skipped
    when `skip_first` is set: it includes start-up and compilation)."""

    def __init__(self, every_n_steps: int = 10, skip_first: bool = True) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.skip_first = skip_first
        self.last: WindowCounts | None = None
        self._counts = torch.zeros(3, dtype=torch.float64)
        self._hooks: list[Any] = []
        self._start: float | None = None
        self._windows = 0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        model = pl_module.model
        self._hooks = [
            model.llm.register_forward_hook(self._count_llm, with_kwargs=True),
            model.prefusion.register_forward_hook(self._count_prefusion),
        ]

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def _count_llm(self, module, args, kwargs, output) -> None:
        if module.training:
            embeds = args[0] if args else kwargs["inputs_embeds"]
            mask = kwargs.get("attention_mask")
            self._counts[1] += int(mask.sum()) if mask is not None else embeds.shape[0] * embeds.shape[1]

    def _count_prefusion(self, module, args, output) -> None:
        if module.training and any(True for _ in module.parameters()):
            vision, compressed, text = args[0], args[1], args[2]
            self._counts[2] += text.shape[0] * (vision.shape[1] + compressed.shape[1] + text.shape[1])

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if self._start is None:
            self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._counts[0] += batch.batch_size
        # Lightning increments global_step when the optimizer steps; log on step boundaries only.
        if (batch_idx + 1) % trainer.accumulate_grad_batches != 0 or trainer.global_step % self.every_n_steps != 0:
            return
        device = pl_module.device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        now = time.perf_counter()
        totals = trainer.strategy.reduce(self._counts.to(device), reduce_op="sum").cpu()
        window = WindowCounts(int(totals[0]), int(totals[1]), int(totals[2]), now - (self._start or now))
        self._counts.zero_()
        self._start = now
        self._windows += 1
        if self.skip_first and self._windows == 1:
            return
        self.last = window
        seconds = max(window.seconds, 1e-9)
        pl_module.log_dict(
            {
                "perf/samples_per_s": window.samples / seconds,
                "perf/llm_tokens_per_s": window.llm_tokens / seconds,
                "perf/prefusion_tokens_per_s": window.prefusion_tokens / seconds,
                "perf/peak_memory_gib": peak_memory_gib(device),
            },
            on_step=True,
            on_epoch=False,
        )
