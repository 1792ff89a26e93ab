import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minivlm.compressors import QueryCompressor, sincos_2d


def hand_sincos(dim: int, h: int, w: int) -> torch.Tensor:
    """The MAE table written out entry by entry: [sin x·ω, cos x·ω, sin y·ω, cos y·ω], row-major."""
    q = dim // 4
    omegas = [10000 ** (-k / q) for k in range(q)]
    rows = []
    for y in range(h):
        for x in range(w):
            rows.append(
                [math.sin(x * o) for o in omegas]
                + [math.cos(x * o) for o in omegas]
                + [math.sin(y * o) for o in omegas]
                + [math.cos(y * o) for o in omegas]
            )
    return torch.tensor(rows, dtype=torch.float64)


def randomize_norms(comp: QueryCompressor) -> None:
    with torch.no_grad():
        for ln in (comp.ln_q, comp.ln_kv):
            ln.weight.normal_(1.0, 0.2)
            ln.bias.normal_(0.0, 0.2)
        comp.attn.in_proj_bias.normal_(0.0, 0.1)
        comp.attn.out_proj.bias.normal_(0.0, 0.1)


def test_sincos_matches_hand_computation():
    table = sincos_2d(8, (2, 3), dtype=torch.float64)
    assert table.shape == (6, 8)
    torch.testing.assert_close(table, hand_sincos(8, 2, 3), rtol=0, atol=1e-12)
    # Spot-check layout: token 4 is row 1, column 1; column channels first, then row channels.
    w = 10000 ** -0.5
    expected = [math.sin(1), math.sin(w), math.cos(1), math.cos(w), math.sin(1), math.sin(w), math.cos(1), math.cos(w)]
    torch.testing.assert_close(table[4], torch.tensor(expected, dtype=torch.float64))
    # Token 2 is row 0, column 2: the row half is the position-0 pattern [0, 0, 1, 1].
    torch.testing.assert_close(table[2, 4:], torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(table[2, :2], torch.tensor([math.sin(2), math.sin(2 * w)], dtype=torch.float64))


def test_sincos_rejects_width_not_divisible_by_4():
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d(6, (2, 2))


def test_release_matches_multihead_attention_called_directly():
    torch.manual_seed(0)
    dim, heads, c, grid = 16, 4, 2, (3, 4)
    comp = QueryCompressor(dim, size=c, semantics="release", num_heads=heads).double()
    randomize_norms(comp)
    features = torch.randn(3, grid[0] * grid[1], dim, dtype=torch.float64)

    mha = nn.MultiheadAttention(dim, heads, bias=True, batch_first=True).double()
    mha.load_state_dict(comp.attn.state_dict())
    ln_q, ln_kv = nn.LayerNorm(dim).double(), nn.LayerNorm(dim).double()
    ln_q.load_state_dict(comp.ln_q.state_dict())
    ln_kv.load_state_dict(comp.ln_kv.state_dict())
    pe_c = hand_sincos(dim, c, c)
    pe_k = F.interpolate(pe_c.reshape(1, c, c, dim).permute(0, 3, 1, 2), size=grid, mode="bicubic", align_corners=False)
    pe_k = pe_k.permute(0, 2, 3, 1).reshape(-1, dim)
    q = (ln_q(comp.query) + pe_c).expand(3, -1, -1)
    kv = ln_kv(features)
    ref_tokens, ref_attn = mha(q, kv + pe_k, kv, need_weights=True, average_attn_weights=True)

    out = comp(features, grid)
    assert comp.placement == "before_projector"
    torch.testing.assert_close(out.tokens, ref_tokens, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.attention, ref_attn, rtol=0, atol=1e-6)

    # The map is the mean over heads of scaled dot-product attention on the in-projected q and k.
    wq, wk, _ = comp.attn.in_proj_weight.chunk(3)
    bq, bk, _ = comp.attn.in_proj_bias.chunk(3)
    qh = (q @ wq.T + bq).reshape(3, c * c, heads, dim // heads).transpose(1, 2)
    kh = ((kv + pe_k) @ wk.T + bk).reshape(3, -1, heads, dim // heads).transpose(1, 2)
    per_head = (qh @ kh.transpose(-1, -2) / math.sqrt(dim // heads)).softmax(-1)
    torch.testing.assert_close(out.attention, per_head.mean(1), rtol=0, atol=1e-6)


def test_release_single_query_key_pe_is_one_constant_vector():
    comp = QueryCompressor(16, size=1, semantics="release", num_heads=4)
    pe = comp.resized_pos_embed((3, 5))
    assert pe.shape == (15, 16)
    constant = torch.tensor([0.0] * 4 + [1.0] * 4 + [0.0] * 4 + [1.0] * 4)
    torch.testing.assert_close(pe, constant.expand(15, -1), rtol=0, atol=1e-6)


def test_release_resized_pe_on_own_grid_is_the_table():
    comp = QueryCompressor(16, size=3, semantics="release", num_heads=4)
    torch.testing.assert_close(comp.resized_pos_embed((3, 3)), comp.pos_embed, rtol=0, atol=1e-6)


def test_paper_matches_hand_computation():
    torch.manual_seed(1)
    dim, c, grid = 8, 2, (2, 3)
    comp = QueryCompressor(dim, size=c, semantics="paper").double()
    h = torch.randn(2, 6, dim, dtype=torch.float64) * 0.5
    # The query table is a float32 buffer (as stored in checkpoints), so round it the same way.
    q = comp.query + hand_sincos(dim, c, c).float().double()
    k = h + hand_sincos(dim, *grid)
    attn = torch.softmax(q @ k.transpose(1, 2), dim=-1)  # no 1/sqrt(d) scaling, as in Eq. 2
    out = comp(h, grid)
    assert comp.placement == "after_projector"
    assert not hasattr(comp, "attn") and not hasattr(comp, "ln_q")
    torch.testing.assert_close(out.attention, attn, rtol=0, atol=1e-12)
    torch.testing.assert_close(out.tokens, attn @ h, rtol=0, atol=1e-12)


@pytest.mark.parametrize("semantics", ["paper", "release"])
@pytest.mark.parametrize("size", [1, 2])
@pytest.mark.parametrize("grid", [(4, 4), (3, 5)])
def test_shapes_and_attention_rows_sum_to_one(semantics, size, grid):
    torch.manual_seed(0)
    comp = QueryCompressor(16, size=size, semantics=semantics, num_heads=4)
    n = grid[0] * grid[1]
    out = comp(torch.randn(2, n, 16) * 0.1, grid)
    k = size * size
    assert comp.num_tokens == comp.tokens_for_grid(grid) == k
    assert out.tokens.shape == (2, k, 16)
    assert out.attention.shape == (2, k, n)
    torch.testing.assert_close(out.attention.sum(-1), torch.ones(2, k), rtol=0, atol=1e-5)


@pytest.mark.parametrize("semantics", ["paper", "release"])
def test_width_mismatch_names_both_numbers(semantics):
    comp = QueryCompressor(16, semantics=semantics, num_heads=4)
    with pytest.raises(ValueError, match=r"16.*12"):
        comp(torch.randn(1, 4, 12), (2, 2))


@pytest.mark.parametrize("semantics", ["paper", "release"])
def test_token_count_mismatch_names_both_numbers(semantics):
    comp = QueryCompressor(16, semantics=semantics, num_heads=4)
    with pytest.raises(ValueError, match=r"N = 5.*2x3 has 6"):
        comp(torch.randn(1, 5, 16), (2, 3))


def test_constructor_errors():
    with pytest.raises(ValueError, match="divisible by 4"):
        QueryCompressor(18, num_heads=2)
    with pytest.raises(ValueError, match="num_heads"):
        QueryCompressor(20, num_heads=8)
    with pytest.raises(ValueError, match="semantics"):
        QueryCompressor(16, semantics="both")
    with pytest.raises(ValueError, match="size"):
        QueryCompressor(16, size=0, num_heads=4)
    QueryCompressor(20, semantics="paper")  # heads play no part in paper semantics


@pytest.mark.parametrize("semantics", ["paper", "release"])
def test_gradients_reach_queries(semantics):
    torch.manual_seed(0)
    comp = QueryCompressor(16, size=2, semantics=semantics, num_heads=4)
    comp(torch.randn(2, 9, 16), (3, 3)).tokens.square().sum().backward()
    assert comp.query.grad is not None
    assert comp.query.grad.abs().sum() > 0


def test_release_state_dict_names_and_fixed_pos_embed():
    comp = QueryCompressor(16, size=2, num_heads=4)
    assert set(comp.state_dict()) == {
        "query",
        "pos_embed",
        "attn.in_proj_weight",
        "attn.in_proj_bias",
        "attn.out_proj.weight",
        "attn.out_proj.bias",
        "ln_q.weight",
        "ln_q.bias",
        "ln_kv.weight",
        "ln_kv.bias",
    }
    assert "pos_embed" not in dict(comp.named_parameters())
    assert comp.query.shape == (4, 16)


def test_query_init_std():
    torch.manual_seed(0)
    comp = QueryCompressor(256, size=4, semantics="paper")
    assert abs(comp.query.std().item() - 0.02) < 0.002
    assert abs(comp.query.mean().item()) < 0.002


def test_init_args_round_trip():
    comp = QueryCompressor(16, size=2, semantics="paper", num_heads=4)
    args = comp.init_args_for_export()
    assert args == {
        "dim": 16, "size": 2, "semantics": "paper", "num_heads": 4, "placement": "after_projector", "key_pe": "native"
    }
    clone = QueryCompressor(**args)
    assert clone.placement == comp.placement and clone.num_tokens == 4


def test_placement_and_key_pe_can_be_chosen_apart_from_semantics():
    default = QueryCompressor(32, size=2, semantics="paper")
    assert (default.placement, default.key_pe) == ("after_projector", "native")
    released = QueryCompressor(32, size=2)
    assert (released.placement, released.key_pe) == ("before_projector", "resized")
    mixed = QueryCompressor(32, size=2, semantics="paper", placement="before_projector", key_pe="resized")
    assert mixed.placement == "before_projector"
    assert torch.equal(mixed.key_pos_embed((4, 4)), mixed.resized_pos_embed((4, 4)))
    assert not torch.allclose(default.key_pos_embed((4, 4)), mixed.key_pos_embed((4, 4)))
    # The paper form with resized key PE equals the hand computation with that table.
    torch.manual_seed(0)
    h = torch.randn(2, 16, 32)
    q = mixed.query + mixed.pos_embed
    expected = torch.softmax(q @ (h + mixed.resized_pos_embed((4, 4))).transpose(1, 2), dim=-1) @ h
    assert torch.allclose(mixed(h, (4, 4)).tokens, expected, atol=1e-5)
    with pytest.raises(ValueError, match="key_pe"):
        QueryCompressor(32, key_pe="learned")
    with pytest.raises(ValueError, match="placement"):
        QueryCompressor(32, placement="inside")


@pytest.mark.parametrize("semantics", ["paper", "release"])
def test_key_table_is_built_once_per_grid_and_again_when_pos_embed_changes(semantics):
    torch.manual_seed(0)
    comp = QueryCompressor(16, size=2, semantics=semantics, num_heads=4)
    first = comp.key_pos_embed((3, 5))
    assert torch.equal(first, comp._build_key_pos_embed((3, 5), torch.float32))
    assert comp.key_pos_embed((3, 5)) is first  # not built again
    assert comp.key_pos_embed((4, 4)).shape == (16, 16)
    assert comp.key_pos_embed((3, 5), torch.float64).dtype == torch.float64
    features = torch.randn(2, 15, 16)
    before = comp(features, (3, 5)).tokens
    # Other values loaded into pos_embed (as from a checkpoint) give another resized table.
    state = comp.state_dict()
    state["pos_embed"] = torch.randn_like(state["pos_embed"])
    comp.load_state_dict(state)
    again = comp.key_pos_embed((3, 5))
    assert torch.equal(again, comp._build_key_pos_embed((3, 5), torch.float32))
    assert torch.equal(again, first) == (semantics == "paper")  # the native table ignores pos_embed
    assert not torch.equal(comp(features, (3, 5)).tokens, before)  # pos_embed also moves the queries
    # A converted copy builds its own table, in its own dtype.
    assert comp.double().key_pos_embed((3, 5), torch.float64).dtype == torch.float64


def test_cached_key_table_gives_the_outputs_of_a_fresh_one():
    torch.manual_seed(0)
    comp = QueryCompressor(16, size=2, semantics="release", num_heads=4)
    randomize_norms(comp)
    features = torch.randn(2, 12, 16)
    first, second = comp(features, (3, 4)), comp(features, (3, 4))
    kv = comp.ln_kv(features)
    q = (comp.ln_q(comp.query) + comp.pos_embed).expand(2, -1, -1)
    tokens, _ = comp.attn(q, kv + comp.resized_pos_embed((3, 4)), kv)
    assert torch.equal(first.tokens, second.tokens)
    torch.testing.assert_close(second.tokens, tokens, rtol=0, atol=1e-6)


def test_key_table_first_built_in_inference_mode_serves_autograd_later():
    torch.manual_seed(0)
    comp = QueryCompressor(16, size=2, semantics="release", num_heads=4)
    features = torch.randn(2, 12, 16)
    with torch.inference_mode():
        expected = comp(features, (3, 4)).tokens.clone()
    assert not comp.key_pos_embed((3, 4)).is_inference()  # usable with autograd like any tensor
    out = comp(features, (3, 4)).tokens
    out.square().sum().backward()
    assert torch.equal(out.detach(), expected)
    assert comp.query.grad is not None and comp.attn.in_proj_weight.grad is not None
