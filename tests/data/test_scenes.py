"""The scenes task: deterministic, answers checked from pixels, splits that share no scene."""

import hashlib
import re
from collections import Counter, defaultdict

import numpy as np
import pytest
from PIL import Image

from minivlm.data.scenes import (
    CELL_NAMES,
    COLOUR_RGB,
    COLOURS,
    EMPTY,
    GRID,
    NUMBER_WORDS,
    OBJECT_KINDS,
    POSITION_KINDS,
    SHAPES,
    ScenesTask,
    build_scenes_tokenizer,
    cell_name,
    layout_split,
)
from minivlm.data.scenes_datamodule import ScenesDataset
from minivlm.eval.evaluate import read_questions

CELL_RE = re.compile(r"row (\w+) column (\w+)")


@pytest.fixture(scope="module")
def task() -> ScenesTask:
    return ScenesTask(seed=0)


def read_cell(image: np.ndarray, row: int, col: int, grid: int = GRID) -> tuple[str, str] | None:
    """(colour, shape) of a cell read from pixels alone (8 px cells): colour at the centre, shape by filled area."""
    cell = image.shape[0] // grid
    patch = image[row * cell : (row + 1) * cell, col * cell : (col + 1) * cell]
    filled = patch.any(axis=2)
    if not filled.any():
        return None
    colour = next(name for name, rgb in COLOUR_RGB.items() if tuple(patch[cell // 2, cell // 2]) == rgb)
    area = int(filled.sum())  # at 8 px cells: square 36, circle 32, triangle 18
    shape = "square" if area >= 34 else "circle" if area >= 26 else "triangle"
    return colour, shape


def test_same_seed_and_index_give_the_same_sample_in_any_order(task):
    forward = [task.sample(i) for i in range(20)]
    backward = [ScenesTask(seed=0).sample(i) for i in reversed(range(20))][::-1]
    for a, b in zip(forward, backward):
        assert a.image.tobytes() == b.image.tobytes() and (a.question, a.answer) == (b.question, b.answer)
    other = ScenesTask(seed=1)
    assert sum(task.sample(i).image.tobytes() != other.sample(i).image.tobytes() for i in range(20)) == 20


def test_answers_agree_with_the_pixels(task):
    words = {word: i for i, word in enumerate(NUMBER_WORDS)}
    kinds = Counter()
    for index in range(400):
        s = task.sample(index)
        cells = [(words[r] - 1, words[c] - 1) for r, c in CELL_RE.findall(s.question)]
        kinds[s.kind] += 1
        if s.kind == "colour_at":
            assert read_cell(s.image, *cells[0])[0] == s.answer
        elif s.kind == "shape_at":
            assert read_cell(s.image, *cells[0])[1] == s.answer
        elif s.kind == "same_colour":
            first, second = (read_cell(s.image, *cell) for cell in cells)
            assert cells[0] != cells[1]
            assert ("yes" if first[0] == second[0] else "no") == s.answer
        else:
            colour, row = re.match(r"How many (\w+) shapes are in row (\w+)", s.question).groups()
            found = [read_cell(s.image, words[row] - 1, col) for col in range(GRID)]
            assert NUMBER_WORDS[sum(f is not None and f[0] == colour for f in found)] == s.answer
    assert set(kinds) == {"colour_at", "shape_at", "count_row", "same_colour"} and min(kinds.values()) > 60


def test_scenes_are_crowded_and_answers_need_the_image(task):
    samples = [task.sample(i) for i in range(3000)]
    occupied = [int((s.layout != EMPTY).sum()) for s in samples]
    assert 24 <= np.mean(occupied) <= 40  # about half of the 64 cells
    # The best answer per question text (what a blind model can learn) is right < 50 % of the time.
    by_question = defaultdict(Counter)
    for s in samples:
        by_question[re.sub(r"row \w+|column \w+", "", s.question)][s.answer] += 1
    blind = sum(c.most_common(1)[0][1] for c in by_question.values()) / len(samples)
    assert blind < 0.5


def test_splits_share_no_scene(task):
    sizes = {"train": 3000, "val": 300, "test": 300}
    indices = {split: task.indices(split, size) for split, size in sizes.items()}
    assert all(len(set(found)) == sizes[split] for split, found in indices.items())
    assert not set(indices["train"]) & set(indices["val"]) and not set(indices["val"]) & set(indices["test"])
    images = {
        split: {hashlib.sha256(task.sample(i).image.tobytes()).hexdigest() for i in found}
        for split, found in indices.items()
    }
    assert not images["train"] & images["val"] and not images["train"] & images["test"]
    assert not images["val"] & images["test"]
    # Why this holds for any size: a scene's split is a function of its layout, and the
    # image determines the layout (rendering is one-to-one), so equal images share a split.
    for split, found in indices.items():
        assert all(layout_split(task.layout(i)) == split for i in found[:200])
    codes = np.arange(len(COLOURS) * len(SHAPES)).reshape(3, 5)
    layout = np.full((GRID, GRID), EMPTY)
    layout[:3, :5] = codes
    drawn = task.render(layout)
    distinct = {drawn[r * 8 : r * 8 + 8, c * 8 : c * 8 + 8].tobytes() for r in range(3) for c in range(6)}
    assert len(distinct) == 16  # 15 codes and the empty cell all look different


def test_split_indices_are_stable_and_extend():
    a, b = ScenesTask(seed=3), ScenesTask(seed=3)
    assert a.indices("val", 50) == b.indices("val", 20) + b.indices("val", 50)[20:]
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        a.indices("dev", 5)  # type: ignore[arg-type]


def test_tokenizer_covers_every_question_and_answer(task):
    tokenizer = build_scenes_tokenizer()
    for i in range(300):
        s = task.sample(i)
        ids = tokenizer(f"{s.question} {s.answer}", add_special_tokens=False)["input_ids"]
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids) == f"{s.question} {s.answer}"


def test_export_writes_a_question_file_for_evaluate(task, tmp_path):
    path = task.export(tmp_path, "test", 5)
    questions = read_questions(path)
    expected = [task.sample(i) for i in task.indices("test", 5)]
    assert [q.text for q in questions] == [s.question for s in expected]
    assert [q.answers for q in questions] == [s.answer for s in expected]
    loaded = np.asarray(Image.open(tmp_path / questions[2].image))
    assert np.array_equal(loaded, expected[2].image)


def test_dataset_records(task):
    dataset = ScenesDataset(task, "val", 4)
    turns, images = dataset[1]
    sample = task.sample(task.indices("val", 4)[1])
    assert turns[0].text == f"<image> {sample.question}" and turns[1].text == sample.answer
    assert np.array_equal(images[0], sample.image)
    prompts = ScenesDataset(task, "val", 4, prompts_only=True)
    assert len(prompts) == 4 and len(prompts[1][0]) == 1


def test_small_grids_render_one_cell_per_patch_and_answer_from_the_pixels():
    task = ScenesTask(image_size=32, seed=0, grid=4, kinds=("colour_at", "shape_at"))
    words = {word: i for i, word in enumerate(NUMBER_WORDS)}
    kinds = Counter()
    for index in range(200):
        s = task.sample(index)
        assert s.image.shape == (32, 32, 3) and s.layout.shape == (4, 4)
        (row, col), = [(words[r] - 1, words[c] - 1) for r, c in CELL_RE.findall(s.question)]
        assert 0 <= row < 4 and 0 <= col < 4
        colour, shape = read_cell(s.image, row, col, grid=4)
        assert s.answer == (colour if s.kind == "colour_at" else shape)
        kinds[s.kind] += 1
    assert set(kinds) == {"colour_at", "shape_at"} and min(kinds.values()) > 60


def test_cell_names_name_each_position_by_one_word_of_the_tokenizer():
    """names="cells": "cell e3" is column e, row three, one token; the scenes and answers are the default's."""
    task = ScenesTask(image_size=32, seed=0, grid=4, names="cells")
    words = ScenesTask(image_size=32, seed=0, grid=4)
    tokenizer = build_scenes_tokenizer("cells")
    names = {cell_name(row, col): (row, col) for row in range(4) for col in range(4)}
    assert cell_name(2, 4) == "e3" and len(names) == 16
    kinds = Counter()
    for index in range(300):
        s, w = task.sample(index), words.sample(index)
        assert np.array_equal(s.image, w.image) and (s.answer, s.kind) == (w.answer, w.kind)
        assert not CELL_RE.search(s.question)
        cells = [names[word] for word in s.question.split() if word in names]
        if s.kind == "count_row":
            assert not cells
        else:
            assert cells == [(NUMBER_WORDS.index(r) - 1, NUMBER_WORDS.index(c) - 1) for r, c in CELL_RE.findall(w.question)]
        if s.kind in ("colour_at", "shape_at"):
            colour, shape = read_cell(s.image, *cells[0], grid=4)
            assert s.answer == (colour if s.kind == "colour_at" else shape)
        ids = tokenizer(f"{s.question} {s.answer}", add_special_tokens=False)["input_ids"]
        assert tokenizer.unk_token_id not in ids and len(ids) == len(f"{s.question} {s.answer}".split())
        kinds[s.kind] += 1
    assert set(kinds) == set(POSITION_KINDS)
    # Only the names (and the word "cell") are new; the default tokenizer has none of them.
    assert set(tokenizer.get_vocab()) - set(build_scenes_tokenizer().get_vocab()) == {*CELL_NAMES, "cell"}


def test_distinct_scenes_hold_one_object_per_colour_and_object_questions_read_it():
    task = ScenesTask(seed=0, kinds=OBJECT_KINDS, scene="distinct")
    kinds = Counter()
    for index in range(300):
        s = task.sample(index)
        colours = [code // len(SHAPES) for code in s.layout.flat if code != EMPTY]
        assert 2 <= len(colours) <= len(COLOURS) and len(set(colours)) == len(colours)
        colour = re.search(r"the (\w+) object", s.question).group(1)
        (row,), (col,) = np.nonzero(
            [[(found := read_cell(s.image, r, c)) is not None and found[0] == colour for c in range(GRID)] for r in range(GRID)]
        )
        expected = {"shape_of": read_cell(s.image, row, col)[1], "row_of": NUMBER_WORDS[row + 1], "col_of": NUMBER_WORDS[col + 1]}
        assert s.answer == expected[s.kind]
        kinds[s.kind] += 1
    assert set(kinds) == set(OBJECT_KINDS) and min(kinds.values()) > 60


def test_default_task_is_unchanged_by_the_new_options(task):
    explicit = ScenesTask(seed=0, grid=GRID, kinds=POSITION_KINDS, scene="crowded")
    for i in range(10):
        a, b = task.sample(i), explicit.sample(i)
        assert a.image.tobytes() == b.image.tobytes() and (a.question, a.answer) == (b.question, b.answer)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(kinds=("row_of",)), "needs scene='distinct'"),
        (dict(kinds=("colour_of_the_sky",)), "unknown"),
        (dict(kinds=()), "non-empty"),
        (dict(grid=9), "grid must be between 2 and 8"),
        (dict(image_size=30, grid=4), "multiple of grid=4"),
        (dict(scene="sparse"), "scene must be"),
        (dict(occupancy=0.0), "occupancy"),
        (dict(names="letters"), "names must be"),
    ],
)
def test_bad_task_options_fail_before_any_sample(options, message):
    with pytest.raises(ValueError, match=message):
        ScenesTask(**options)


def test_several_questions_per_image_share_the_scene_and_start_with_sample(task):
    many = task.samples(7, 6)
    assert (many[0].question, many[0].answer) == (task.sample(7).question, task.sample(7).answer)
    assert all(np.array_equal(s.image, many[0].image) for s in many)
    assert len({s.question for s in many}) > 1
    dataset = ScenesDataset(task, "train", 3, questions_per_image=6)
    turns, images = dataset[2]
    expected = task.samples(dataset.indices[2], 6)
    assert [t.role for t in turns] == ["user", "assistant"] * 6 and len(images) == 1
    assert turns[0].text == f"<image> {expected[0].question}" and turns[2].text == expected[1].question
    assert [t.text for t in turns[1::2]] == [s.answer for s in expected]
    with pytest.raises(ValueError, match="questions_per_image"):
        ScenesDataset(task, "test", 3, prompts_only=True, questions_per_image=2)
