"""Training with Lightning: the module that wraps a MiniVLM."""

from minivlm.training.module import MiniVLMModule

__all__ = ["MiniVLMModule"]
