"""KV-cache memory per token, image and video frame, and the longest video that fits a budget."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from minivlm.model.vlm import MiniVLM

GIB = 1024**3


@dataclass
class MemoryEstimate:
    """Bytes in `dtype`: the weights of every part, the LLM's KV cache per token (measured on
    the cache object the LLM returns), per image and per video frame (a frame is one
    single-resolution image). `longest_video_frames` is how many frames (seconds at 1 fps)
    fit in `budget_bytes` next to the weights and the prompt's cache; activations of the
    chunk being encoded are not included."""

    dtype: str
    weight_bytes: int
    kv_bytes_per_token: int
    tokens_per_image: int
    kv_bytes_per_image: int
    tokens_per_frame: int
    kv_bytes_per_frame: int
    budget_bytes: int
    longest_video_frames: int

    def to_dict(self) -> dict:
        return asdict(self)


def cache_bytes(cache) -> int:
    """Bytes held by a transformers cache: every layer's keys and values."""
    return sum(t.nbytes for layer in cache.layers for t in (layer.keys, layer.values) if t is not None)


@torch.no_grad()
def kv_bytes_per_token(model: MiniVLM) -> int:
    """Runs the LLM over two tokens (on meta: nothing computed) and reads the cache's size."""
    weight = next(model.llm.parameters())
    embeds = torch.zeros(1, 2, model.llm.hidden_size, device=weight.device, dtype=weight.dtype)
    _, cache = model.llm(embeds, use_cache=True)
    return cache_bytes(cache) // 2


def estimate_memory(model: MiniVLM, tokens_per_image: int, prompt_tokens: int, memory_gb: float) -> MemoryEstimate:
    """Memory in the model's current dtype; `memory_gb` (GiB) is the device budget for video."""
    if memory_gb <= 0:
        raise ValueError(f"memory_gb must be positive, got {memory_gb}")
    weight_bytes = sum(p.nbytes for p in model.parameters())
    per_token = kv_bytes_per_token(model)
    per_frame = model.tokens_per_image * per_token
    budget = int(memory_gb * GIB)
    free = budget - weight_bytes - prompt_tokens * per_token
    return MemoryEstimate(
        dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
        weight_bytes=weight_bytes,
        kv_bytes_per_token=per_token,
        tokens_per_image=tokens_per_image,
        kv_bytes_per_image=tokens_per_image * per_token,
        tokens_per_frame=model.tokens_per_image,
        kv_bytes_per_frame=per_frame,
        budget_bytes=budget,
        longest_video_frames=max(0, free // per_frame),
    )
