"""Training with Lightning: the module that wraps a MiniVLM, stages, LoRA, init_from, precision."""

from minivlm.training.init_from import InitFrom
from minivlm.hub.export import merge_lora
from minivlm.training.lora import LoraSettings
from minivlm.training.module import MiniVLMModule
from minivlm.training.stages import PartStage, Stage

__all__ = ["InitFrom", "LoraSettings", "MiniVLMModule", "PartStage", "Stage", "merge_lora"]
