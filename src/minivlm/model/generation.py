"""Batched generation with the LLM's KV cache: greedy or sampled, optionally streamed.

Only the prompt goes through the vision path and pre-fusion; generated tokens enter the
LLM as plain embeddings. Prompts of different lengths are left-padded so every sample's
next token sits in the last column. The LLM computes logits at the last position only,
and no forward runs after the last token is chosen.

The KV cache is the LLM's dynamic one by default (it grows by one position per step). With
`cache="static"` it is preallocated for the whole call (`minivlm.model.decoding`), and with
`compile=True` too, each decoding step runs as one `torch.compile`d graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch

from minivlm.model.decoding import CacheKind, Decoder
from minivlm.model.inputs import to_left_padding
from minivlm.processing.batch import Batch

if TYPE_CHECKING:
    from minivlm.model.vlm import MiniVLM


class TokenStreamer(Protocol):
    """Receives each step's new tokens (B,) as they are chosen, then `end()` once."""

    def put(self, tokens: torch.Tensor) -> None: ...

    def end(self) -> None: ...


@dataclass
class GenerationOutput:
    """`tokens` (B, S ≤ max_new_tokens), padded after each sample's EOS; `scores[t]` (B, V) are
    the logits step t chose from (before temperature), kept when asked for."""

    tokens: torch.Tensor
    scores: list[torch.Tensor] | None = None


def choose_tokens(
    logits: torch.Tensor, temperature: float = 0.0, top_p: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Next tokens (B,) from logits (B, V): argmax at temperature 0, otherwise a sample from the
    smallest set of most likely tokens whose probability reaches `top_p`."""
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    probs = (logits.float() / temperature).softmax(dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # Keep a token while the mass before it is below top_p: the most likely one always stays.
        drop = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p
        probs = probs.scatter(-1, order, sorted_probs.masked_fill(drop, 0.0))
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def check_sampling(max_new_tokens: int, temperature: float, top_p: float) -> None:
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


@torch.no_grad()
def generate(
    model: MiniVLM,
    batch: Batch,
    max_new_tokens: int = 32,
    eos_token_id: int | None = None,
    pad_token_id: int = 0,
    temperature: float = 0.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    streamer: TokenStreamer | None = None,
    keep_scores: bool = False,
    cache: CacheKind = "dynamic",
    compile: bool = False,
) -> GenerationOutput:
    """Generates up to `max_new_tokens` per sample of `batch` (built with add_generation_prompt).

    A sample that emits `eos_token_id` is padded with `pad_token_id` from then on while the
    others go on; generation ends when all have finished or after `max_new_tokens`.
    `cache` ("dynamic" or "static") and `compile` choose how the LLM decodes
    (`minivlm.model.decoding`); the tokens are the same either way, the logits equal to float
    rounding.
    """
    check_sampling(max_new_tokens, temperature, top_p)
    model.prepare_inference()
    inputs = model.assemble(batch)
    embeds, mask, positions = to_left_padding(inputs.embeds, inputs.attention_mask)
    # The last chosen token never enters the LLM: the cache holds the prompt and max_new_tokens - 1 more.
    decoder = Decoder(model.llm, mask, mask.shape[1] + max_new_tokens - 1, cache, compile)
    logits = decoder.prefill(embeds, positions)
    return continue_from(
        decoder, logits, positions[:, -1:] + 1, max_new_tokens, eos_token_id, pad_token_id, temperature, top_p,
        generator, streamer, keep_scores,
    )


def continue_from(
    decoder: Decoder,
    logits: torch.Tensor,
    next_positions: torch.Tensor,
    max_new_tokens: int,
    eos_token_id: int | None,
    pad_token_id: int,
    temperature: float,
    top_p: float,
    generator: torch.Generator | None,
    streamer: TokenStreamer | None,
    keep_scores: bool,
) -> GenerationOutput:
    """The token loop after `decoder.prefill`: chooses from `logits` (B, V), feeds each choice
    at `next_positions` (B, 1) onwards, and stops at `max_new_tokens` or when every sample has
    emitted EOS. The last chosen token is never fed, so the decoder's cache ends holding the
    prompt and every chosen token but the last (for a batch of one: all of `tokens[0, :-1]`)."""
    finished = torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
    generated: list[torch.Tensor] = []
    scores: list[torch.Tensor] = []
    for step in range(max_new_tokens):
        if keep_scores:
            scores.append(logits.float())
        token = choose_tokens(logits, temperature, top_p, generator).masked_fill(finished, pad_token_id)
        generated.append(token)
        if streamer is not None:
            streamer.put(token)
        if eos_token_id is not None:
            finished |= token == eos_token_id
        if step == max_new_tokens - 1 or bool(finished.all()):
            break
        # A finished sample's next input is never used; any valid id will do (the pad id may not be one).
        logits = decoder.step(token.masked_fill(finished, 0), next_positions)
        next_positions = next_positions + 1
    if streamer is not None:
        streamer.end()
    return GenerationOutput(torch.stack(generated, dim=1), scores if keep_scores else None)
