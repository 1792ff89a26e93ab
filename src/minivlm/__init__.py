"""minivlm: efficient vision-language models of the LLaVA-Mini kind."""

from minivlm.compressors import Compressor, IdentityCompressor, PoolCompressor, QueryCompressor
from minivlm.encoders import HFVisionEncoder, ImageSpec, TimmVisionEncoder, VisionEncoder
from minivlm.fusion import DecoderPreFusion, NoPreFusion, PreFusion
from minivlm.llms import HFLanguageModel, LanguageModel
from minivlm.model import MiniVLM, MiniVLMOutput, WidthMismatchError
from minivlm.processing import Batch, Processor
from minivlm.projectors import LinearProjector, MLPProjector, Projector

__version__ = "0.1.0"

__all__ = [
    "Batch",
    "Compressor",
    "DecoderPreFusion",
    "HFLanguageModel",
    "HFVisionEncoder",
    "IdentityCompressor",
    "ImageSpec",
    "LanguageModel",
    "LinearProjector",
    "MLPProjector",
    "MiniVLM",
    "MiniVLMOutput",
    "NoPreFusion",
    "PoolCompressor",
    "PreFusion",
    "Processor",
    "Projector",
    "QueryCompressor",
    "TimmVisionEncoder",
    "VisionEncoder",
    "WidthMismatchError",
]
