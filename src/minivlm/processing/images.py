"""Image loading and the encoder's pixel transform."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Union

import numpy as np
import torch
from PIL import Image

from minivlm.specs import ImageSpec

ImageInput = Union[Image.Image, np.ndarray, str, Path]
# How a non-square image becomes square: LLaVA-1.5's pad-to-square with the mean colour,
# CLIP's shortest-side resize + centre crop, or a plain resize that changes the aspect.
SquareMode = Literal["pad", "crop", "resize"]
SQUARE_MODES: tuple[SquareMode, ...] = ("pad", "crop", "resize")


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
        return image if image.mode == "RGB" else image.convert("RGB")
    raise TypeError(f"cannot read an image from {type(image).__name__}")


def to_square(image: Image.Image, mode: SquareMode, spec: ImageSpec) -> Image.Image:
    """Makes `image` square without resizing it to the encoder's size yet (crop does resize,
    so that the crop keeps the encoder's field of view)."""
    width, height = image.size
    if width == height or mode == "resize":
        return image
    if mode == "pad":
        side = max(width, height)
        fill = tuple(int(round(255 * m)) for m in spec.mean)
        canvas = Image.new("RGB", (side, side), fill)
        canvas.paste(image, ((side - width) // 2, (side - height) // 2))
        return canvas
    if mode == "crop":
        scale = spec.size / min(width, height)
        resized = image.resize((max(spec.size, round(width * scale)), max(spec.size, round(height * scale))), Image.Resampling.BICUBIC)
        left = (resized.width - spec.size) // 2
        top = (resized.height - spec.size) // 2
        return resized.crop((left, top, left + spec.size, top + spec.size))
    raise ValueError(f"unknown square mode {mode!r}; known: {', '.join(SQUARE_MODES)}")


def to_pixels(pil: Image.Image) -> torch.Tensor:
    """(3, H, W) uint8 from an RGB image: media stay 8-bit until the model normalises them,
    a quarter of the memory of float32 in workers, batches and long videos."""
    return torch.from_numpy(np.asarray(pil, dtype=np.uint8).copy()).permute(2, 0, 1)


def normalise_pixels(pixels: torch.Tensor, spec: ImageSpec, dtype: torch.dtype | None = None) -> torch.Tensor:
    """(…, 3, S, S) uint8 -> float normalised with the encoder's mean and std (computed in
    float32, then cast to `dtype`). Float input is taken as already normalised."""
    if pixels.is_floating_point():
        return pixels if dtype is None else pixels.to(dtype)
    mean = torch.tensor(spec.mean, device=pixels.device).view(3, 1, 1)
    std = torch.tensor(spec.std, device=pixels.device).view(3, 1, 1)
    normalised = pixels.float().div_(255.0).sub_(mean).div_(std)
    return normalised if dtype is None else normalised.to(dtype)


def image_to_pixels(image: ImageInput, spec: ImageSpec, mode: SquareMode = "resize") -> torch.Tensor:
    """Squares the image (`mode`) and resizes it to spec.size² (bicubic, skipped when already
    that size): (3, S, S) uint8. An (S, S, 3) uint8 array needs neither and is used as is."""
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.shape == (spec.size, spec.size, 3):
        return torch.from_numpy(image.copy()).permute(2, 0, 1)
    pil = to_square(load_image(image), mode, spec)
    if pil.size != (spec.size, spec.size):
        pil = pil.resize((spec.size, spec.size), Image.Resampling.BICUBIC)
    return to_pixels(pil)


def image_to_tensor(image: ImageInput, spec: ImageSpec, mode: SquareMode = "resize") -> torch.Tensor:
    """`image_to_pixels`, normalised: (3, S, S) float32, what the encoder sees."""
    return normalise_pixels(image_to_pixels(image, spec, mode), spec)


def hd_views(image: ImageInput, grid: int, spec: ImageSpec, mode: SquareMode = "resize") -> list[Image.Image]:
    """LLaVA-Mini-HD views: the squared image resized to (grid·size)², cut into grid×grid crops
    in row-major order, then the whole image resized to size² as the last view."""
    size = spec.size
    pil = load_image(image)
    if mode == "crop":
        # Crop at the HD resolution, so the tiles see the full-resolution centre.
        pil = to_square(pil, mode, ImageSpec(grid * size, spec.mean, spec.std))
    else:
        pil = to_square(pil, mode, spec)
    canvas = pil.resize((grid * size, grid * size), Image.Resampling.BICUBIC)
    crops = [
        canvas.crop((col * size, row * size, (col + 1) * size, (row + 1) * size))
        for row in range(grid)
        for col in range(grid)
    ]
    return crops + [pil.resize((size, size), Image.Resampling.BICUBIC)]
