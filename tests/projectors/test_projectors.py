import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minivlm.projectors import LinearProjector, MLPProjector, Projector


def test_mlp_depth2_shapes_names_and_values():
    torch.manual_seed(0)
    proj = MLPProjector(8, 12)
    assert isinstance(proj, Projector)
    assert (proj.in_dim, proj.out_dim) == (8, 12)
    assert list(dict(proj.named_parameters())) == ["layers.0.weight", "layers.0.bias", "layers.2.weight", "layers.2.bias"]
    x = torch.randn(2, 5, 8)
    y = proj(x)
    assert y.shape == (2, 5, 12)
    l0, l2 = proj.layers[0], proj.layers[2]
    torch.testing.assert_close(y, l2(F.gelu(l0(x))))


def test_mlp_depth3_structure():
    proj = MLPProjector(8, 12, depth=3)
    kinds = [type(m) for m in proj.layers]
    assert kinds == [nn.Linear, nn.GELU, nn.Linear, nn.GELU, nn.Linear]
    assert [m.weight.shape for m in proj.layers if isinstance(m, nn.Linear)] == [(12, 8), (12, 12), (12, 12)]
    assert proj(torch.randn(3, 8)).shape == (3, 12)


def test_mlp_depth1_is_one_linear():
    proj = MLPProjector(8, 12, depth=1)
    assert [type(m) for m in proj.layers] == [nn.Linear]


@pytest.mark.parametrize("depth", [0, -1])
def test_mlp_rejects_depth_below_one(depth):
    with pytest.raises(ValueError, match="depth"):
        MLPProjector(8, 12, depth=depth)


def test_linear_projector():
    torch.manual_seed(0)
    proj = LinearProjector(8, 12)
    assert isinstance(proj, Projector)
    assert (proj.in_dim, proj.out_dim) == (8, 12)
    assert sum(1 for m in proj.modules() if isinstance(m, nn.Linear)) == 1
    x = torch.randn(4, 8)
    torch.testing.assert_close(proj(x), x @ proj.linear.weight.T + proj.linear.bias)
