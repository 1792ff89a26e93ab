"""Modality pre-fusion: the base contract and its implementations."""

from minivlm.fusion.base import NoPreFusion, PreFusion
from minivlm.fusion.decoder import DecoderPreFusion

__all__ = ["DecoderPreFusion", "NoPreFusion", "PreFusion"]
