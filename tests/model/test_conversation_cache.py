"""CachedConversation: later turns reuse the image's and the conversation's caches, and answer
exactly what generating the whole conversation from scratch answers."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from conftest import shapes_processor, tiny_vlm
from minivlm.fusion import DecoderPreFusion
from minivlm.model.conversation import CachedConversation
from minivlm.model.generation import generate
from minivlm.processing.templates import Turn

QUESTIONS = ["What colour is the shape at the top left ?", "How many red shapes are there ?", "Is there a circle ?"]


def image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)


@pytest.fixture
def model():
    model = tiny_vlm(prefusion=DecoderPreFusion(num_layers=2), seed=3).eval()
    model.processor = shapes_processor(model)
    return model


def ask(model, conversation, turns, media, max_new_tokens=5):
    """One turn through the cache and from scratch: (cached output, reference output)."""
    batch = model.processor([turns], [media], add_generation_prompt=True)
    kwargs = dict(max_new_tokens=max_new_tokens, eos_token_id=model.processor.eos_token_id, keep_scores=True)
    return conversation.generate(batch, **kwargs), generate(model, batch, **kwargs), batch


def assert_same(cached, reference):
    assert torch.equal(cached.tokens, reference.tokens)
    assert len(cached.scores) == len(reference.scores)
    for ours, theirs in zip(cached.scores, reference.scores):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_three_turns_on_one_image_equal_recomputing_and_reuse_the_cache(model):
    conversation = CachedConversation(model)
    turns: list[Turn] = []
    media = [image(0)]
    previous_length = 0
    for i, question in enumerate(QUESTIONS):
        turns.append(Turn("user", f"<image> {question}" if i == 0 else question))
        cached, reference, batch = ask(model, conversation, turns, media)
        assert_same(cached, reference)
        if i == 0:
            assert conversation.reused_tokens == 0
        else:
            # Everything up to the end of the previous prompt comes from the cache.
            assert conversation.reused_tokens >= previous_length
        previous_length = batch.input_ids.shape[1]
        turns.append(Turn("assistant", model.processor.decode(cached.tokens[0])))


def test_sampled_turns_equal_recomputing_with_the_same_seed(model):
    conversation = CachedConversation(model)
    turns = [Turn("user", f"<image> {QUESTIONS[0]}")]
    for question in QUESTIONS[1:]:
        batch = model.processor([turns], [[image(1)]], add_generation_prompt=True)
        kwargs = dict(max_new_tokens=4, temperature=1.0, top_p=0.9)
        cached = conversation.generate(batch, generator=torch.Generator().manual_seed(7), **kwargs).tokens
        reference = generate(model, batch, generator=torch.Generator().manual_seed(7), **kwargs).tokens
        assert torch.equal(cached, reference)
        turns += [Turn("assistant", model.processor.decode(cached[0])), Turn("user", question)]


def test_a_changed_image_is_not_served_from_the_cache(model):
    conversation = CachedConversation(model)
    turns = [Turn("user", f"<image> {QUESTIONS[0]}")]
    first, _, _ = ask(model, conversation, turns, [image(0)])
    turns += [Turn("assistant", model.processor.decode(first.tokens[0])), Turn("user", QUESTIONS[1])]
    cached, reference, _ = ask(model, conversation, turns, [image(5)])
    assert conversation.reused_tokens == 0
    assert_same(cached, reference)
    stale, _, _ = ask(model, CachedConversation(model), turns, [image(0)])
    assert not torch.allclose(stale.scores[0], reference.scores[0], atol=1e-3)


def test_an_edited_history_cuts_both_caches_back_to_the_shared_prefix(model):
    conversation = CachedConversation(model)
    first = [Turn("user", f"<image> {QUESTIONS[0]}")]
    out, _, _ = ask(model, conversation, first, [image(2)])
    answer = Turn("assistant", model.processor.decode(out.tokens[0]))
    ask(model, conversation, [*first, answer, Turn("user", QUESTIONS[1])], [image(2)])
    # The first question changes after the image: the cached fused text and answers no longer apply.
    edited = [Turn("user", f"<image> {QUESTIONS[2]}"), answer, Turn("user", QUESTIONS[1])]
    cached, reference, batch = ask(model, conversation, edited, [image(2)])
    assert 0 < conversation.reused_tokens < batch.input_ids.shape[1] // 2
    assert_same(cached, reference)


def test_a_second_image_is_generated_from_scratch(model):
    conversation = CachedConversation(model)
    turns = [Turn("user", f"<image> {QUESTIONS[0]}")]
    first, _, _ = ask(model, conversation, turns, [image(0)])
    turns += [Turn("assistant", model.processor.decode(first.tokens[0])), Turn("user", f"<image> {QUESTIONS[1]}")]
    cached, reference, _ = ask(model, conversation, turns, [image(0), image(1)])
    assert_same(cached, reference)
    assert conversation.ids == [] and conversation.llm_cache is None



def test_a_token_fused_differently_is_not_served_from_the_cache(model):
    """Same ids, but a prompt token now bypasses pre-fusion (as an answer fused only at
    inference would): the cache must stop before it."""
    conversation = CachedConversation(model)
    batch = model.processor([[Turn("user", f"<image> {QUESTIONS[0]}")]], [[image(4)]], add_generation_prompt=True)
    conversation.generate(batch, max_new_tokens=2)
    fuse = batch.prefusion_mask.clone()
    fuse[0, 5] = False
    changed = dataclasses.replace(batch, prefusion_mask=fuse)
    kwargs = dict(max_new_tokens=3, keep_scores=True)
    cached = conversation.generate(changed, **kwargs)
    assert conversation.reused_tokens == 5
    assert_same(cached, generate(model, changed, **kwargs))


def test_chat_session_answers_later_turns_from_the_cache(model, tmp_path):
    import os

    from PIL import Image

    from minivlm.chat import ChatSession

    path = tmp_path / "image.png"
    Image.fromarray(image(6)).save(path)
    session = ChatSession(model, max_new_tokens=4, out=open(os.devnull, "w"))
    session.add_image(path)
    session.ask(QUESTIONS[0])
    turns = [*session.turns, Turn("user", QUESTIONS[1])]
    answer = session.ask(QUESTIONS[1])
    assert session.conversation.reused_tokens > 0
    batch = model.processor([turns], [[str(path)]], add_generation_prompt=True)
    reference = model.generate(batch, max_new_tokens=4, eos_token_id=model.processor.eos_token_id)
    assert answer == model.processor.decode(reference[0])


def test_efficiency_page_example_reuses_the_cache(capsys):
    import re
    from pathlib import Path

    page = Path(__file__).resolve().parents[2] / "docs" / "efficiency.md"
    namespace: dict = {}
    for block in re.findall(r"```python\n(.*?)```", page.read_text(), re.S):
        exec(compile(block, "docs/efficiency.md", "exec"), namespace)
    reused, total = map(int, re.match(r"(\d+) of (\d+) prompt ids", capsys.readouterr().out).groups())
    assert 0 < reused < total and reused == namespace["chat"].reused_tokens
