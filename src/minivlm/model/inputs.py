"""LLM input assembly: splice each media item's tokens in at its placeholder.

Pure tensor code (cumulative sums, index puts and `masked_scatter`); no Python loop over
tokens or samples, so it costs the same on one sample as on a batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from minivlm.processing.batch import IGNORE_INDEX, PLACEHOLDER_ID


@dataclass
class LLMInputs:
    """Right-padded LLM inputs: embeddings (B, T, D), attention mask (B, T) bool, labels
    (B, T) or None, and `media_mask` (B, T): True where a media token sits."""

    embeds: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None
    media_mask: torch.Tensor


@dataclass
class SpliceLayout:
    """Where everything goes in the spliced LLM sequence (B, T), before any embedding is placed.

    `text_from` (rows, cols) are the input positions of text tokens and `text_to` (rows, cols)
    their output positions; `media_to` (rows, cols) are the output positions of the media
    tokens, in the order the items' tokens come (row-major). The masks and labels are final.
    """

    length: int
    text_from: tuple[torch.Tensor, torch.Tensor]
    text_to: tuple[torch.Tensor, torch.Tensor]
    media_to: tuple[torch.Tensor, torch.Tensor]
    attention_mask: torch.Tensor
    media_mask: torch.Tensor
    labels: torch.Tensor | None

    def new_embeds(self, like: torch.Tensor) -> torch.Tensor:
        """Zeros (B, T, D) in `like`'s dtype and device (`like` is (B, L, D) text embeddings)."""
        return like.new_zeros(like.shape[0], self.length, like.shape[-1])

    def place_text(self, embeds: torch.Tensor, text_embeds: torch.Tensor) -> None:
        """Writes the text tokens of `text_embeds` (B, L, D) into `embeds` (B, T, D), in place."""
        rows, cols = self.text_from
        embeds.index_put_(_on(self.text_to, embeds.device), text_embeds[rows, cols])

    def place_media(self, embeds: torch.Tensor, tokens: torch.Tensor, first: int | torch.Tensor = 0) -> None:
        """Writes media tokens (S, D) into `embeds` in place: the tokens of media-token index
        `first` onwards (an int), or at the media-token indices `first` (a long tensor)."""
        index = first if isinstance(first, torch.Tensor) else torch.arange(first, first + tokens.shape[0])
        rows, cols = (t[index.to(t.device)] for t in self.media_to)
        embeds.index_put_(_on((rows, cols), embeds.device), tokens.to(embeds.device, embeds.dtype))

    def inputs(self, embeds: torch.Tensor) -> LLMInputs:
        """The LLM inputs with `embeds` (B, T, D) filled in."""
        return LLMInputs(embeds, self.attention_mask, self.labels, self.media_mask)


def _on(index: tuple[torch.Tensor, torch.Tensor], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return index[0].to(device), index[1].to(device)


def splice_layout(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    tokens_per_item: torch.Tensor | None,
    labels: torch.Tensor | None = None,
) -> SpliceLayout:
    """The layout of `splice_media`'s output: the m-th placeholder (row-major) becomes
    `tokens_per_item[m]` media positions, padding (attention_mask False) is dropped, and the
    result is right-padded to the longest sample."""
    attention_mask = attention_mask.bool()
    is_placeholder = (input_ids == PLACEHOLDER_ID) & attention_mask
    num_placeholders = int(is_placeholder.sum())
    num_items = 0 if tokens_per_item is None else len(tokens_per_item)
    if num_placeholders != num_items:
        raise ValueError(f"input has {num_placeholders} media placeholders but {num_items} media items were encoded")

    b = input_ids.shape[0]
    # Bookkeeping lives with the ids (the masks come back on their device); data stays with the embeddings.
    device = input_ids.device
    # Each input position becomes `width` output positions: 1 for text, K for a placeholder, 0 for padding.
    width = attention_mask.long()
    if num_items:
        width = width.masked_scatter(is_placeholder, tokens_per_item.to(device))
    end = width.cumsum(dim=1)
    start = end - width
    lengths = end[:, -1]
    t = int(lengths.max()) if b else 0

    is_text = attention_mask & ~is_placeholder
    rows, cols = is_text.nonzero(as_tuple=True)
    dest = start[rows, cols]

    # Mark [start, start + K) of every placeholder with +1/-1 boundaries, then integrate.
    boundaries = torch.zeros(b, t + 1, dtype=torch.long, device=device)
    if num_items:
        ph_rows, ph_cols = is_placeholder.nonzero(as_tuple=True)
        first = start[ph_rows, ph_cols]
        ones = torch.ones_like(first)
        boundaries.index_put_((ph_rows, first), ones, accumulate=True)
        boundaries.index_put_((ph_rows, first + width[ph_rows, ph_cols]), -ones, accumulate=True)
    media_mask = boundaries.cumsum(dim=1)[:, :t] > 0

    out_mask = torch.arange(t, device=device)[None, :] < lengths[:, None]
    out_labels = None
    if labels is not None:
        out_labels = torch.full((b, t), IGNORE_INDEX, dtype=labels.dtype, device=device)
        out_labels[rows, dest] = labels[rows, cols]
    return SpliceLayout(
        length=t,
        text_from=(rows, cols),
        text_to=(rows, dest),
        media_to=media_mask.nonzero(as_tuple=True),
        attention_mask=out_mask,
        media_mask=media_mask,
        labels=out_labels,
    )


def splice_media(
    text_embeds: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    media_tokens: torch.Tensor | None,
    tokens_per_item: torch.Tensor | None,
    labels: torch.Tensor | None = None,
) -> LLMInputs:
    """Replaces the m-th placeholder (row-major) by `tokens_per_item[m]` rows of `media_tokens`.

    `text_embeds` (B, L, D) are the embeddings of `input_ids` (values at placeholders are
    ignored); `media_tokens` (S, D) holds every item's tokens back to back, S =
    tokens_per_item.sum(). Padding (attention_mask False) is dropped and the result is
    right-padded to the longest sample. (`MiniVLM.assemble` uses `splice_layout` itself,
    to write each chunk's tokens straight into the output.)
    """
    layout = splice_layout(input_ids, attention_mask, tokens_per_item, labels)
    num_tokens = 0 if media_tokens is None else media_tokens.shape[0]
    wanted = 0 if tokens_per_item is None else int(tokens_per_item.sum())
    if num_tokens != wanted:
        raise ValueError(f"media items need {wanted} tokens in total but {num_tokens} media tokens were given")
    embeds = layout.new_embeds(text_embeds)
    layout.place_text(embeds, text_embeds)
    if num_tokens:
        layout.place_media(embeds, media_tokens)
    return layout.inputs(embeds)


def to_left_padding(embeds: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Turns right-padded (B, T, D) embeddings into left-padded ones for batched generation.

    Returns (embeds, attention_mask, position_ids); positions count real tokens only.
    """
    b, t, _ = embeds.shape
    lengths = attention_mask.long().sum(dim=1)
    shift = t - lengths
    steps = torch.arange(t, device=embeds.device)[None, :]
    source = (steps - shift[:, None]) % t
    left = embeds.gather(1, source[..., None].expand_as(embeds))
    left_mask = steps >= shift[:, None]
    position_ids = (left_mask.long().cumsum(dim=1) - 1).clamp(min=0)
    return left, left_mask, position_ids


def stitch_tiles(features: torch.Tensor, grid: tuple[int, int], tiles: int) -> tuple[torch.Tensor, torch.Tensor]:
    """HD features: (C·(n²+1), g_h·g_w, D) from n×n row-major crops followed by the whole
    image, per item, -> (stitched (C, n·g_h · n·g_w, D) row-major over the canvas, whole (C, N, D))."""
    gh, gw = grid
    per_item = tiles * tiles + 1
    if features.shape[0] % per_item:
        raise ValueError(f"{features.shape[0]} encoder passes are not a multiple of {per_item} (a {tiles}x{tiles} HD item)")
    items = features.shape[0] // per_item
    d = features.shape[-1]
    grouped = features.view(items, per_item, gh * gw, d)
    crops = grouped[:, :-1].reshape(items, tiles, tiles, gh, gw, d)
    # (item, tile row, tile col, row, col) -> (item, tile row, row, tile col, col): canvas order.
    stitched = crops.permute(0, 1, 3, 2, 4, 5).reshape(items, tiles * gh * tiles * gw, d)
    return stitched, grouped[:, -1]
