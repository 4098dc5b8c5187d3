"""SGAS scores and decisions on hand-made architecture weights, pruning, schedule, state."""
import math

import pytest
import torch

from nas.models.genotypes import validate_genotype
from nas.search.sgas import SGAS, edge_scores, histogram_intersection, normalize
from nas.search.supernet import PRUNED, UNDECIDED, SearchNetwork

PRIMS = ["none", "max_pool_3x3", "skip_connect"]


def H2(p):  # normalised entropy of a 2-way distribution (log base 2)
    return -(p * math.log(p) + (1 - p) * math.log(1 - p)) / math.log(2)


def small(steps=2, **kw):
    torch.manual_seed(0)
    return SearchNetwork(C=4, num_classes=7, layers=3, primitives=PRIMS, steps=steps, multiplier=steps)


def set_probs(m, cell, rows):
    """alphas = log(p): softmax gives back p exactly."""
    with torch.no_grad():
        m.alphas(cell).copy_(torch.log(torch.tensor(rows, dtype=torch.float32)))


ROWS = [[0.5, 0.25, 0.25],          # I=0.5, q=(.5,.5)   H=1
        [0.2, 0.72, 0.08],          # I=0.8, q=(.9,.1)
        [0.1, 0.891, 0.009],        # I=0.9, q=(.99,.01)
        [0.3, 0.07, 0.63],          # I=0.7, q=(.1,.9)
        [0.4, 0.24, 0.36]]          # I=0.6, q=(.4,.6)


def test_normalize_and_intersection():
    assert normalize(torch.tensor([1.0, 3.0, 2.0])).tolist() == [0.0, 1.0, 0.5]
    assert normalize(torch.tensor([2.0, 2.0])).tolist() == [0.0, 0.0]
    a = torch.tensor([[0.5, 0.5], [0.9, 0.1]])
    b = torch.tensor([[0.2, 0.8], [0.9, 0.1]])
    assert torch.allclose(histogram_intersection(a, b), torch.tensor([0.7, 1.0]))


def test_criterion_1_hand_computed():
    imp = [0.5, 0.8, 0.9, 0.7, 0.6]
    cert = [1 - 1.0, 1 - H2(0.9), 1 - H2(0.99), 1 - H2(0.9), 1 - H2(0.6)]
    n_imp = [(v - 0.5) / 0.4 for v in imp]
    n_cert = [(v - min(cert)) / (max(cert) - min(cert)) for v in cert]
    expect = [a * b for a, b in zip(n_imp, n_cert)]
    s = edge_scores(torch.log(torch.tensor(ROWS)), none_index=0)
    assert torch.allclose(s["importance"], torch.tensor(imp, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(s["score"], torch.tensor(expect, dtype=torch.float64), atol=1e-6)
    # by hand: edge 2 wins (score 1), then edge 1 (0.75 * ...), then edge 3
    assert int(torch.argmax(s["score"])) == 2


def test_criterion_2_hand_computed():
    prev = [torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.5, 0.5], [0.5, 0.5], [0.5, 0.5]]),
            torch.tensor([[0.5, 0.5], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.4, 0.6]])]
    s = edge_scores(torch.log(torch.tensor(ROWS)), none_index=0, history=prev)
    q1 = [0.5, 0.9, 0.99, 0.1, 0.4]
    hist0 = [min(q, 0.5) + min(1 - q, 0.5) for q in q1]
    hist1 = [1.0, 1.0, 0.01, 1.0, 1.0]
    hist = [(a + b) / 2 for a, b in zip(hist0, hist1)]
    assert torch.allclose(s["histogram"], torch.tensor(hist, dtype=torch.float64), atol=1e-6)
    c1 = edge_scores(torch.log(torch.tensor(ROWS)), none_index=0)["score"]
    lo, hi = min(hist), max(hist)
    expect = c1 * torch.tensor([(h - lo) / (hi - lo) for h in hist], dtype=torch.float64)
    assert torch.allclose(s["score"], expect, atol=1e-6)
    # the unstable edge 2 (its distribution flipped) loses its lead to edge 1
    assert int(torch.argmax(s["score"])) == 1
    empty = edge_scores(torch.log(torch.tensor(ROWS)), none_index=0, history=[])
    assert empty["score"].abs().sum() == 0  # no history yet: SGAS's zero term


def test_decision_op_and_pruning():
    m = small()
    sg = SGAS(m, warmup_dec_epoch=0, decision_freq=1, batch_size=10, batch_increase=4)
    set_probs(m, "normal", ROWS)
    set_probs(m, "reduce", ROWS)
    made = sg.end_of_epoch(0)
    assert [(d["cell"], d["edge"], d["op"]) for d in made] == [("normal", 2, "max_pool_3x3"),
                                                             ("reduce", 2, "max_pool_3x3")]
    assert sg.batch_size == 14
    assert m.edge_state["normal"] == [UNDECIDED, UNDECIDED, 1, UNDECIDED, UNDECIDED]
    # edge 2 is frozen now; next best undecided is edge 1 (q=(.9,.1))
    made = sg.end_of_epoch(1)
    assert made[0]["edge"] == 1 and m.edge_state["normal"][1] == 1
    # then edge 3 -> skip_connect (q=(.1,.9)); node 1 (edges 2,3,4) has two inputs: edge 4 pruned
    made = sg.end_of_epoch(2)
    assert made[0]["edge"] == 3 and made[0]["op"] == "skip_connect" and made[0]["pruned"] == [4]
    assert m.edge_state["normal"] == [UNDECIDED, 1, 1, 2, PRUNED]
    made = sg.end_of_epoch(3)
    assert made[0]["edge"] == 0 and sg.complete and sg.batch_size == 26
    assert sg.end_of_epoch(4) == [] and sg.batch_size == 26
    g = sg.forced_genotype()
    assert g.normal == [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("max_pool_3x3", 0), ("skip_connect", 1)]
    validate_genotype(g)


def test_forced_genotype_top2_by_importance():
    m = small()
    sg = SGAS(m)
    set_probs(m, "normal", ROWS)
    g = sg.forced_genotype()
    # node 0: edges 0 (I=.5) and 1 (I=.8); node 1: edges 2 (.9) and 3 (.7) beat 4 (.6)
    assert g.normal == [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("max_pool_3x3", 0), ("skip_connect", 1)]
    m.edge_state["normal"][4] = 2  # a decided edge always stays
    assert sg.forced_genotype().normal[2:] == [("max_pool_3x3", 0), ("skip_connect", 2)]


def test_default_schedule_is_50_epochs():
    torch.manual_seed(0)
    m = SearchNetwork(C=4, num_classes=7, layers=3, primitives="darts")
    sg = SGAS(m, batch_size=24, batch_increase=8, use_history=True)
    assert sg.num_decisions == 8 and sg.total_epochs == 50
    decision_epochs = []
    for epoch in range(sg.total_epochs):
        with torch.no_grad():  # architecture weights drift as if learning
            m.alphas_normal.add_(0.3 * torch.randn_like(m.alphas_normal))
            m.alphas_reduce.add_(0.3 * torch.randn_like(m.alphas_reduce))
        if sg.end_of_epoch(epoch):
            decision_epochs.append(epoch)
        assert len(sg.history["normal"]) == min(epoch + 1, 4)
    assert decision_epochs == [9, 14, 19, 24, 29, 34, 39, 44]
    assert sg.complete and sg.batch_size == 24 + 8 * 8
    for cell in ("normal", "reduce"):
        st = m.edge_state[cell]
        for a, b in [(0, 2), (2, 5), (5, 9), (9, 14)]:
            assert sum(s >= 0 for s in st[a:b]) == 2 and all(s != UNDECIDED for s in st[a:b])
    validate_genotype(sg.forced_genotype())
    fixed = SGAS(m, batch_increase=0)
    assert fixed.total_epochs == 50


def test_state_roundtrip():
    m = small()
    sg = SGAS(m, warmup_dec_epoch=0, use_history=True)
    set_probs(m, "normal", ROWS)
    sg.end_of_epoch(0)
    other = SGAS(small(), warmup_dec_epoch=0, use_history=True)
    other.load_state_dict(sg.state_dict())
    assert other.batch_size == sg.batch_size and other.decisions == sg.decisions
    assert torch.equal(other.history["normal"][0], sg.history["normal"][0])


def test_second_order_sgas_runs_past_its_last_decision(tmp_path):
    """With every edge decided no architecture weight enters the forward pass; the second-order
    step used to ask autograd for their gradient and crash in SGAS's last epochs (found by the
    device script, bench/gpu.py). The architecture step is skipped there, its loss still reported."""
    from nas.apps import search
    from nas.runtime.checkpoint import read_csv_rows
    from tests.fer_files import small_fer2013, write_fer2013_csv

    csv = write_fer2013_csv(tmp_path / "d" / "fer2013.csv", *small_fer2013((28, 7, 7), seed=1))
    search.main(search.get_args_parser().parse_args(
        ["--data", str(csv), "--search_space", "conv_1x1,skip_connect,max_pool_3x3,sep_conv_3x3", "--init_channels",
         "2", "--layers", "3", "--batch_size", "7", "--crop", "12", "--strategy", "sgas", "--warmup_dec_epoch", "0",
         "--decision_freq", "1", "--epochs_after_last_decision", "2", "--batch_increase", "0", "--unrolled",
         "--save", str(tmp_path / "r"), "--device", "cpu", "--plots", "False", "--progress", "False"]))
    rows = read_csv_rows(tmp_path / "r" / "metrics.csv")
    assert len(rows) == 10 and int(rows[-1]["n_decided"]) == 16
    assert all(float(r["arch_loss"]) > 0 for r in rows[-2:])


def test_alpha_entropy_by_hand_and_in_metrics(tmp_path):
    """1 for uniform architecture weights, near 0 when one op takes each edge, undecided edges only;
    written per epoch (before that epoch's decisions) into metrics.csv."""
    import math

    import torch

    from nas.apps import search
    from nas.models.ops import search_space
    from nas.runtime.checkpoint import read_csv_rows
    from nas.search.supernet import SearchNetwork
    from tests.fer_files import small_fer2013, write_fer2013_csv

    m = SearchNetwork(C=2, num_classes=7, layers=3, primitives=search_space("conv_1x1,skip_connect,max_pool_3x3"))
    with torch.no_grad():
        m.alphas_normal.zero_()
        m.alphas_reduce.zero_()
    assert m.alpha_entropy() == pytest.approx(1.0)
    with torch.no_grad():
        m.alphas_normal[:, 0] = 50.0
        m.alphas_reduce[:, 0] = 50.0
    assert m.alpha_entropy() < 1e-6
    # two ops at equal weight on every edge: log 2 / log 3
    with torch.no_grad():
        m.alphas_normal[:, 1] = 50.0
        m.alphas_reduce[:, 1] = 50.0
    assert m.alpha_entropy() == pytest.approx(math.log(2) / math.log(3), rel=1e-5)
    m.edge_state["normal"] = [0] * len(m.edge_state["normal"])
    m.edge_state["reduce"] = [0] * len(m.edge_state["reduce"])
    assert math.isnan(m.alpha_entropy())  # every edge decided

    csv = write_fer2013_csv(tmp_path / "d" / "fer2013.csv", *small_fer2013((28, 7, 7), seed=1))
    search.main(search.get_args_parser().parse_args(
        ["--data", str(csv), "--search_space", "conv_1x1,skip_connect,max_pool_3x3,sep_conv_3x3", "--init_channels",
         "2", "--layers", "3", "--batch_size", "7", "--crop", "12", "--strategy", "darts", "--epochs", "2",
         "--save", str(tmp_path / "r"), "--device", "cpu", "--plots", "False", "--progress", "False"]))
    values = [float(r["alpha_entropy"]) for r in read_csv_rows(tmp_path / "r" / "metrics.csv")]
    assert len(values) == 2 and all(0.5 < v <= 1.0 for v in values)
