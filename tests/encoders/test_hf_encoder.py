import json

import pytest
import torch
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    SiglipConfig,
    SiglipModel,
    SiglipVisionConfig,
    SiglipVisionModel,
)
from transformers.models.clip.modeling_clip import CLIPEncoderLayer

from minivlm.encoders import HFVisionEncoder, ImageSpec, VisionEncoder

VISION = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8)
CLIP = dict(model_type="clip_vision_model", **VISION)
SIGLIP = dict(model_type="siglip_vision_model", **VISION)
TEXT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=99)


def pixels(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(7))


def saved_vision_model(tmp_path, model_cls, config_cls, config):
    torch.manual_seed(0)
    model = model_cls(config_cls(**{k: v for k, v in config.items() if k != "model_type"})).eval()
    model.save_pretrained(tmp_path)
    return model


@pytest.mark.parametrize(
    ("config", "mean"),
    [(CLIP, (0.48145466, 0.4578275, 0.40821073)), (SIGLIP, (0.5, 0.5, 0.5))],
    ids=["clip", "siglip"],
)
def test_shapes_grid_and_image_spec(config, mean):
    encoder = HFVisionEncoder(config=config)
    assert isinstance(encoder, VisionEncoder)
    features = encoder(pixels(3))
    assert features.shape == (3, 16, 32)  # CLIP's CLS token is dropped, SigLIP has none
    assert encoder.grid == (4, 4) and encoder.num_patches == 16 and encoder.feature_dim == 32
    assert encoder.image_spec.size == 32 and encoder.image_spec.mean == mean
    assert isinstance(encoder.image_spec, ImageSpec)


def test_clip_keeps_cls_when_asked():
    features = HFVisionEncoder(config=CLIP, drop_cls=False)(pixels())
    assert features.shape == (2, 17, 32)


@pytest.mark.parametrize("select_layer", [-2, -1, 0, 1])
def test_clip_matches_transformers_hidden_states(tmp_path, select_layer):
    reference = saved_vision_model(tmp_path, CLIPVisionModel, CLIPVisionConfig, CLIP)
    encoder = HFVisionEncoder(pretrained=str(tmp_path), select_layer=select_layer)
    encoder.load_pretrained_weights()
    with torch.no_grad():
        expected = reference(pixel_values=pixels(), output_hidden_states=True).hidden_states[select_layer][:, 1:]
    torch.testing.assert_close(encoder(pixels()), expected)
    kept = select_layer % 4
    assert len(encoder.vision_model.encoder.layers) == kept
    assert encoder.vision_model.config.num_hidden_layers == kept
    assert encoder.hf_config.num_hidden_layers == 3  # as loaded, before truncation
    assert not any("post_layernorm" in name for name in encoder.state_dict())


def test_siglip_matches_transformers_hidden_states_without_head(tmp_path):
    reference = saved_vision_model(tmp_path, SiglipVisionModel, SiglipVisionConfig, SIGLIP)
    assert hasattr(reference, "head")
    encoder = HFVisionEncoder(pretrained=str(tmp_path))
    encoder.load_pretrained_weights()
    with torch.no_grad():
        expected = reference(pixel_values=pixels(), output_hidden_states=True).hidden_states[-2]
    torch.testing.assert_close(encoder(pixels()), expected)
    assert len(encoder.shard_units()) == 2
    assert not any(name.startswith("vision_model.head.") for name in encoder.state_dict())
    assert encoder.hf_config.vision_use_head is True


@pytest.mark.parametrize(
    ("full_cls", "config_cls", "drop"),
    [(CLIPModel, CLIPConfig, 1), (SiglipModel, SiglipConfig, 0)],
    ids=["clip", "siglip"],
)
def test_pretrained_full_model_directory_takes_the_vision_part(tmp_path, full_cls, config_cls, drop):
    torch.manual_seed(0)
    full = full_cls(config_cls(vision_config=VISION, text_config=TEXT)).eval()
    full.save_pretrained(tmp_path)
    encoder = HFVisionEncoder(pretrained=str(tmp_path))
    encoder.load_pretrained_weights()
    with torch.no_grad():
        expected = full.vision_model(pixel_values=pixels(), output_hidden_states=True).hidden_states[-2][:, drop:]
    torch.testing.assert_close(encoder(pixels()), expected)
    assert encoder.hf_config.model_type.endswith("_vision_model")


def test_config_build_truncates_and_export_rebuilds_without_download():
    torch.manual_seed(0)
    encoder = HFVisionEncoder(config=CLIP, select_layer=-2)
    assert len(encoder.vision_model.encoder.layers) == 2
    assert all(isinstance(layer, CLIPEncoderLayer) for layer in encoder.shard_units())
    assert encoder.shard_units() == list(encoder.vision_model.encoder.layers)

    init_args = json.loads(json.dumps(encoder.init_args_for_export()))  # plain values only
    assert init_args["config"]["num_hidden_layers"] == 3
    assert (init_args["select_layer"], init_args["drop_cls"]) == (-2, True)
    assert "trainable" not in init_args  # freezing is the training stage's business, not the model's
    rebuilt = HFVisionEncoder(**init_args)
    rebuilt.load_state_dict(encoder.state_dict())
    torch.testing.assert_close(rebuilt(pixels()), encoder(pixels()))


def test_trainable_encoder_gets_gradients_in_every_parameter():
    encoder = HFVisionEncoder(config=CLIP)
    encoder(pixels()).square().mean().backward()
    # Every kept parameter is used: nothing dead for DDP to complain about.
    assert all(p.grad is not None for p in encoder.parameters())


def test_needs_config_or_pretrained():
    with pytest.raises(ValueError, match="needs `config`.*`pretrained`.*or both"):
        HFVisionEncoder()


@pytest.mark.parametrize("model_type", ["vit", "clip_vision", "clip", None])
def test_unknown_config_model_type_names_supported_ones(model_type):
    with pytest.raises(ValueError, match=r"model_type .*supported: clip_vision_model, siglip_vision_model"):
        HFVisionEncoder(config=dict(VISION, model_type=model_type))


def test_unknown_pretrained_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(ValueError, match="'vit'.*supported: clip, clip_vision_model, siglip, siglip_vision_model"):
        HFVisionEncoder(pretrained=str(tmp_path))


@pytest.mark.parametrize("select_layer", [4, -5])
def test_select_layer_out_of_range(select_layer):
    with pytest.raises(ValueError, match=f"select_layer={select_layer} is out of range for 3 layers"):
        HFVisionEncoder(config=CLIP, select_layer=select_layer)


def test_drop_cls_on_siglip_is_an_error():
    with pytest.raises(ValueError, match="no CLS token"):
        HFVisionEncoder(config=SIGLIP, drop_cls=True)
