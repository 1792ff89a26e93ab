"""Projectors: vision features (..., in_dim) -> language-model width (..., out_dim)."""

from minivlm.projectors.base import Projector
from minivlm.projectors.mlp import LinearProjector, MLPProjector

__all__ = ["LinearProjector", "MLPProjector", "Projector"]
