"""Tests for the synthetic shapes task and its tokenizer."""

import re
from collections import Counter, defaultdict

import numpy as np
import pytest
from transformers import AutoTokenizer

from minivlm.data.synthetic import (
    COLOUR_RGB,
    COLOURS,
    POSITIONS,
    SHAPES,
    SPECIAL_TOKENS,
    ShapesSample,
    ShapesTask,
    build_shapes_tokenizer,
    shapes_vocabulary,
)

NUMBERS = ("zero", "one", "two", "three", "four")


@pytest.fixture(scope="module")
def samples() -> list[ShapesSample]:
    task = ShapesTask(seed=0)
    return [task.sample(i) for i in range(5000)]


@pytest.fixture(scope="module")
def tokenizer():
    return build_shapes_tokenizer()


def _same(a: ShapesSample, b: ShapesSample) -> bool:
    return (
        a.image.tobytes() == b.image.tobytes()
        and (a.question, a.answer, a.kind, a.shapes) == (b.question, b.answer, b.kind, b.shapes)
    )


def test_same_seed_and_index_give_identical_samples_in_any_order():
    reused = ShapesTask(seed=7)
    forward = [reused.sample(i) for i in range(30)]
    backward = [reused[i] for i in reversed(range(30))][::-1]
    fresh = [ShapesTask(seed=7).sample(i) for i in range(30)]
    assert all(_same(a, b) and _same(a, c) for a, b, c in zip(forward, backward, fresh))


def test_different_seeds_give_different_samples():
    a, b = ShapesTask(seed=0), ShapesTask(seed=1)
    differing = sum(not _same(a[i], b[i]) for i in range(30))
    assert differing >= 25


def test_sample_fields_are_well_formed(samples):
    for s in samples[:200]:
        assert s.image.shape == (32, 32, 3) and s.image.dtype == np.uint8
        assert s.kind in ("colour_at", "count_colour", "exists")
        assert 1 <= len(s.shapes) <= 4
        positions = [p for p, _, _ in s.shapes]
        assert positions == sorted(positions, key=POSITIONS.index) and len(set(positions)) == len(positions)
        assert all(c in COLOURS and sh in SHAPES for _, c, sh in s.shapes)


def test_answers_match_the_image_metadata(samples):
    for s in samples:
        if s.kind == "colour_at":
            position = re.fullmatch(r"What colour is the shape at the (.+)\?", s.question)[1]
            expected = {p: c for p, c, _ in s.shapes}[position]
        elif s.kind == "count_colour":
            colour = re.fullmatch(r"How many (\w+) shapes are there\?", s.question)[1]
            expected = NUMBERS[sum(c == colour for _, c, _ in s.shapes)]
        else:
            colour, shape = re.fullmatch(r"Is there a (\w+) (\w+)\?", s.question).groups()
            expected = "yes" if any((c, sh) == (colour, shape) for _, c, sh in s.shapes) else "no"
        assert s.answer == expected, s


@pytest.mark.parametrize("size", [32, 48, 64])
def test_image_draws_each_shape_in_its_cell(size):
    task = ShapesTask(image_size=size, seed=3)
    half = size // 2
    for i in range(100):
        s = task[i]
        content = {p: c for p, c, _ in s.shapes}
        for cell, position in enumerate(POSITIONS):
            top, left = (cell // 2) * half, (cell % 2) * half
            block = s.image[top : top + half, left : left + half].reshape(-1, 3)
            if position in content:
                rgb = COLOUR_RGB[content[position]]
                assert tuple(s.image[top + half // 2, left + half // 2]) == rgb
                # Only background and the shape's colour appear inside the cell.
                assert {tuple(px) for px in block} == {(0, 0, 0), rgb}
            else:
                assert not block.any()


@pytest.mark.parametrize("size", [0, 8, 12, 20, 33])
def test_bad_image_size_raises(size):
    with pytest.raises(ValueError):
        ShapesTask(image_size=size)


def test_kinds_are_roughly_uniform(samples):
    counts = Counter(s.kind for s in samples)
    assert set(counts) == {"colour_at", "count_colour", "exists"}
    assert all(abs(n / len(samples) - 1 / 3) < 0.04 for n in counts.values())


def test_exists_answers_are_balanced():
    task = ShapesTask(seed=11)
    answers = [s.answer for s in (task[i] for i in range(6000)) if s.kind == "exists"][:2000]
    assert len(answers) == 2000
    assert abs(answers.count("yes") / len(answers) - 0.5) < 0.05


def test_count_answers_are_not_dominated_by_one_value(samples):
    answers = Counter(s.answer for s in samples if s.kind == "count_colour")
    assert max(answers.values()) / sum(answers.values()) < 0.45
    assert {"zero", "one", "two", "three"} <= set(answers)


def test_text_only_majority_baseline_is_weak(samples):
    by_question = defaultdict(Counter)
    for s in samples:
        by_question[s.question][s.answer] += 1
    hits, totals = Counter(), Counter()
    for s in samples:
        hits[s.kind] += by_question[s.question].most_common(1)[0][0] == s.answer
        totals[s.kind] += 1
    accuracy = {kind: hits[kind] / totals[kind] for kind in totals}
    assert sum(hits.values()) / len(samples) < 0.5
    assert accuracy["colour_at"] < 0.32
    assert accuracy["count_colour"] < 0.45
    assert accuracy["exists"] < 0.6


def test_vocabulary_is_sorted_unique_and_covers_answers():
    vocab = shapes_vocabulary()
    assert vocab == sorted(set(vocab))
    assert {"?", *COLOURS, *SHAPES, *NUMBERS, "yes", "no"} <= set(vocab)
    assert not set(vocab) & set(SPECIAL_TOKENS)


def test_special_tokens_have_fixed_ids(tokenizer):
    assert tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS)) == [0, 1, 2, 3, 4]
    assert (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.eos_token_id) == (0, 1, 4)
    assert len(tokenizer) == len(SPECIAL_TOKENS) + len(shapes_vocabulary())
    # Specials inside text stay whole instead of being split on punctuation.
    ids = tokenizer.encode("<|user|> Is there a red circle? <|assistant|> yes <|end|>")
    assert ids[0] == 2 and ids[-3:-1] == [3, tokenizer.convert_tokens_to_ids("yes")] and ids[-1] == 4


def test_task_text_never_maps_to_unk(samples, tokenizer):
    texts = [s.question for s in samples[:3000]] + [s.answer for s in samples[:3000]]
    for ids in tokenizer(texts)["input_ids"]:
        assert tokenizer.unk_token_id not in ids
    assert tokenizer.encode("purple")[0] == tokenizer.unk_token_id


def test_encode_adds_no_special_tokens_and_decode_joins_words(tokenizer):
    text = "How many red shapes are there?"
    with_specials = tokenizer.encode(text, add_special_tokens=True)
    assert with_specials == tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.convert_ids_to_tokens(with_specials) == ["How", "many", "red", "shapes", "are", "there", "?"]
    assert tokenizer.decode(with_specials) == "How many red shapes are there ?"


def test_tokenizer_round_trips_through_save_pretrained(tokenizer, tmp_path, samples):
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.get_vocab() == tokenizer.get_vocab()
    assert loaded.all_special_tokens == tokenizer.all_special_tokens
    texts = [f"<|user|> {s.question} <|assistant|> {s.answer} <|end|>" for s in samples[:200]]
    assert loaded(texts)["input_ids"] == tokenizer(texts)["input_ids"]
    assert loaded.decode(loaded.encode(texts[0])) == tokenizer.decode(tokenizer.encode(texts[0]))
