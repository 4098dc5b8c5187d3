"""One-shot ranking proxies (nas.search.oneshot): forcing a cell on the supernet equals the
mixture with one-hot weights, the alpha score and Kendall's τ against hand computations, and
the one-shot accuracy against a hand-recalibrated copy of the supernet."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn

from nas.models.genotypes import Genotype
from nas.search.oneshot import alpha_score, force_genotype, kendall_tau, oneshot_accuracy
from nas.search.random_cells import sample_genotype
from nas.search.supernet import PRUNED, UNDECIDED, SearchNetwork, edge_list

PRIMS = ["none", "max_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3"]


def _net(seed: int = 0) -> SearchNetwork:
    torch.manual_seed(seed)
    return SearchNetwork(C=4, num_classes=7, layers=3, primitives=PRIMS, steps=2, multiplier=2)


def test_kendall_tau_by_hand():
    # one discordant pair of six: (4 - 1 - 1) ... (5 concordant - 1 discordant) / 6
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # tau-b with a tie in b: pairs (1,2) C, (1,3) C, (2,3) tie in b -> 2 / sqrt(3 * 2)
    assert kendall_tau([1, 2, 3], [1, 2, 2]) == pytest.approx(2 / math.sqrt(6))
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))
    stats = pytest.importorskip("scipy.stats")
    a, b = [0.3, 1.2, 1.2, 5.0, -1.0, 2.2], [3, 1, 4, 1, 5, 9]
    assert kendall_tau(a, b) == pytest.approx(stats.kendalltau(a, b).statistic)


def test_alpha_score_uniform_alphas_by_hand():
    net = _net()
    g = sample_genotype(PRIMS, 2, seed=3)
    with torch.no_grad():
        for cell in ("normal", "reduce"):
            net.alphas(cell).zero_()
    # every chosen edge has log(1/|ops|); 2 edges per node, 2 nodes, 2 cell types
    assert alpha_score(net, g) == pytest.approx(-8 * math.log(len(PRIMS)), rel=1e-6)
    with torch.no_grad():
        (op, j) = g.normal[0]
        row = edge_list(2).index((0, j))
        net.alphas("normal")[row, PRIMS.index(op)] = 2.0
    boosted = math.log(math.exp(2.0) / (math.exp(2.0) + len(PRIMS) - 1))
    assert alpha_score(net, g) == pytest.approx(-7 * math.log(len(PRIMS)) + boosted, rel=1e-6)


def test_forced_cell_equals_the_one_hot_mixture():
    net = _net().eval()
    g = sample_genotype(PRIMS, 2, seed=1)
    x = torch.randn(3, 1, 24, 24)
    ref = copy.deepcopy(net)
    with torch.no_grad():  # one-hot logits: the chosen op on the cell's edges, 'none' elsewhere
        for cell, pairs in (("normal", g.normal), ("reduce", g.reduce)):
            a = ref.alphas(cell)
            a.fill_(-1e4)
            chosen = {edge_list(2).index((k // 2, j)): PRIMS.index(op) for k, (op, j) in enumerate(pairs)}
            for e in range(a.shape[0]):
                a[e, chosen.get(e, PRIMS.index("none"))] = 0.0
    force_genotype(net, g)
    assert sorted(s for s in net.edge_state["normal"] if s == PRUNED) == [PRUNED] * (len(edge_list(2)) - 4)
    with torch.no_grad():
        assert torch.allclose(net(x), ref(x), atol=1e-5)
    with pytest.raises(Exception, match="not in the supernet's space"):
        force_genotype(net, Genotype([("sep_conv_5x5", 0)] * 4, [2, 3], g.reduce, [2, 3]))


def test_oneshot_accuracy_matches_a_hand_recalibrated_copy_and_restores_the_supernet():
    net = _net(2)
    g = sample_genotype(PRIMS, 2, seed=5)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 1, 28, 28), dtype=torch.uint8, generator=gen)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    # the reference: force, reset every BN, one train-mode pass over all images (batch >= N), eval
    ref = copy.deepcopy(net)
    force_genotype(ref, g)
    for m in ref.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    x = (images[..., 2:26, 2:26].float() / 255 - 0.5) / 0.25
    with torch.no_grad():
        ref.train()(x)
        pred = ref.eval()(x).argmax(1)
    assert oneshot_accuracy(net, g, images, pred, crop=24, batch_size=64) == pytest.approx(100.0)
    assert oneshot_accuracy(net, g, images, (pred + 1) % 7, crop=24, batch_size=64) == pytest.approx(0.0)
    # the supernet's decisions and statistics are as they were
    assert net.edge_state == {"normal": [UNDECIDED] * 5, "reduce": [UNDECIDED] * 5}
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
