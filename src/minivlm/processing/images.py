"""Image loading and the encoder's pixel transform."""

from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image

from minivlm.encoders.base import ImageSpec

ImageInput = Union[Image.Image, np.ndarray, str, Path]


def load_image(image: ImageInput) -> Image.Image:
    """An RGB PIL image from a PIL image, an (H, W, 3) uint8 array, or a file path."""
    if isinstance(image, (str, Path)):
        with Image.open(image) as opened:
            return opened.convert("RGB")
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image arrays must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
        return Image.fromarray(image)
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    raise TypeError(f"cannot read an image from {type(image).__name__}")


def image_to_tensor(image: ImageInput, spec: ImageSpec) -> torch.Tensor:
    """Resizes to spec.size² (bicubic, no-op when already that size) and normalises: (3, S, S) float32."""
    pil = load_image(image)
    if pil.size != (spec.size, spec.size):
        pil = pil.resize((spec.size, spec.size), Image.Resampling.BICUBIC)
    pixels = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(spec.mean).view(3, 1, 1)
    std = torch.tensor(spec.std).view(3, 1, 1)
    return (pixels - mean) / std


def hd_views(image: ImageInput, grid: int, size: int) -> list[Image.Image]:
    """LLaVA-Mini-HD views: the image resized to (grid·size)², cut into grid×grid crops in
    row-major order, then the whole image resized to size² as the last view."""
    pil = load_image(image)
    canvas = pil.resize((grid * size, grid * size), Image.Resampling.BICUBIC)
    crops = [
        canvas.crop((col * size, row * size, (col + 1) * size, (row + 1) * size))
        for row in range(grid)
        for col in range(grid)
    ]
    return crops + [pil.resize((size, size), Image.Resampling.BICUBIC)]
