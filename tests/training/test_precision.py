"""One precision policy: fp32 masters for what trains under mixed precision, frozen parts optionally narrower."""

import lightning as L
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from conftest import VISION, tiny_encoder, tiny_llm_config
from minivlm.compressors import QueryCompressor
from minivlm.data.datamodule import ShapesDataModule
from minivlm.fusion import DecoderPreFusion
from minivlm.llms import HFLanguageModel
from minivlm.projectors import MLPProjector
from minivlm.training.module import MiniVLMModule
from minivlm.training.precision import part_dtype
from minivlm.training.stages import PartStage, Stage


@pytest.mark.parametrize(
    "precision, trained, frozen_dtype, expected",
    [
        ("bf16-mixed", True, "bfloat16", torch.float32),
        ("bf16-mixed", False, "bfloat16", torch.bfloat16),
        ("bf16-mixed", False, None, torch.float32),
        ("16-mixed", False, "float16", torch.float16),
        ("bf16-true", True, None, torch.bfloat16),
        ("bf16-true", False, None, torch.bfloat16),
        ("32-true", False, None, torch.float32),
    ],
)
def test_policy(precision, trained, frozen_dtype, expected):
    assert part_dtype(precision, trained, frozen_dtype) == expected


def test_policy_refuses_what_it_cannot_run():
    with pytest.raises(ValueError, match="frozen_dtype applies to mixed precision only"):
        part_dtype("bf16-true", False, "float32")
    with pytest.raises(ValueError, match="precision 'transformer-engine' is not supported"):
        part_dtype("transformer-engine", True, None)


def test_bf16_mixed_run_keeps_fp32_masters_and_holds_the_frozen_pretrained_llm_in_bf16(tmp_path):
    torch.manual_seed(0)
    config = LlamaConfig(**{k: v for k, v in tiny_llm_config(vocab_size=64, hidden_size=64).items() if k != "model_type"})
    reference = AutoModelForCausalLM.from_config(config)
    reference.save_pretrained(tmp_path / "llm")
    module = MiniVLMModule(
        tiny_encoder(), QueryCompressor(dim=VISION, size=1, num_heads=4), MLPProjector(VISION, 64),
        DecoderPreFusion(num_layers=1),
        HFLanguageModel(pretrained=str(tmp_path / "llm"), config=tiny_llm_config(hidden_size=64)),
        stage=Stage(compressor=PartStage("full", 1e-3), projector=PartStage("full", 1e-3), prefusion=PartStage("full", 1e-3)),
        frozen_dtype="bfloat16",
    )
    trainer = L.Trainer(
        accelerator="cpu", precision="bf16-mixed", max_steps=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path, limit_val_batches=0,
    )
    trainer.fit(module, datamodule=ShapesDataModule(train_size=8, batch_size=4))
    dtypes = {part: {p.dtype for p in module.part(part).parameters()} for part in ("encoder", "projector", "prefusion", "llm")}
    assert dtypes == {
        "encoder": {torch.bfloat16}, "projector": {torch.float32}, "prefusion": {torch.float32}, "llm": {torch.bfloat16},
    }
    for key, value in reference.state_dict().items():
        assert torch.equal(module.model.llm.model.state_dict()[key], value.to(torch.bfloat16)), key
    assert all(group["params"][0].dtype == torch.float32 for group in trainer.optimizers[0].param_groups)
