"""Comparisons over seeds: the one place every grid and bench takes its statistics from.

A comparison of two methods over seeds answers three questions, and this module answers each
the same way wherever it is asked (the relabelling grid, search against random cells, any new
grid):

* **how large** the difference is: the mean difference with its two-sided 95 % Student-t
  interval (paired when both methods ran on the same seeds and data, else Welch's);
* **could it be chance**: an exact test that assumes nothing about the spread's shape: a
  sign-flip test for paired differences (every one of the 2^n sign patterns when n <= 16),
  a permutation test for two groups (every split when there are at most 50,000);
* **could the experiment have seen it**: the smallest true difference the t-test would detect
  with 80 % power at the 5 % level, given the measured spread and the number of seeds
  (noncentral t; :func:`mde_paired`, :func:`mde_two_sample`). A comparison that finds nothing
  says nothing about differences smaller than that.

Rankings (a proxy against retrained accuracy) get the same three answers: Kendall's τ with a
bootstrap interval (:func:`kendall_tau`, :func:`bootstrap_ci`), the smallest τ that n items
detect (:func:`tau_mde`), and the τ that training noise leaves to a perfect ranker
(:func:`tau_ceiling`).

    >>> c = paired([75.1, 74.0, 76.2], [73.0, 73.5, 74.9])
    >>> round(c.diff, 3), c.n
    (1.3, 3)
"""
from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np

__all__ = ["Comparison", "paired", "two_sample", "t_interval", "sign_flip_p", "permutation_p", "mde_paired",
           "mde_two_sample", "n_for_mde", "tau_mde", "tau_ceiling", "size_adjusted", "percentile_among",
           "kendall_tau", "spearman_rho", "bootstrap_ci", "binomial_se"]

ALTERNATIVES = ("two-sided", "greater", "less")


@dataclass(frozen=True)
class Comparison:
    """``a`` against ``b``: ``diff`` = mean(a) − mean(b) with its 95 % interval
    ``[low, high]``; ``p`` of the exact test (``alternative``: two-sided, or a > b for
    ``greater``); ``mde`` the smallest difference detectable at ``power`` (80 %) and 5 %
    two-sided; ``sd`` the spread it was computed from (of the paired differences, or the
    pooled one)."""

    kind: str            # "paired" or "two-sample"
    n: int               # pairs, or the size of a
    n_b: int             # pairs, or the size of b
    mean_a: float
    mean_b: float
    diff: float
    low: float
    high: float
    sd: float
    p: float
    test: str            # the exact test's name
    alternative: str
    mde: float
    power: float = 0.8

    @property
    def half_width(self) -> float:
        """Half the interval's width (NaN when it is undefined)."""
        return (self.high - self.low) / 2

    @property
    def excludes_zero(self) -> bool:
        """True when the whole 95 % interval lies on one side of 0."""
        return bool(self.low > 0 or self.high < 0)

    def as_dict(self) -> dict[str, Any]:
        """The fields and the derived ones, as plain values (NaN kept: callers write JSON with ``json_safe``)."""
        return {**asdict(self), "half_width": self.half_width, "excludes_zero": self.excludes_zero}

    def sentence(self, unit: str = "points") -> str:
        """``+1.30 points (95 % CI −0.41 to +3.01, p = 0.25 exact sign-flip, n = 3; detectable at 80 % power: 4.2)``."""
        def f(v: float) -> str:
            return "n/a" if not math.isfinite(v) else f"{v:+.2f}"
        n = f"n = {self.n}" if self.kind == "paired" else f"n = {self.n} vs {self.n_b}"
        mde = "n/a" if not math.isfinite(self.mde) else f"{self.mde:.2f}"
        return (f"{f(self.diff)} {unit} (95 % CI {f(self.low)} to {f(self.high)}, p = {self.p:.3g} {self.test}, "
                f"{n}; detectable at {round(100 * self.power)} % power: {mde})")


# ----------------------------------------------------------------------------- intervals
def _clean(values: Sequence[float]) -> np.ndarray:
    v = np.asarray([float(x) for x in values], dtype=np.float64)
    if not np.isfinite(v).all():
        raise ValueError("statistics need finite values (drop missing runs first)")
    return v


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of the two-sided Student-t interval (half-width NaN for one value)."""
    from scipy.stats import t

    v = _clean(values)
    if len(v) == 0:
        raise ValueError("t_interval of no values")
    m = float(v.mean())
    if len(v) < 2:
        return m, float("nan")
    sd = float(v.std(ddof=1))
    return m, float(t.ppf(0.5 + level / 2, len(v) - 1)) * sd / math.sqrt(len(v))


def binomial_se(acc_pct: float, n: int) -> float:
    """The standard error, in points, of an accuracy of ``acc_pct`` % measured on ``n`` faces:
    how much a test set of that size alone moves a figure."""
    p = float(acc_pct) / 100.0
    return 100.0 * math.sqrt(max(p * (1 - p), 0.0) / n) if n > 0 else float("nan")


# ----------------------------------------------------------------------------- exact tests
def _tail(null: np.ndarray, observed: float, alternative: str) -> float:
    eps = 1e-9 * max(1.0, abs(observed))
    if alternative == "greater":
        return float(np.mean(null >= observed - eps))
    if alternative == "less":
        return float(np.mean(null <= observed + eps))
    return float(np.mean(np.abs(null) >= abs(observed) - eps))


def sign_flip_p(diffs: Sequence[float], alternative: str = "two-sided", *, n_random: int = 100_000,
                seed: int = 0) -> float:
    """p-value of the mean of paired differences under the null that each difference's sign is
    a coin flip: exact over all 2^n patterns for n <= 16, else ``n_random`` seeded patterns
    (the observed one counted, so p >= 1/(n_random+1))."""
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative {alternative!r}: choose from {ALTERNATIVES}")
    d = _clean(diffs)
    n = len(d)
    if n == 0:
        return float("nan")
    observed = float(d.mean())
    if n <= 16:
        signs = 1 - 2 * ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1)
        return _tail(signs @ d / n, observed, alternative)
    rng = np.random.default_rng(seed)
    signs = rng.choice([-1.0, 1.0], size=(n_random, n))
    null = np.concatenate([[observed], signs @ d / n])
    return _tail(null, observed, alternative)


def permutation_p(a: Sequence[float], b: Sequence[float], alternative: str = "greater", *, n_random: int = 20_000,
                  seed: int = 0) -> float:
    """p-value of mean(a) − mean(b) under exchangeable group labels: exact over every split when
    there are at most 50,000, else ``n_random`` seeded permutations (the observed one counted).
    ``greater`` asks whether ``a`` beats ``b``."""
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative {alternative!r}: choose from {ALTERNATIVES}")
    a_, b_ = _clean(a), _clean(b)
    if len(a_) == 0 or len(b_) == 0:
        return float("nan")
    pooled = np.concatenate([a_, b_])
    k, n = len(a_), len(pooled)
    observed = float(a_.mean() - b_.mean())
    total = pooled.sum()
    if math.comb(n, k) <= 50_000:
        idx = np.array(list(itertools.combinations(range(n), k)), dtype=np.int64)
        sa = pooled[idx].sum(1)
        null = sa / k - (total - sa) / (n - k)
        return _tail(null, observed, alternative)
    rng = np.random.default_rng(seed)
    perms = np.argsort(rng.random((n_random, n)), axis=1)[:, :k]
    sa = pooled[perms].sum(1)
    null = np.concatenate([[observed], sa / k - (total - sa) / (n - k)])
    return _tail(null, observed, alternative)


# ----------------------------------------------------------------------------- power
def _t_power(nc: float, crit: float, df: int) -> float:
    """P(|T| > crit) for T noncentral t (df, nc), integrated over the chi-square of the
    denominator (scipy's ``nct`` returns NaN for small df and large nc)."""
    from scipy.integrate import quad
    from scipy.stats import chi2, norm

    def integrand(u: float) -> float:
        s = crit * math.sqrt(u / df)
        return float((norm.cdf(nc - s) + norm.cdf(-nc - s)) * chi2.pdf(u, df))

    lo, hi = chi2.ppf(1e-12, df), chi2.ppf(1 - 1e-12, df)
    return float(quad(integrand, lo, hi, limit=200, points=[df])[0])


def _mde(sd: float, scale: float, df: int, alpha: float, power: float) -> float:
    """Smallest δ with P(|T| > t_crit) >= power, T noncentral t with df and noncentrality δ/(sd·scale)."""
    from scipy.optimize import brentq
    from scipy.stats import t

    if df < 1 or not math.isfinite(sd):
        return float("nan")
    if sd == 0:
        return 0.0
    crit = float(t.ppf(1 - alpha / 2, df))

    def gap(delta: float) -> float:
        return _t_power(delta / (sd * scale), crit, df) - power

    hi = sd * scale * (crit + 10.0)
    while gap(hi) < 0:
        hi *= 2
    return float(brentq(gap, 0.0, hi, xtol=1e-6 * sd * scale))


def mde_paired(sd: float, n: int, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest mean paired difference a two-sided paired t-test at ``alpha`` detects with
    ``power``, for differences of standard deviation ``sd`` over ``n`` pairs (NaN for n < 2)."""
    return _mde(float(sd), 1.0 / math.sqrt(n), int(n) - 1, alpha, power) if n >= 2 else float("nan")


def mde_two_sample(sd: float, n_a: int, n_b: int, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """The same for two independent groups of sizes ``n_a`` and ``n_b`` with pooled standard
    deviation ``sd`` (pooled two-sample t-test)."""
    if n_a < 1 or n_b < 1 or n_a + n_b < 3:
        return float("nan")
    return _mde(float(sd), math.sqrt(1 / n_a + 1 / n_b), n_a + n_b - 2, alpha, power)


def n_for_mde(sd: float, target: float, *, paired: bool = True, n_other: int | None = None,
              alpha: float = 0.05, power: float = 0.8, max_n: int = 10_000) -> int | None:
    """The power analysis: the fewest seeds (pairs with ``paired``; else the size of the group
    being added, against ``n_other`` fixed, or two equal groups when ``n_other`` is None) at which
    :func:`mde_paired` / :func:`mde_two_sample` reaches ``target`` for spread ``sd``. None when
    ``max_n`` is not enough (or ``target`` is not positive)."""
    if not (target > 0 and math.isfinite(sd)):
        return None

    def mde(n: int) -> float:
        if paired:
            return mde_paired(sd, n, alpha=alpha, power=power)
        return mde_two_sample(sd, n, n if n_other is None else n_other, alpha=alpha, power=power)

    lo, hi = 2, 2
    while not mde(hi) <= target:  # the detectable difference falls as n grows: double, then bisect
        if hi >= max_n:
            return None
        lo, hi = hi, min(2 * hi, max_n)
    while lo < hi:
        mid = (lo + hi) // 2
        if mde(mid) <= target:
            hi = mid
        else:
            lo = mid + 1
    return hi


def tau_mde(n: int, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest Kendall τ that ``n`` pairs detect against τ = 0 (two-sided ``alpha``) with
    ``power``: (z₁₋α/₂ + z_power) times τ's standard deviation under independence,
    √(2(2n+5) / (9n(n−1))) (the normal approximation; NaN for n < 3)."""
    from scipy.stats import norm

    if n < 3:
        return float("nan")
    return float((norm.ppf(1 - alpha / 2) + norm.ppf(power)) * math.sqrt(2 * (2 * n + 5) / (9 * n * (n - 1))))


def tau_ceiling(sd_between: float, sd_seeds: float, seeds: float) -> float:
    """The Kendall τ that a perfect proxy (one that knows each cell's true accuracy) expects
    against cells' means over ``seeds`` trainings, when the cells truly differ by ``sd_between``
    and one cell's trainings by ``sd_seeds``: the means' reliability R = b² / (b² + s²/k), their
    correlation √R with the truth, and τ = (2/π)·asin(√R) (Greiner's relation, normal errors)."""
    vals = (sd_between, sd_seeds, seeds)
    if not all(math.isfinite(v) for v in vals) or sd_between < 0 or sd_seeds < 0 or seeds <= 0:
        return float("nan")
    noise = sd_seeds ** 2 / seeds
    if sd_between == 0:
        return 0.0
    return float(2 / math.pi * math.asin(math.sqrt(sd_between ** 2 / (sd_between ** 2 + noise))))


# ----------------------------------------------------------------------------- comparisons
def paired(a: Sequence[float], b: Sequence[float], *, alternative: str = "two-sided", power: float = 0.8) -> Comparison:
    """``a`` against ``b`` measured on the same seeds (``a[i]`` and ``b[i]`` share seed i)."""
    a_, b_ = _clean(a), _clean(b)
    if len(a_) != len(b_) or len(a_) == 0:
        raise ValueError(f"paired comparison needs two equally long, non-empty sequences ({len(a_)} and {len(b_)})")
    d = a_ - b_
    mean, half = t_interval(d)
    sd = float(d.std(ddof=1)) if len(d) > 1 else float("nan")
    return Comparison("paired", len(d), len(d), float(a_.mean()), float(b_.mean()), mean, mean - half, mean + half,
                      sd, sign_flip_p(d, alternative), "exact sign-flip" if len(d) <= 16 else "sign-flip",
                      alternative, mde_paired(sd, len(d), power=power), power)


def two_sample(a: Sequence[float], b: Sequence[float], *, alternative: str = "greater",
               power: float = 0.8) -> Comparison:
    """``a`` against ``b`` measured on different units (searched cells against random ones):
    Welch's interval, the permutation test, the pooled-t detectable difference."""
    from scipy.stats import t

    a_, b_ = _clean(a), _clean(b)
    if len(a_) == 0 or len(b_) == 0:
        raise ValueError("two_sample needs two non-empty groups")
    na, nb = len(a_), len(b_)
    diff = float(a_.mean() - b_.mean())
    va = float(a_.var(ddof=1)) if na > 1 else 0.0
    vb = float(b_.var(ddof=1)) if nb > 1 else 0.0
    se = math.sqrt(va / na + vb / nb)
    if se > 0 and na > 1 and nb > 1:
        df = (va / na + vb / nb) ** 2 / ((va / na) ** 2 / (na - 1) + (vb / nb) ** 2 / (nb - 1))
        half = float(t.ppf(0.975, df)) * se
    elif se == 0 and na > 1 and nb > 1:
        half = 0.0
    else:
        # one group of one: its own spread is unknown; take the other's (as the pooled t does)
        half = float(t.ppf(0.975, max(na + nb - 2, 1))) * math.sqrt(max(va, vb) * (1 / na + 1 / nb)) \
            if na + nb > 2 else float("nan")
    pooled_sd = math.sqrt(((na - 1) * va + (nb - 1) * vb) / (na + nb - 2)) if na + nb > 2 else float("nan")
    exact = math.comb(na + nb, na) <= 50_000
    return Comparison("two-sample", na, nb, float(a_.mean()), float(b_.mean()), diff, diff - half, diff + half,
                      pooled_sd, permutation_p(a_, b_, alternative), "exact permutation" if exact else "permutation",
                      alternative, mde_two_sample(pooled_sd, na, nb, power=power), power)


def size_adjusted(a: Sequence[float], b: Sequence[float], size_a: Sequence[float],
                  size_b: Sequence[float]) -> dict[str, Any]:
    """``a`` against ``b`` at equal size: the analysis of covariance y = c + slope·size + diff·[in a]
    by least squares over both groups, with ``diff``'s two-sided 95 % t-interval and one-sided p
    (a > b), the slope (per unit of size) with its interval, and how many of ``a`` lie outside
    ``b``'s size range (where the line is extrapolated, not measured)."""
    from scipy.stats import t

    y = np.asarray([*a, *b], dtype=float)
    size = np.asarray([*size_a, *size_b], dtype=float)
    if len(a) != len(size_a) or len(b) != len(size_b) or not (np.isfinite(y).all() and np.isfinite(size).all()):
        raise ValueError("size_adjusted needs one finite size per finite value")
    x = np.column_stack([np.ones(len(y)), size, np.r_[np.ones(len(size_a)), np.zeros(len(size_b))]])
    df = len(y) - 3
    lo_b, hi_b = (min(size_b), max(size_b)) if len(size_b) else (float("nan"), float("nan"))
    out: dict[str, Any] = {"n_a": len(size_a), "n_b": len(size_b), "df": df,
                           "outside_b_range": int(sum(not lo_b <= s <= hi_b for s in size_a))}
    if df < 1 or np.linalg.matrix_rank(x) < 3:
        return {**out, **{k: float("nan") for k in ("diff", "low", "high", "p", "slope", "slope_low", "slope_high")}}
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    resid = y - x @ coef
    se = np.sqrt(np.diag(float(resid @ resid) / df * np.linalg.inv(x.T @ x)))
    crit = float(t.ppf(0.975, df))
    diff, slope = float(coef[2]), float(coef[1])
    p = float(t.sf(diff / se[2], df)) if se[2] > 0 else (0.0 if diff > 0 else 1.0)
    return {**out, "diff": diff, "low": diff - crit * float(se[2]), "high": diff + crit * float(se[2]), "p": p,
            "slope": slope, "slope_low": slope - crit * float(se[1]), "slope_high": slope + crit * float(se[1])}


# ----------------------------------------------------------------------------- ranks
def percentile_among(value: float, others: Sequence[float]) -> float:
    """% of ``others`` strictly below ``value``, ties counting half (the mid-rank percentile)."""
    if not len(others):
        return float("nan")
    o = _clean(others)
    return 100.0 * (float((o < value).sum()) + 0.5 * float((o == value).sum())) / len(o)


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's τ-b of two equally long sequences (scipy's; NaN when one is constant)."""
    from scipy.stats import kendalltau

    if len(a) != len(b):
        raise ValueError("kendall_tau needs two sequences of the same length")
    with warnings.catch_warnings():  # a constant sequence: NaN is the answer, not a warning
        warnings.simplefilter("ignore")
        return float(kendalltau(a, b).statistic)


def spearman_rho(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's ρ (Pearson's correlation of mid-ranks; NaN when one is constant)."""
    from scipy.stats import spearmanr

    if len(a) != len(b):
        raise ValueError("spearman_rho needs two sequences of the same length")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(spearmanr(a, b).statistic)


def bootstrap_ci(a: Sequence[float], b: Sequence[float],
                 statistic: Callable[[Sequence[float], Sequence[float]], float] = kendall_tau, *, n_boot: int = 2000,
                 level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """``statistic(a, b)`` and its percentile bootstrap interval over resampled pairs (seeded):
    ``(value, low, high)``. Resamples where the statistic is undefined are left out."""
    a_, b_ = _clean(a), _clean(b)
    if len(a_) != len(b_) or len(a_) < 3:
        return float(statistic(a_, b_)) if len(a_) == len(b_) and len(a_) else float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a_), size=(n_boot, len(a_)))
    vals = np.array([statistic(a_[i], b_[i]) for i in idx])
    vals = vals[np.isfinite(vals)]
    if len(vals) == 0:
        return float(statistic(a_, b_)), float("nan"), float("nan")
    lo, hi = np.quantile(vals, [(1 - level) / 2, (1 + level) / 2])
    return float(statistic(a_, b_)), float(lo), float(hi)
