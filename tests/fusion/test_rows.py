"""Pre-fusion's own evaluation of Llama-layout layers: the transformers layer's values, bit for bit."""

import sys
import types

import pytest
import torch
from transformers.models.llama import modeling_llama

from conftest import WIDTH, tiny_llm_config
from minivlm.fusion import DecoderPreFusion
from minivlm.fusion.rows import _rotary_of_module, layer_whole, rotary_for, rotate
from minivlm.llms import HFLanguageModel


def attached(**config) -> DecoderPreFusion:
    torch.manual_seed(0)
    fusion = DecoderPreFusion(num_layers=2)
    fusion.attach(HFLanguageModel(config=tiny_llm_config(**config)))
    return fusion.eval()


def hidden_and_rope(fusion: DecoderPreFusion, t: int = 9):
    hidden = torch.randn(2, t, WIDTH, generator=torch.Generator().manual_seed(1))  # two different samples
    positions = torch.arange(t).expand(2, t)
    return hidden, positions, fusion.rotary_embedding(hidden, position_ids=positions)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotate_gives_the_transformers_rotary_embedding_bit_for_bit(dtype):
    fusion = attached()
    hidden, _, (cos, sin) = hidden_and_rope(fusion)
    # The layout the attention produces: (B, T, H, D) viewed as (B, H, T, D), not contiguous.
    x = torch.randn(2, 9, 4, 12, generator=torch.Generator().manual_seed(2)).to(dtype).transpose(1, 2)
    cos, sin = cos.to(dtype), sin.to(dtype)
    want, _ = modeling_llama.apply_rotary_pos_emb(x, x, cos, sin)
    assert torch.equal(rotate(x, cos, sin), want)
    assert rotary_for(fusion.layers[0].self_attn) is rotate


@pytest.mark.parametrize("config", [{}, {"model_type": "qwen2"}], ids=["llama-gqa", "qwen2-bias"])
def test_a_whole_layer_equals_the_transformers_layer_bit_for_bit(config):
    fusion = attached(**config)
    hidden, positions, rope = hidden_and_rope(fusion)
    layer = fusion.layers[0]
    with torch.no_grad():
        want = layer(hidden, attention_mask=None, position_ids=positions, position_embeddings=rope)
        got = layer_whole(layer, hidden, rope)
    assert not torch.equal(got[0], got[1])
    assert torch.equal(got, want)


def test_prefusion_no_longer_calls_the_transformers_rotary_embedding(monkeypatch):
    fusion = attached()
    g = torch.Generator().manual_seed(3)
    args = (torch.randn(2, 5, WIDTH, generator=g), torch.randn(2, 1, WIDTH, generator=g),
            torch.randn(2, 4, WIDTH, generator=g), torch.ones(2, 4, dtype=torch.bool))
    want = fusion(*args)

    def refuse(*_args, **_kwargs):
        raise AssertionError("transformers' apply_rotary_pos_emb was called")

    monkeypatch.setattr(modeling_llama, "apply_rotary_pos_emb", refuse)
    got = fusion(*args)
    for ours, theirs in zip(got, want, strict=True):
        assert torch.equal(ours, theirs)


def test_another_rotary_convention_keeps_the_models_own(monkeypatch):
    def partial_rotary(q, k, cos, sin, unsqueeze_dim=1):  # rotates only the first half of the head
        cos, sin = cos.unsqueeze(unsqueeze_dim)[..., :4], sin.unsqueeze(unsqueeze_dim)[..., :4]
        turn = lambda x: torch.cat([x[..., :4] * cos + torch.cat([-x[..., 2:4], x[..., :2]], -1) * sin, x[..., 4:]], -1)
        return turn(q), turn(k)

    module = types.ModuleType("fake_partial_rotary")
    module.apply_rotary_pos_emb = partial_rotary
    monkeypatch.setitem(sys.modules, module.__name__, module)
    chosen = _rotary_of_module(module.__name__)
    assert chosen is not rotate
    x, cos, sin = torch.randn(1, 2, 3, 8), torch.randn(1, 3, 8), torch.randn(1, 3, 8)
    assert torch.equal(chosen(x, cos, sin), partial_rotary(x, x, cos, sin)[0])
