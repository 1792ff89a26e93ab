"""The scenes task: a harder synthetic VQA benchmark where one question-agnostic token must lose information.

An image is an 8×8 grid of cells (8 px each at the default 64 px, so a patch-8 encoder
sees one cell per patch); about half the cells hold a filled shape of one of five colours.
Questions name positions ("row three column five"), so the answer lives in one or two of
64 patches: the colour or shape at a cell, how many shapes of a colour a row holds, and
whether two named cells share a colour. With every patch (LLaVA-1.5) or with pre-fusion
(the question's tokens attend to all patches before compression), the model can look
where the question points. A single token made without seeing the question must carry
all 64 cells at once, which is what the ablation in `benchmarks/ablation.py` measures.

Positions are named in words by default ("row three column five"), which a model must
combine from two words; `names="cells"` names each cell by one word instead, spreadsheet
style ("cell e3": column e, row three), so one token points at one patch.

Splits are disjoint by construction: a scene's split is a function of its content (a hash
of its layout, which determines the image exactly), so two samples with the same image
can never land in different splits.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from transformers import PreTrainedTokenizerFast

from minivlm.data.synthetic import word_level_tokenizer

GRID = 8
COLOURS = ("red", "green", "blue", "yellow", "white")
COLOUR_RGB = {
    "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0), "white": (255, 255, 255),
}
SHAPES = ("circle", "square", "triangle")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight")
QUESTION_TEMPLATES = {
    "colour_at": "What colour is the shape in row {row} column {col} ?",
    "shape_at": "What shape is in row {row} column {col} ?",
    "count_row": "How many {colour} shapes are in row {row} ?",
    "same_colour": "Do row {row} column {col} and row {row2} column {col2} have the same colour ?",
    "shape_of": "What shape is the {colour} object ?",
    "row_of": "Which row is the {colour} object in ?",
    "col_of": "Which column is the {colour} object in ?",
}
KINDS = tuple(QUESTION_TEMPLATES)
# How questions name a position: two number words, or one word per cell ("cell e3" for row three, column five).
Names = Literal["words", "cells"]
NAMES: tuple[Names, ...] = ("words", "cells")
CELL_NAMES = tuple(f"{letter}{row}" for letter in "abcdefgh" for row in range(1, 9))
# Questions that name a cell, asked of any scene.
POSITION_KINDS = ("colour_at", "shape_at", "count_row", "same_colour")
# Questions that name an object by its colour, asked of "distinct" scenes (one object per colour).
OBJECT_KINDS = ("shape_of", "row_of", "col_of")
Scene = Literal["crowded", "distinct"]
OCCUPANCY = 0.5
SHAPE_FRACTION = 0.75  # shape side / cell side
Split = Literal["train", "val", "test"]
# Share of scenes (by layout hash, in percent) that each split owns.
SPLIT_PERCENT: dict[str, range] = {"train": range(0, 90), "val": range(90, 95), "test": range(95, 100)}

EMPTY = -1


@dataclass(frozen=True)
class SceneSample:
    """One example. `layout` (GRID, GRID) holds colour * len(SHAPES) + shape per cell, -1 if empty."""

    image: np.ndarray
    question: str
    answer: str
    kind: str
    layout: np.ndarray


def layout_split(layout: np.ndarray) -> Split:
    """The split a scene belongs to, decided by a hash of its layout (and so of its image)."""
    digest = hashlib.blake2b(layout.astype(np.int8).tobytes(), digest_size=8).digest()
    percent = int.from_bytes(digest, "little") % 100
    return next(name for name, owned in SPLIT_PERCENT.items() if percent in owned)  # type: ignore[return-value]


class ScenesTask:
    """Deterministic scenes VQA: `sample(index)` depends only on (seed, index).

    `indices(split, count)` lists the first `count` generator indices whose scene belongs to
    `split`; a split's samples are `sample(i)` for those indices.
    """

    def __init__(
        self,
        image_size: int = 64,
        seed: int = 0,
        grid: int = GRID,
        kinds: tuple[str, ...] = POSITION_KINDS,
        occupancy: float = OCCUPANCY,
        scene: Scene = "crowded",
        names: Names = "words",
    ) -> None:
        if not 2 <= grid <= len(NUMBER_WORDS) - 1:
            raise ValueError(f"grid must be between 2 and {len(NUMBER_WORDS) - 1} (positions are number words), got {grid}")
        if image_size % grid or image_size < 4 * grid:
            raise ValueError(f"image_size must be a multiple of grid={grid} and >= {4 * grid}, got {image_size}")
        unknown = sorted(set(kinds) - set(KINDS))
        if not kinds or unknown:
            raise ValueError(f"kinds must be a non-empty subset of {', '.join(KINDS)}; unknown: {unknown}")
        if not 0 < occupancy <= 1:
            raise ValueError(f"occupancy must be in (0, 1], got {occupancy}")
        if scene not in ("crowded", "distinct"):
            raise ValueError(f"scene must be 'crowded' or 'distinct', got {scene!r}")
        if names not in NAMES:
            raise ValueError(f"names must be 'words' or 'cells', got {names!r}")
        if scene == "crowded" and set(kinds) & set(OBJECT_KINDS):
            raise ValueError(
                f"{', '.join(sorted(set(kinds) & set(OBJECT_KINDS)))} name an object by its colour, which needs "
                "scene='distinct' (one object per colour)"
            )
        self.image_size = image_size
        self.seed = seed
        self.grid = grid
        self.kinds = tuple(kinds)
        self.occupancy = occupancy
        self.scene = scene
        self.names = names
        cell = image_size // grid
        coords = np.arange(cell) + 0.5 - cell / 2  # pixel centres relative to the cell centre
        ys, xs = np.meshgrid(coords, coords, indexing="ij")
        half = SHAPE_FRACTION * cell / 2
        depth = ys + half
        self._masks = {
            "circle": xs**2 + ys**2 <= half**2,
            "square": (np.abs(xs) < half) & (np.abs(ys) < half),
            "triangle": (depth > 0) & (ys < half) & (np.abs(xs) < depth / 2),
        }
        self._split_cache: dict[str, list[int]] = {}

    def _rng(self, index: int) -> np.random.Generator:
        if index < 0:
            raise IndexError(f"scene indices start at 0, got {index}")
        return np.random.default_rng(np.random.SeedSequence([self.seed, index]))

    def layout(self, index: int, rng: np.random.Generator | None = None) -> np.ndarray:
        """The (grid, grid) cell codes of scene `index`: crowded (each cell occupied with
        probability `occupancy`, at least two) or distinct (2 to 5 objects, each of its own colour)."""
        rng = rng if rng is not None else self._rng(index)
        shape = (self.grid, self.grid)
        if self.scene == "distinct":
            count = int(rng.integers(2, len(COLOURS) + 1))
            layout = np.full(shape, EMPTY)
            cells = rng.choice(self.grid * self.grid, size=count, replace=False)
            colours = rng.permutation(len(COLOURS))[:count]
            layout.flat[cells] = colours * len(SHAPES) + rng.integers(len(SHAPES), size=count)
            return layout
        codes = rng.integers(len(COLOURS) * len(SHAPES), size=shape)
        occupied = rng.random(shape) < self.occupancy
        while occupied.sum() < 2:
            occupied = rng.random(shape) < self.occupancy
        return np.where(occupied, codes, EMPTY)

    def indices(self, split: Split, count: int) -> list[int]:
        """The first `count` generator indices whose scenes belong to `split`."""
        if split not in SPLIT_PERCENT:
            raise ValueError(f"unknown split {split!r}; splits are {', '.join(SPLIT_PERCENT)}")
        found = self._split_cache.setdefault(split, [])
        index = found[-1] + 1 if found else 0
        while len(found) < count:
            if layout_split(self.layout(index)) == split:
                found.append(index)
            index += 1
        return found[:count]

    def sample(self, index: int) -> SceneSample:
        return self.samples(index, 1)[0]

    def samples(self, index: int, count: int) -> list[SceneSample]:
        """`count` questions about scene `index` (one image); the first is `sample(index)`."""
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        rng = self._rng(index)
        layout = self.layout(index, rng)
        image = self.render(layout)
        found = []
        for _ in range(count):
            kind = self.kinds[rng.integers(len(self.kinds))]
            question, answer = _ask(kind, layout, rng, self.names)
            found.append(SceneSample(image, question, answer, kind, layout))
        return found

    def render(self, layout: np.ndarray) -> np.ndarray:
        """The (S, S, 3) uint8 image of a layout: shapes on black, one per occupied cell."""
        cell = self.image_size // self.grid
        image = np.zeros((self.image_size, self.image_size, 3), dtype=np.uint8)
        for row, col in zip(*np.nonzero(layout != EMPTY)):
            colour, shape = divmod(int(layout[row, col]), len(SHAPES))
            patch = image[row * cell : (row + 1) * cell, col * cell : (col + 1) * cell]
            patch[self._masks[SHAPES[shape]]] = COLOUR_RGB[COLOURS[colour]]
        return image

    def export(self, directory: str | Path, split: Split, count: int) -> Path:
        """Writes `count` samples of `split` as PNGs and a LLaVA-format question file
        (`questions.jsonl`, answers included) for `minivlm evaluate`; returns that file."""
        directory = Path(directory)
        (directory / "images").mkdir(parents=True, exist_ok=True)
        lines = []
        for index in self.indices(split, count):
            sample = self.sample(index)
            name = f"images/{split}-{index}.png"
            Image.fromarray(sample.image).save(directory / name)
            lines.append({
                "question_id": f"{split}-{index}", "image": name, "text": sample.question,
                "answers": sample.answer, "kind": sample.kind,
            })
        path = directory / "questions.jsonl"
        path.write_text("".join(json.dumps(line) + "\n" for line in lines))
        return path


def cell_name(row: int, col: int) -> str:
    """The one-word name of a cell (0-based row and column): column letter, then row number ("e3")."""
    return f"{'abcdefgh'[col]}{row + 1}"


def _cell_name(row: int, col: int, suffix: str = "") -> dict[str, str]:
    return {
        f"row{suffix}": NUMBER_WORDS[row + 1], f"col{suffix}": NUMBER_WORDS[col + 1], f"cell{suffix}": cell_name(row, col)
    }


def _template(kind: str, names: Names) -> str:
    template = QUESTION_TEMPLATES[kind]
    if names == "cells":
        template = template.replace("row {row} column {col}", "cell {cell}")
        template = template.replace("row {row2} column {col2}", "cell {cell2}")
    return template


def _ask(kind: str, layout: np.ndarray, rng: np.random.Generator, names: Names = "words") -> tuple[str, str]:
    """Draw a question of `kind` about `layout` and compute its answer."""
    template = _template(kind, names)
    occupied = np.argwhere(layout != EMPTY)
    if kind in OBJECT_KINDS:
        row, col = occupied[rng.integers(len(occupied))]
        colour, shape = divmod(int(layout[row, col]), len(SHAPES))
        answer = {"shape_of": SHAPES[shape], "row_of": NUMBER_WORDS[row + 1], "col_of": NUMBER_WORDS[col + 1]}[kind]
        return template.format(colour=COLOURS[colour]), answer
    if kind in ("colour_at", "shape_at"):
        row, col = occupied[rng.integers(len(occupied))]
        colour, shape = divmod(int(layout[row, col]), len(SHAPES))
        answer = COLOURS[colour] if kind == "colour_at" else SHAPES[shape]
        return template.format(**_cell_name(row, col)), answer
    if kind == "count_row":
        row = int(rng.integers(len(layout)))
        colours = [divmod(int(code), len(SHAPES))[0] for code in layout[row] if code != EMPTY]
        # Mostly ask about a colour the row holds, otherwise "zero" dominates the answers.
        if colours and rng.random() < 0.75:
            colour = colours[rng.integers(len(colours))]
        else:
            colour = int(rng.integers(len(COLOURS)))
        return template.format(colour=COLOURS[colour], row=NUMBER_WORDS[row + 1]), NUMBER_WORDS[colours.count(colour)]
    colours = layout[occupied[:, 0], occupied[:, 1]] // len(SHAPES)
    first = int(rng.integers(len(occupied)))
    matching = colours == colours[first]
    matching[first] = False
    # Half the time pick a cell of the same colour when there is one, else "no" is right ~80% of the time.
    pool = np.flatnonzero(matching) if matching.any() and rng.random() < 0.5 else np.flatnonzero(~matching)
    pool = pool[pool != first]
    second = int(pool[rng.integers(len(pool))]) if len(pool) else int((first + 1) % len(occupied))
    (r1, c1), (r2, c2) = occupied[first], occupied[second]
    same = colours[first] == colours[second]
    return template.format(**_cell_name(r1, c1), **_cell_name(r2, c2, "2")), "yes" if same else "no"


def scenes_vocabulary(names: Names = "words") -> list[str]:
    """Every word the task's questions and answers can contain (with `names`), sorted."""
    words = set(COLOURS) | set(SHAPES) | set(NUMBER_WORDS) | {"yes", "no"}
    if names == "cells":
        words |= set(CELL_NAMES)
    for kind in QUESTION_TEMPLATES:
        words.update(word for word in _template(kind, names).split() if not word.startswith("{"))
    return sorted(words)


def build_scenes_tokenizer(names: Names = "words") -> PreTrainedTokenizerFast:
    """The word-level tokenizer of the scenes task (with `names`), built offline (special tokens as the shapes task's)."""
    return word_level_tokenizer(scenes_vocabulary(names))
