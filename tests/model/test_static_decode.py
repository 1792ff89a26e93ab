"""Static KV cache and compiled decoding: the same tokens and logits as the dynamic cache."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from conftest import VISION, WIDTH, shapes_processor, tiny_encoder, tiny_llm_config, tiny_vlm
from minivlm.compressors import QueryCompressor
from minivlm.fusion import DecoderPreFusion
from minivlm.llms import HFLanguageModel, LanguageModel
from minivlm.model import decoding
from minivlm.model.generation import generate
from minivlm.processing.templates import Turn
from minivlm.projectors import MLPProjector
from minivlm.training.module import MiniVLMModule
from minivlm.training.stages import PartStage, Stage

PROMPTS = [
    [Turn("user", "<image> What colour is the shape at the top left ?")],
    [Turn("user", "<image> Is there a red circle ?")],
    [Turn("user", "How many blue shapes are there ? <image> Is there a green square ?")],
]
NEW = 7


@pytest.fixture(scope="module")
def setup():
    model = tiny_vlm(seed=7).eval()
    processor = shapes_processor(model)
    rng = np.random.default_rng(0)
    pixels = [[rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)] for _ in PROMPTS]
    batch = processor(PROMPTS, pixels, add_generation_prompt=True)
    assert len(set(batch.attention_mask.sum(1).tolist())) == 3  # three different prompt lengths
    return model, processor, pixels, batch


def sample(seed: int) -> dict:
    return dict(temperature=1.5, top_p=0.9, generator=torch.Generator().manual_seed(seed))


def early_eos(tokens: list[list[int]]) -> int:
    """A token that sample 0 emits early and some other sample never emits."""
    return next(
        token for j, token in enumerate(tokens[0][:3])
        if token not in tokens[0][:j] and any(token not in row for row in tokens[1:])
    )


def assert_same(out, reference) -> None:
    assert out.tokens.tolist() == reference.tokens.tolist()
    assert len(out.scores) == len(reference.scores)
    for got, want in zip(out.scores, reference.scores):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def left_padded(batch):
    """The same prompts with the padding moved to the left of each row."""
    ids, mask, fuse = batch.input_ids.clone(), batch.attention_mask.clone(), batch.prefusion_mask.clone()
    for row, pad in enumerate((~batch.attention_mask).sum(1).tolist()):
        ids[row], mask[row], fuse[row] = ids[row].roll(pad), mask[row].roll(pad), fuse[row].roll(pad)
    assert not mask[:, -1].logical_not().any() and mask[:, 0].logical_not().any()
    return dataclasses.replace(batch, input_ids=ids, attention_mask=mask, prefusion_mask=fuse)


@pytest.mark.parametrize("multiple", [1, decoding.STATIC_LENGTH_MULTIPLE])
def test_static_cache_gives_the_dynamic_tokens_and_logits(setup, monkeypatch, multiple):
    # multiple 1: the cache holds exactly the prompt and NEW - 1 fed tokens, no spare slot.
    monkeypatch.setattr(decoding, "STATIC_LENGTH_MULTIPLE", multiple)
    model, _, _, batch = setup
    greedy = generate(model, batch, NEW, keep_scores=True)
    assert len({tuple(row) for row in greedy.tokens.tolist()}) > 1  # the samples really differ
    assert_same(generate(model, batch, NEW, keep_scores=True, cache="static"), greedy)
    assert_same(generate(model, left_padded(batch), NEW, keep_scores=True, cache="static"), greedy)

    sampled = generate(model, batch, NEW, keep_scores=True, **sample(3))
    assert sampled.tokens.tolist() != greedy.tokens.tolist()
    assert_same(generate(model, batch, NEW, keep_scores=True, cache="static", **sample(3)), sampled)

    stop = dict(eos_token_id=early_eos(greedy.tokens.tolist()), pad_token_id=-1, keep_scores=True)
    stopped = generate(model, batch, NEW, **stop)
    assert stopped.tokens[0].tolist().count(-1) > 0  # sample 0 stopped early, the others went on
    assert_same(generate(model, batch, NEW, cache="static", **stop), stopped)


def test_compiled_static_decoding_gives_the_dynamic_tokens_and_logits(setup):
    model, _, _, batch = setup
    torch._dynamo.reset()  # no graph of this shape from elsewhere in the session
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    greedy = generate(model, batch, NEW, keep_scores=True)
    assert_same(generate(model, batch, NEW, keep_scores=True, cache="static", compile=True), greedy)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs + 1

    # Same batch size and cache length (within one STATIC_LENGTH_MULTIPLE): the graph is reused.
    sampled = generate(model, batch, NEW - 2, keep_scores=True, **sample(5))
    assert_same(generate(model, batch, NEW - 2, keep_scores=True, cache="static", compile=True, **sample(5)), sampled)
    stop = dict(eos_token_id=early_eos(greedy.tokens.tolist()), pad_token_id=-1, keep_scores=True)
    assert_same(generate(model, batch, NEW, cache="static", compile=True, **stop), generate(model, batch, NEW, **stop))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs + 1

    # Weights are inputs of the graph: changing them in place changes the compiled step's output.
    weight = model.llm.model.model.layers[-1].mlp.down_proj.weight
    original = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.mul_(-3.0)
        changed = generate(model, batch, NEW, keep_scores=True)
        assert changed.tokens.tolist() != greedy.tokens.tolist()
        assert_same(generate(model, batch, NEW, keep_scores=True, cache="static", compile=True), changed)
    finally:
        with torch.no_grad():
            weight.copy_(original)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs + 1


def test_minivlm_generate_passes_the_options_on(setup, monkeypatch):
    model, _, _, batch = setup
    seen = []
    original = decoding.Decoder.__init__

    def spy(self, llm, mask, length, cache, compile):
        seen.append((cache, compile))
        original(self, llm, mask, length, cache, compile)

    monkeypatch.setattr(decoding.Decoder, "__init__", spy)
    tokens = model.generate(batch, max_new_tokens=3, cache="static")
    assert seen == [("static", False)]
    assert tokens.tolist() == generate(model, batch, 3).tokens.tolist()


def test_predict_decodes_with_the_module_settings(setup, monkeypatch):
    _, _, pixels, _ = setup
    torch.manual_seed(0)
    module = MiniVLMModule(
        tiny_encoder(), QueryCompressor(dim=VISION, size=1, num_heads=4), MLPProjector(VISION, WIDTH),
        DecoderPreFusion(num_layers=1), HFLanguageModel(config=tiny_llm_config()),
        stage=Stage(projector=PartStage("full", 1e-2)), max_new_tokens=4, decode_cache="static",
    ).eval()
    batch = module.processor(PROMPTS, pixels, add_generation_prompt=True)
    caches = []
    original = decoding.Decoder.__init__
    monkeypatch.setattr(decoding.Decoder, "__init__", lambda self, *a: caches.append(a[3:]) or original(self, *a))
    answers = module.predict_step(batch, 0)
    module.decode_cache = "dynamic"
    assert module.predict_step(batch, 0) == answers
    assert caches == [("static", False), ("dynamic", False)]
    assert module.hparams["decode_cache"] == "static" and module.hparams["compile_decode"] is False


def test_bad_option_combinations_are_refused_by_name(setup, monkeypatch):
    model, _, _, batch = setup
    with pytest.raises(ValueError, match="compile=True needs cache='static'"):
        model.generate(batch, max_new_tokens=2, compile=True)
    with pytest.raises(ValueError, match="cache must be one of dynamic, static; got 'paged'"):
        model.generate(batch, max_new_tokens=2, cache="paged")

    sliding = HFLanguageModel(config=tiny_llm_config(model_type="mistral", sliding_window=16))
    with pytest.raises(ValueError, match="MistralForCausalLM has sliding_attention layers"):
        decoding.check_decode_options(sliding, "static", True)
    decoding.check_decode_options(sliding, "dynamic", False)

    monkeypatch.setattr(model.llm.model, "_can_compile_fullgraph", False)
    with pytest.raises(ValueError, match="LlamaForCausalLM does not support transformers' static KV cache"):
        model.generate(batch, max_new_tokens=2, cache="static")
    with pytest.raises(ValueError, match="LanguageModel has no static KV cache"):
        decoding.check_decode_options(LanguageModel(), "static", False)


def test_a_static_cache_cannot_continue_an_earlier_cache(setup):
    model, _, _, _ = setup
    mask = torch.ones(1, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="continuing an earlier cache .* needs cache='dynamic'"):
        decoding.Decoder(model.llm, mask, 8, "static", False, past=object())
