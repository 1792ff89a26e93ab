"""Batched generation: equals one-by-one, stops per sample, cached logits equal a full forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import shapes_processor, tiny_vlm
from minivlm.model.generation import choose_tokens, generate
from minivlm.processing.templates import Turn

PROMPTS = [
    [Turn("user", "<image> What colour is the shape at the top left ?")],
    [Turn("user", "<image> Is there a red circle ?")],
    [Turn("user", "How many blue shapes are there ? <image> Is there a green square ?")],
]


@pytest.fixture(scope="module")
def setup():
    model = tiny_vlm(seed=7).eval()
    processor = shapes_processor(model)
    rng = np.random.default_rng(0)
    pixels = [[rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)] for _ in PROMPTS]
    return model, processor, pixels


def prompt_batch(processor, pixels, rows):
    return processor([PROMPTS[i] for i in rows], [pixels[i] for i in rows], add_generation_prompt=True)


def test_batched_generation_equals_one_by_one(setup):
    model, processor, pixels = setup
    batch = prompt_batch(processor, pixels, [0, 1, 2])
    assert len(set(batch.attention_mask.sum(1).tolist())) == 3  # three different prompt lengths
    together = model.generate(batch, max_new_tokens=6)
    for i in range(3):
        alone = model.generate(prompt_batch(processor, pixels, [i]), max_new_tokens=6)
        assert alone[0].tolist() == together[i].tolist()
    assert len({tuple(row) for row in together.tolist()}) > 1  # the samples really differ


def test_each_sample_stops_at_eos_and_is_padded_while_others_go_on(setup):
    model, processor, pixels = setup
    batch = prompt_batch(processor, pixels, [0, 1, 2])
    free = model.generate(batch, max_new_tokens=6).tolist()
    # An EOS that sample 0 emits early and some other sample never emits.
    eos, stop = next(
        (token, j) for j, token in enumerate(free[0][:4])
        if token not in free[0][:j] and any(token not in row for row in free[1:])
    )
    out = model.generate(batch, max_new_tokens=6, eos_token_id=eos, pad_token_id=-1).tolist()
    assert out[0] == free[0][: stop + 1] + [-1] * (len(out[0]) - stop - 1)
    for row, reference in zip(out[1:], free[1:]):
        if eos not in reference:
            assert row == reference  # went on to max_new_tokens
        else:
            cut = reference.index(eos) + 1
            assert row == reference[:cut] + [-1] * (len(row) - cut)


def test_every_step_logits_equal_a_full_forward_over_the_same_tokens(setup):
    model, processor, pixels = setup
    batch = prompt_batch(processor, pixels, [0, 2])
    out = generate(model, batch, max_new_tokens=5, keep_scores=True)
    assert len(out.scores) == 5
    for i in range(2):
        for t in range(5):
            single = prompt_batch(processor, pixels, [[0, 2][i]])
            single.input_ids = torch.cat([single.input_ids, out.tokens[i : i + 1, :t]], dim=1)
            single.attention_mask = torch.ones_like(single.input_ids, dtype=torch.bool)
            single.prefusion_mask = torch.cat([single.prefusion_mask, torch.zeros(1, t, dtype=torch.bool)], dim=1)
            single.labels = None
            with torch.no_grad():
                full = model(single).logits[0, -1]
            torch.testing.assert_close(out.scores[t][i], full, atol=1e-5, rtol=0)


def test_prefill_keeps_last_logits_only_and_no_forward_follows_the_last_token(setup, monkeypatch):
    model, processor, pixels = setup
    shapes = []
    forward = model.llm.forward

    def spy(*args, **kwargs):
        logits, cache = forward(*args, **kwargs)
        shapes.append(tuple(logits.shape))
        return logits, cache

    monkeypatch.setattr(model.llm, "forward", spy)
    tokens = model.generate(prompt_batch(processor, pixels, [0, 1]), max_new_tokens=4)
    assert tokens.shape == (2, 4)
    assert shapes == [(2, 1, model.llm.vocab_size)] * 4  # prefill + 3 steps, never a fifth


def test_streamer_gets_each_step_and_one_end(setup):
    model, processor, pixels = setup

    class Recorder:
        def __init__(self):
            self.steps, self.ended = [], 0

        def put(self, tokens):
            self.steps.append(tokens.tolist())

        def end(self):
            self.ended += 1

    recorder = Recorder()
    tokens = model.generate(prompt_batch(processor, pixels, [0, 1]), max_new_tokens=4, streamer=recorder)
    assert recorder.steps == tokens.T.tolist() and recorder.ended == 1


def test_sampling_is_seeded_and_a_tiny_top_p_is_greedy(setup):
    model, processor, pixels = setup
    batch = prompt_batch(processor, pixels, [0, 1])

    def sample(seed, **kwargs):
        return model.generate(batch, max_new_tokens=6, temperature=5.0, generator=torch.Generator().manual_seed(seed), **kwargs)

    assert torch.equal(sample(1), sample(1))
    assert not torch.equal(sample(1), sample(2))
    assert torch.equal(sample(3, top_p=1e-6), model.generate(batch, max_new_tokens=6))


def test_choose_tokens_follows_temperature_and_top_p():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log().expand(4000, 4)
    generator = torch.Generator().manual_seed(0)
    counts = torch.bincount(choose_tokens(logits, 1.0, 1.0, generator), minlength=4) / 4000
    torch.testing.assert_close(counts, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.03, rtol=0)
    nucleus = torch.bincount(choose_tokens(logits, 1.0, 0.7, generator), minlength=4) / 4000
    assert nucleus[2:].sum() == 0 and abs(nucleus[0] - 0.625) < 0.03  # 0.5 / (0.5 + 0.3)
    assert choose_tokens(logits[:2], 0.0).tolist() == [0, 0]


@pytest.mark.parametrize("kwargs, message", [
    ({"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
    ({"temperature": -1.0}, "temperature must be >= 0"),
    ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
])
def test_bad_generation_settings_fail_before_any_work(setup, kwargs, message):
    model, processor, pixels = setup
    with pytest.raises(ValueError, match=message):
        model.generate(prompt_batch(processor, pixels, [0]), **kwargs)
