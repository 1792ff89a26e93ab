"""FLOPs per part, counted by `torch.utils.flop_counter` while the parts run at real shapes.

Run on a model built on the meta device, nothing is computed or allocated: a 7 B recipe is
counted in seconds. Attention runs eagerly while counting (its score and value products are
batched matmuls the counter sees; fused SDPA kernels on fake or meta tensors are not always
counted), and matmuls count 2·M·N·K, the usual multiply-add convention.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from transformers import PretrainedConfig

from minivlm.model.vlm import MiniVLM
from minivlm.profiling.inputs import synthetic_batch

PARTS = ("encoder", "compressor", "projector", "prefusion", "llm")

# Attention's score and weighted-value products; everything else in these models is a Linear.
_ATTENTION_OPS = {
    torch.ops.aten.bmm,
    torch.ops.aten.baddbmm,
    torch.ops.aten._scaled_dot_product_efficient_attention,
    torch.ops.aten._scaled_dot_product_flash_attention,
    torch.ops.aten._scaled_dot_product_cudnn_attention,
}


@dataclass
class FlopsBreakdown:
    """FLOPs of one image-question: `parts` maps each part to its prefill FLOPs (the LLM's
    prefill over `llm_tokens` positions, its output head included at every position, as
    `LanguageModel.forward` computes it); `attention` is the share of all parts spent in
    attention products; `decode_per_token` is one greedy step after the prompt and
    `decode_total` the `answer_tokens` steps of an answer."""

    parts: dict[str, int]
    attention: int
    decode_per_token: int
    decode_total: int
    answer_tokens: int
    prompt_tokens: int
    vision_tokens: int
    llm_tokens: int
    prefusion_tokens: int
    unattributed: int = 0
    by_op: dict[str, int] = field(default_factory=dict)

    @property
    def prefill(self) -> int:
        return sum(self.parts.values())

    @property
    def total(self) -> int:
        """Prefill plus the answer's decode steps."""
        return self.prefill + self.decode_total

    def to_dict(self) -> dict:
        return asdict(self) | {"prefill": self.prefill, "total": self.total}


@contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Switches every transformers config inside `model` to eager attention, then restores it."""
    configs = {id(c): c for m in model.modules() if isinstance(c := getattr(m, "config", None), PretrainedConfig)}
    saved = {key: config._attn_implementation for key, config in configs.items()}
    for config in configs.values():
        config._attn_implementation = "eager"
    try:
        yield
    finally:
        for key, config in configs.items():
            config._attn_implementation = saved[key]


class _PartCounter:
    """Sums a FlopCounterMode's per-module counts by part (each part is a top-level module)."""

    def __init__(self, model: MiniVLM) -> None:
        self.names: dict[str, str] = {}
        for part in PARTS:
            name = type(getattr(model, part)).__name__
            if name in self.names:
                raise ValueError(f"parts {self.names[name]} and {part} are both {name}; FLOPs cannot be told apart")
            self.names[name] = part
        self.parts = dict.fromkeys(PARTS, 0)
        self.attention = 0
        self.unattributed = 0
        self.by_op: dict[str, int] = {}

    def add(self, counter: FlopCounterMode) -> int:
        counts = counter.get_flop_counts()
        attributed = 0
        for name, part in self.names.items():
            flops = sum(counts.get(name, {}).values())
            self.parts[part] += flops
            attributed += flops
        total = counter.get_total_flops()
        self.unattributed += total - attributed
        for op, flops in counts.get("Global", {}).items():
            self.by_op[str(op)] = self.by_op.get(str(op), 0) + flops
            if op in _ATTENTION_OPS:
                self.attention += flops
        return total


def _counting() -> FlopCounterMode:
    return FlopCounterMode(display=False)


@torch.no_grad()
def count_flops(model: MiniVLM, hd_grid: int = 1, prompt_tokens: int = 64, answer_tokens: int = 0) -> FlopsBreakdown:
    """Counts one image (n×n + 1 passes when `hd_grid` n > 1) and a prompt of `prompt_tokens`
    text tokens through encoder, compressor, projector, pre-fusion and the LLM's prefill, then
    `answer_tokens` decode steps (at least one, to report the cost per decoded token).

    The model may live on any device; on "meta" nothing is computed.
    """
    if answer_tokens < 0:
        raise ValueError(f"answer_tokens must be >= 0, got {answer_tokens}")
    weight = next(model.parameters())
    batch = synthetic_batch(model, hd_grid, prompt_tokens)
    ids = batch.input_ids.to(weight.device)
    parts = _PartCounter(model)
    with eager_attention(model):
        with _counting() as counter:
            vision, compressed = model.encode_media(batch.pixel_values.to(weight.device, weight.dtype), hd_tiles=hd_grid)
            text = model.llm.embed(ids.clamp(min=0))
            tokens, _ = model.prefusion(
                vision if vision is not None else compressed[:, :0], compressed, text,
                batch.prefusion_mask.to(weight.device),
            )
        parts.add(counter)
        vision_tokens = tokens.shape[1]
        llm_tokens = vision_tokens + prompt_tokens
        embeds = torch.zeros(1, llm_tokens, model.llm.hidden_size, device=weight.device, dtype=weight.dtype)
        with _counting() as counter:
            _, cache = model.llm(embeds, use_cache=True)
        parts.add(counter)
        step = model.llm.embed(torch.zeros(1, 1, dtype=torch.long, device=weight.device))
        decode = []
        for _ in range(max(1, answer_tokens)):
            with _counting() as counter:
                _, cache = model.llm(step, cache=cache, use_cache=True)
            decode.append(counter.get_total_flops())
    # Pre-fusion runs over [vision ; compressed ; prompt] when it uses the vision tokens at all.
    prefusion_tokens = vision.shape[1] + compressed.shape[1] + text.shape[1] if vision is not None else 0
    return FlopsBreakdown(
        parts=parts.parts,
        attention=parts.attention,
        decode_per_token=decode[0],
        decode_total=sum(decode) if answer_tokens else 0,
        answer_tokens=answer_tokens,
        prompt_tokens=prompt_tokens,
        vision_tokens=vision_tokens,
        llm_tokens=llm_tokens,
        prefusion_tokens=prefusion_tokens,
        unattributed=parts.unattributed,
        by_op=parts.by_op,
    )


def si(flops: int) -> str:
    """FLOPs with an SI prefix: 8.840 T, 13.54 G, 91.2 M."""
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if flops >= scale:
            return f"{flops / scale:.4g} {prefix}"
    return str(flops)
