"""The vision towers' MLP activation runs in place at inference: same features, bit for bit, as
the transformers tower, and the autograd path is untouched."""

import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel
from transformers.models.clip.modeling_clip import CLIPMLP

from minivlm.encoders import HFVisionEncoder
from minivlm.encoders.hf import _InPlaceMLP

VISION = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8)
TOWERS = {
    "clip-quick-gelu": ("clip_vision_model", CLIPVisionConfig, CLIPVisionModel, {}, 1),
    "clip-gelu": ("clip_vision_model", CLIPVisionConfig, CLIPVisionModel, {"hidden_act": "gelu"}, 1),
    "siglip-gelu-tanh": ("siglip_vision_model", SiglipVisionConfig, SiglipVisionModel, {}, 0),
}


def pixels() -> torch.Tensor:
    """Two different images."""
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 2


def encoder_and_reference(name: str) -> tuple[HFVisionEncoder, torch.nn.Module, int]:
    model_type, config_cls, model_cls, extra, drop = TOWERS[name]
    torch.manual_seed(0)
    encoder = HFVisionEncoder(config=dict(model_type=model_type, **VISION, **extra), select_layer=-2).eval()
    reference = model_cls(config_cls(**VISION, **extra)).eval()
    # The encoder keeps 2 of the 3 layers and no post-LayerNorm / head: those stay random, unused.
    result = reference.load_state_dict(encoder.vision_model.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert all(k.startswith(("encoder.layers.2.", "post_layernorm.", "head.")) for k in result.missing_keys)
    return encoder, reference, drop


@pytest.mark.parametrize("name", list(TOWERS))
def test_inference_features_equal_the_transformers_tower_bit_for_bit(name):
    encoder, reference, drop = encoder_and_reference(name)
    assert all(isinstance(layer.mlp, _InPlaceMLP) for layer in encoder.vision_model.encoder.layers)
    with torch.no_grad():
        expected = reference(pixel_values=pixels(), output_hidden_states=True).hidden_states[-2][:, drop:]
        features = encoder(pixels())
    assert torch.equal(features, expected)
    assert not torch.equal(features[0], features[1])
    with torch.inference_mode():
        assert torch.equal(encoder(pixels()), expected)


@pytest.mark.parametrize("name", list(TOWERS))
def test_training_path_gives_the_same_values_and_gradients(name):
    encoder, reference, drop = encoder_and_reference(name)
    features = encoder(pixels())
    expected = reference(pixel_values=pixels(), output_hidden_states=True).hidden_states[-2][:, drop:]
    assert torch.equal(features, expected)
    features.square().mean().backward()
    expected.square().mean().backward()
    ours = dict(encoder.vision_model.named_parameters())
    for key, param in reference.named_parameters():
        if key in ours:
            torch.testing.assert_close(ours[key].grad, param.grad, rtol=0, atol=1e-7)


def test_activation_overwrites_fc1_output_only_without_autograd():
    encoder, _, _ = encoder_and_reference("clip-quick-gelu")
    mlp = encoder.vision_model.encoder.layers[0].mlp
    seen = []
    mlp.fc1.register_forward_hook(lambda module, args, out: seen.append((out, out.clone())))
    with torch.no_grad():
        encoder(pixels())
    (kept, pre_activation), = seen
    assert torch.equal(kept, pre_activation * torch.sigmoid(1.702 * pre_activation))  # written in place
    seen.clear()
    encoder(pixels())
    (kept, pre_activation), = seen
    assert torch.equal(kept, pre_activation)  # autograd needs fc1's output as it was


def test_activation_without_in_place_form_keeps_the_transformers_mlp():
    torch.manual_seed(0)
    encoder = HFVisionEncoder(config=dict(model_type="clip_vision_model", **VISION, hidden_act="relu"))
    assert all(type(layer.mlp) is CLIPMLP for layer in encoder.vision_model.encoder.layers)


def test_parameter_names_are_those_of_the_transformers_tower():
    encoder, reference, _ = encoder_and_reference("clip-quick-gelu")
    names = set(encoder.vision_model.state_dict())
    assert {"encoder.layers.0.mlp.fc1.weight", "encoder.layers.1.mlp.fc2.bias"} <= names
    assert names <= set(reference.state_dict())
