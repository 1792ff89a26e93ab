"""Evaluation: metrics."""

from minivlm.eval.metrics import ExactMatch

__all__ = ["ExactMatch"]
