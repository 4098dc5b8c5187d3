"""Random cells of the search space (the baseline of issue 16's protocol): valid genotypes of
the space's structure, seeded, parameter-matched by rejection, and the parameter-free share."""
from __future__ import annotations

import numpy as np
import pytest

from nas.models import build_model, count_parameters
from nas.models.genotypes import Genotype, load_genotype, validate_genotype
from nas.models.ops import SEARCH_SPACES
from nas.runtime.errors import FerNasError
from nas.search.random_cells import (is_parameter_free, parameter_free_share, sample_genotype, sample_matched)


def test_random_genotypes_are_valid_cells_of_the_space_and_seeded():
    space = SEARCH_SPACES["auto_fernet"]
    gs = [sample_genotype(space, 4, seed) for seed in range(200)]
    for g in gs:
        assert validate_genotype(g) == g
        for cell in (g.normal, g.reduce):
            assert len(cell) == 8
            for i in range(4):
                (op_a, a), (op_b, b) = cell[2 * i], cell[2 * i + 1]
                assert a != b and 0 <= a < i + 2 and 0 <= b < i + 2      # two distinct earlier states
                assert op_a in space and op_b in space and "none" not in (op_a, op_b)
        assert g.normal_concat == g.reduce_concat == [2, 3, 4, 5]
    assert sample_genotype(space, 4, 7) == sample_genotype(space, 4, 7)
    assert len({repr(g) for g in gs}) == 200
    # every op and every input position turns up (uniform draws over 200 x 16 choices)
    ops = {op for g in gs for op, _ in g.normal}
    assert ops == set(space) - {"none"}
    assert {j for g in gs for op, j in g.normal[6:]} == {0, 1, 2, 3, 4}


def test_matched_cells_fall_within_the_tolerance_of_the_target():
    space = SEARCH_SPACES["darts"]

    def params(g: Genotype) -> int:
        return count_parameters(build_model(g, init_channels=8, layers=5, auxiliary=False))

    target = params(load_genotype("DARTS_V2"))
    cells = sample_matched(space, params, target, 4, tol=0.15, seed=3)
    assert len(cells) == 4 and len({repr(g) for g in cells}) == 4
    assert all(0.85 * target <= params(g) <= 1.15 * target for g in cells)
    assert sample_matched(space, params, target, 4, tol=0.15, seed=3) == cells
    with pytest.raises(FerNasError, match="only 0 of 1 random cells within 1% of 10 parameters"):
        sample_matched(space, params, 10, 1, tol=0.01, max_draws=5)


def test_parameter_free_share_by_hand():
    assert [is_parameter_free(o) for o in ("skip_connect", "max_pool_3x3", "avg_pool_3x3", "sep_conv_3x3",
                                           "ghost", "conv_1x1")] == [True, True, True, False, False, False]
    g = load_genotype("DARTS_V2")
    ops = [op for op, _ in (*g.normal, *g.reduce)]
    want = sum(op in ("skip_connect", "max_pool_3x3", "avg_pool_3x3") for op in ops) / 16
    assert parameter_free_share(g) == pytest.approx(want)
    assert 0 < want < 1   # DARTS_V2 has skips in its normal cell and max pools in its reduction cell
    assert np.isclose(parameter_free_share(sample_genotype(["skip_connect", "max_pool_3x3"], 4, 0)), 1.0)
