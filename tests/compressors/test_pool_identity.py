import pytest
import torch
import torch.nn.functional as F

from minivlm.compressors import IdentityCompressor, PoolCompressor


def test_pool_block_means_row_major():
    # One channel holding its own flat index on a 4x4 grid, pooled to 2x2.
    features = torch.arange(16.0).reshape(1, 16, 1)
    out = PoolCompressor(1, size=2)(features, (4, 4))
    grid = torch.arange(16.0).reshape(4, 4)
    expected = [grid[:2, :2].mean(), grid[:2, 2:].mean(), grid[2:, :2].mean(), grid[2:, 2:].mean()]
    torch.testing.assert_close(out.tokens, torch.stack(expected).reshape(1, 4, 1))
    assert out.attention is None


@pytest.mark.parametrize("size", [1, 2, 3])
def test_pool_matches_adaptive_avg_pool2d_on_non_square_grid(size):
    torch.manual_seed(0)
    p, h, w, d = 2, 3, 5, 6
    features = torch.randn(p, h * w, d)
    comp = PoolCompressor(d, size=size, placement="before_projector")
    out = comp(features, (h, w))
    fmap = features.reshape(p, h, w, d).permute(0, 3, 1, 2)
    expected = F.adaptive_avg_pool2d(fmap, size).permute(0, 2, 3, 1).reshape(p, size * size, d)
    torch.testing.assert_close(out.tokens, expected)
    assert comp.num_tokens == comp.tokens_for_grid((h, w)) == size * size
    assert comp.placement == "before_projector"


def test_pool_single_token_is_global_mean():
    features = torch.randn(3, 12, 4)
    out = PoolCompressor(4)(features, (3, 4))
    torch.testing.assert_close(out.tokens, features.mean(1, keepdim=True))


def test_pool_errors():
    comp = PoolCompressor(4, size=2)
    with pytest.raises(ValueError, match=r"4.*5"):
        comp(torch.randn(1, 9, 5), (3, 3))
    with pytest.raises(ValueError, match=r"N = 8.*has 9"):
        comp(torch.randn(1, 8, 4), (3, 3))
    with pytest.raises(ValueError, match="size"):
        PoolCompressor(4, size=0)
    with pytest.raises(ValueError, match="placement"):
        PoolCompressor(4, placement="sideways")


def test_identity_returns_input():
    features = torch.randn(2, 6, 4)
    comp = IdentityCompressor(4)
    out = comp(features, (2, 3))
    assert out.tokens is features
    assert out.attention is None
    assert comp.tokens_for_grid((2, 3)) == 6
    assert comp.placement == "after_projector"
    assert comp.init_args_for_export() == {"dim": 4, "placement": "after_projector"}


def test_identity_num_tokens_depends_on_grid():
    with pytest.raises(ValueError, match="tokens_for_grid"):
        IdentityCompressor(4).num_tokens


def test_identity_errors():
    comp = IdentityCompressor(4)
    with pytest.raises(ValueError, match=r"4.*3"):
        comp(torch.randn(1, 6, 3), (2, 3))
    with pytest.raises(ValueError, match=r"N = 5.*has 6"):
        comp(torch.randn(1, 5, 4), (2, 3))
