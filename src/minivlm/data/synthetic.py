"""The shapes task: a seeded synthetic VQA generator and its word-level tokenizer.

Each image is a 2x2 grid of cells on black; occupied cells hold one filled shape of
one colour. Questions ask about colour at a position, counts of a colour, or whether
a colour-shape pair exists. Answers depend on the image and not on the question
alone (beyond a weak prior), so a model can only succeed by looking.
"""

from __future__ import annotations

import itertools
import string
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

COLOURS = ("red", "green", "blue", "yellow")
COLOUR_RGB = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
}
SHAPES = ("circle", "square", "triangle")
# Row-major 2x2 layout: index // 2 is the row, index % 2 the column.
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
COUNT_WORDS = ("zero", "one", "two", "three", "four")
YES_NO = ("yes", "no")

QUESTION_TEMPLATES = {
    "colour_at": "What colour is the shape at the {position}?",
    "count_colour": "How many {colour} shapes are there?",
    "exists": "Is there a {colour} {shape}?",
}
KINDS = tuple(QUESTION_TEMPLATES)

SPECIAL_TOKENS = ("<pad>", "<unk>", "<|user|>", "<|assistant|>", "<|end|>")

OCCUPANCY = 0.6  # chance that a cell holds a shape
PRESENT_COLOUR_PROB = 0.75  # count questions ask about a present colour this often
# Chance that a shape reuses a colour already in the image: without it, counts above
# one are rare and a text-only model would score ~60% by always answering "one".
COLOUR_REUSE = 0.5
SHAPE_FRACTION = 0.7  # shape side / cell side

_FIELD_VALUES = {"position": POSITIONS, "colour": COLOURS, "shape": SHAPES}
_PRE_TOKENIZER = pre_tokenizers.Whitespace()


@dataclass(frozen=True)
class ShapesSample:
    """One generated example.

    `shapes` lists the image content as (position, colour, shape) triples in
    POSITIONS order; it exists so tests and debugging can check answers.
    """

    image: np.ndarray
    question: str
    answer: str
    kind: str
    shapes: tuple[tuple[str, str, str], ...]


class ShapesTask:
    """Deterministic synthetic VQA over coloured shapes in a 2x2 grid.

    `sample(index)` depends only on (seed, index), so the task is an infinite,
    random-access data set that needs no storage and is identical across runs.
    """

    def __init__(self, image_size: int = 32, seed: int = 0) -> None:
        if image_size < 16 or image_size % 8:
            raise ValueError(f"image_size must be a multiple of 8 and >= 16, got {image_size}")
        self.image_size = image_size
        self.seed = seed
        # Pixel-centre coordinates, so shapes are symmetric about their centre.
        coords = np.arange(image_size) + 0.5
        self._ys, self._xs = np.meshgrid(coords, coords, indexing="ij")

    def __getitem__(self, index: int) -> ShapesSample:
        return self.sample(index)

    def sample(self, index: int) -> ShapesSample:
        """Generate example `index`; the same (seed, index) always gives the same sample."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, index]))
        occupied = rng.random(len(POSITIONS)) < OCCUPANCY
        while not occupied.any():
            occupied = rng.random(len(POSITIONS)) < OCCUPANCY

        image = np.zeros((self.image_size, self.image_size, 3), dtype=np.uint8)
        shapes = []
        for cell in np.flatnonzero(occupied):
            if shapes and rng.random() < COLOUR_REUSE:
                colour = shapes[rng.integers(len(shapes))][1]
            else:
                colour = COLOURS[rng.integers(len(COLOURS))]
            shape = SHAPES[rng.integers(len(SHAPES))]
            jitter = rng.integers(-1, 2, size=2)
            self._draw(image, int(cell), colour, shape, jitter)
            shapes.append((POSITIONS[cell], colour, shape))

        kind = KINDS[rng.integers(len(KINDS))]
        question, answer = _ask(kind, shapes, rng)
        return ShapesSample(image, question, answer, kind, tuple(shapes))

    def _draw(self, image: np.ndarray, cell: int, colour: str, shape: str, jitter: np.ndarray) -> None:
        cell_size = self.image_size // 2
        cy = (cell // 2) * cell_size + cell_size / 2 + jitter[0]
        cx = (cell % 2) * cell_size + cell_size / 2 + jitter[1]
        half = round(SHAPE_FRACTION * cell_size) / 2
        dy, dx = self._ys - cy, self._xs - cx
        if shape == "circle":
            mask = dx**2 + dy**2 <= half**2
        elif shape == "square":
            mask = (np.abs(dx) < half) & (np.abs(dy) < half)
        else:  # upright isosceles triangle: apex at top, width grows to 2*half at the base
            depth = dy + half
            mask = (depth > 0) & (dy < half) & (np.abs(dx) < depth / 2)
        image[mask] = COLOUR_RGB[colour]


def _ask(kind: str, shapes: list[tuple[str, str, str]], rng: np.random.Generator) -> tuple[str, str]:
    """Draw a question of `kind` about `shapes` and compute its answer."""
    template = QUESTION_TEMPLATES[kind]
    if kind == "colour_at":
        position, colour, _ = shapes[rng.integers(len(shapes))]
        return template.format(position=position), colour

    present = [(colour, shape) for _, colour, shape in shapes]
    if kind == "count_colour":
        # Mostly ask about a present colour, otherwise "zero" would dominate the answers.
        if rng.random() < PRESENT_COLOUR_PROB:
            colour = present[rng.integers(len(present))][0]
        else:
            colour = COLOURS[rng.integers(len(COLOURS))]
        count = sum(c == colour for c, _ in present)
        return template.format(colour=colour), COUNT_WORDS[count]

    if rng.random() < 0.5:
        colour, shape = present[rng.integers(len(present))]
        return template.format(colour=colour, shape=shape), "yes"
    absent = [pair for pair in itertools.product(COLOURS, SHAPES) if pair not in present]
    colour, shape = absent[rng.integers(len(absent))]
    return template.format(colour=colour, shape=shape), "no"


def _words(text: str) -> list[str]:
    return [word for word, _ in _PRE_TOKENIZER.pre_tokenize_str(text)]


def shapes_vocabulary() -> list[str]:
    """Every word and punctuation token the task's questions and answers can contain, sorted."""
    words = set(COLOURS) | set(COUNT_WORDS) | set(YES_NO)
    for template in QUESTION_TEMPLATES.values():
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name]
        for values in itertools.product(*(_FIELD_VALUES[name] for name in fields)):
            words.update(_words(template.format(**dict(zip(fields, values)))))
    return sorted(words)


def build_shapes_tokenizer() -> PreTrainedTokenizerFast:
    """Build the word-level tokenizer for the shapes task, offline.

    Special tokens take ids 0..4 in SPECIAL_TOKENS order; nothing is added
    automatically on encode, and decode joins tokens with single spaces.
    """
    return word_level_tokenizer(shapes_vocabulary())


def word_level_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """A whitespace-split, word-level tokenizer over SPECIAL_TOKENS + `words`, built offline
    (the synthetic tasks' tokenizers: their vocabularies are closed)."""
    vocab = {token: i for i, token in enumerate((*SPECIAL_TOKENS, *words))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    # Same splitting as _words, so the vocabulary covers everything the task emits.
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    # cleanup=False keeps "there ?" as is, so decode is a plain space join.
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        unk_token="<unk>",
        eos_token="<|end|>",
        additional_special_tokens=["<|user|>", "<|assistant|>"],
        clean_up_tokenization_spaces=False,
    )
