"""A training order that can be resumed exactly: a seeded sampler and a DataModule mixin.

`ResumableSampler` draws one permutation per epoch from (`seed`, epoch), cuts it into
global batches of `batch_size × num_replicas` samples and gives each rank its slice of
every global batch, so the samples of step k are the same whatever the number of
processes. It can start an epoch at any batch. It subclasses `DistributedSampler` so
Lightning uses it as is (and calls `set_epoch`) instead of wrapping it.

`ResumableData` stores the data position (epoch, batches done in it) in the checkpoint
through the DataModule's `state_dict`, and hands it to the sampler on resume.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DistributedSampler


class ResumableSampler(DistributedSampler):
    """Rank `rank`'s indices of a seeded, global-batch-ordered epoch over `size` samples.

    The incomplete last global batch is dropped, so every rank gets the same number of
    batches. `start(epoch, batch)` makes the next iteration over `epoch` skip its first
    `batch` batches (once).
    """

    def __init__(self, size: int, batch_size: int, seed: int, num_replicas: int = 1, rank: int = 0, shuffle: bool = True) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}")
        if size < batch_size * num_replicas:
            raise ValueError(
                f"{size} samples make no full global batch of {batch_size} x {num_replicas} processes"
            )
        # DistributedSampler's own state is not used; its constructor needs no process group
        # when num_replicas and rank are given.
        super().__init__(range(size), num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.size = size
        self.batch_size = batch_size
        self.batches_per_epoch = size // (batch_size * num_replicas)
        self._skip: tuple[int, int] | None = None

    def start(self, epoch: int, batch: int) -> None:
        """The next iteration over `epoch` begins at its batch `batch`."""
        if not 0 <= batch <= self.batches_per_epoch:
            raise ValueError(f"batch {batch} is outside the epoch's 0..{self.batches_per_epoch} batches")
        self._skip = (epoch, batch)

    def _order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.size)
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.size, generator=generator)

    def __iter__(self) -> Iterator[int]:
        first = 0
        if self._skip is not None and self._skip[0] == self.epoch:
            first = self._skip[1]
            self._skip = None
        order = self._order()
        glob = self.batch_size * self.num_replicas
        for batch in range(first, self.batches_per_epoch):
            start = batch * glob + self.rank * self.batch_size
            yield from order[start : start + self.batch_size].tolist()

    def __len__(self) -> int:
        return self.batches_per_epoch * self.batch_size


class ResumableData:
    """Mixin for a LightningDataModule whose training order comes from `train_sampler`:
    the data position is saved with each checkpoint and restored on `--ckpt_path`."""

    _resume_position: dict[str, int] | None = None

    def state_dict(self) -> dict[str, Any]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return {}
        epochs = trainer.fit_loop.epoch_progress.current
        if epochs.started == epochs.completed:
            # Saved between epochs (e.g. when fit stops at max_steps, Lightning counts the epoch
            # as complete): the next epoch starts from its first batch.
            return {"epoch": trainer.current_epoch, "batches": 0}
        # Batches whose training step is done in the current epoch (the one being saved included).
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {"epoch": trainer.current_epoch, "batches": done}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:
            self._resume_position = {"epoch": int(state_dict["epoch"]), "batches": int(state_dict["batches"])}

    def train_sampler(self, size: int, batch_size: int, seed: int) -> ResumableSampler:
        """The sampler for this process (rank and world size from the trainer), positioned
        where the restored checkpoint left off."""
        trainer = getattr(self, "trainer", None)
        replicas, rank = 1, 0
        if trainer is not None:
            kwargs = getattr(trainer.strategy, "distributed_sampler_kwargs", None) or {}
            replicas, rank = kwargs.get("num_replicas", 1), kwargs.get("rank", 0)
        sampler = ResumableSampler(size, batch_size, seed, num_replicas=replicas, rank=rank)
        if self._resume_position is not None:
            sampler.start(self._resume_position["epoch"], self._resume_position["batches"])
        return sampler
