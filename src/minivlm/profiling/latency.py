"""Measured latency through the public API: time to first token and per-token decode."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch

from minivlm.model.vlm import MiniVLM
from minivlm.processing.batch import Batch


@dataclass
class Latency:
    """Milliseconds on `device`: median of `repeats` after `warmup` untimed runs, with the
    smallest and largest run. Decode per token is (median time of a (1 + n)-token answer −
    median time of a 1-token answer) / n; its spread comes from the runs made side by side."""

    device: str
    repeats: int
    decode_tokens: int
    ttft_ms: float
    ttft_min_ms: float
    ttft_max_ms: float
    decode_ms_per_token: float
    decode_min_ms: float
    decode_max_ms: float

    def to_dict(self) -> dict:
        return asdict(self)


def _timed(model: MiniVLM, batch: Batch, new_tokens: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    model.generate(batch, max_new_tokens=new_tokens)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) * 1000


@torch.no_grad()
def measure_latency(
    model: MiniVLM, batch: Batch, repeats: int = 5, warmup: int = 2, decode_tokens: int = 8
) -> Latency:
    """Times `model.generate` on `batch` (no end-of-sequence token, so every run decodes
    exactly the tokens asked for)."""
    if repeats < 1 or decode_tokens < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1, decode_tokens >= 1, warmup >= 0; got {repeats}, {decode_tokens}, {warmup}")
    device = next(model.parameters()).device
    batch = batch.to(device)
    model.eval()
    for _ in range(warmup):
        _timed(model, batch, 1 + decode_tokens, device)
    first, full, per_token = [], [], []
    for _ in range(repeats):
        one = _timed(model, batch, 1, device)
        more = _timed(model, batch, 1 + decode_tokens, device)
        first.append(one)
        full.append(more)
        per_token.append((more - one) / decode_tokens)
    return Latency(
        device=str(device),
        repeats=repeats,
        decode_tokens=decode_tokens,
        ttft_ms=statistics.median(first),
        ttft_min_ms=min(first),
        ttft_max_ms=max(first),
        decode_ms_per_token=(statistics.median(full) - statistics.median(first)) / decode_tokens,
        decode_min_ms=min(per_token),
        decode_max_ms=max(per_token),
    )
