"""Vision-token compressors: features (P, N, D) on a grid -> K tokens (P, K, D)."""

from minivlm.compressors.base import Compressor, CompressorOutput, Placement
from minivlm.compressors.identity import IdentityCompressor
from minivlm.compressors.pool import PoolCompressor
from minivlm.compressors.posembed import sincos_1d, sincos_2d
from minivlm.compressors.query import QueryCompressor

__all__ = [
    "Compressor",
    "CompressorOutput",
    "IdentityCompressor",
    "Placement",
    "PoolCompressor",
    "QueryCompressor",
    "sincos_1d",
    "sincos_2d",
]
