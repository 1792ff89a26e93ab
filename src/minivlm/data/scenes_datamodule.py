"""The scenes task (`minivlm.data.scenes`) as a Dataset and a LightningDataModule."""

from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader, Dataset

from minivlm.data.datamodule import Collate, Record
from minivlm.data.scenes import GRID, OCCUPANCY, POSITION_KINDS, Names, Scene, ScenesTask, Split
from minivlm.processing.processor import Processor
from minivlm.processing.templates import Turn


class ScenesDataset(Dataset):
    """The first `size` scenes of one split as conversations with one image each, of
    `questions_per_image` question-answer turns; with `prompts_only` one question and no
    answer (for generation)."""

    def __init__(
        self, task: ScenesTask, split: Split, size: int, prompts_only: bool = False, questions_per_image: int = 1
    ) -> None:
        if questions_per_image < 1 or (prompts_only and questions_per_image != 1):
            raise ValueError(f"questions_per_image must be >= 1 (1 with prompts_only), got {questions_per_image}")
        self.task = task
        self.split = split
        self.indices = task.indices(split, size)
        self.prompts_only = prompts_only
        self.questions_per_image = questions_per_image

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Record:
        samples = self.task.samples(self.indices[index], self.questions_per_image)
        if self.prompts_only:
            return [Turn("user", f"<image> {samples[0].question}")], [samples[0].image]
        turns = []
        for number, sample in enumerate(samples):
            turns.append(Turn("user", f"<image> {sample.question}" if number == 0 else sample.question))
            turns.append(Turn("assistant", sample.answer))
        return turns, [samples[0].image]


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
        questions_per_image: int = 1,
        names: Names = "words",
    ) -> None:
        super().__init__()
        self.questions_per_image = questions_per_image
        self.task = ScenesTask(image_size, seed, grid, kinds, occupancy, scene, names)
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
            ScenesDataset(
                self.task, split, self.sizes[split], prompts_only, 1 if prompts_only else self.questions_per_image
            ),
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
