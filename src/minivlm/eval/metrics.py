"""torchmetrics metrics for minivlm.

Every state is a sum, so a metric computed on several ranks (torchmetrics syncs the states
in `compute`) equals the metric computed on all samples in one process.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric

from minivlm.eval.parsing import parse_choice_letter, parse_yes_no
from minivlm.eval.vqa import vqa_soft_score
from minivlm.processing.batch import IGNORE_INDEX


def _check_lengths(name: str, predictions: Sequence, references: Sequence) -> None:
    if isinstance(predictions, str) or isinstance(references, str):
        raise TypeError(f"{name}.update takes lists of replies and references, not a single string")
    if len(predictions) != len(references):
        raise ValueError(f"{name}.update got {len(predictions)} predictions but {len(references)} references")


class ExactMatch(Metric):
    """Share of samples whose every label token is the model's argmax prediction.

    With teacher forcing this equals exact match of greedy decoding: if the argmax is right
    at every answer position (end-of-turn token included), greedy decoding reproduces the
    answer token by token and stops where it ends. Samples without label tokens are skipped.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("correct", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """`logits` (B, T, V) and `labels` (B, T) aligned as the model returns them (unshifted)."""
        predictions = logits[:, :-1].argmax(dim=-1)
        targets = labels[:, 1:]
        scored = targets != IGNORE_INDEX
        wrong = (predictions != targets) & scored
        has_labels = scored.any(dim=1)
        self.correct += (has_labels & ~wrong.any(dim=1)).sum()
        self.total += has_labels.sum()

    def compute(self) -> torch.Tensor:
        return self.correct.float() / self.total.clamp(min=1)


class AnswerExactMatch(Metric):
    """Share of generated replies equal to a reference answer (or to any of a list of them).

    Both sides are compared after stripping and collapsing whitespace; with `ignore_case`
    (the default) also case-insensitively.
    """

    full_state_update = False

    def __init__(self, ignore_case: bool = True) -> None:
        super().__init__()
        self.ignore_case = ignore_case
        self.add_state("correct", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0), dist_reduce_fx="sum")

    def _clean(self, text: str) -> str:
        text = " ".join(text.split())
        return text.lower() if self.ignore_case else text

    def update(self, predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> None:
        _check_lengths(type(self).__name__, predictions, references)
        for prediction, reference in zip(predictions, references):
            accepted = [reference] if isinstance(reference, str) else list(reference)
            self.correct += int(self._clean(prediction) in {self._clean(answer) for answer in accepted})
            self.total += 1

    def compute(self) -> torch.Tensor:
        return self.correct.float() / self.total.clamp(min=1)


class VQAAccuracy(Metric):
    """VQAv2 soft accuracy (`minivlm.eval.vqa.vqa_soft_score`) averaged over questions."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        # float64: the sum of many thirds must not drift between 1 and N ranks.
        self.add_state("score", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
        """`references[i]` is the list of human answers to question i (ten in VQAv2)."""
        _check_lengths(type(self).__name__, predictions, references)
        for prediction, answers in zip(predictions, references):
            if isinstance(answers, str):
                raise TypeError("VQAAccuracy references must be lists of human answers, got a single string")
            self.score += vqa_soft_score(prediction, answers)
            self.total += 1

    def compute(self) -> torch.Tensor:
        return (self.score / self.total.clamp(min=1)).float()


class MultipleChoiceAccuracy(Metric):
    """Share of replies whose first option letter A–E (`parse_choice_letter`) is the right one.

    A reply naming no letter counts as wrong; `unparsed` counts those replies.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("correct", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("unparsed", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, predictions: Sequence[str], references: Sequence[str]) -> None:
        """`references[i]` is the right letter ("A" … "E") of question i."""
        _check_lengths(type(self).__name__, predictions, references)
        for i, (prediction, reference) in enumerate(zip(predictions, references)):
            answer = reference.strip().upper()
            if len(answer) != 1 or answer not in "ABCDE":
                raise ValueError(f"MultipleChoiceAccuracy reference {i} is {reference!r}; expected a letter A-E")
            letter = parse_choice_letter(prediction)
            self.correct += int(letter == answer)
            self.unparsed += int(letter is None)
            self.total += 1

    def compute(self) -> torch.Tensor:
        return self.correct.float() / self.total.clamp(min=1)


class POPEMetrics(Metric):
    """POPE scores: replies read as yes/no (`parse_yes_no`), "yes" the positive class.

    `compute()` returns accuracy, precision, recall, F1 and the share of "yes" replies.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        for name in ("tp", "fp", "tn", "fn"):
            self.add_state(name, default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, predictions: Sequence[str], references: Sequence[str]) -> None:
        """`references[i]` is "yes" or "no" (case-insensitive)."""
        _check_lengths(type(self).__name__, predictions, references)
        for i, (prediction, reference) in enumerate(zip(predictions, references)):
            label = reference.strip().lower()
            if label not in ("yes", "no"):
                raise ValueError(f"POPEMetrics reference {i} is {reference!r}; expected 'yes' or 'no'")
            said_yes = parse_yes_no(prediction) == "yes"
            if label == "yes":
                self.tp += int(said_yes)
                self.fn += int(not said_yes)
            else:
                self.fp += int(said_yes)
                self.tn += int(not said_yes)

    def compute(self) -> dict[str, torch.Tensor]:
        tp, fp, tn, fn = (getattr(self, name).double() for name in ("tp", "fp", "tn", "fn"))
        total = (tp + fp + tn + fn).clamp(min=1)
        precision = tp / (tp + fp).clamp(min=1)
        recall = tp / (tp + fn).clamp(min=1)
        denominator = precision + recall
        f1 = torch.where(denominator > 0, 2 * precision * recall / denominator.clamp(min=1e-12), 0.0)
        scores = {
            "accuracy": (tp + tn) / total,
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "yes_ratio": (tp + fp) / total,
        }
        return {name: value.float() for name, value in scores.items()}
