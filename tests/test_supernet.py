"""Search supernet: architecture parameters, decided/pruned edges, partial channels, DARTS genotype rule."""

import pytest
import torch

from nas.models.genotypes import validate_genotype
from nas.search.supernet import (PRUNED, UNDECIDED, MixedOp, SearchNetwork, channel_shuffle, derive_darts_genotype,
                          edge_list, node_edge_ranges)


def tiny(**kw):
    torch.manual_seed(0)
    kw.setdefault("primitives", "darts")
    return SearchNetwork(C=4, num_classes=7, layers=3, **kw)


def test_edges_and_ranges():
    assert len(edge_list(4)) == 14 and edge_list(2) == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]
    assert node_edge_ranges(4) == [(0, 2), (2, 5), (5, 9), (9, 14)]


def test_arch_parameters_registered_and_disjoint():
    m = tiny()
    arch, weights = m.arch_parameters(), m.weight_parameters()
    assert [tuple(a.shape) for a in arch] == [(14, 8), (14, 8)]
    assert not {id(p) for p in arch} & {id(p) for p in weights}
    assert {id(p) for p in arch} | {id(p) for p in weights} == {id(p) for p in m.parameters()}
    sd = m.state_dict()
    assert torch.equal(sd["alphas_normal"], m.alphas_normal) and sd["edge_state_normal"].dtype == torch.int64
    assert all(isinstance(v, torch.Tensor) for v in sd.values())
    m.to(torch.float64)
    assert m.alphas_reduce.dtype == torch.float64 and isinstance(m.alphas_reduce, torch.nn.Parameter)


def test_forward_shapes_both_spaces():
    for space in ("darts", "auto_fernet"):
        m = tiny(primitives=space)
        y = m(torch.randn(2, 1, 16, 16))
        assert y.shape == (2, 7) and torch.isfinite(y).all()
    m = tiny()
    y = m(torch.randn(2, 1, 15, 15))  # odd sizes through the reductions
    assert y.shape == (2, 7)


def _forbid(module):
    def hook(*_):
        raise AssertionError("this op must not run")
    return module.register_forward_pre_hook(hook)


def test_decided_edge_runs_only_its_op_and_pruned_runs_nothing():
    m = tiny()
    x = torch.randn(3, 1, 16, 16)
    ref_state = {"normal": [UNDECIDED] * 14, "reduce": [UNDECIDED] * 14}
    ref_state["normal"][0] = 4  # sep_conv_3x3
    ref_state["normal"][1] = 3  # skip_connect
    ref_state["normal"][2] = PRUNED
    m.edge_state = {k: list(v) for k, v in ref_state.items()}
    naive = tiny()
    naive.load_state_dict(m.state_dict())
    naive.always_compute_all = True
    handles = []
    for cell in m.cells:
        if cell.reduction:
            continue
        mixed = cell._ops
        handles += [_forbid(op) for i, op in enumerate(mixed[0]._ops) if i != 4]
        handles += [_forbid(op) for i, op in enumerate(mixed[1]._ops) if i != 3]
        handles.append(_forbid(mixed[2]))
    out = m(x)  # raises if a forbidden op runs
    for h in handles:
        h.remove()
    # the naive path computes every op and weights decisions one-hot: same function
    torch.testing.assert_close(out, naive(x), rtol=1e-5, atol=1e-6)
    assert m.state_dict()["edge_state_normal"].tolist() == ref_state["normal"]
    fresh = tiny()
    fresh.load_state_dict(m.state_dict())
    assert fresh.edge_state == ref_state


def test_fast_path_equals_naive_when_undecided():
    m = tiny()
    with torch.no_grad():
        m.alphas_normal.normal_()
        m.alphas_reduce.normal_()
    naive = tiny(always_compute_all=True)
    naive.load_state_dict(m.state_dict())
    x = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(m(x), naive(x), rtol=1e-5, atol=1e-6)
    m(x).sum().backward()
    for p in m.arch_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_channel_shuffle():
    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]


def test_partial_channels():
    m = tiny(partial_channels=2)
    assert len(m.arch_parameters()) == 4 and m.betas_normal.shape == (14,)
    assert m.cells[0]._ops[0]._ops[4].op[1].in_channels == 2  # C/K channels through the ops
    y = m(torch.randn(2, 1, 16, 16))
    y.sum().backward()
    for p in m.arch_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
    mo = MixedOp(4, 2, ["none", "max_pool_3x3"], partial_channels=2)
    assert mo(torch.randn(1, 4, 7, 7), torch.tensor([0.5, 0.5])).shape == (1, 4, 4, 4)
    with pytest.raises(Exception, match="partial_channels"):
        tiny(partial_channels=3)


def test_darts_genotype_rule():
    prims = ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3"]
    a = torch.zeros(5, 5)  # steps=2: node0 edges 0,1; node1 edges 2,3,4
    a[0, 0] = 10.0  # 'none' is ignored
    a[0, 4] = 1.0
    a[1, 3] = 2.0
    a[2, 2] = 0.5
    a[3, 1] = 3.0
    a[4, 4] = 4.0
    g = derive_darts_genotype(a, a, prims, steps=2, multiplier=2)
    # node1: strongest edges 4 (input 2) then 3 (input 1): listed by strength as DARTS does
    assert g.normal == [("skip_connect", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 2), ("max_pool_3x3", 1)]
    assert g.normal_concat == [2, 3]
    # betas rescale edges per node (PC-DARTS): make input 0 of node1 dominant
    b = torch.tensor([0.0, 0.0, 10.0, 0.0, 0.0])
    g2 = derive_darts_genotype(a, a, prims, steps=2, multiplier=2, betas_normal=b)
    assert g2.normal[2] == ("avg_pool_3x3", 0)
    validate_genotype(tiny().darts_genotype())
