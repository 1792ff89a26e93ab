"""Vision encoders: pixels (P, 3, H, W) → patch features (P, N, D_v)."""

from minivlm.encoders.base import ImageSpec, VisionEncoder
from minivlm.encoders.hf import HFVisionEncoder
from minivlm.encoders.timm import TimmVisionEncoder

__all__ = ["HFVisionEncoder", "ImageSpec", "TimmVisionEncoder", "VisionEncoder"]
