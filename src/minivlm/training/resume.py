"""What a checkpoint needs beyond Lightning's own state for a resumed run to continue exactly.

Lightning restores model, optimizer, scheduler and step; the DataModule (see
`minivlm.data.resumable`) restores the data position. `ExactResume` adds every rank's random
number generator states (torch, CUDA, numpy, Python) and makes single-file checkpoints atomic.
The RNG states are put back right before the first training batch after a resume, so that
nothing run while setting up (dataloader iterators draw a seed, for example) shifts them.
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_warn

from minivlm.training.checkpointing import AtomicCheckpointIO

RNG_KEY = "minivlm_rng_states"


def rng_states() -> dict[str, Any]:
    """This process's generator states, as tensors and plain values (loadable with weights_only)."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss),
        "python": random.getstate(),
    }


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"]:
        torch.cuda.set_rng_state_all(states["cuda"])
    kind, keys, position, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    version, state, gauss_next = states["python"]
    random.setstate((version, tuple(state), gauss_next))


class ExactResume(L.Callback):
    """Saves each rank's RNG states in every checkpoint and restores them on resume; swaps
    the default checkpoint writer for `AtomicCheckpointIO`. `MiniVLMModule` adds it itself."""

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        io = getattr(trainer.strategy, "_checkpoint_io", None)
        # Only the stock writer is swapped; a writer named in the recipe is kept as given.
        if io is None or type(io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        states = rng_states()
        if dist.is_available() and dist.is_initialized():
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, states)
        else:
            gathered = [states]
        checkpoint[RNG_KEY] = gathered

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get(RNG_KEY)
        if saved is None:
            return
        if len(saved) != trainer.world_size:
            rank_zero_warn(
                f"the checkpoint holds RNG states of {len(saved)} processes but this run has {trainer.world_size}: "
                "random states start afresh, so the resumed run is not an exact continuation"
            )
            return
        self._pending = saved[trainer.global_rank]

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if self._pending is not None:
            set_rng_states(self._pending)
            self._pending = None
