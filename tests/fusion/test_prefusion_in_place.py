"""Pre-fusion's gated MLPs work in place at inference: outputs equal those of the transformers
layers bit for bit, and the autograd path gives the same values and gradients."""

import pytest
import torch
from torch import nn

from conftest import WIDTH, tiny_llm_config
from minivlm.fusion import DecoderPreFusion
from minivlm.fusion.mlp import InPlaceGatedMLP
from minivlm.llms import HFLanguageModel

CONFIGS = {
    "llama-silu": {},  # grouped-query attention (4 heads, 2 key/value heads)
    "llama-mha": {"num_key_value_heads": 4},
    "llama-gelu": {"hidden_act": "gelu_pytorch_tanh"},  # not SiLU: the product alone is in place
    "qwen3": {"model_type": "qwen3", "head_dim": 12},  # the last layer runs whole
}


def attached(**config) -> DecoderPreFusion:
    torch.manual_seed(0)
    fusion = DecoderPreFusion(num_layers=2)
    fusion.attach(HFLanguageModel(config=tiny_llm_config(**config)))
    return fusion


def transformers_layers(fusion: DecoderPreFusion) -> nn.ModuleList:
    """The same weights in plain layers of the LLM's class, with the transformers MLP."""
    layer_class = type(fusion.layers[0])
    layers = nn.ModuleList(layer_class(fusion.layer_config, layer_idx=i) for i in range(len(fusion.layers)))
    layers.load_state_dict(fusion.layers.state_dict())
    assert not any(isinstance(layer.mlp, InPlaceGatedMLP) for layer in layers)
    return layers


def reference(fusion, layers, vision, compressed, text, fuse):
    """Pre-fusion written out with a dense mask over [vision ; compressed ; text] and whole layers."""
    n, k = vision.shape[1], compressed.shape[1]
    hidden = torch.cat([vision, compressed, text], dim=1)
    b, t = fuse.shape[0], hidden.shape[1]
    keys = torch.cat([fuse.new_ones(b, n + k), fuse], dim=1)
    allowed = torch.ones(t, t, dtype=torch.bool).tril()[None] & keys[:, None, :]
    mask = torch.zeros(b, 1, t, t).masked_fill(~allowed[:, None], torch.finfo(hidden.dtype).min)
    positions = torch.cat([torch.arange(n + k).expand(b, -1), n + k + (fuse.long().cumsum(1) - 1).clamp(min=0)], dim=1)
    rope = fusion.rotary_embedding(hidden, position_ids=positions)
    for layer in layers:
        hidden = layer(hidden, attention_mask=mask, position_ids=positions, position_embeddings=rope)
    return hidden[:, n : n + k], torch.where(fuse[..., None], hidden[:, n + k :], text)


def inputs():
    g = torch.Generator().manual_seed(1)
    vision, compressed = torch.randn(2, 5, WIDTH, generator=g), torch.randn(2, 2, WIDTH, generator=g)
    text = torch.randn(2, 7, WIDTH, generator=g)
    fuse = torch.tensor([[False, True, True, False, False, True, True], [True, False, True, True, True, False, False]])
    return vision, compressed, text, fuse


@pytest.mark.parametrize("config", list(CONFIGS))
def test_every_gated_mlp_is_in_place_and_equals_the_transformers_mlp(config):
    fusion = attached(**CONFIGS[config])
    plain = transformers_layers(fusion)
    x = torch.randn(2, 9, WIDTH, generator=torch.Generator().manual_seed(2))
    for ours, theirs in zip(fusion.layers, plain):
        assert isinstance(ours.mlp, InPlaceGatedMLP)
        with torch.no_grad():
            assert torch.equal(ours.mlp(x), theirs.mlp(x))


@pytest.mark.parametrize("config", list(CONFIGS))
def test_inference_outputs_equal_the_transformers_layers(config):
    fusion = attached(**CONFIGS[config])
    plain = transformers_layers(fusion)
    with torch.no_grad():
        tokens, fused = fusion(*inputs())
        ref_tokens, ref_fused = reference(fusion, plain, *inputs())
    torch.testing.assert_close(tokens, ref_tokens, rtol=0, atol=1e-6)
    torch.testing.assert_close(fused, ref_fused, rtol=0, atol=1e-6)
    assert not torch.equal(tokens[0], tokens[1])


def test_autograd_path_gives_the_same_values_and_gradients():
    fusion = attached()
    plain = transformers_layers(fusion)
    vision, compressed, text, fuse = inputs()
    vision.requires_grad_(True)
    tokens, fused = fusion(vision, compressed, text, fuse)
    ref_tokens, ref_fused = reference(fusion, plain, vision, compressed, text, fuse)
    torch.testing.assert_close(tokens, ref_tokens, rtol=0, atol=1e-6)
    torch.testing.assert_close(fused, ref_fused, rtol=0, atol=1e-6)
    grads = torch.autograd.grad(tokens.sum() + fused.square().sum(), [vision, *fusion.layers.parameters()])
    ref_grads = torch.autograd.grad(ref_tokens.sum() + ref_fused.square().sum(), [vision, *plain.parameters()])
    for ours, theirs in zip(grads, ref_grads):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_gate_output_is_overwritten_only_without_autograd():
    mlp = attached().layers[0].mlp
    seen = []
    mlp.gate_proj.register_forward_hook(lambda module, args, out: seen.append((out, out.clone())))
    x = torch.randn(2, 3, WIDTH)
    with torch.no_grad():
        mlp(x)
    (kept, gate), = seen
    assert torch.equal(kept, torch.nn.functional.silu(gate) * mlp.up_proj(x))
    seen.clear()
    mlp(x)
    (kept, gate), = seen
    assert torch.equal(kept, gate)


def test_a_block_without_gate_up_down_is_refused_by_name():
    with pytest.raises(ValueError, match=r"Sequential is not a gate/up/down MLP.*'0'"):
        InPlaceGatedMLP(nn.Sequential(nn.Linear(2, 2)))
