"""Random cells of a search space: the baseline a searched cell must beat.

Li & Talwalkar (2019) and Yang et al. ("NAS evaluation is frustratingly hard", ICLR 2020)
found cells sampled at random from the DARTS space, trained with the searched cells' recipe,
within a few tenths of a point of them. :func:`sample_genotype` draws a cell with the same
structure a search exports: each of the ``steps`` nodes takes two *distinct* earlier states
(the cell's two inputs and the nodes before it) through one operation each, drawn uniformly
from the space without ``none``; both cell types, concatenating every node.
:func:`sample_matched` keeps drawing until ``n`` cells fall within ``tol`` of a parameter
count (rejection sampling), so a comparison is not won by size alone.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from nas.models.genotypes import Genotype, validate_genotype
from nas.models.ops import op_param_count
from nas.runtime.errors import FerNasError

__all__ = ["sample_cell", "sample_genotype", "sample_matched", "is_parameter_free", "parameter_free_share"]


def is_parameter_free(op: str) -> bool:
    """True for operations without learnable weights (pools, skip, none): the ones DARTS
    collapses to."""
    return op_param_count(op, 12) == 0


def sample_cell(primitives: Sequence[str], steps: int, rng: np.random.Generator) -> list[tuple[str, int]]:
    """``2 * steps`` ``(op, input)`` pairs: node ``i`` takes two distinct states of ``0 .. i+1``."""
    ops = [p for p in primitives if p != "none"]
    if not ops:
        raise FerNasError("the search space has no operation besides 'none'")
    cell = []
    for i in range(steps):
        inputs = sorted(int(x) for x in rng.choice(i + 2, size=2, replace=False))
        cell += [(ops[int(rng.integers(len(ops)))], j) for j in inputs]
    return cell


def sample_genotype(primitives: Sequence[str], steps: int = 4, seed: int | np.random.Generator = 0) -> Genotype:
    """A random valid genotype (normal and reduction cell) of the space ``primitives``."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    concat = list(range(2, 2 + steps))
    g = Genotype(sample_cell(primitives, steps, rng), concat, sample_cell(primitives, steps, rng), list(concat))
    return validate_genotype(g, "random genotype")


def sample_matched(primitives: Sequence[str], count: Callable[[Genotype], int], target: int, n: int, *,
                   tol: float = 0.15, steps: int = 4, seed: int = 0, max_draws: int = 20_000) -> list[Genotype]:
    """``n`` distinct random genotypes whose ``count(genotype)`` (e.g. the parameters of the
    network built from it) lies within ``target * (1 ± tol)``; seeded. Raises a one-line
    error when ``max_draws`` draws do not find ``n``."""
    if n < 1 or target <= 0 or not 0 < tol < 1:
        raise FerNasError(f"sample_matched: need n >= 1, target > 0 and 0 < tol < 1 (got {n}, {target}, {tol})")
    rng = np.random.default_rng(seed)
    lo, hi = target * (1 - tol), target * (1 + tol)
    found: list[Genotype] = []
    seen: set[str] = set()
    for _ in range(max_draws):
        g = sample_genotype(primitives, steps, rng)
        key = repr(g)
        if key in seen:
            continue
        seen.add(key)
        if lo <= count(g) <= hi:
            found.append(g)
            if len(found) == n:
                return found
    raise FerNasError(f"only {len(found)} of {n} random cells within {tol:.0%} of {target:,} parameters after "
                      f"{max_draws} draws; widen the tolerance or change the target")


def parameter_free_share(g: Genotype) -> float:
    """Share of the genotype's operations (both cells) that have no weights."""
    ops = [op for op, _ in (*g.normal, *g.reduce)]
    return sum(is_parameter_free(op) for op in ops) / len(ops)
