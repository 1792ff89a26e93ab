"""HFLanguageModel: built from a config, loaded from a local directory, cache and exports."""

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from conftest import tiny_llm_config
from minivlm.llms import HFLanguageModel


def test_config_build_exposes_what_parts_compose_with():
    llm = HFLanguageModel(config=tiny_llm_config())
    assert (llm.hidden_size, llm.vocab_size) == (48, 64)
    assert len(llm.decoder_layers) == 2
    assert llm.decoder_layer_class.__name__ == "LlamaDecoderLayer"
    assert llm.embed(torch.tensor([[3]])).shape == (1, 1, 48)


def test_loads_a_local_directory_and_matches_transformers(tmp_path):
    torch.manual_seed(0)
    reference = AutoModelForCausalLM.from_config(LlamaConfig(**{k: v for k, v in tiny_llm_config().items() if k != "model_type"}))
    reference.save_pretrained(tmp_path)
    llm = HFLanguageModel(pretrained=str(tmp_path)).eval()
    llm.load_pretrained_weights()
    ids = torch.tensor([[1, 5, 9, 2]])
    logits, _ = llm(llm.embed(ids), attention_mask=torch.ones_like(ids, dtype=torch.bool))
    assert torch.allclose(logits, reference.eval()(ids).logits, atol=1e-5)


def test_kv_cache_continues_the_sequence():
    llm = HFLanguageModel(config=tiny_llm_config()).eval()
    ids = torch.tensor([[1, 5, 9, 2, 7]])
    full, _ = llm(llm.embed(ids))
    _, cache = llm(llm.embed(ids[:, :4]), use_cache=True)
    step, _ = llm(llm.embed(ids[:, 4:]), position_ids=torch.tensor([[4]]), cache=cache, use_cache=True)
    assert torch.allclose(step[0, -1], full[0, -1], atol=1e-5)


def test_export_rebuilds_the_architecture_offline():
    llm = HFLanguageModel(config=tiny_llm_config())
    args = llm.init_args_for_export()
    assert "transformers_version" not in args["config"] and "trainable" not in args
    rebuilt = HFLanguageModel(**args)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in llm.state_dict().items()}


def test_needs_a_config_or_a_checkpoint():
    with pytest.raises(ValueError, match="needs `config`"):
        HFLanguageModel()
    with pytest.raises(ValueError, match="model_type"):
        HFLanguageModel(config={"hidden_size": 8})
