"""Synthetic inputs at a recipe's real shapes: one image (or HD image) and a prompt of L tokens."""

from __future__ import annotations

import torch

from minivlm.model.vlm import MiniVLM
from minivlm.processing.batch import PLACEHOLDER_ID, Batch


def num_passes(hd_grid: int) -> int:
    """Encoder passes per image: 1, or n×n crops + the whole image."""
    return 1 if hd_grid == 1 else hd_grid * hd_grid + 1


def vision_tokens_per_image(model: MiniVLM, hd_grid: int) -> int:
    return model.tokens_per_image if hd_grid == 1 else model.tokens_per_hd_image(hd_grid)


def synthetic_batch(model: MiniVLM, hd_grid: int, prompt_tokens: int, seed: int = 0) -> Batch:
    """A batch of one sample: the image placeholder, then `prompt_tokens` random text ids, all fused."""
    if prompt_tokens < 1:
        raise ValueError(f"prompt_tokens must be >= 1, got {prompt_tokens}")
    generator = torch.Generator().manual_seed(seed)
    size = model.encoder.image_spec.size
    ids = torch.randint(1, model.llm.vocab_size, (1, prompt_tokens + 1), generator=generator)
    ids[0, 0] = PLACEHOLDER_ID
    passes = num_passes(hd_grid)
    return Batch(
        input_ids=ids,
        attention_mask=torch.ones_like(ids, dtype=torch.bool),
        prefusion_mask=ids != PLACEHOLDER_ID,
        pixel_values=torch.randn(passes, 3, size, size, generator=generator),
        media_passes=torch.tensor([passes]),
        media_kinds=("image",) if hd_grid == 1 else ("hd",),
    )
