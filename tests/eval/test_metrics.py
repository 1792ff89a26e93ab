"""Metrics on hand-built inputs, checked against hand-worked scores."""

import pytest
import torch

from minivlm.eval import (
    AnswerExactMatch,
    ExactMatch,
    MultipleChoiceAccuracy,
    POPEMetrics,
    VQAAccuracy,
    normalize_vqa_answer,
    parse_choice_letter,
    parse_yes_no,
    vqa_soft_score,
)
from minivlm.processing.batch import IGNORE_INDEX as X


def one_hot_logits(argmax: list[list[int]], vocab: int = 6) -> torch.Tensor:
    """(B, T, V) logits whose argmax at [b, t] is argmax[b][t]."""
    logits = torch.zeros(len(argmax), len(argmax[0]), vocab)
    for b, row in enumerate(argmax):
        for t, token in enumerate(row):
            logits[b, t, token] = 5.0
    return logits


def test_exact_match_scores_next_token_predictions():
    labels = torch.tensor([[X, X, 3, 4], [X, X, 2, 5], [X, X, X, X]])
    # Position t predicts label t+1: rows 0 and 1 predict "3 4" / "2 1" from positions 1 and 2.
    logits = one_hot_logits([[0, 3, 4, 0], [0, 2, 1, 0], [1, 1, 1, 1]])
    metric = ExactMatch()
    metric.update(logits, labels)
    # Row 0 right, row 1 wrong at its last token, row 2 has no labels and is not counted.
    assert int(metric.total) == 2
    assert metric.compute().item() == pytest.approx(0.5)


def test_exact_match_does_not_compare_unshifted_positions():
    labels = torch.tensor([[X, 3, 4, X], [X, 2, 5, X]])
    aligned_without_shift = one_hot_logits([[0, 3, 4, 0], [0, 2, 5, 0]])
    metric = ExactMatch()
    metric.update(aligned_without_shift, labels)
    assert metric.compute().item() == 0.0
    shifted = one_hot_logits([[3, 4, 0, 0], [2, 5, 0, 0]])
    metric.reset()
    metric.update(shifted, labels)
    assert metric.compute().item() == 1.0


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("Two dogs!", "2 dogs"),           # "!" inside text becomes a space; number words become digits
        ("The cat.", "cat"),               # articles and periods go
        ("A Red Car", "red car"),
        ("black-and-white", "black and white"),
        ("black - white", "black white"),  # a mark beside a space is deleted
        ("1,000", "1000"),                 # a thousands comma is deleted, not spaced
        ("3.5", "3.5"),                    # a period before a digit stays
        ("isnt", "isn't"),
        ("Dont know", "don't know"),
        ("none", "0"),
        ("  yes\n", "yes"),
    ],
)
def test_vqa_normalisation(raw, normalised):
    assert normalize_vqa_answer(raw) == normalised


@pytest.mark.parametrize(("matches", "score"), [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqa_soft_score_averages_leave_one_out_subsets(matches, score):
    # With m of 10 answers matching: m subsets keep m-1 matches, 10-m keep m.
    answers = ["2"] * matches + ["blue"] * (10 - matches)
    assert vqa_soft_score("two", answers) == pytest.approx(score)


def test_vqa_soft_score_normalises_both_sides_and_rejects_single_answers():
    assert vqa_soft_score("The dog.", ["dog", "Dog", "a dog", "cat"] + ["cats"] * 6) == pytest.approx(0.9)
    with pytest.raises(ValueError, match="several human answers"):
        vqa_soft_score("dog", ["dog"])


def test_vqa_accuracy_metric_means_over_questions():
    metric = VQAAccuracy()
    metric.update(["two", "red"], [["2"] * 3 + ["x"] * 7, ["red"] * 10])
    metric.update(["no"], [["yes"] * 10])
    assert metric.compute().item() == pytest.approx((0.9 + 1.0 + 0.0) / 3)
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        metric.update(["a", "b"], [["a"] * 10])


@pytest.mark.parametrize(
    ("reply", "letter"),
    [
        ("(B) a dog", "B"),
        ("C. The red one", "C"),
        ("The answer is D.", "D"),
        ("Answer: E", "E"),
        ("Banana or Apple", None),  # capitals inside words are not options
        ("a dog", None),             # lower case is an article
        ("F", None),
        ("A", "A"),
    ],
)
def test_parse_choice_letter(reply, letter):
    assert parse_choice_letter(reply) == letter


def test_multiple_choice_accuracy_counts_unparsed_replies_as_wrong():
    metric = MultipleChoiceAccuracy()
    metric.update(["(A) cat", "B", "I do not know", "The answer is C"], ["A", "b", "D", "D"])
    # right, right (lower-case reference), unparsed, wrong letter
    assert metric.compute().item() == pytest.approx(0.5)
    assert int(metric.unparsed) == 1
    with pytest.raises(ValueError, match="reference 0 is 'Z'"):
        metric.update(["A"], ["Z"])


@pytest.mark.parametrize(
    ("reply", "reading"),
    [
        ("Yes, there is a dog.", "yes"),
        ("No, there is not.", "no"),
        ("There is not a dog in the image.", "no"),
        ("Yes. No dogs were harmed.", "yes"),  # only the first sentence counts
        ("Nothing", "yes"),                    # "Nothing" is not the word "No"
    ],
)
def test_parse_yes_no(reply, reading):
    assert parse_yes_no(reply) == reading


def test_pope_metrics_on_a_fixture():
    replies = ["Yes", "yes", "No", "Yes", "no", "No, it is not", "yes"]
    labels = ["yes", "yes", "yes", "no", "no", "no", "no"]
    # tp = 2, fn = 1, fp = 2, tn = 2
    scores = POPEMetrics()
    scores.update(replies, labels)
    result = scores.compute()
    assert result["accuracy"].item() == pytest.approx(4 / 7)
    assert result["precision"].item() == pytest.approx(2 / 4)
    assert result["recall"].item() == pytest.approx(2 / 3)
    assert result["f1"].item() == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert result["yes_ratio"].item() == pytest.approx(4 / 7)
    with pytest.raises(ValueError, match="reference 0 is 'maybe'"):
        scores.update(["yes"], ["maybe"])


def test_answer_exact_match_accepts_any_listed_answer():
    metric = AnswerExactMatch()
    metric.update(["Red ", "blue  circle", "green"], ["red", ["square", "Blue circle"], "yellow"])
    assert metric.compute().item() == pytest.approx(2 / 3)
    strict = AnswerExactMatch(ignore_case=False)
    strict.update(["Red"], ["red"])
    assert strict.compute().item() == 0.0
