"""Shard units and activation checkpointing: which modules, and the same numbers with it on."""

import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

from conftest import VISION, WIDTH, tiny_encoder, tiny_llm_config
from minivlm.compressors import QueryCompressor
from minivlm.data.datamodule import Collate, ShapesDataset
from minivlm.data.synthetic import ShapesTask
from minivlm.fusion import DecoderPreFusion
from minivlm.llms import HFLanguageModel
from minivlm.projectors import MLPProjector
from minivlm.training.module import MiniVLMModule
from minivlm.training.sharding import mixed_precision_policy, shard_units
from minivlm.training.stages import PartStage, Stage

STAGE = Stage(projector=PartStage("full", 1e-3), prefusion=PartStage("full", 1e-3), llm=PartStage("full", 1e-3))


def build(**kwargs) -> MiniVLMModule:
    torch.manual_seed(0)
    return MiniVLMModule(
        tiny_encoder(), QueryCompressor(dim=VISION, size=1, num_heads=4), MLPProjector(VISION, WIDTH),
        DecoderPreFusion(num_layers=2), HFLanguageModel(config=tiny_llm_config(attention_dropout=0.1)),
        stage=STAGE, **kwargs,
    )


def test_shard_units_are_encoder_blocks_prefusion_and_llm_decoder_layers():
    model = build().model
    units = shard_units(model)
    expected = [*model.encoder.vision_model.encoder.layers, *model.prefusion.layers, *model.llm.decoder_layers]
    assert [id(u) for u in units] == [id(u) for u in expected]
    # The encoder keeps the blocks up to its select_layer (1 of 2 here); pre-fusion and the LLM have 2 each.
    assert len(units) == 1 + 2 + 2


def test_activation_checkpointing_wraps_every_unit_and_changes_no_number():
    plain, checkpointed = build(), build(activation_checkpointing=True)
    for module in (plain, checkpointed):
        module.configure_model()
        module.train()
    assert all(isinstance(u, CheckpointWrapper) for u in shard_units(checkpointed.model))
    assert not any(isinstance(u, CheckpointWrapper) for u in shard_units(plain.model))
    assert plain.model.state_dict().keys() == checkpointed.model.state_dict().keys()

    dataset = ShapesDataset(ShapesTask(32, 0), 4)
    batch = Collate(plain.processor)([dataset[i] for i in range(4)])
    losses = []
    for module in (plain, checkpointed):
        torch.manual_seed(1)  # dropout is on: the recomputation must replay the same mask
        loss = module.model(batch, return_logits=False).loss
        loss.backward()
        losses.append(loss.detach())
    assert torch.allclose(losses[0], losses[1], atol=1e-6)
    plain_grads = dict(plain.model.named_parameters())
    for name, param in checkpointed.model.named_parameters():
        reference = plain_grads[name.replace("_checkpoint_wrapped_module.", "")]
        assert (param.grad is None) == (reference.grad is None), name
        if param.grad is not None:
            assert torch.allclose(param.grad, reference.grad, atol=1e-6, rtol=0), name


def test_mixed_precision_gathers_in_the_low_dtype_and_reduces_in_fp32():
    policy = mixed_precision_policy("bf16-mixed")
    assert policy.param_dtype == torch.bfloat16 and policy.reduce_dtype == torch.float32
    assert mixed_precision_policy("32-true").param_dtype is None
    assert mixed_precision_policy("bf16-true").param_dtype is None  # parameters are bf16 already
