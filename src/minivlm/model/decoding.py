"""How the LLM decodes during generation: which KV cache, and whether each step is compiled.

- `cache="dynamic"` (default): the LLM's own cache, which grows by one position per step,
  with an attention mask that grows with it.
- `cache="static"`: a cache preallocated for the whole call (`LanguageModel.static_cache`)
  and written in place, with one attention mask as wide as the cache, built once. Its length
  is the prompt plus `max_new_tokens - 1`, rounded up to a multiple of
  `STATIC_LENGTH_MULTIPLE` so that calls whose prompts differ a little share a shape.
- `compile=True` (static cache only): each decoding step (embedding lookup, LLM forward,
  last-position logits) runs as one graph built by `torch.compile(dynamic=False,
  fullgraph=True)`. The prompt's forward (prefill) is not compiled: its shape changes from
  call to call.

Every choice gives the same tokens and, to float rounding, the same logits: masked cache
slots add exact zeros to attention.

Whatever the choice, `Decoder` first calls `llm.prepare_decoding()`: in eval mode on CPU, the
LLM's wide float32 weights (output head, gate and up projections) are stored column-major,
where one-row products read them faster (`minivlm.llms.layout`); `llm.train()` undoes it.

Compiled graphs are kept by `torch.compile` with the step function, for the whole process,
one per (architecture, batch size, cache length, dtype, device), and chosen by dynamo's
guards. So later calls with the same shapes reuse a graph, even on another model of the same
architecture, and a change that the graph does not cover (another dtype or device, modules
added or removed, train mode) compiles a new one; weights are inputs of the graph, so
updating them in place needs no new graph. Past `torch._dynamo.config.recompile_limit`
graphs (8 by default), dynamo warns and runs the step uncompiled.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal, get_args

import torch

from minivlm.llms.base import LanguageModel

CacheKind = Literal["dynamic", "static"]
STATIC_LENGTH_MULTIPLE = 64


def check_decode_options(llm: LanguageModel, cache: str, compile: bool) -> None:
    """Raises ValueError naming what is wrong with a (cache, compile) choice for `llm`."""
    if cache not in get_args(CacheKind):
        raise ValueError(f"cache must be one of {', '.join(get_args(CacheKind))}; got {cache!r}")
    if compile and cache != "static":
        raise ValueError(
            "compile=True needs cache='static': a compiled step needs fixed shapes, "
            "and the dynamic cache grows every step"
        )
    if cache == "static":
        llm.check_static_cache()


def decode_step(
    llm: LanguageModel, token: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any
) -> torch.Tensor:
    """One token per sample (B,) at `positions` (B, 1) through a static `cache` whose slots
    `mask` (B, length) covers -> the next logits (B, V)."""
    logits, _ = llm(
        llm.embed(token[:, None]), attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
        logits_to_keep=1,
    )
    return logits[:, -1]


@functools.cache
def compiled_decode_step() -> Callable[..., torch.Tensor]:
    """`decode_step` under `torch.compile`, wrapped once per process (see the module's docstring)."""
    return torch.compile(decode_step, dynamic=False, fullgraph=True)


class Decoder:
    """The LLM's side of one generate call over a left-padded batch: `prefill` the prompt,
    then `step` one token per sample at a time; both return the next logits (B, V).

    `mask` (B, T) is the prompt's attention mask, `length` the most positions the cache
    will hold (prompt and fed tokens). `past`, a dynamic cache that already holds the first
    positions of `mask` (an earlier turn of a conversation), is continued in place; the
    prompt given to `prefill` is then only what follows it.
    """

    def __init__(
        self, llm: LanguageModel, mask: torch.Tensor, length: int, cache: CacheKind, compile: bool, past: Any = None
    ) -> None:
        check_decode_options(llm, cache, compile)
        if past is not None and cache != "dynamic":
            raise ValueError("continuing an earlier cache (`past`) needs cache='dynamic'")
        llm.prepare_decoding()
        self.llm = llm
        self.static = cache == "static"
        self.mask = mask
        self.cache: Any = past
        if self.static:
            length = -(-length // STATIC_LENGTH_MULTIPLE) * STATIC_LENGTH_MULTIPLE
            self.cache = llm.static_cache(mask.shape[0], length)
            # Slots past the prompt are open from the start: causality hides each until it is written.
            self.mask = torch.cat([mask, mask.new_ones(mask.shape[0], length - mask.shape[1])], dim=1)
        self.run_step = compiled_decode_step() if compile else decode_step

    def prefill(self, embeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        logits, self.cache = self.llm(
            embeds, attention_mask=self.mask, position_ids=positions, cache=self.cache, use_cache=True, logits_to_keep=1
        )
        return logits[:, -1]

    def step(self, token: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        if self.static:
            return self.run_step(self.llm, token, self.mask, positions, self.cache)
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], 1)], dim=1)
        logits, self.cache = self.llm(
            self.llm.embed(token[:, None]), attention_mask=self.mask, position_ids=positions, cache=self.cache,
            use_cache=True, logits_to_keep=1,
        )
        return logits[:, -1]
