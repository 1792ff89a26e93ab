"""Parts with `pretrained:` are built on meta and filled once, in the target dtype, never initialised at random."""

import pytest
import torch
from transformers import AutoModelForCausalLM, CLIPVisionConfig, CLIPVisionModel, LlamaConfig

from conftest import tiny_llm_config
from minivlm.encoders import HFVisionEncoder
from minivlm.llms import HFLanguageModel

RANDOM_FILLS = ("normal_", "uniform_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_")


@pytest.fixture
def random_init_calls(monkeypatch):
    """Counts every call of a random initialiser, on any device, from now on."""
    calls = []
    for name in RANDOM_FILLS:
        for owner in (torch.Tensor, torch.nn.init):
            if hasattr(owner, name):
                original = getattr(owner, name)

                def spy(*args, _original=original, _name=name, **kwargs):
                    calls.append(_name)
                    return _original(*args, **kwargs)

                monkeypatch.setattr(owner, name, spy)
    return calls


def saved_llama(tmp_path, dtype=torch.bfloat16) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    config = LlamaConfig(**{k: v for k, v in tiny_llm_config().items() if k != "model_type"})
    reference = AutoModelForCausalLM.from_config(config).to(dtype)
    reference.save_pretrained(tmp_path)
    return {k: v.clone() for k, v in reference.state_dict().items()}


def test_spy_sees_an_ordinary_build(random_init_calls):
    HFLanguageModel(config=tiny_llm_config())
    assert random_init_calls  # the check below would notice a random init


def test_meta_build_then_bf16_load_is_bit_identical_and_never_random(tmp_path, random_init_calls):
    saved = saved_llama(tmp_path)
    random_init_calls.clear()
    llm = HFLanguageModel(pretrained=str(tmp_path), config=tiny_llm_config())
    assert llm.weights_pending and all(p.is_meta for p in llm.parameters())
    llm.load_pretrained_weights(torch.bfloat16)
    assert random_init_calls == []
    assert not llm.weights_pending
    state = llm.model.state_dict()
    assert state.keys() == saved.keys()
    for key, value in saved.items():
        assert state[key].dtype == torch.bfloat16 and torch.equal(state[key], value), key
    # RoPE tables are computed, not loaded: they stay real and in full precision.
    assert llm.rotary_embedding.inv_freq.dtype == torch.float32 and not llm.rotary_embedding.inv_freq.is_meta


def test_fp32_checkpoint_is_cast_once_to_the_target_dtype(tmp_path):
    saved = saved_llama(tmp_path, dtype=torch.float32)
    llm = HFLanguageModel(pretrained=str(tmp_path), config=tiny_llm_config())
    llm.load_pretrained_weights(torch.bfloat16)
    for key, value in saved.items():
        assert torch.equal(llm.model.state_dict()[key], value.to(torch.bfloat16)), key


def test_forward_before_loading_says_what_to_do(tmp_path):
    saved_llama(tmp_path)
    llm = HFLanguageModel(pretrained=str(tmp_path), config=tiny_llm_config())
    with pytest.raises(RuntimeError, match="not loaded yet: call load_pretrained_weights"):
        llm(torch.zeros(1, 2, 48))


def test_a_checkpoint_of_another_architecture_is_refused_with_the_keys(tmp_path):
    saved_llama(tmp_path)
    llm = HFLanguageModel(pretrained=str(tmp_path), config=tiny_llm_config(num_hidden_layers=3))
    with pytest.raises(ValueError, match=r"does not match .*missing \['model.layers.2"):
        llm.load_pretrained_weights(torch.bfloat16)


def test_encoder_from_a_vision_checkpoint_on_meta_in_bf16(tmp_path, random_init_calls):
    config = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8)
    torch.manual_seed(0)
    reference = CLIPVisionModel(CLIPVisionConfig(**config)).to(torch.bfloat16)
    reference.save_pretrained(tmp_path)
    random_init_calls.clear()
    encoder = HFVisionEncoder(pretrained=str(tmp_path), config={"model_type": "clip_vision_model", **config})
    encoder.load_pretrained_weights(torch.bfloat16)
    assert random_init_calls == []
    saved = reference.state_dict()
    loaded = encoder.vision_model.state_dict()
    assert len(encoder.vision_model.encoder.layers) == 2  # select_layer -2 of 3 layers
    for key, value in loaded.items():
        assert torch.equal(value, saved[key]), key


def test_legacy_rope_tables_in_a_checkpoint_are_skipped_but_unknown_tensors_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    saved = saved_llama(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)  # what transformers < 4.36 saved
    save_file(state, tmp_path / "model.safetensors")
    llm = HFLanguageModel(pretrained=str(tmp_path), config=tiny_llm_config())
    llm.load_pretrained_weights(torch.bfloat16)
    assert torch.equal(llm.model.state_dict()["lm_head.weight"], saved["lm_head.weight"])
    state["model.layers.0.mlp.extra.weight"] = torch.ones(2)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"unexpected \['model.layers.0.mlp.extra.weight'\]"):
        HFLanguageModel(pretrained=str(tmp_path), config=tiny_llm_config()).load_pretrained_weights()
