"""Multi-turn generation that reuses the work of earlier turns on the same image.

In pre-fusion's causal order [vision ; compressed ; fused text], the vision and compressed
rows come first, so their keys/values and the K tokens given to the LLM do not depend on the
text; a fused prompt token depends only on the rows before it, and answers are not fused
(by default). So a later turn on the same image re-runs neither the encoder nor pre-fusion
over the vision rows: `CachedConversation` keeps, per image, the K tokens and pre-fusion's
per-layer keys/values, and across turns the LLM's KV cache of the conversation so far.
Each turn runs pre-fusion over its new fused prompt tokens and the LLM over its new tokens.

Reuse is decided by the token ids, never assumed: the new prompt (the whole conversation,
built by the processor) is compared with the ids the caches hold, and both caches are cut
back to the longest common prefix (ids and fused flags equal, same image), so the result is
that of recomputing the conversation from scratch. A changed image starts over. Batches this
class does not cache (several media items, HD images, videos, a pre-fusion other than
`DecoderPreFusion`/`NoPreFusion`, more than one sample) are generated from scratch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from transformers import DynamicCache

from minivlm.fusion.base import NoPreFusion
from minivlm.fusion.decoder import DecoderPreFusion
from minivlm.model import generation
from minivlm.model.decoding import Decoder
from minivlm.model.generation import GenerationOutput, TokenStreamer, check_sampling
from minivlm.model.inputs import splice_media
from minivlm.processing.batch import PLACEHOLDER_ID, Batch

if TYPE_CHECKING:
    from minivlm.model.vlm import MiniVLM


def prefusion_extend(prefusion: DecoderPreFusion, rows: torch.Tensor, cache: DynamicCache) -> torch.Tensor:
    """Runs `rows` (B, R, D) through pre-fusion's layers after the rows already in `cache`,
    causally (row i sees every cached row and rows 0..i), and returns the last layer's outputs.

    An explicit mask, aligned at the bottom right: a mask-less causal kernel would align the
    R queries with the first R keys instead."""
    b, r, _ = rows.shape
    past = cache.get_seq_length()
    positions = torch.arange(past, past + r, device=rows.device).expand(b, r)
    position_embeddings = prefusion.rotary_embedding(rows, position_ids=positions)
    allowed = torch.arange(past + r, device=rows.device)[None, :] <= positions[0][:, None]
    mask = torch.zeros(1, 1, r, past + r, dtype=rows.dtype, device=rows.device)
    mask = mask.masked_fill(~allowed, torch.finfo(rows.dtype).min)
    hidden = rows
    for layer in prefusion.layers:
        hidden = layer(
            hidden, attention_mask=mask, position_ids=positions, position_embeddings=position_embeddings,
            cache=cache, use_cache=True,
        )
    return hidden


class CachedConversation:
    """Generation for one growing conversation (batch size 1) with the caches of earlier turns.

    `generate(batch, ...)` takes the whole conversation so far as the processor builds it
    (with `add_generation_prompt`), like `minivlm.model.generation.generate`, and returns the
    same tokens and per-step logits (up to float rounding), computing only what is new.
    `reset()` forgets everything (a new conversation).
    """

    def __init__(self, model: MiniVLM) -> None:
        self.model = model
        self.reset()

    def reset(self) -> None:
        self.pixels: torch.Tensor | None = None  # the image the caches belong to
        self.media_tokens: torch.Tensor | None = None  # its K tokens for the LLM (K, D)
        self.prefusion_cache: DynamicCache | None = None  # pre-fusion K/V: [vision ; compressed ; fused text]
        self.prefix_rows = 0  # rows of [vision ; compressed] in that cache
        self.ids: list[int] = []  # the input ids the LLM cache holds (a placeholder counts once)
        self.fused: list[bool] = []  # which of them went through pre-fusion
        self.llm_cache = None
        self.reused_tokens = 0  # input ids of the last turn taken from the cache (for tests and benchmarks)

    def cacheable(self, batch: Batch) -> bool:
        """True when `generate` can reuse caches for `batch`; otherwise it generates from scratch."""
        prefusion_ok = isinstance(self.model.prefusion, (DecoderPreFusion, NoPreFusion))
        media_ok = batch.pixel_values is None or (batch.kinds == ("image",) and int(batch.media_passes[0]) == 1)
        return batch.batch_size == 1 and prefusion_ok and media_ok

    @torch.no_grad()
    def generate(
        self,
        batch: Batch,
        max_new_tokens: int = 32,
        eos_token_id: int | None = None,
        pad_token_id: int = 0,
        temperature: float = 0.0,
        top_p: float = 1.0,
        generator: torch.Generator | None = None,
        streamer: TokenStreamer | None = None,
        keep_scores: bool = False,
    ) -> GenerationOutput:
        """The answer to the conversation in `batch` (see `generation.generate` for the arguments)."""
        check_sampling(max_new_tokens, temperature, top_p)
        if not self.cacheable(batch):
            self.reset()
            return generation.generate(
                self.model, batch, max_new_tokens, eos_token_id, pad_token_id, temperature, top_p, generator,
                streamer, keep_scores,
            )
        self.model.prepare_inference()
        keep = batch.attention_mask[0].bool()
        ids = batch.input_ids[0][keep].tolist()
        fused = batch.prefusion_mask[0][keep].tolist() if batch.pixel_values is not None else [False] * len(ids)
        self._use_image(batch.pixel_values)
        start = self._keep_common_prefix(ids, fused)
        self.reused_tokens = start
        embeds = self._new_embeddings(ids[start:], fused[start:], batch.input_ids.device)
        past = self._llm_length(start)
        mask = torch.ones(1, past + embeds.shape[1], dtype=torch.bool, device=embeds.device)
        positions = torch.arange(past, past + embeds.shape[1], device=embeds.device)[None]
        decoder = Decoder(self.model.llm, mask, mask.shape[1] + max_new_tokens - 1, "dynamic", False, past=self.llm_cache)
        logits = decoder.prefill(embeds, positions)
        out = generation.continue_from(
            decoder, logits, positions[:, -1:] + 1, max_new_tokens, eos_token_id, pad_token_id, temperature, top_p,
            generator, streamer, keep_scores,
        )
        # The cache now holds the prompt and every chosen token but the last (no forward ran after it).
        fed = out.tokens[0, :-1].tolist()
        self.ids, self.fused, self.llm_cache = ids + fed, fused + [False] * len(fed), decoder.cache
        return out

    def _use_image(self, pixels: torch.Tensor | None) -> None:
        """Keeps the caches when `pixels` is the image they belong to; otherwise starts over and,
        for a new image, runs the encoder and pre-fusion over [vision ; compressed] once."""
        same = (pixels is None and self.pixels is None) or (
            pixels is not None and self.pixels is not None
            and pixels.shape == self.pixels.shape and torch.equal(pixels.to(self.pixels.device), self.pixels)
        )
        if same:
            return
        self.reset()
        if pixels is None:
            return
        model = self.model
        self.pixels = pixels.clone()
        vision, compressed = model.encode_media(model.encoder_input(pixels))
        if isinstance(model.prefusion, DecoderPreFusion):
            self.prefusion_cache = DynamicCache()
            rows = torch.cat([vision, compressed.to(vision.dtype)], dim=1)
            out = prefusion_extend(model.prefusion, rows, self.prefusion_cache)
            self.prefix_rows = rows.shape[1]
            prefused = out[:, vision.shape[1]:]
        else:
            prefused = compressed
        tokens = prefused if model.vision_tokens == "prefused" else compressed
        self.media_tokens = tokens[0].contiguous()

    def _keep_common_prefix(self, ids: list[int], fused: list[bool]) -> int:
        """Cuts both caches back to the longest prefix the new prompt shares with them (at least
        one new token stays, whose logits start the answer) and returns its length in ids."""
        start = 0
        limit = min(len(ids) - 1, len(self.ids))
        while start < limit and ids[start] == self.ids[start] and fused[start] == self.fused[start]:
            start += 1
        if self.llm_cache is not None:
            drop = self._llm_length(len(self.ids)) - self._llm_length(start)
            if start == 0:
                self.llm_cache = None
            elif drop:
                self.llm_cache.crop(-drop)
        if self.prefusion_cache is not None:
            drop = sum(self.fused[start:])
            if drop:
                self.prefusion_cache.crop(-drop)
        self.ids, self.fused = self.ids[:start], self.fused[:start]
        return start

    def _llm_length(self, count: int) -> int:
        """LLM positions taken by the first `count` cached ids (the placeholder stands for K tokens)."""
        extra = self.media_tokens.shape[0] - 1 if self.media_tokens is not None else 0
        return count + (extra if PLACEHOLDER_ID in self.ids[:count] else 0)

    def _new_embeddings(self, ids: list[int], fused: list[bool], device: torch.device) -> torch.Tensor:
        """LLM input embeddings (1, T, D) of the new ids: fused prompt tokens through pre-fusion
        (after the cached rows), the image's K tokens at a new placeholder."""
        model = self.model
        input_ids = torch.tensor([ids], device=device)
        text = model.llm.embed(input_ids.clamp(min=0))
        fuse_mask = torch.tensor([fused], device=device)
        if self.prefusion_cache is not None and bool(fuse_mask.any()):
            rows = text[fuse_mask][None].to(self.media_tokens.dtype)
            out = prefusion_extend(model.prefusion, rows, self.prefusion_cache)
            text = text.masked_scatter(fuse_mask[..., None], out.to(text.dtype))
        placeholders = int((input_ids == PLACEHOLDER_ID).sum())
        media = self.media_tokens if placeholders else None
        per_item = torch.full((placeholders,), 0 if media is None else media.shape[0], device=device)
        inputs = splice_media(text, input_ids, torch.ones_like(input_ids, dtype=torch.bool), media, per_item)
        return inputs.embeds
