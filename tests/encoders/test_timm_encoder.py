import json
import sys

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from minivlm.encoders import TimmVisionEncoder

timm = pytest.importorskip("timm")

NAME = "vit_tiny_patch16_224"
KWARGS = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 3, "num_heads": 2}


def pixels(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(7))


def timm_model(seed: int = 0, **overrides) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(NAME, **{"num_classes": 0, **KWARGS, **overrides}).eval()


def save_checkpoint(model: nn.Module, path) -> str:
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if str(path).endswith(".safetensors"):
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return str(path)


@pytest.mark.parametrize("extra", [{}, {"reg_tokens": 2}], ids=["cls", "cls+registers"])
def test_shapes_grid_and_image_spec(extra):
    encoder = TimmVisionEncoder(NAME, model_kwargs={**KWARGS, **extra})
    assert encoder.model.num_prefix_tokens == 1 + extra.get("reg_tokens", 0)
    assert encoder(pixels(3)).shape == (3, 16, 64)  # prefix tokens dropped
    assert encoder.grid == (4, 4) and encoder.feature_dim == 64
    assert encoder.image_spec.size == 32
    assert encoder.image_spec.mean == (0.5, 0.5, 0.5) and encoder.image_spec.std == (0.5, 0.5, 0.5)


@pytest.mark.parametrize("select_layer", [-1, -2, 0, 2])
def test_select_layer_equals_running_timm_blocks(tmp_path, select_layer):
    reference = timm_model()
    path = save_checkpoint(reference, tmp_path / "vit.safetensors")
    encoder = TimmVisionEncoder(NAME, checkpoint_path=path, model_kwargs=KWARGS, select_layer=select_layer)
    kept = select_layer % 3 + 1
    with torch.no_grad():
        x = reference.norm_pre(reference._pos_embed(reference.patch_embed(pixels())))
        for block in reference.blocks[:kept]:
            x = block(x)
    torch.testing.assert_close(encoder(pixels()), x[:, reference.num_prefix_tokens :])
    assert len(encoder.shard_units()) == kept and encoder.shard_units() == list(encoder.model.blocks)
    assert isinstance(encoder.model.norm, nn.Identity)  # the final norm is never applied


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_checkpoint_round_trip(tmp_path, suffix):
    path = save_checkpoint(timm_model(seed=1), tmp_path / f"vit{suffix}")
    torch.manual_seed(2)
    first = TimmVisionEncoder(NAME, checkpoint_path=path, model_kwargs=KWARGS)
    torch.manual_seed(3)
    second = TimmVisionEncoder(NAME, checkpoint_path=path, model_kwargs=KWARGS)
    unloaded = TimmVisionEncoder(NAME, model_kwargs=KWARGS)
    torch.testing.assert_close(first(pixels()), second(pixels()), rtol=0, atol=0)
    assert not torch.allclose(first(pixels()), unloaded(pixels()))


def test_checkpoint_with_classifier_loads(tmp_path):
    classifier = timm_model(num_classes=10)
    path = save_checkpoint(classifier, tmp_path / "vit.safetensors")
    encoder = TimmVisionEncoder(NAME, checkpoint_path=path, model_kwargs=KWARGS)
    torch.testing.assert_close(encoder.model.blocks[0].mlp.fc1.weight, classifier.blocks[0].mlp.fc1.weight)


def test_mismatched_checkpoint_names_the_keys(tmp_path):
    shallow = timm_model(depth=2)
    state = {**shallow.state_dict(), "bogus.weight": torch.zeros(1)}
    path = tmp_path / "shallow.safetensors"
    save_file(state, str(path))
    with pytest.raises(ValueError, match=r"does not match") as error:
        TimmVisionEncoder(NAME, checkpoint_path=str(path), model_kwargs=KWARGS)
    assert "blocks.2.attn.qkv.weight" in str(error.value) and "bogus.weight" in str(error.value)


def test_every_kept_parameter_gets_a_gradient():
    trainable = TimmVisionEncoder(NAME, model_kwargs=KWARGS, select_layer=-2)
    trainable(pixels()).square().mean().backward()
    assert all(p.grad is not None for p in trainable.parameters())


def test_export_args_rebuild_the_same_architecture():
    encoder = TimmVisionEncoder(NAME, model_kwargs=KWARGS, select_layer=1)
    init_args = json.loads(json.dumps(encoder.init_args_for_export()))
    rebuilt = TimmVisionEncoder(**init_args)
    rebuilt.load_state_dict(encoder.state_dict())
    torch.testing.assert_close(rebuilt(pixels()), encoder(pixels()))


@pytest.mark.parametrize("select_layer", [3, -4])
def test_select_layer_out_of_range(select_layer):
    with pytest.raises(ValueError, match=f"select_layer={select_layer} is out of range .* 3 blocks"):
        TimmVisionEncoder(NAME, model_kwargs=KWARGS, select_layer=select_layer)


def test_non_vit_model_is_rejected():
    with pytest.raises(ValueError, match="ViT-like.*'test_resnet'.*patch_embed"):
        TimmVisionEncoder("test_resnet")


def test_missing_timm_is_an_import_error_only_when_used(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` fail
    for name in [m for m in sys.modules if m.startswith("minivlm.encoders")]:
        monkeypatch.delitem(sys.modules, name)
    import minivlm.encoders as fresh  # the package itself imports without timm

    with pytest.raises(ImportError, match=r"pip install 'minivlm\[timm\]'"):
        fresh.TimmVisionEncoder(NAME)
