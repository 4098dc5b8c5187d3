"""--strategy zero_cost: random cells scored at initialisation by the zero-cost proxies, the best
kept; a step of the one loop per candidate, so an interrupted run resumes to the same scores."""
from __future__ import annotations

import pytest

from nas.runtime.checkpoint import read_csv_rows
from nas.runtime.errors import FerNasError, RunInterrupted
from tests.fer_files import small_fer2013, write_fer2013_csv


def _argv(csv, save, *extra):
    return ["--data", str(csv), "--strategy", "zero_cost", "--zc_samples", "4", "--search_space",
            "conv_1x1,skip_connect,max_pool_3x3,sep_conv_3x3", "--init_channels", "2", "--layers", "3",
            "--batch_size", "8", "--save", str(save), "--device", "cpu", "--plots", "False", "--progress", "False",
            *extra]


class StopAfter:
    """A stop request that arrives after ``n`` polls (the loop polls after each step)."""

    def __init__(self, n: int) -> None:
        self.n, self.signum = n, 15

    @property
    def requested(self) -> bool:
        self.n -= 1
        return self.n < 0


def test_zero_cost_keeps_the_best_by_the_vote_and_resumes_exactly(tmp_path):
    from nas.apps import search

    csv = write_fer2013_csv(tmp_path / "d" / "fer2013.csv", *small_fer2013((28, 7, 7), seed=1))
    ref = search.main(search.get_args_parser().parse_args(_argv(csv, tmp_path / "ref")))
    rows = read_csv_rows(tmp_path / "ref" / "proxies.csv")
    assert [int(r["candidate"]) for r in rows] == [0, 1, 2, 3]
    kept = [r for r in rows if r["kept"] == "1"]
    assert len(kept) == 1 and float(kept[0]["vote"]) == max(float(r["vote"]) for r in rows)
    # interrupted after two candidates, then resumed: the same scores and the same cell
    args = search.get_args_parser().parse_args(_argv(csv, tmp_path / "cut"))
    with pytest.raises(RunInterrupted):
        search.main(args, stop=StopAfter(2))
    assert (tmp_path / "cut" / "last.pt").exists()
    again = search.main(search.get_args_parser().parse_args(["--resume", str(tmp_path / "cut"), "--progress",
                                                             "False"]))
    assert again["genotype"] == ref["genotype"]
    cut_rows = read_csv_rows(tmp_path / "cut" / "proxies.csv")
    assert [(r["candidate"], r["naswot"], r["synflow"]) for r in cut_rows] == \
        [(r["candidate"], r["naswot"], r["synflow"]) for r in rows]
    # one proxy instead of the vote: the cell with the highest synflow
    search.main(search.get_args_parser().parse_args(_argv(csv, tmp_path / "syn", "--zc_proxy", "synflow")))
    best = max(rows, key=lambda r: float(r["synflow"]))
    assert [r for r in read_csv_rows(tmp_path / "syn" / "proxies.csv") if r["kept"] == "1"][0]["candidate"] == \
        best["candidate"]


def test_zero_cost_flags_are_checked():
    from nas.apps import search

    with pytest.raises(FerNasError, match="--zc_samples 1"):
        search.main(search.get_args_parser().parse_args(["--strategy", "zero_cost", "--zc_samples", "1"]))
    with pytest.raises(FerNasError, match="--epochs: --strategy zero_cost trains nothing"):
        search.main(search.get_args_parser().parse_args(["--strategy", "zero_cost", "--epochs", "3"]))
    with pytest.raises(FerNasError, match="need 0 <= min <= max"):
        search.main(search.get_args_parser().parse_args(["--strategy", "zero_cost", "--zc_min_params", "900",
                                                         "--zc_max_params", "800"]))
    with pytest.raises(FerNasError, match="apply to --strategy zero_cost"):
        search.main(search.get_args_parser().parse_args(["--strategy", "darts", "--zc_max_params", "800"]))


def test_zero_cost_budget_keeps_every_candidate_in_the_band(tmp_path):
    """With --zc_min_params/--zc_max_params every candidate scored (and so the kept one) has a
    parameter count in the band, counted on the network as it is built; an empty band fails in
    one line before any folder is made."""
    from nas.apps import search
    from nas.models import build_model, count_parameters
    from nas.models.genotypes import Genotype, genotype_from_dict
    from nas.search.random_cells import sample_genotype

    space = ["conv_1x1", "skip_connect", "max_pool_3x3", "sep_conv_3x3"]
    sizes = sorted(count_parameters(build_model(sample_genotype(space, 4, s), init_channels=2, layers=3,
                                                auxiliary=False)) for s in range(40))
    lo, hi = sizes[10], sizes[20]  # a band that most unbounded draws miss
    assert lo < hi
    csv = write_fer2013_csv(tmp_path / "d" / "fer2013.csv", *small_fer2013((28, 7, 7), seed=1))
    res = search.main(search.get_args_parser().parse_args(
        _argv(csv, tmp_path / "b", "--zc_min_params", str(lo), "--zc_max_params", str(hi))))
    rows = read_csv_rows(tmp_path / "b" / "proxies.csv")
    assert len(rows) == 4
    kept = genotype_from_dict(res["genotype"]) if isinstance(res["genotype"], dict) else res["genotype"]
    assert isinstance(kept, Genotype)
    n_kept = count_parameters(build_model(kept, init_channels=2, layers=3, auxiliary=False))
    assert lo <= n_kept <= hi
    import torch
    ckpt = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert len(ckpt["cells"]) == 4
    for g in ckpt["cells"]:
        n = count_parameters(build_model(genotype_from_dict(g), init_channels=2, layers=3, auxiliary=False))
        assert lo <= n <= hi
    with pytest.raises(FerNasError, match="within the budget"):
        search.main(search.get_args_parser().parse_args(
            _argv(csv, tmp_path / "none", "--zc_min_params", "1", "--zc_max_params", "2")))
    assert not (tmp_path / "none").exists() or not any((tmp_path / "none").iterdir())
