"""Pre-fusion: masks, positions, masked slots untouched, init from the LLM's layers."""

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from conftest import VISION, WIDTH, tiny_encoder, tiny_llm_config
from minivlm.compressors import QueryCompressor
from minivlm.fusion import DecoderPreFusion, NoPreFusion
from minivlm.fusion.decoder import zero_branch_outputs
from minivlm.llms import HFLanguageModel
from minivlm.projectors import MLPProjector
from minivlm.training.module import MiniVLMModule
from minivlm.training.stages import PartStage, Stage


def attached(init="random", layers=2) -> DecoderPreFusion:
    torch.manual_seed(0)
    fusion = DecoderPreFusion(num_layers=layers, init=init)
    fusion.attach(HFLanguageModel(config=tiny_llm_config()))
    return fusion


def test_masked_text_slots_come_back_unchanged_and_do_not_influence_others():
    fusion = attached()
    vision, compressed = torch.randn(1, 4, WIDTH), torch.randn(1, 1, WIDTH)
    text = torch.randn(1, 6, WIDTH)
    fuse = torch.tensor([[True, True, True, False, False, True]])
    tokens, fused = fusion(vision, compressed, text, fuse)
    assert torch.equal(fused[0, 3:5], text[0, 3:5])
    assert not torch.allclose(fused[0, :3], text[0, :3])
    # Changing the masked (e.g. assistant-answer) slots changes nothing else.
    other = text.clone()
    other[0, 3:5] = torch.randn(2, WIDTH)
    tokens2, fused2 = fusion(vision, compressed, other, fuse)
    assert torch.allclose(tokens, tokens2)
    assert torch.allclose(fused[0, [0, 1, 2, 5]], fused2[0, [0, 1, 2, 5]])


def test_text_sees_vision_and_compressed_slots_see_no_text():
    fusion = attached()
    vision, compressed, text = torch.randn(1, 4, WIDTH), torch.randn(1, 1, WIDTH), torch.randn(1, 3, WIDTH)
    fuse = torch.ones(1, 3, dtype=torch.bool)
    tokens, fused = fusion(vision, compressed, text, fuse)
    tokens2, fused2 = fusion(vision + 1, compressed, text, fuse)
    assert not torch.allclose(fused, fused2)
    tokens3, _ = fusion(vision, compressed, torch.randn(1, 3, WIDTH), fuse)
    assert torch.allclose(tokens, tokens3)


def test_copy_init_equals_llm_layers_and_random_does_not():
    torch.manual_seed(0)
    llm = HFLanguageModel(config=tiny_llm_config())
    copied, fresh = DecoderPreFusion(num_layers=2, init="copy"), DecoderPreFusion(num_layers=2)
    copied.attach(llm)
    fresh.attach(llm)
    for ours, theirs in zip(copied.layers, llm.decoder_layers):
        for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
            assert torch.equal(a, b), name
    assert type(copied.layers[0]) is llm.decoder_layer_class
    q = fresh.layers[0].self_attn.q_proj.weight
    assert not torch.equal(q, llm.decoder_layers[0].self_attn.q_proj.weight)
    assert abs(q.std().item() - 0.02) < 0.005


def test_copy_deeper_than_the_llm_adds_identity_layers_that_learn():
    torch.manual_seed(0)
    llm = HFLanguageModel(config=tiny_llm_config())
    assert len(llm.decoder_layers) == 2
    shallow, deep = DecoderPreFusion(num_layers=2, init="copy"), DecoderPreFusion(num_layers=5, init="copy")
    shallow.attach(llm)
    deep.attach(llm)
    # Extra layers copy the LLM's layers in turn (2 -> 0, 3 -> 1, 4 -> 0) ...
    for i in range(2, 5):
        source = llm.decoder_layers[i % 2].self_attn.q_proj.weight
        assert torch.equal(deep.layers[i].self_attn.q_proj.weight, source)
        assert not deep.layers[i].self_attn.o_proj.weight.any()
    assert deep.layers[1].self_attn.o_proj.weight.any()
    # ... and start as the identity, so the deeper stack computes what the LLM's two layers do.
    vision = torch.randn(2, 4, WIDTH)
    compressed, text = torch.randn(2, 1, WIDTH), torch.randn(2, 5, WIDTH)
    fuse = torch.tensor([[True] * 5, [True, True, True, False, False]])
    for a, b in zip(shallow(vision, compressed, text, fuse), deep(vision, compressed, text, fuse)):
        assert torch.allclose(a, b, atol=1e-6)
    tokens, fused = deep(vision, compressed, text, fuse)
    (tokens.sum() + fused.pow(2).sum()).backward()
    assert deep.layers[4].mlp.down_proj.weight.grad.abs().sum() > 0
    assert deep.layers[4].self_attn.o_proj.weight.grad.abs().sum() > 0


def test_identity_init_passes_tokens_through_and_learns():
    torch.manual_seed(0)
    llm = HFLanguageModel(config=tiny_llm_config())
    fusion = DecoderPreFusion(num_layers=3, init="identity")
    fusion.attach(llm)
    # Every layer copies the LLM's layers in turn, with zeroed attention and MLP outputs.
    for i, layer in enumerate(fusion.layers):
        source = llm.decoder_layers[i % 2]
        assert torch.equal(layer.self_attn.q_proj.weight, source.self_attn.q_proj.weight)
        assert torch.equal(layer.mlp.up_proj.weight, source.mlp.up_proj.weight)
        assert not layer.self_attn.o_proj.weight.any() and not layer.mlp.down_proj.weight.any()
    vision = torch.randn(2, 4, WIDTH)
    compressed, text = torch.randn(2, 2, WIDTH), torch.randn(2, 5, WIDTH)
    fuse = torch.tensor([[True] * 5, [True, True, True, False, False]])
    tokens, fused = fusion(vision, compressed, text, fuse)
    assert torch.allclose(tokens, compressed) and torch.allclose(fused, text)
    (tokens.sum() + fused.pow(2).sum()).backward()
    for layer in fusion.layers:
        assert layer.self_attn.o_proj.weight.grad.abs().sum() > 0
        assert layer.mlp.down_proj.weight.grad.abs().sum() > 0


def test_init_must_be_known():
    with pytest.raises(ValueError, match="'random', 'copy' or 'identity'.*'zero'"):
        DecoderPreFusion(init="zero")


def test_copy_deeper_than_the_llm_needs_known_branch_outputs():
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mixer = torch.nn.Linear(4, 4)

    with pytest.raises(ValueError, match="Odd.*identity"):
        zero_branch_outputs(Odd())


def test_text_is_detached_on_the_way_in():
    fusion = attached(layers=1)
    text = torch.randn(1, 3, WIDTH, requires_grad=True)
    _, fused = fusion(torch.randn(1, 2, WIDTH), torch.randn(1, 1, WIDTH), text, torch.ones(1, 3, dtype=torch.bool))
    assert fused.requires_grad  # through the pre-fusion layers' own weights
    fused.sum().backward()
    assert text.grad is None
    assert fusion.layers[0].self_attn.q_proj.weight.grad is not None


def test_no_prefusion_is_identity():
    compressed, text = torch.randn(2, 1, 8), torch.randn(2, 5, 8)
    out_c, out_t = NoPreFusion()(torch.randn(2, 4, 8), compressed, text, torch.ones(2, 5, dtype=torch.bool))
    assert out_c is compressed and out_t is text


@pytest.mark.parametrize("init", ["copy", "identity"])
def test_init_from_an_llm_not_loaded_yet_is_refused_before_training(tmp_path, init):
    config = tiny_llm_config()
    AutoModelForCausalLM.from_config(LlamaConfig(**{k: v for k, v in config.items() if k != "model_type"})).save_pretrained(
        tmp_path
    )
    with pytest.raises(NotImplementedError, match=f"init='{init}'.*not supported yet"):
        MiniVLMModule(
            tiny_encoder(), QueryCompressor(dim=VISION, size=1, num_heads=4), MLPProjector(VISION, WIDTH),
            DecoderPreFusion(num_layers=1, init=init), HFLanguageModel(pretrained=str(tmp_path), config=config),
            stage=Stage(prefusion=PartStage("full", 1e-3)),
        )
