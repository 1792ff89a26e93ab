"""Language models: the base contract and the transformers wrapper."""

from minivlm.llms.base import LanguageModel
from minivlm.llms.hf import HFLanguageModel

__all__ = ["HFLanguageModel", "LanguageModel"]
