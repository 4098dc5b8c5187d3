"""What the experiment benchmarks share (bench/relabel_grid.py, bench/nas_eval.py): idempotent
runs of a toolkit command, results CSV rows, and the statistics of their reports."""
from __future__ import annotations

import itertools
import math
import platform
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["cpu_model", "run_app", "run_or_resume", "num", "t_interval", "percentile_among", "permutation_test", "read_rows"]


def cpu_model(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The CPU's model name (Linux's /proc/cpuinfo; else what :mod:`platform` knows). Speed
    figures go with it: this project's 2-core machine has been an AMD EPYC on some days and an
    Intel Xeon on others, and the same code ran about twice as fast on some days as on others."""
    try:
        with open(cpuinfo, encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_app(app: Any, argv: Sequence[Any]) -> dict[str, Any]:
    """A command of ``nas.apps`` in this process (its parser, then ``main``)."""
    return app.main(app.get_args_parser().parse_args([str(a) for a in argv]))


def run_or_resume(app: Any, folder: Path, argv: Sequence[Any], done: str = "results.json") -> dict[str, Any]:
    """One idempotent unit of work in its run folder: a finished run (``done`` written) is read
    back, an interrupted one resumed from its ``last.pt``, else ``argv`` starts it there."""
    import json

    folder = Path(folder)
    if (folder / done).exists():
        return json.loads((folder / done).read_text())
    if (folder / "last.pt").exists():
        return run_app(app, ["--resume", folder, "--progress", "False"])
    return run_app(app, [*argv, "--save", folder, "--force", "--progress", "False", "--plots", "False"])


def num(v: object) -> float | None:
    """A CSV cell as a float; None for empty, non-numeric or NaN."""
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def t_interval(values: Sequence[float]) -> tuple[float, float]:
    """Mean and half-width of the two-sided 95 % Student-t interval (half-width NaN for one value)."""
    from scipy.stats import t

    v = [float(x) for x in values]
    m = sum(v) / len(v)
    if len(v) < 2:
        return m, float("nan")
    sd = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))
    return m, float(t.ppf(0.975, len(v) - 1)) * sd / math.sqrt(len(v))


def percentile_among(value: float, others: Sequence[float]) -> float:
    """% of ``others`` strictly below ``value``, ties counting half (the mid-rank percentile)."""
    if not others:
        return float("nan")
    below = sum(o < value for o in others)
    ties = sum(o == value for o in others)
    return 100.0 * (below + 0.5 * ties) / len(others)


def permutation_test(a: Sequence[float], b: Sequence[float], *, n_perm: int = 20_000, seed: int = 0) -> float:
    """One-sided p-value of ``mean(a) - mean(b)`` under exchangeable labels: exact over every
    split when there are at most 50,000, else ``n_perm`` seeded random permutations (with the
    +1 correction). A small p says ``a`` beats ``b``."""
    a, b = [float(x) for x in a], [float(x) for x in b]
    pooled = np.array(a + b)
    k, n = len(a), len(a) + len(b)
    observed = np.mean(a) - np.mean(b)
    if math.comb(n, k) <= 50_000:
        hits = total = 0
        for idx in itertools.combinations(range(n), k):
            mask = np.zeros(n, dtype=bool)
            mask[list(idx)] = True
            hits += pooled[mask].mean() - pooled[~mask].mean() >= observed - 1e-12
            total += 1
        return hits / total
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(n_perm):
        p = rng.permutation(pooled)
        hits += p[:k].mean() - p[k:].mean() >= observed - 1e-12
    return (hits + 1) / (n_perm + 1)


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a results CSV, or none when it does not exist yet."""
    from nas.runtime.checkpoint import read_csv_rows

    return read_csv_rows(path) if Path(path).exists() else []
