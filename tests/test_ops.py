"""Primitive operations: shapes, gradients, and parameter counts against published figures."""
import pytest
import torch
import torch.nn.functional as F

from nas.models.genotypes import load_genotype
from nas.models.ops import OPS, SEARCH_SPACES, FactorizedReduce, ReLUConvBN, op_param_count, search_space
from nas.runtime.errors import FerNasError

# Auto-FERNet's PARAMS table (operations counted at C=12, stride 1, BN without affine).
REFERENCE_PARAMS = {"none": 0, "avg_pool_3x3": 0, "max_pool_3x3": 0, "skip_connect": 0, "sep_conv_3x3": 504,
                    "sep_conv_5x5": 888, "sep_conv_7x7": 1464, "dil_conv_3x3": 252, "dil_conv_5x5": 444,
                    "conv_7x1_1x7": 2016, "ghost": 126, "conv_1x1": 144, "conv_3x3": 1296}


def test_search_spaces():
    assert SEARCH_SPACES["auto_fernet"] == ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3",
                                            "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5", "ghost", "conv_1x1",
                                            "conv_3x3"]
    assert SEARCH_SPACES["darts"] == ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3",
                                      "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"]
    for names in SEARCH_SPACES.values():
        assert names[0] == "none" and all(n in OPS for n in names)
    with pytest.raises(FerNasError, match="unknown search space"):
        search_space("nope")


@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("hw", [8, 7])
def test_op_shape_finite_gradients(name, stride, hw):
    torch.manual_seed(0)
    C = 6
    op = OPS[name](C, stride, True)
    x = torch.randn(3, C, hw, hw, requires_grad=True)
    y = op(x)
    expect = -(-hw // stride)
    assert y.shape == (3, C, expect, expect)
    assert torch.isfinite(y).all()
    if name == "none":
        assert not y.requires_grad and torch.equal(y, torch.zeros_like(y))
        return
    (y * torch.randn_like(y)).sum().backward()
    for pname, p in op.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}: no gradient for {pname}"
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_none_is_zero_and_ignores_nan():
    x = torch.full((2, 4, 5, 5), float("nan"))
    assert torch.equal(OPS["none"](4, 1, False)(x), torch.zeros(2, 4, 5, 5))
    assert torch.equal(OPS["none"](4, 2, False)(x), torch.zeros(2, 4, 3, 3))


def test_skip_connect_identity_and_factorized_reduce():
    x = torch.randn(2, 4, 6, 6)
    assert torch.equal(OPS["skip_connect"](4, 1, True)(x), x)
    assert isinstance(OPS["skip_connect"](4, 2, True), FactorizedReduce)
    # On even sizes the shifted path samples the odd rows/columns, as DARTS does.
    fr = FactorizedReduce(4, 4, affine=False).eval()
    with torch.no_grad():
        r = torch.relu(x)
        ref = torch.cat([F.conv2d(r[:, :, ::2, ::2], fr.conv_1.weight), F.conv2d(r[:, :, 1::2, 1::2], fr.conv_2.weight)], 1)
        assert torch.allclose(fr(x), fr.bn(ref))


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_param_counts_match_reference(name):
    assert op_param_count(name, 12) == REFERENCE_PARAMS[name]


def test_ghost_structure():
    g = OPS["ghost"](8, 2, True)
    assert g.primary_conv[0].stride == (2, 2) and g.primary_conv[0].out_channels == 4
    assert g.cheap_operation[0].groups == 4 and g.cheap_operation[0].kernel_size == (3, 3)


def _fer_v1_params(layers: int, C: int = 36) -> int:
    """DARTS NetworkCIFAR layout (1-channel stem 3C, reductions at L/3 and 2L/3,
    7 classes, no auxiliary head) counted op by op from OPS."""
    g = load_genotype("FER_V1")
    n = 9 * 3 * C + 2 * 3 * C  # stem conv + BN
    c_pp, c_p, c_cur, red_prev = 3 * C, 3 * C, C, False
    for i in range(layers):
        red = i in (layers // 3, 2 * layers // 3)
        c_cur *= 2 if red else 1
        pre0 = FactorizedReduce(c_pp, c_cur) if red_prev else ReLUConvBN(c_pp, c_cur, 1, 1, 0)
        mods = [pre0, ReLUConvBN(c_p, c_cur, 1, 1, 0)]
        mods += [OPS[o](c_cur, 2 if red and j < 2 else 1, True) for o, j in (g.reduce if red else g.normal)]
        n += sum(p.numel() for m in mods for p in m.parameters())
        c_pp, c_p, red_prev = c_p, 4 * c_cur, red
    return n + c_p * 7 + 7


def test_fer_v1_published_parameter_count():
    assert _fer_v1_params(12) == 2_164_831
    assert _fer_v1_params(20) == 4_119_703


def test_custom_search_space():
    assert search_space("none,skip_connect, ghost") == ["none", "skip_connect", "ghost"]
    with pytest.raises(FerNasError, match="unknown operation.*conv_9x9"):
        search_space("none,conv_9x9")
    with pytest.raises(FerNasError, match="distinct"):
        search_space("none,ghost,ghost")
    with pytest.raises(FerNasError, match="distinct"):
        search_space("none,")
