"""Evaluation: torchmetrics metrics, answer normalisation and parsing, `minivlm evaluate`."""

from minivlm.eval.metrics import AnswerExactMatch, ExactMatch, MultipleChoiceAccuracy, POPEMetrics, VQAAccuracy
from minivlm.eval.parsing import parse_choice_letter, parse_yes_no
from minivlm.eval.vqa import normalize_vqa_answer, vqa_soft_score

__all__ = [
    "AnswerExactMatch",
    "ExactMatch",
    "MultipleChoiceAccuracy",
    "POPEMetrics",
    "VQAAccuracy",
    "normalize_vqa_answer",
    "parse_choice_letter",
    "parse_yes_no",
    "vqa_soft_score",
]
