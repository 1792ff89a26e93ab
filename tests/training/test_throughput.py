"""ThroughputMonitor counts samples, LLM tokens and pre-fusion tokens exactly and logs rates."""

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from conftest import VISION, WIDTH, tiny_encoder, tiny_llm_config
from minivlm.compressors import QueryCompressor
from minivlm.data.datamodule import Collate, ShapesDataset
from minivlm.data.synthetic import ShapesTask
from minivlm.fusion import DecoderPreFusion
from minivlm.llms import HFLanguageModel
from minivlm.projectors import MLPProjector
from minivlm.training.module import MiniVLMModule
from minivlm.training.stages import PartStage, Stage
from minivlm.training.throughput import ThroughputMonitor


def test_counts_over_a_window_of_two_steps_with_accumulation():
    torch.manual_seed(0)
    module = MiniVLMModule(
        tiny_encoder(), QueryCompressor(dim=VISION, size=1, num_heads=4), MLPProjector(VISION, WIDTH),
        DecoderPreFusion(num_layers=1), HFLanguageModel(config=tiny_llm_config()),
        stage=Stage(projector=PartStage("full", 1e-3), llm=PartStage("full", 1e-3)),
    )
    dataset = ShapesDataset(ShapesTask(32, 0), 8)
    collate = Collate(module.processor)
    loader = DataLoader(dataset, batch_size=2, shuffle=False, collate_fn=collate)
    monitor = ThroughputMonitor(every_n_steps=2, skip_first=False)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=2, accumulate_grad_batches=2, logger=False, callbacks=[monitor],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(module, train_dataloaders=loader)

    batches = [collate([dataset[i], dataset[i + 1]]) for i in range(0, 8, 2)]
    with torch.no_grad():
        llm_tokens = sum(int(module.model.assemble(b).attention_mask.sum()) for b in batches)
    per_image = module.model.encoder.num_patches + module.model.tokens_per_image
    prefusion_tokens = sum(b.batch_size * (per_image + b.input_ids.shape[1]) for b in batches)
    assert monitor.last.samples == 8
    assert monitor.last.llm_tokens == llm_tokens
    assert monitor.last.prefusion_tokens == prefusion_tokens
    assert monitor.last.seconds > 0
    rate = float(trainer.callback_metrics["perf/llm_tokens_per_s"])
    assert rate == pytest.approx(llm_tokens / monitor.last.seconds, rel=1e-4)
    assert float(trainer.callback_metrics["perf/peak_memory_gib"]) > 0


def test_bad_interval_is_refused():
    with pytest.raises(ValueError, match="every_n_steps"):
        ThroughputMonitor(every_n_steps=0)
