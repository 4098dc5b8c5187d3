"""Architecture step: second-order gradient against exact double backward; frozen edges; complexity term."""
import torch
import torch.nn.functional as F
from torch.func import functional_call

from nas.search.architect import Architect, complexity_costs
from nas.models.ops import op_param_count
from nas.search.supernet import PRUNED, SearchNetwork


SMALL = ["none", "max_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3"]


def _setup(dtype=torch.float64, primitives=SMALL, **kw):
    torch.manual_seed(0)
    m = SearchNetwork(C=4, num_classes=7, layers=3, primitives=primitives, **kw).to(dtype)
    g = torch.Generator().manual_seed(1)
    xt, xv = (torch.randn(6, 1, 8, 8, generator=g, dtype=dtype) for _ in range(2))
    yt, yv = (torch.randint(0, 7, (6,), generator=g) for _ in range(2))
    opt = torch.optim.SGD(m.weight_parameters(), lr=0.1, momentum=0.9, weight_decay=3e-4)
    F.cross_entropy(m(xt), yt).backward()  # one real step so that momentum buffers exist
    opt.step()
    opt.zero_grad()
    return m, opt, xt, yt, xv, yv


def _exact_second_order(m, opt, xt, yt, xv, yv, eta, complexity=None):
    """grad_a L_val(w - eta (mom*v + grad_w L_train(w, a) + wd*w), a) by double backward."""
    named = m.named_weight_parameters()
    buffers = {n: b.clone() for n, b in m.named_buffers()}
    w = {n: p.detach().clone().requires_grad_(True) for n, p in named}
    lt = F.cross_entropy(functional_call(m, {**w, **buffers}, (xt,)), yt)
    grads = torch.autograd.grad(lt, list(w.values()), create_graph=True, allow_unused=True)
    params = dict(named)
    w_new = {}
    for (n, p), g in zip(w.items(), grads):
        buf = opt.state[params[n]]["momentum_buffer"]
        w_new[n] = p - eta * ((0 if g is None else g) + 3e-4 * p + 0.9 * buf)
    lv = F.cross_entropy(functional_call(m, {**w_new, **buffers}, (xv,)), yv)
    if complexity is not None:
        lv = lv + complexity()
    exact = torch.autograd.grad(lv, m.arch_parameters())
    first = torch.autograd.grad(F.cross_entropy(functional_call(m, {**w, **buffers}, (xv,)), yv),
                                m.arch_parameters())
    return exact, first


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def test_second_order_matches_exact_double_backward():
    m, opt, xt, yt, xv, yv = _setup()
    eta = 0.5
    # A small finite-difference radius: ReLU and max-pool kinks make DARTS's r=0.01 a rough
    # approximation; in the limit the finite difference must equal the exact mixed derivative.
    arch = Architect(m, unrolled=True, hvp_r=1e-6)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    _, grads = arch.unrolled_grads(xt, yt, xv, yv, eta, opt)
    exact, first = _exact_second_order(m, opt, xt, yt, xv, yv, eta)
    for g, e, f in zip(grads, exact, first):
        assert _rel(g, e) < 1e-2
        assert _rel(f, e) > 0.1  # the second-order term matters here: the check has teeth
    after = m.state_dict()
    for k, v in before.items():  # virtual steps touch neither weights nor BN statistics
        assert torch.equal(v, after[k]), k


def test_second_order_with_complexity_term():
    m, opt, xt, yt, xv, yv = _setup()
    arch = Architect(m, unrolled=True, hvp_r=1e-6, complexity_weight=0.7)
    _, grads = arch.unrolled_grads(xt, yt, xv, yv, 0.3, opt)
    exact, _ = _exact_second_order(m, opt, xt, yt, xv, yv, 0.3, complexity=lambda: 0.7 * arch.complexity_loss())
    for g, e in zip(grads, exact):
        assert _rel(g, e) < 1e-2


def test_complexity_loss_hand_computed():
    torch.manual_seed(0)
    m = SearchNetwork(C=4, num_classes=7, layers=3, primitives="darts")
    arch = Architect(m, complexity_weight=1.0)
    costs = [op_param_count(p, 12) for p in m.primitives]
    assert costs == [0, 0, 0, 0, 504, 888, 252, 444]
    torch.testing.assert_close(complexity_costs(m.primitives), torch.tensor(costs) / sum(costs))
    with torch.no_grad():
        m.alphas_normal.zero_()
        m.alphas_reduce.zero_()
        m.alphas_reduce[3, 5] = 20.0  # that edge is (almost) surely sep_conv_5x5
    expect = 27 * (1 / 8) + 888 / 2088  # 27 uniform edges + one sep_conv_5x5 edge
    assert abs(float(arch.complexity_loss().detach()) - expect) < 1e-4


def test_first_order_step_and_frozen_edges():
    m, opt, xt, yt, xv, yv = _setup(torch.float32)
    m.edge_state["normal"][0] = 4
    m.edge_state["normal"][3] = PRUNED
    m.edge_state["reduce"][13] = 1
    arch = Architect(m, arch_learning_rate=0.1, arch_weight_decay=1e-3)
    # an earlier step on every row gives Adam momentum that would keep moving frozen rows
    m.alphas_normal.grad = torch.ones_like(m.alphas_normal)
    m.alphas_reduce.grad = torch.ones_like(m.alphas_reduce)
    arch.optimizer.step()
    before = [a.detach().clone() for a in m.arch_parameters()]
    expect = torch.autograd.grad(F.cross_entropy(m(xv), yv), m.arch_parameters())
    arch.step(xt, yt, xv, yv, 0.1, opt)
    an, ar = m.alphas_normal.detach(), m.alphas_reduce.detach()
    assert torch.equal(an[0], before[0][0]) and torch.equal(an[3], before[0][3])
    assert torch.equal(ar[13], before[1][13])
    assert not torch.equal(an[1], before[0][1]) and not torch.equal(ar[0], before[1][0])
    assert m.alphas_normal.grad[0].abs().sum() == 0
    torch.testing.assert_close(m.alphas_normal.grad[5], expect[0][5])


def test_unrolled_step_runs_float32():
    m, opt, xt, yt, xv, yv = _setup(torch.float32)
    arch = Architect(m, unrolled=True)
    before = m.alphas_normal.detach().clone()
    loss, bad = arch.step(xt, yt, xv, yv, 0.025, opt)
    assert torch.isfinite(loss) and float(bad) == 0.0 and not torch.equal(before, m.alphas_normal.detach())
