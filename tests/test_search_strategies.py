"""Search strategies against collapse and the random baseline: the β-DARTS term and its
gradient against a hand computation, DARTS-'s auxiliary skip on a cell whose values can be
written down, the per-epoch schedules, short runs of each strategy (metrics and alphas.csv
carry the parameter-free share), and --strategy random as the seeded sampler's cell."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nas.engine.report import have_matplotlib
from nas.models.genotypes import genotype_to_dict, load_genotype
from nas.runtime.checkpoint import read_csv_rows
from nas.search.architect import Architect
from nas.search.random_cells import parameter_free_share, sample_genotype
from nas.search.supernet import SearchCell, SearchNetwork
from tests.test_search import SPACE, searcher, tiny_args, tiny_data


def test_beta_decay_term_and_gradient_by_hand():
    net = SearchNetwork(C=4, layers=3, primitives=["none", "skip_connect", "sep_conv_3x3"])
    with torch.no_grad():
        net.alphas_normal.zero_()
        net.alphas_reduce.copy_(torch.tensor([[0.0, math.log(2.0), math.log(5.0)]]).expand_as(net.alphas_reduce))
    arch = Architect(net)
    # rows of zeros: log 3; reduce rows: log(1 + 2 + 5) = log 8; 14 rows each
    want = (math.log(3.0) + math.log(8.0)) / 2
    loss = arch.beta_decay_loss()
    assert float(loss.detach()) == pytest.approx(want, abs=1e-6)
    loss.backward()
    # d/d alpha_e of mean_e logsumexp(alpha_e) = softmax(alpha_e) / (number of rows, 28)
    assert torch.allclose(net.alphas_normal.grad, torch.full((14, 3), 1 / 3 / 28), atol=1e-7)
    assert torch.allclose(net.alphas_reduce.grad[0], torch.tensor([1 / 8, 2 / 8, 5 / 8]) / 28, atol=1e-7)


def test_auxiliary_skip_adds_the_weighted_input_on_resolution_keeping_edges():
    torch.manual_seed(0)
    cell = SearchCell(2, 2, 4, 4, 4, reduction=False, reduction_prev=False, primitives=["none", "skip_connect"]).eval()
    s0, s1 = torch.randn(2, 4, 6, 6), torch.randn(2, 4, 6, 6)
    w_skip = 0.3
    weights = torch.tensor([[1 - w_skip, w_skip]] * 5)
    a = 0.5
    out = cell(s0, s1, weights, [-1] * 5, aux_skip=a)
    h0, h1 = cell.preprocess0(s0), cell.preprocess1(s1)
    k = w_skip + a                          # each edge: w_skip * h (the mixed op) + a * h (the auxiliary skip)
    n0 = k * (h0 + h1)
    n1 = k * (h0 + h1 + n0)
    assert torch.allclose(out, torch.cat([n0, n1], dim=1), atol=1e-6)
    assert torch.allclose(cell(s0, s1, weights, [-1] * 5, aux_skip=0.0),
                          torch.cat([w_skip * (h0 + h1), w_skip * (h0 + h1 + w_skip * (h0 + h1))], 1), atol=1e-6)
    # a decided edge runs its op alone: no auxiliary skip there
    out_decided = cell(s0, s1, weights, [1, -1, -1, -1, -1], aux_skip=a)
    n0 = h0 + k * h1
    assert torch.allclose(out_decided[:, :4], n0, atol=1e-6)


@pytest.mark.parametrize("strategy", ["beta_darts", "darts_minus"])
def test_schedules_and_short_runs_record_the_parameter_free_share(tmp_path, strategy):
    s = searcher(tiny_args(tmp_path / strategy, "--strategy", strategy, "--epochs", "3", "--post_val", "--plots", "True"),
                 tiny_data())
    res = s.run()
    rows = read_csv_rows(tmp_path / strategy / "metrics.csv")
    assert len(rows) == 3
    if strategy == "beta_darts":
        assert [float(r["beta_decay_weight"]) for r in rows] == [0.0, 0.5, 1.0]
        assert all(float(r["aux_skip"]) == 0.0 for r in rows)
    else:
        assert [float(r["aux_skip"]) for r in rows] == [1.0, 0.5, 0.0]
    g = load_genotype(str(tmp_path / strategy / "genotype.json"))
    assert float(rows[-1]["param_free_share"]) == pytest.approx(parameter_free_share(g))
    alphas = read_csv_rows(tmp_path / strategy / "alphas.csv")
    last = [r for r in alphas if r["epoch"] == "3"]
    assert len(last) == 28 and all(r["top"] in SPACE.split(",")[1:] for r in last)
    assert all(r["top_param_free"] == str(int(r["top"] in ("max_pool_3x3", "skip_connect"))) for r in last)
    assert res["complete"] and res["epochs"] == 3
    if have_matplotlib(notice=False):  # the collapse plot: search.png, redrawn every epoch
        assert (tmp_path / strategy / "search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_random_strategy_is_the_seeded_sample_and_trains_nothing(tmp_path):
    res = searcher(tiny_args(tmp_path / "r", "--strategy", "random", "--seed", "5"), tiny_data()).run()
    want = sample_genotype(SPACE.split(","), 4, seed=5)
    assert res["genotype"] == genotype_to_dict(want) and res["epochs"] == 0
    assert load_genotype(str(tmp_path / "r" / "genotype.json")) == want
    assert not (tmp_path / "r" / "metrics.csv").exists()
