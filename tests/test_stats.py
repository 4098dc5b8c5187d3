"""nas.runtime.stats, the one statistics helper of the benches, against hand computations,
scipy's own tests and a published power table."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from nas.runtime import stats


def test_t_interval_by_hand():
    m, half = stats.t_interval([1.0, 2.0, 3.0])
    assert m == 2.0 and half == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)  # sd 1, t(0.975, 2)
    assert math.isnan(stats.t_interval([5.0])[1])
    with pytest.raises(ValueError):
        stats.t_interval([1.0, float("nan")])


def test_sign_flip_is_exact_over_every_pattern():
    # [1, 2, 3]: 8 sign patterns with means (±1 ±2 ±3)/3; only ±(1+2+3) reach |mean| >= 2
    assert stats.sign_flip_p([1, 2, 3]) == pytest.approx(2 / 8)
    assert stats.sign_flip_p([1, 2, 3], "greater") == pytest.approx(1 / 8)
    assert stats.sign_flip_p([1, 2, 3], "less") == pytest.approx(1.0)
    # [1, -1]: patterns give means 0, 1, -1, 0: |mean| >= 0 for all
    assert stats.sign_flip_p([1, -1]) == pytest.approx(1.0)
    # beyond 16 pairs it samples, and agrees with the exact tail: 20 equal positive differences
    p = stats.sign_flip_p([1.0] * 20, "greater", n_random=20_000)
    assert p == pytest.approx(1 / 20_001, abs=1e-4)


def test_permutation_exact_by_hand():
    # a = {3}, b = {1, 2}: the three splits give 1.5, 0, -1.5; one of three is >= the observed 1.5
    assert stats.permutation_p([3.0], [1.0, 2.0]) == pytest.approx(1 / 3)
    assert stats.permutation_p([1.0, 2.0], [3.0, 4.0]) == pytest.approx(1.0)
    assert stats.permutation_p([3.0, 4.0], [1.0, 2.0]) == pytest.approx(1 / 6)
    assert stats.permutation_p([3.0, 4.0], [1.0, 2.0], "two-sided") == pytest.approx(2 / 6)
    # the sampled path (C(33, 3) = 5456 splits is exact; C(43, 3) > 50,000 samples) agrees
    p = stats.permutation_p([5.0] * 3, [1.0] * 40, n_random=20_000, seed=1)
    assert p == pytest.approx(1 / math.comb(43, 3), abs=3e-4)


def test_power_matches_a_published_table_and_simulation():
    # G*Power, one-sample (paired) t-test, two-sided alpha 0.05, power 0.8: n = 10 needs d = 0.996
    assert stats.mde_paired(1.0, 10) == pytest.approx(0.996, abs=0.002)
    # scales with the spread; shrinks like 1/sqrt(n) towards the normal value for large n
    assert stats.mde_paired(2.5, 10) == pytest.approx(2.5 * stats.mde_paired(1.0, 10), rel=1e-5)
    normal = (sps.norm.ppf(0.975) + sps.norm.ppf(0.8)) / math.sqrt(400)
    assert normal < stats.mde_paired(1.0, 400) < normal * 1.01
    assert math.isnan(stats.mde_paired(1.0, 1)) and stats.mde_paired(0.0, 5) == 0.0
    # two groups: power of the pooled t-test at the detectable difference is 80 % (seeded simulation)
    d = stats.mde_two_sample(1.0, 3, 30)
    x = np.random.default_rng(0).normal(0, 1, (20_000, 33))
    x[:, :3] += d
    power = (sps.ttest_ind(x[:, :3], x[:, 3:], axis=1).pvalue < 0.05).mean()
    assert power == pytest.approx(0.8, abs=0.015)


def test_paired_comparison_fields():
    a, b = [75.0, 76.0, 78.0], [74.0, 74.0, 75.0]  # differences 1, 2, 3
    c = stats.paired(a, b)
    assert c.kind == "paired" and c.n == 3 and c.diff == pytest.approx(2.0)
    assert c.half_width == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6) and c.sd == pytest.approx(1.0)
    assert c.p == pytest.approx(0.25) and c.mde == pytest.approx(stats.mde_paired(1.0, 3))
    assert not c.excludes_zero and "exact sign-flip" in c.sentence()
    with pytest.raises(ValueError):
        stats.paired([1.0], [1.0, 2.0])


def test_two_sample_interval_is_welchs():
    a, b = [80.0, 81.5, 82.0, 79.0], [75.0, 76.0, 77.0, 78.0, 74.5]
    c = stats.two_sample(a, b)
    ref = sps.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (c.low, c.high) == pytest.approx((ref.low, ref.high))
    assert c.p == pytest.approx(stats.permutation_p(a, b, "greater")) and c.excludes_zero


def test_ranks_and_bootstrap():
    assert stats.percentile_among(5.0, [1, 2, 3, 4]) == 100.0
    assert stats.percentile_among(2.0, [1, 2, 3, 4]) == pytest.approx(100 * 1.5 / 4)
    assert math.isnan(stats.percentile_among(1.0, []))
    assert stats.kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    assert stats.spearman_rho([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert math.isnan(stats.kendall_tau([1, 1, 1], [1, 2, 3]))
    x, y = list(range(12)), [0, 2, 1, 3, 5, 4, 6, 8, 7, 9, 11, 10]
    v, lo, hi = stats.bootstrap_ci(x, y, seed=3)
    assert v == pytest.approx(stats.kendall_tau(x, y)) and lo < v <= hi <= 1.0
    assert stats.bootstrap_ci(x, y, seed=3) == (v, lo, hi)  # seeded


def test_binomial_standard_error():
    # 300 faces at 75 %: 2.5 points, the figure issue 32 starts from
    assert stats.binomial_se(75.0, 300) == pytest.approx(2.5, abs=0.01)
    assert stats.binomial_se(75.0, 3000) == pytest.approx(0.79, abs=0.01)


def test_n_for_mde_is_the_power_analysis_of_g_power():
    """G*Power 3.1 (two-sided, alpha 0.05, power 0.8): a paired t-test needs 10 pairs for
    d = 1 (its detectable d at 10 is 0.996), a two-sample t-test 17 per group."""
    from nas.runtime.stats import mde_paired, n_for_mde

    assert n_for_mde(1.0, 1.0) == 10 and n_for_mde(2.0, 2.0) == 10           # scale-free
    assert n_for_mde(1.0, 1.0, paired=False) == 17
    n = n_for_mde(1.3, 0.5)
    assert mde_paired(1.3, n) <= 0.5 < mde_paired(1.3, n - 1)                # the fewest, not just enough
    # against a fixed group of 3, adding seeds to the other side cannot reach a small target
    assert n_for_mde(2.0, 1.5, paired=False, n_other=3) is None
    assert n_for_mde(1.0, 0.0) is None


def _taus(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's τ of each row pair (no ties: continuous draws), by its definition."""
    n = x.shape[1]
    sx, sy = np.sign(x[:, :, None] - x[:, None, :]), np.sign(y[:, :, None] - y[:, None, :])
    return (sx * sy).sum((1, 2)) / (n * (n - 1))


def test_tau_mde_by_hand_and_by_simulation():
    # 32 cells: τ's null SD is sqrt(2*69 / (9*32*31)) = 0.12433, times 1.95996 + 0.84162
    assert stats.tau_mde(32) == pytest.approx(0.12433 * 2.80158, abs=2e-4)
    assert math.isnan(stats.tau_mde(2)) and stats.tau_mde(100) < stats.tau_mde(32)
    # at that τ (bivariate normal, r = sin(πτ/2)) the z-test on τ rejects in about 80 % of draws;
    # a little more, as τ varies less away from 0 than under independence
    n, t = 32, stats.tau_mde(32)
    r = math.sin(math.pi * t / 2)
    z = np.random.default_rng(0).normal(size=(4000, 2, n))
    tau = _taus(z[:, 0], r * z[:, 0] + math.sqrt(1 - r * r) * z[:, 1])
    assert tau.mean() == pytest.approx(t, abs=0.01)
    assert 0.79 <= (np.abs(tau) / (t / 2.80158) > 1.96).mean() <= 0.87


def test_tau_ceiling_is_what_a_perfect_proxy_reaches():
    assert stats.tau_ceiling(1.0, 0.0, 2) == 1.0 and stats.tau_ceiling(0.0, 1.0, 2) == 0.0
    # equal spread between cells and in their means: R = 1/2, τ = (2/π) asin(√½) = 1/2
    assert stats.tau_ceiling(1.0, math.sqrt(2), 2) == pytest.approx(0.5)
    assert math.isnan(stats.tau_ceiling(float("nan"), 1.0, 2)) and math.isnan(stats.tau_ceiling(1.0, 1.0, 0))
    # simulated: the true accuracies against their means over two noisy trainings
    rng = np.random.default_rng(1)
    b, s, k = 0.34, 0.49, 2
    q = rng.normal(0, b, (4000, 32))
    m = q + rng.normal(0, s / math.sqrt(k), (4000, 32))
    assert _taus(q, m).mean() == pytest.approx(stats.tau_ceiling(b, s, k), abs=0.01)


def test_size_adjusted_against_its_hand_cases_and_frisch_waugh():
    # exact lines: random cells on y = 90 + 0.1·size, searched ones 1.5 above it, two out of range
    size_b = [40.0, 42, 44, 46, 48, 50]
    b = [90 + 0.1 * x for x in size_b]
    size_a = [47.0, 55, 60]
    a = [91.5 + 0.1 * x for x in size_a]
    r = stats.size_adjusted(a, b, size_a, size_b)
    assert r["diff"] == pytest.approx(1.5) and r["slope"] == pytest.approx(0.1) and r["outside_b_range"] == 2
    assert r["df"] == 6 and r["p"] < 1e-6
    # noisy: the same diff and standard error by partialling size out first (Frisch–Waugh–Lovell)
    rng = np.random.default_rng(0)
    size_b = list(rng.uniform(40, 54, 30))
    b = list(92 + 0.02 * np.asarray(size_b) + rng.normal(0, 0.5, 30))
    size_a = [47.1, 58.7, 60.2]
    a = [93.7, 93.9, 92.9]
    r = stats.size_adjusted(a, b, size_a, size_b)
    y, s = np.r_[a, b], np.r_[size_a, size_b]
    g = np.r_[np.ones(3), np.zeros(30)]
    base = np.column_stack([np.ones(33), s])

    def partial(v):
        return v - base @ np.linalg.lstsq(base, v, rcond=None)[0]

    ry, rg = partial(y), partial(g)
    diff = float(ry @ rg / (rg @ rg))
    rss = float(((ry - diff * rg) ** 2).sum())
    se = math.sqrt(rss / 30 / float(rg @ rg))
    assert r["diff"] == pytest.approx(diff) and r["df"] == 30
    assert r["high"] - r["diff"] == pytest.approx(sps.t.ppf(0.975, 30) * se)
    assert r["p"] == pytest.approx(sps.t.sf(diff / se, 30))
    with pytest.raises(ValueError, match="one finite size per finite value"):
        stats.size_adjusted([1.0], [2.0, 3.0], [1.0, 2.0], [1.0])
    assert math.isnan(stats.size_adjusted([1.0], [2.0, 3.0], [1.0], [1.0, 2.0])["diff"])   # no residual df
