"""Gradient accumulation is exact: the loss is normalised by the label tokens of the whole step."""

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from conftest import VISION, WIDTH, tiny_encoder, tiny_llm_config
from minivlm.compressors import QueryCompressor
from minivlm.data.datamodule import Collate
from minivlm.fusion import DecoderPreFusion
from minivlm.llms import HFLanguageModel
from minivlm.processing.templates import Turn
from minivlm.projectors import MLPProjector
from minivlm.training.module import MiniVLMModule
from minivlm.training.stages import PartStage, Stage

STAGE = Stage(
    compressor=PartStage("full", 1e-2), projector=PartStage("full", 1e-2),
    prefusion=PartStage("full", 1e-2), llm=PartStage("full", 1e-2),
)
# Answers of 1 to 8 words: micro-batches of the first and last four samples hold very
# different numbers of label tokens, so averaging per micro-batch would weigh them wrongly.
ANSWERS = ["red", "red green", "one two three", "yes", "blue yellow red green blue yellow red green",
           "circle square triangle circle square triangle", "two", "no yes no yes no"]


def records():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in ANSWERS]
    return [([Turn("user", "<image> What colour is the shape at the top left?"), Turn("assistant", a)], [image])
            for a, image in zip(ANSWERS, images)]


def build() -> MiniVLMModule:
    torch.manual_seed(0)
    return MiniVLMModule(
        tiny_encoder(), QueryCompressor(dim=VISION, size=1, num_heads=4), MLPProjector(VISION, WIDTH),
        DecoderPreFusion(num_layers=1), HFLanguageModel(config=tiny_llm_config()), stage=STAGE,
    )


def gradients_after_one_step(batch_size: int, accumulate: int) -> tuple[dict[str, torch.Tensor], float]:
    module = build()
    loader = DataLoader(records(), batch_size=batch_size, shuffle=False, collate_fn=Collate(module.processor))
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=1, accumulate_grad_batches=accumulate, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(module, train_dataloaders=loader)
    # Lightning zeroes gradients at the start of the next step, so after one step they remain.
    grads = {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}
    return grads, float(trainer.callback_metrics["train/loss"])


def test_two_micro_batches_of_four_give_the_gradients_of_one_batch_of_eight():
    collate = Collate(build().processor)
    counts = [int((collate(records()[i : i + 4]).labels != -100).sum()) for i in (0, 4)]
    assert counts[0] != counts[1]  # the test only means something with uneven label counts

    whole, whole_loss = gradients_after_one_step(batch_size=8, accumulate=1)
    split, split_loss = gradients_after_one_step(batch_size=4, accumulate=2)
    assert whole.keys() == split.keys() and len(whole) > 0
    for name in whole:
        assert torch.allclose(whole[name], split[name], atol=1e-6, rtol=0), name
    assert split_loss == pytest.approx(whole_loss, abs=1e-6)
