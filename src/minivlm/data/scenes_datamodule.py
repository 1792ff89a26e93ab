"""The scenes task (`minivlm.data.scenes`) as a Dataset and a LightningDataModule."""

from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader, Dataset

from minivlm.data.datamodule import Collate, Record
from minivlm.data.scenes import GRID, OCCUPANCY, POSITION_KINDS, Scene, ScenesTask, Split
from minivlm.processing.processor import Processor
from minivlm.processing.templates import Turn


class ScenesDataset(Dataset):
    """The first `size` samples of one split as one-turn conversations with one image each;
    with `prompts_only` the answers are left out (for generation)."""

    def __init__(self, task: ScenesTask, split: Split, size: int, prompts_only: bool = False) -> None:
        self.task = task
        self.split = split
        self.indices = task.indices(split, size)
        self.prompts_only = prompts_only

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Record:
        sample = self.task.sample(self.indices[index])
        turns = [Turn("user", f"<image> {sample.question}")]
        if not self.prompts_only:
            turns.append(Turn("assistant", sample.answer))
        return turns, [sample.image]


class ScenesDataModule(L.LightningDataModule):
    """Train, validation and test splits of the scenes task, disjoint by scene content.

    The Processor comes from the LightningModule being trained (`module.processor`), whose
    tokenizer must cover the scenes vocabulary (`build_scenes_tokenizer`).
    """

    def __init__(
        self,
        train_size: int = 50_000,
        val_size: int = 500,
        test_size: int = 1000,
        image_size: int = 64,
        seed: int = 0,
        batch_size: int = 32,
        num_workers: int = 0,
        grid: int = GRID,
        kinds: tuple[str, ...] = POSITION_KINDS,
        occupancy: float = OCCUPANCY,
        scene: Scene = "crowded",
    ) -> None:
        super().__init__()
        self.task = ScenesTask(image_size, seed, grid, kinds, occupancy, scene)
        self.sizes = {"train": train_size, "val": val_size, "test": test_size}
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.processor: Processor | None = None

    def setup(self, stage: str) -> None:
        processor = getattr(self.trainer.lightning_module if self.trainer is not None else None, "processor", None)
        if not isinstance(processor, Processor):
            raise TypeError("ScenesDataModule needs a LightningModule with a `processor` (e.g. MiniVLMModule)")
        self.processor = processor

    def loader(self, split: Split, shuffle: bool = False, prompts_only: bool = False) -> DataLoader:
        if self.processor is None:
            raise RuntimeError("ScenesDataModule.setup() has not run")
        return DataLoader(
            ScenesDataset(self.task, split, self.sizes[split], prompts_only),
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=Collate(self.processor, add_generation_prompt=prompts_only),
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self.loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self.loader("test", prompts_only=True)
