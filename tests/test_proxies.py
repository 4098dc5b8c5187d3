"""Zero-cost proxies (nas.search.proxies) on hand-computable cases."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from nas.search import proxies


def test_naswot_kernel_on_hand_made_codes():
    # images agree on unit 0 only: K = [[3, 1], [1, 3]]; a second layer of one unit where they differ adds [[1, 0], [0, 1]]
    K = proxies.naswot_kernel([torch.tensor([[1, 0, 1], [1, 1, 0]]), torch.tensor([[1], [0]])])
    assert K.tolist() == [[4.0, 1.0], [1.0, 4.0]]
    assert math.log(np.linalg.det(K.numpy())) == pytest.approx(math.log(15))


def test_naswot_of_a_network_reads_the_relu_inputs():
    net = nn.Sequential(nn.Linear(1, 3, bias=False), nn.ReLU())
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0], [-1.0], [2.0]]))
    x = torch.tensor([[1.0], [-1.0]])  # pre-activations [1, -1, 2] and [-1, 1, -2]: codes 101 and 010
    # they agree nowhere: K = [[3, 0], [0, 3]], log det = log 9
    assert proxies.naswot(net, x) == pytest.approx(math.log(9))


def test_synflow_of_a_linear_network_by_hand():
    """With absolute weights and an all-ones input, R = 1ᵀ|W2||W1|1 is linear in each layer's
    weights, so each layer's Σ θ ∂R/∂θ is R: two bias-free layers score 2R."""
    net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.BatchNorm1d(2), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 3.0]]))
        net[2].weight.copy_(torch.tensor([[-1.0, 2.0]]))
    R = np.abs([[-1.0, 2.0]]) @ np.abs([[1.0, -2.0], [0.5, 3.0]]) @ np.ones(2)
    assert proxies.synflow(net, (2,)) == pytest.approx(2 * float(R[0]))  # batch norm left out
    assert net[0].weight[0, 1].item() == -2.0  # the network given is not changed


def test_snip_and_grad_norm_by_hand():
    def net():
        m = nn.Linear(1, 2, bias=False)
        with torch.no_grad():
            m.weight.copy_(torch.tensor([[0.5], [-1.5]]))
        return m

    x, y = torch.tensor([[2.0]]), torch.tensor([0])
    logits = np.array([1.0, -3.0])
    p = np.exp(logits) / np.exp(logits).sum()
    g_logits = p - np.array([1.0, 0.0])       # dCE/dlogits
    g_w = g_logits * 2.0                       # times the input
    assert proxies.snip(net(), x, y) == pytest.approx(abs(0.5 * g_w[0]) + abs(-1.5 * g_w[1]))
    assert proxies.grad_norm(net(), x, y) == pytest.approx(float(np.linalg.norm(g_w)))


def test_jacob_cov_of_a_linear_network():
    """A linear network's input Jacobian is the same for every image: the correlation matrix is
    all ones, eigenvalues n and n-1 zeros."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    n, k = 4, 1e-5
    expected = -(math.log(n + k) + 1 / (n + k)) - (n - 1) * (math.log(k) + 1 / k)
    assert proxies.jacob_cov(net, torch.randn(n, 1, 3, 4)) == pytest.approx(expected, rel=1e-6)


def test_score_network_and_the_rank_vote():
    from nas.models import build_model

    torch.manual_seed(0)
    model = build_model("FER_V1", init_channels=2, layers=3, auxiliary=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    s = proxies.score_network(model, torch.randn(6, 1, 44, 44), torch.arange(6) % 7)
    assert set(s) == set(proxies.PROXIES) and all(math.isfinite(v) for v in s.values())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # copies were scored
    votes = proxies.rank_vote([{"a": 1.0, "b": 5.0}, {"a": 3.0, "b": 4.0}, {"a": 2.0, "b": float("nan")}], ["a", "b"])
    assert votes == [2.0, 2.5, 1.5]


def test_the_search_flag_lists_every_proxy_and_the_vote():
    from nas.search.config import ZC_PROXIES
    from nas.search.proxies import PROXIES

    assert ZC_PROXIES == (*PROXIES, "vote")
