"""LightningDataModules that turn records into `Batch`es through the model's Processor."""

from __future__ import annotations

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Dataset

from minivlm.processing.images import ImageInput
from minivlm.data.resumable import ResumableData
from minivlm.data.synthetic import ShapesTask
from minivlm.processing.templates import Turn
from minivlm.processing.batch import Batch
from minivlm.processing.processor import Processor

Record = tuple[list[Turn], list[ImageInput]]


class ShapesDataset(Dataset):
    """`size` samples of the shapes task as one-turn conversations with one image each.

    With `blank_images` every image is replaced by a black one of the same size: the
    text-only baseline, which shows how much an answer owes to the image. With
    `prompts_only` the answers are left out (for generation).
    """

    def __init__(self, task: ShapesTask, size: int, blank_images: bool = False, prompts_only: bool = False) -> None:
        self.task = task
        self.size = size
        self.blank_images = blank_images
        self.prompts_only = prompts_only

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Record:
        sample = self.task.sample(index)
        image = np.zeros_like(sample.image) if self.blank_images else sample.image
        turns = [Turn("user", f"<image> {sample.question}")]
        if not self.prompts_only:
            turns.append(Turn("assistant", sample.answer))
        return turns, [image]


class Collate:
    """Batches records with a Processor (a class, not a closure, so DataLoader workers can pickle it)."""

    def __init__(self, processor: Processor, add_generation_prompt: bool = False) -> None:
        self.processor = processor
        self.add_generation_prompt = add_generation_prompt

    def __call__(self, records: list[Record]) -> Batch:
        conversations = [turns for turns, _ in records]
        return self.processor(conversations, [images for _, images in records], self.add_generation_prompt)


class ShapesDataModule(ResumableData, L.LightningDataModule):
    """The built-in synthetic shapes VQA task (`minivlm.data.synthetic`), split by seed:
    train uses `seed`, validation `seed + 1`, test and predict `seed + 2` (predict gives
    the test questions without answers, for `minivlm predict`). The training order is
    resumable (`minivlm.data.resumable`): `--ckpt_path` continues at the next batch.

    The Processor comes from the LightningModule being trained (`module.processor`), so
    tokenizer, template and image size always match the model.
    """

    def __init__(
        self,
        train_size: int = 50_000,
        val_size: int = 500,
        test_size: int = 500,
        image_size: int = 32,
        seed: int = 0,
        batch_size: int = 32,
        num_workers: int = 0,
        blank_images: bool = False,
    ) -> None:
        super().__init__()
        self.train_size = train_size
        self.val_size = val_size
        self.test_size = test_size
        self.image_size = image_size
        self.seed = seed
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.blank_images = blank_images
        self.processor: Processor | None = None

    def setup(self, stage: str) -> None:
        module = self.trainer.lightning_module if self.trainer is not None else None
        processor = getattr(module, "processor", None)
        if not isinstance(processor, Processor):
            raise TypeError("ShapesDataModule needs a LightningModule with a `processor` (e.g. MiniVLMModule)")
        self.processor = processor

    def _loader(self, seed_offset: int, size: int, shuffle: bool, prompts_only: bool = False) -> DataLoader:
        if self.processor is None:
            raise RuntimeError("ShapesDataModule.setup() has not run")
        task = ShapesTask(self.image_size, self.seed + seed_offset)
        dataset = ShapesDataset(task, size, self.blank_images, prompts_only)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=self.train_sampler(size, self.batch_size, self.seed) if shuffle else None,
            num_workers=self.num_workers,
            collate_fn=Collate(self.processor, add_generation_prompt=prompts_only),
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(0, self.train_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(1, self.val_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(2, self.test_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(2, self.test_size, shuffle=False, prompts_only=True)
