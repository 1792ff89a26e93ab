"""The Hub-facing model: MiniVLM, its Batch and Processor."""

from minivlm.model.batch import IGNORE_INDEX, PLACEHOLDER_ID, Batch
from minivlm.model.processor import Processor
from minivlm.model.vlm import MiniVLM, MiniVLMOutput, WidthMismatchError

__all__ = ["IGNORE_INDEX", "PLACEHOLDER_ID", "Batch", "MiniVLM", "MiniVLMOutput", "Processor", "WidthMismatchError"]
