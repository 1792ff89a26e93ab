"""`LlavaDataModule`: LLaVA-style data, from a JSON file + media folder (small data) or from
WebDataset shards (streaming), on any number of ranks and workers, resumable mid-epoch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch.distributed as dist
from torch.utils.data import DataLoader

from minivlm.data.quality import DataQuality, DataQualityCallback
from minivlm.data.samples import VideoOptions
from minivlm.data.sources import LlavaJsonDataset, ShardSource
from minivlm.data.streaming import SampleBatch, StreamingDataset
from minivlm.processing.processor import Processor


class EpochLoader(DataLoader):
    """A DataLoader over a `StreamingDataset` that tells it, before workers start, which epoch
    it is and where each worker resumes."""

    def __init__(self, dataset: StreamingDataset, datamodule: LlavaDataModule, num_workers: int) -> None:
        super().__init__(dataset, batch_size=None, num_workers=num_workers, persistent_workers=False)
        self.datamodule = datamodule

    def __iter__(self):
        self.datamodule.before_epoch(self.dataset)
        return super().__iter__()

    # The position lives in the DataModule's state, which Lightning restores before this loader
    # is built; these two methods only tell Lightning that the loader resumes mid-epoch.
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


class LlavaDataModule(L.LightningDataModule):
    """LLaVA data for training and validation.

    Give either `annotations` + `media_root` (a LLaVA JSON/JSONL file and its folder, read
    map-style) or `shards` (one spec per data set: a `minivlm shards` output folder, a brace
    pattern, or a `pipe:` command; see `ShardSource`). Several shard sets are concatenated,
    or with `resampled: true` mixed by `weights`. `val_*` are the same for validation.

    Every rank yields the same number of batches; each epoch is seeded by (seed, epoch); the
    position inside an epoch is part of the checkpoint (`state_dict`), so resuming continues
    with exactly the samples not yet seen. Bad samples are skipped, counted and logged; the
    run stops when more than `max_bad_fraction` of them are bad (see `minivlm.data.quality`).
    The Processor comes from the LightningModule (`module.processor`).
    """

    def __init__(
        self,
        annotations: str | None = None,
        media_root: str | None = None,
        shards: str | list[str] | None = None,
        val_annotations: str | None = None,
        val_media_root: str | None = None,
        val_shards: str | list[str] | None = None,
        batch_size: int = 16,
        num_workers: int = 2,
        shuffle: bool = True,
        shuffle_buffer: int = 500,
        resampled: bool = False,
        weights: list[float] | None = None,
        samples_per_epoch: int | None = None,
        seed: int = 0,
        fps: float = 1.0,
        max_frames: int = 1000,
        num_frames: int | None = None,
        max_bad_fraction: float = 0.01,
    ) -> None:
        super().__init__()
        for prefix, ann, root, spec in (("", annotations, media_root, shards), ("val_", val_annotations, val_media_root, val_shards)):
            if ann is not None and spec is not None:
                raise ValueError(f"give {prefix}annotations (+ {prefix}media_root) or {prefix}shards, not both")
            if (ann is None) != (root is None):
                raise ValueError(f"{prefix}annotations and {prefix}media_root go together")
        if annotations is None and shards is None:
            raise ValueError("LlavaDataModule needs annotations + media_root, or shards")
        if not 0.0 <= max_bad_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction must be within [0, 1], got {max_bad_fraction}")
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"batch_size must be >= 1 and num_workers >= 0, got {batch_size}, {num_workers}")
        self.annotations, self.media_root = annotations, media_root
        self.shards = [shards] if isinstance(shards, str) else shards
        self.val_annotations, self.val_media_root = val_annotations, val_media_root
        self.val_shards = [val_shards] if isinstance(val_shards, str) else val_shards
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.shuffle = shuffle
        self.shuffle_buffer = shuffle_buffer
        self.resampled = resampled
        self.weights = weights
        self.samples_per_epoch = samples_per_epoch
        self.seed = seed
        self.options = VideoOptions(fps, max_frames, num_frames)
        self.max_bad_fraction = max_bad_fraction
        self.processor: Processor | None = None
        self.quality = {"train": DataQuality(), "val": DataQuality()}
        self.position: dict[str, Any] = {}
        self._resume: dict[str, Any] | None = None

    def _sources(self, annotations: str | None, media_root: str | None, shards: list[str] | None) -> list:
        if annotations is not None:
            return [LlavaJsonDataset(annotations, media_root, None, self.options)]
        # Counts are needed to plan exact epochs; resampled epochs with a given length need none.
        count = not (self.resampled and self.samples_per_epoch)
        return [ShardSource(spec, self.options, count=count) for spec in shards or []]

    def setup(self, stage: str) -> None:
        module = self.trainer.lightning_module if self.trainer is not None else None
        processor = getattr(module, "processor", None)
        if not isinstance(processor, Processor):
            raise TypeError("LlavaDataModule needs a LightningModule with a `processor` (e.g. MiniVLMModule)")
        self.processor = processor
        self._check_paths()
        if not any(isinstance(c, DataQualityCallback) for c in self.trainer.callbacks):
            self.trainer.callbacks.append(DataQualityCallback(self.quality["train"], self.max_bad_fraction))

    def _check_paths(self) -> None:
        """Local files named by the config must exist: fail at setup, not after the first epoch."""
        wanted = [self.annotations, self.media_root, self.val_annotations, self.val_media_root]
        for spec in (self.shards or []) + (self.val_shards or []):
            # Brace patterns and pipe:/URL specs are checked when their shards are opened.
            wanted += [part for part in spec.split("::") if not any(c in part for c in "{:")]
        missing = [path for path in wanted if path is not None and not Path(path).exists()]
        if missing:
            raise FileNotFoundError(f"LlavaDataModule: {', '.join(missing)} not found")

    def dataset(self, split: str = "train", rank: int | None = None, world_size: int | None = None) -> StreamingDataset:
        """The streaming dataset of `split` for one rank (by default the trainer's)."""
        if self.processor is None:
            raise RuntimeError("LlavaDataModule.setup() has not run")
        if split == "train":
            sources = self._sources(self.annotations, self.media_root, self.shards)
        else:
            sources = self._sources(self.val_annotations, self.val_media_root, self.val_shards)
        trainer = self.trainer
        return StreamingDataset(
            sources,
            self.processor,
            self.batch_size,
            rank=rank if rank is not None else (trainer.global_rank if trainer else 0),
            world_size=world_size if world_size is not None else (trainer.world_size if trainer else 1),
            num_workers=self.num_workers,
            shuffle=self.shuffle and split == "train",
            shuffle_buffer=self.shuffle_buffer,
            resampled=self.resampled and split == "train",
            weights=self.weights if split == "train" else None,
            samples_per_epoch=self.samples_per_epoch if split == "train" else None,
            seed=self.seed,
            split=split,
        )

    def train_dataloader(self) -> DataLoader:
        return EpochLoader(self.dataset("train"), self, self.num_workers)

    def val_dataloader(self) -> DataLoader:
        if self.val_annotations is None and self.val_shards is None:
            return []
        return EpochLoader(self.dataset("val"), self, self.num_workers)

    def _layout(self) -> dict[str, int]:
        world_size = self.trainer.world_size if self.trainer is not None else 1
        return {"num_workers": self.num_workers, "batch_size": self.batch_size, "world_size": world_size, "seed": self.seed}

    def before_epoch(self, dataset: StreamingDataset) -> None:
        """Sets the epoch and, right after a mid-epoch resume, where each worker starts."""
        if dataset.split != "train":
            self.quality[dataset.split].reset()
            return
        dataset.epoch = self.trainer.current_epoch if self.trainer is not None else dataset.epoch
        dataset.resume = None
        dataset.worker_offset = 0
        self.position = {"epoch": dataset.epoch, "next": [0] * max(1, dataset.num_workers), **self._layout()}
        state, self._resume = self._resume, None
        finished = state is not None and all(n >= total for n, total in zip(state["next"], dataset.worker_batches()))
        if state is not None and state["epoch"] == dataset.epoch and not finished:
            dataset.resume = list(state["next"])
            dataset.worker_offset = sum(state["next"]) % max(1, dataset.num_workers)
            self.position["next"] = list(state["next"])
            self.quality["train"].load(state["quality"])

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Counts what the workers skipped, records the position, and hands the model its `Batch`."""
        if not isinstance(batch, SampleBatch):
            return batch
        self.quality[batch.split].add(batch)
        if batch.split == "train" and self.position:
            self.position["next"][batch.worker] = batch.index + 1
        return batch.batch

    def state_dict(self) -> dict[str, Any]:
        """The training position (epoch and next window of each worker) and the epoch's counts,
        summed over ranks (every rank saves, only rank 0's copy is written)."""
        if not self.position:
            return {}
        quality = self.quality["train"].vector()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, quality)
            quality = [sum(column) for column in zip(*gathered)]
        return {**self.position, "next": list(self.position["next"]), "quality": quality}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores the position; a different layout would resume at the wrong samples, so it is refused."""
        if not state:
            return
        changed = {k: (state[k], v) for k, v in self._layout().items() if state[k] != v}
        if changed:
            raise ValueError(f"cannot resume mid-epoch with a different data layout (saved, now): {changed}")
        if self.trainer is not None and self.trainer.global_rank != 0:
            state = {**state, "quality": [0] * len(state["quality"])}  # the sums are restored once, on rank 0
        self._resume = state
