"""Input assembly: placeholders expand to K media tokens, text keeps its order, padding goes."""

import pytest
import torch

from minivlm.processing.batch import IGNORE_INDEX, PLACEHOLDER_ID
from minivlm.model.inputs import splice_media, stitch_tiles, to_left_padding

P = PLACEHOLDER_ID


def embed(ids: torch.Tensor, d: int = 3) -> torch.Tensor:
    """Embedding that encodes the id in every channel, so positions can be read back."""
    return ids.clamp(min=0).float()[..., None].expand(*ids.shape, d).clone()


def test_splice_places_media_tokens_and_moves_text():
    ids = torch.tensor([[5, P, 6, 7], [8, 9, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 6, 7], [IGNORE_INDEX, 9, IGNORE_INDEX, IGNORE_INDEX]])
    media = torch.tensor([[100.0] * 3, [101.0] * 3])  # one item of K = 2 tokens
    out = splice_media(embed(ids), ids, mask, media, torch.tensor([2]), labels)
    assert out.embeds.shape == (2, 5, 3)
    assert out.embeds[0, :, 0].tolist() == [5, 100, 101, 6, 7]
    assert out.embeds[1, :2, 0].tolist() == [8, 9]
    assert out.embeds[1, 2:].abs().sum() == 0
    assert out.attention_mask.tolist() == [[True] * 5, [True, True, False, False, False]]
    assert out.media_mask.tolist() == [[False, True, True, False, False], [False] * 5]
    assert out.labels.tolist() == [
        [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 6, 7],
        [IGNORE_INDEX, 9, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX],
    ]


def test_splice_items_of_different_sizes_in_row_major_order():
    ids = torch.tensor([[P, 1, P], [2, P, 3]])
    mask = torch.ones_like(ids, dtype=torch.bool)
    counts = torch.tensor([1, 3, 2])
    media = torch.arange(10, 16).float()[:, None].expand(6, 2)
    out = splice_media(embed(ids, 2), ids, mask, media, counts)
    assert out.embeds[0, :, 0].tolist() == [10, 1, 11, 12, 13]
    assert out.embeds[1, :, 0].tolist() == [2, 14, 15, 3, 0]
    assert out.media_mask.sum(dim=1).tolist() == [4, 2]


def test_placeholder_inside_padding_is_ignored():
    ids = torch.tensor([[1, 2, P]])
    mask = torch.tensor([[True, True, False]])
    out = splice_media(embed(ids), ids, mask, None, None)
    assert out.embeds.shape == (1, 2, 3)


def test_count_mismatch_fails_loudly():
    ids = torch.tensor([[1, P, P]])
    mask = torch.ones_like(ids, dtype=torch.bool)
    with pytest.raises(ValueError, match="2 media placeholders but 1 media items"):
        splice_media(embed(ids), ids, mask, torch.zeros(1, 3), torch.tensor([1]))
    with pytest.raises(ValueError, match="need 4 tokens in total but 3"):
        splice_media(embed(ids), ids, mask, torch.zeros(3, 3), torch.tensor([2, 2]))


def test_gradients_reach_media_tokens_and_text():
    ids = torch.tensor([[1, P, 2]])
    text = embed(ids).requires_grad_()
    media = torch.randn(2, 3, requires_grad=True)
    out = splice_media(text, ids, torch.ones_like(ids, dtype=torch.bool), media, torch.tensor([2]))
    out.embeds.sum().backward()
    assert torch.equal(media.grad, torch.ones(2, 3))
    assert text.grad[0, :, 0].tolist() == [1, 0, 1]


def test_left_padding_keeps_tokens_and_counts_positions():
    embeds = torch.arange(1, 7).float().view(2, 3, 1)
    mask = torch.tensor([[True, True, True], [True, False, False]])
    left, left_mask, positions = to_left_padding(embeds, mask)
    assert left[0, :, 0].tolist() == [1, 2, 3]
    assert left[1, 2, 0].item() == 4
    assert left_mask.tolist() == [[True, True, True], [False, False, True]]
    assert positions.tolist() == [[0, 1, 2], [0, 0, 0]]


def test_stitch_tiles_lays_crops_out_row_major_on_the_canvas():
    tiles, gh, gw = 2, 2, 3
    # Feature value = canvas (row, col) of the patch, encoded as row * 100 + col.
    passes = []
    for tile_row in range(tiles):
        for tile_col in range(tiles):
            rows = torch.arange(gh)[:, None] + tile_row * gh
            cols = torch.arange(gw)[None, :] + tile_col * gw
            passes.append((rows * 100 + cols).reshape(-1).float())
    passes.append(torch.full((gh * gw,), -1.0))  # the whole image
    features = torch.stack(passes)[..., None].repeat(2, 1, 1)  # two HD items
    stitched, whole = stitch_tiles(features, (gh, gw), tiles)
    canvas = torch.arange(tiles * gh)[:, None] * 100 + torch.arange(tiles * gw)[None, :]
    assert stitched.shape == (2, tiles * gh * tiles * gw, 1)
    assert torch.equal(stitched[1, :, 0], canvas.reshape(-1).float())
    assert torch.equal(whole, torch.full((2, gh * gw, 1), -1.0))
    with pytest.raises(ValueError, match="not a multiple of 5"):
        stitch_tiles(features[:4], (gh, gw), tiles)
