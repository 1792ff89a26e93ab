"""Callbacks the resume tests put into `minivlm fit` subprocesses (importable from PYTHONPATH)."""

from __future__ import annotations

import hashlib
import os
import signal

import lightning as L


class RecordBatches(L.Callback):
    """Appends `step digest-of-input-ids` per training batch to `path`, flushed at once."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        digest = hashlib.sha1(batch.input_ids.cpu().numpy().tobytes()).hexdigest()[:16]
        with open(self.path, "a") as file:
            file.write(f"{trainer.global_step} {digest}\n")


class KillAt(L.Callback):
    """SIGKILLs its own process when training reaches optimizer step `step` (after the
    checkpoint written at the end of the previous step), before its first batch runs."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
