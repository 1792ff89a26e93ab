"""The Hub-facing model: MiniVLM and its outputs."""

from minivlm.model.vlm import MiniVLM, MiniVLMOutput, WidthMismatchError

__all__ = ["MiniVLM", "MiniVLMOutput", "WidthMismatchError"]
