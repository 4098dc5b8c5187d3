"""The search-vs-random protocol (bench/nas_eval.py): its statistics against hand-made numbers,
and a 2-genotype x 1-seed --quick run end to end (resumable: a second call trains nothing)."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import nas_eval  # noqa: E402

from nas.runtime.errors import FerNasError  # noqa: E402


def test_seed_agreement_by_hand():
    g1 = {"normal": [["sep_conv_3x3", 0], ["skip_connect", 1]] * 4, "reduce": [["max_pool_3x3", 0], ["dil_conv_3x3", 1]] * 4}
    g2 = {"normal": [["sep_conv_3x3", 0], ["sep_conv_3x3", 1]] * 4, "reduce": [["max_pool_3x3", 0], ["dil_conv_3x3", 2]] * 4}
    # edges per cell: node k//2 with its input; g1 normal {(0,0),(0,1),(1,0),(1,1),...}
    a = nas_eval.seed_agreement([g1, g2])
    e1 = {(c, k // 2, j) for c in ("normal", "reduce") for k, (_, j) in enumerate(g1[c])}
    e2 = {(c, k // 2, j) for c in ("normal", "reduce") for k, (_, j) in enumerate(g2[c])}
    assert a["edges"] == pytest.approx(100 * len(e1 & e2) / len(e1)) and a["pairs"] == 1
    o1 = {(c, k // 2, j, op) for c in ("normal", "reduce") for k, (op, j) in enumerate(g1[c])}
    o2 = {(c, k // 2, j, op) for c in ("normal", "reduce") for k, (op, j) in enumerate(g2[c])}
    assert a["edges_and_ops"] == pytest.approx(100 * len(o1 & o2) / len(o1))
    assert a["edges_and_ops"] < a["edges"] < 100


@pytest.mark.slow  # a search and two trainings
def test_quick_protocol_end_to_end_and_resumable(tmp_path):
    out = tmp_path / "nas"
    argv = ["--quick", "--out", str(out)]
    summary = nas_eval.main(nas_eval.get_args_parser().parse_args(argv))
    rows = nas_eval.read_rows(out / nas_eval.CSV_NAME)
    assert [(r["genotype"], r["kind"]) for r in rows] == [("darts_s0", "searched"), ("random_00", "random")]
    for r in rows:
        assert int(r["params"]) > 0 and int(r["flops"]) > int(r["params"])
        res = json.loads((out / f"train-{r['genotype']}-s0" / "results.json").read_text())
        assert float(r["test_acc"]) == pytest.approx(res["test_acc"])
    # the random cell was matched to the searched one's size
    p = {r["genotype"]: int(r["params"]) for r in rows}
    assert abs(p["random_00"] - p["darts_s0"]) <= 0.15 * p["darts_s0"] + 1
    pct = next(e["percentile_vs_random"] for e in summary["genotypes"] if e["genotype"] == "darts_s0")
    acc = {e["genotype"]: e["test_acc"] for e in summary["genotypes"]}
    assert pct == nas_eval.percentile_among(acc["darts_s0"], [acc["random_00"]])
    assert (out / "nas_eval.png").exists() and (out / "summary.md").exists()
    # the one-shot proxies of both cells under the search's supernet (τ over one random cell: undefined)
    proxies = nas_eval.read_rows(out / nas_eval.PROXY_CSV)
    assert [(r["search"], r["genotype"]) for r in proxies] == [("search-darts-s0", "darts_s0"),
                                                                ("search-darts-s0", "random_00")]
    assert all(0.0 <= float(r["oneshot_acc"]) <= 100.0 and float(r["alpha_score"]) < 0 for r in proxies)
    # DARTS's rule picks, edge by edge, what the alphas favour: its cell outscores the random one
    assert float(proxies[0]["alpha_score"]) > float(proxies[1]["alpha_score"])
    assert math.isnan(summary["strategies"]["darts"]["kendall_tau_oneshot"])
    # a second call finds every unit done: no new rows
    nas_eval.main(nas_eval.get_args_parser().parse_args(argv))
    assert len(nas_eval.read_rows(out / nas_eval.CSV_NAME)) == 2
    assert len(nas_eval.read_rows(out / nas_eval.PROXY_CSV)) == 2


@pytest.mark.slow  # a search and three trainings
def test_a_fixed_pool_is_matched_to_the_space_and_grows_with_later_strategies(tmp_path):
    """random_match "space": the random cells do not depend on the searches, so a pool trained
    first (--strategies none) is reused when a strategy joins the folder later, and more cells
    extend it (the first draws stay the same)."""
    from nas.models.ops import search_space

    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({"random_match": "space"}))
    out = tmp_path / "pool"
    base = ["--quick", "--out", str(out), "--recipe", str(recipe)]
    nas_eval.main(nas_eval.get_args_parser().parse_args([*base, "--strategies", "none", "--random", "1"]))
    rows = nas_eval.read_rows(out / nas_eval.CSV_NAME)
    assert [(r["genotype"], r["kind"]) for r in rows] == [("random_00", "random")]
    target = nas_eval.space_median_params(search_space(nas_eval.QUICK["space"]), nas_eval.QUICK)
    assert abs(int(rows[0]["params"]) - target) <= 0.15 * target + 1
    first = (out / "genotypes" / "random_00.json").read_text()
    summary = nas_eval.main(nas_eval.get_args_parser().parse_args([*base, "--random", "2"]))
    rows = nas_eval.read_rows(out / nas_eval.CSV_NAME)
    assert [r["genotype"] for r in rows] == ["random_00", "darts_s0", "random_01"]   # random_00 not retrained
    assert (out / "genotypes" / "random_00.json").read_text() == first
    assert summary["random"]["n"] == 2 and "darts" in summary["strategies"]
    # the sizes are the protocol: another one is still refused
    recipe.write_text(json.dumps({"random_match": "space", "train": {"epochs": 2}}))
    with pytest.raises(FerNasError, match="another protocol .*train"):
        nas_eval.main(nas_eval.get_args_parser().parse_args(base))
    recipe.write_text(json.dumps({"random_match": "nearby"}))
    with pytest.raises(FerNasError, match="random_match 'nearby'"):
        nas_eval.main(nas_eval.get_args_parser().parse_args(base))


@pytest.mark.slow  # a search and two trainings, each a submitit job of its own process
def test_quick_protocol_through_submitit_local_executor(tmp_path, monkeypatch):
    """The same units go out through submitit (the local executor stands in for Slurm): the
    rows match an in-process run of the same protocol exactly, and the jobs left their logs.
    Both run on one torch thread (tests/conftest.py sets this process's; the jobs inherit the
    environment): on a CPU, torch's kernels and the channels_last choice depend on the thread
    count, and a one-epoch search can then export another genotype."""
    pytest.importorskip("submitit")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    ref, sub = tmp_path / "inproc", tmp_path / "submitit"
    nas_eval.main(nas_eval.get_args_parser().parse_args(["--quick", "--out", str(ref), "--random", "0"]))
    nas_eval.main(nas_eval.get_args_parser().parse_args(["--quick", "--out", str(sub), "--random", "0",
                                                         "--executor", "submitit", "--cluster", "local"]))
    key = ("genotype", "params", "flops", "val_acc", "test_acc", "selected_epoch")
    rows = [[{k: r[k] for k in key} for r in nas_eval.read_rows(d / nas_eval.CSV_NAME)] for d in (ref, sub)]
    assert rows[0] == rows[1] and len(rows[1]) == 1
    logs = list((sub / "submitit").glob("*_log.out"))
    assert len(logs) == 2   # the search job and the training job


def test_recipe_file_replaces_sizes_and_refuses_unknown_keys(tmp_path):
    good = tmp_path / "r.json"
    good.write_text(json.dumps({"size": 123, "train": {"epochs": 3}}))
    r = nas_eval.merge_recipe(json.loads(json.dumps(nas_eval.FULL)), str(good))
    assert r["size"] == 123 and r["train"]["epochs"] == 3
    assert r["train"]["layers"] == nas_eval.FULL["train"]["layers"] and r["search"] == nas_eval.FULL["search"]
    for bad, msg in (({"sizes": 1}, "unknown key 'sizes'"), ({"train": {"epoch": 3}}, "not 'epoch'"),
                     ([1, 2], "expected a JSON object")):
        good.write_text(json.dumps(bad))
        with pytest.raises(FerNasError, match=msg):
            nas_eval.merge_recipe(json.loads(json.dumps(nas_eval.FULL)), str(good))


def test_a_folder_of_another_protocol_is_refused(tmp_path):
    """Units are found again by name, so the same --out with other flags would mix two
    protocols' random cells: refused with one line before any work."""
    out = tmp_path / "nas"
    out.mkdir()
    proto = json.loads(json.dumps(nas_eval.QUICK))
    proto.update(strategies=["darts"], search_seeds=1, random=2, train_seeds=1, references=[])
    (out / "protocol.json").write_text(json.dumps(proto))
    with pytest.raises(FerNasError, match="another protocol .*random"):
        nas_eval.main(nas_eval.get_args_parser().parse_args(["--quick", "--out", str(out)]))
    assert not (out / "genotypes").exists() and json.loads((out / "protocol.json").read_text()) == proto


def test_power_plan_pools_the_spreads_and_asks_for_enough_cells():
    from nas.runtime.stats import mde_two_sample, n_for_mde

    table = ([{"kind": "searched", "test_acc": a} for a in (80.0, 82.0, 84.0)]
             + [{"kind": "random", "test_acc": a} for a in (75.0, 78.0, 81.0, 84.0)])
    by = {"a": [{"test_acc": "80"}, {"test_acc": "82"}], "b": [{"test_acc": "70"}, {"test_acc": "74"}],
          "c": [{"test_acc": "90"}]}
    p = nas_eval.power_plan(table, by, target=1.5)
    # pooled SD of the groups: (2 x 4 + 3 x 15) / 5 = 10.6
    assert p["sd_cells"] == pytest.approx(math.sqrt(10.6))
    assert p["sd_seeds"] == pytest.approx(math.sqrt((2.0 + 8.0) / 2))           # cell c has one seed
    n = p["cells_per_group"]
    assert n == n_for_mde(math.sqrt(10.6), 1.5, paired=False)
    assert mde_two_sample(math.sqrt(10.6), n, n) <= 1.5 < mde_two_sample(math.sqrt(10.6), n - 1, n - 1)
    assert p["random_cells_vs_searched"] is None                             # 3 searched cells are too few
    # against the 4 random cells as a fixed pool: the searched cells a strategy would need
    k = p["searched_cells_vs_random"]
    assert k is None or mde_two_sample(math.sqrt(10.6), k, 4) <= 1.5
    big = nas_eval.power_plan([{"kind": "random", "test_acc": 70.0 + (a % 5)} for a in range(40)], by, target=1.5)
    k = big["searched_cells_vs_random"]
    assert big["searched_cells"] == 0 and big["random_cells"] == 40
    assert mde_two_sample(big["sd_cells"], k, 40) <= 1.5 < mde_two_sample(big["sd_cells"], k - 1, 40)
    assert "searched cells (search seeds) against the 40 random ones" in nas_eval.summary_markdown(
        {"genotypes": [], "strategies": {}, "power": big})
    # less the seeds' share of the spread (sd_seeds² / 2 seeds per cell): what the cells differ by
    two = nas_eval.power_plan([{**e, "seeds": 2} for e in table], by, target=1.5)
    assert two["sd_between_cells"] == pytest.approx(math.sqrt(10.6 - 5.0 / 2))
    assert math.isnan(p["sd_between_cells"])                                  # seeds per cell unknown
    flat = nas_eval.power_plan([{"kind": "random", "test_acc": 80.0 + 0.1 * k, "seeds": 2} for k in range(3)], by)
    assert flat["sd_between_cells"] == 0.0                                   # all of it seed noise
    # what a proxy's τ on the random cells can show: its power and its noise ceiling
    from nas.runtime.stats import tau_ceiling, tau_mde

    assert big["proxy_tau_mde"] == pytest.approx(tau_mde(40)) and flat["proxy_tau_ceiling"] == 0.0
    assert two["proxy_tau_ceiling"] == pytest.approx(tau_ceiling(math.sqrt(10.6 - 2.5), math.sqrt(5.0), 2))
    md = nas_eval.summary_markdown({"genotypes": [], "strategies": {}, "power": two})
    assert f"detects τ ≥ {tau_mde(4):.2f} at 80 % power; a perfect proxy expects τ " \
           f"{two['proxy_tau_ceiling']:.2f}" in md


def test_finished_cells_wait_for_every_training_seed():
    """Mid-run, a cell counts once each of its training seeds 0 … n−1 has a PrivateTest: a one-seed
    mean would sit among two-seed ones. Without n, the most any genotype has."""
    rows = [{"genotype": g, "train_seed": str(s), "test_acc": a}
            for g, s, a in [("a", 0, "90"), ("a", 1, "91"), ("b", 1, "92"), ("c", 0, "93"), ("c", 1, ""),
                            ("d", 0, "94")]]
    kept, unfinished = nas_eval.finished_cells(rows, 2)
    assert {r["genotype"] for r in kept} == {"a"} and len(kept) == 2 and unfinished == ["b", "c", "d"]
    assert nas_eval.finished_cells(rows)[1] == ["b", "c", "d"]        # a has two seeds: two it is
    kept, unfinished = nas_eval.finished_cells(rows, 1)
    assert {r["genotype"] for r in kept} == {"a", "c", "d"} and unfinished == ["b"]
    md = nas_eval.summary_markdown({"genotypes": [], "strategies": {}, "unfinished": ["b", "c"]})
    assert "Not counted until each of their training seeds has finished: b, c." in md


def test_training_seconds_from_the_rows():
    rows = [{"seconds": s} for s in ("600", "900", "", "1200")]   # one row without a time
    secs = nas_eval._seconds(rows)
    assert secs == {"trainings": 3, "median": 900.0, "sum": 2700.0}
    md = nas_eval.summary_markdown({"genotypes": [], "strategies": {}, "training_seconds": secs})
    assert "Retraining took 15.0 minutes of wall time per training (median of 3; 0.8 hours summed" in md
    assert "Retraining took" not in nas_eval.summary_markdown({"genotypes": [], "strategies": {},
                                                                "training_seconds": nas_eval._seconds([])})


def test_seed_rank_agreement_by_hand():
    """Kendall τ between the cells' training seeds 0 and 1: +1 when both seeds order the cells
    alike, −1 when reversed; cells with one seed, and other kinds, are left out."""
    def rows(pairs, kind="random"):
        out = []
        for k, (a, b) in enumerate(pairs):
            out += [{"genotype": f"c{k}", "kind": kind, "train_seed": "0", "test_acc": str(a)},
                    {"genotype": f"c{k}", "kind": kind, "train_seed": "1", "test_acc": str(b)}]
        return out

    same = nas_eval.seed_rank_agreement(rows([(90, 91), (92, 93), (94, 95), (96, 97)]))
    assert same["cells"] == 4 and same["kendall_tau"] == pytest.approx(1.0)
    rev = rows([(90, 97), (92, 95), (94, 93), (96, 91)]) + rows([(50, 50)], kind="searched")
    rev += [{"genotype": "lone", "kind": "random", "train_seed": "0", "test_acc": "99"}]
    r = nas_eval.seed_rank_agreement(rev)
    assert r["cells"] == 4 and r["kendall_tau"] == pytest.approx(-1.0) and r["tau_low"] <= -0.99
    md = nas_eval.summary_markdown({"genotypes": [], "strategies": {}, "seed_rank_agreement": r})
    assert "Training seed 0 ranks the 4 random cells as seed 1 does with Kendall τ -1.00" in md


def test_zero_cost_in_a_fixed_pool_searches_within_the_pools_band(tmp_path, monkeypatch):
    """A zero_cost unit of a fixed pool scores its candidates at the retraining size and batch,
    within the pool's parameter band (the random cells' target ± MATCH_TOL); other strategies get
    no budget."""
    from nas.models.ops import search_space

    seen = {}

    def fake(app, folder, argv, done):
        seen[Path(folder).name] = [str(a) for a in argv]
        return {"genotype": {"normal": [], "normal_concat": [], "reduce": [], "reduce_concat": []}}

    monkeypatch.setattr(nas_eval, "run_or_resume", fake)
    recipe = json.loads(json.dumps(nas_eval.QUICK))
    recipe["random_match"] = "space"
    recipe["search"]["init_channels"] = 6  # the search's size differs from the retraining's (C4 L3)
    nas_eval.search_unit(str(tmp_path), "zero_cost", 1, recipe, "cpu", None)
    nas_eval.search_unit(str(tmp_path), "darts", 1, recipe, "cpu", None)
    argv = seen["search-zero_cost-s1"]

    def flag(a, name):
        return a[a.index(name) + 1]

    target = nas_eval.space_median_params(search_space(recipe["space"]), recipe)
    lo, hi = int(flag(argv, "--zc_min_params")), int(flag(argv, "--zc_max_params"))
    assert lo <= target <= hi and lo >= target * (1 - nas_eval.MATCH_TOL) and hi <= target * (1 + nas_eval.MATCH_TOL)
    assert hi - lo >= 2 * nas_eval.MATCH_TOL * target - 2
    assert (flag(argv, "--init_channels"), flag(argv, "--layers")) == ("4", "3")
    assert (flag(argv, "--batch_size"), flag(argv, "--crop")) == (str(nas_eval.PROXY_BATCH), str(nas_eval.RETRAIN_CROP))
    assert "--zc_min_params" not in seen["search-darts-s1"] and flag(seen["search-darts-s1"], "--init_channels") == "6"
    assert "--post_val" in seen["search-darts-s1"] and "--post_val" not in argv  # supernet accuracy per epoch


def test_one_shot_proxies_skip_searches_without_a_supernet(tmp_path):
    """A zero_cost search's checkpoint holds candidates and scores, not a supernet: the one-shot
    proxies pass it by (load_supernet would refuse it) and score nothing for it."""
    import torch

    folder = tmp_path / "search-zero_cost-s0"
    folder.mkdir()
    torch.save({"kind": "fer-nas-zero-cost", "cells": [], "scores": []}, folder / "last.pt")
    genos = [{"name": "random_00", "kind": "random", "genotype": {}}]
    from nas.search.oneshot import load_supernet

    with pytest.raises(FerNasError, match="not a search checkpoint"):
        load_supernet(folder)
    assert nas_eval.proxy_rows(tmp_path, [{"strategy": "zero_cost", "seed": 0, "genotype": {}}], genos) == []


def test_search_curves_read_the_entropy_and_the_first_decision(tmp_path):
    """summary["searches"]: a search's entropy and supernet accuracy per epoch from its
    metrics.csv, the epoch of its first decision with the entropy then; zero_cost has none."""
    folder = tmp_path / "search-sgas-s1"
    folder.mkdir()
    rows = [("0.99", "", "60.0", "0.25"), ("0.97", "", "70.0", "0.25"), ("0.95", "normal:2<-0:sep_conv_3x3", "75.5", "0.3"),
            ("nan", "reduce:5<-4:skip_connect", "80.0", "0.5")]
    with open(folder / "metrics.csv", "w") as f:
        f.write("epoch,alpha_entropy,decided,valid_acc,param_free_share,time_s\n")
        for k, r in enumerate(rows):
            f.write(f"{k},{r[0]},{r[1]},{r[2]},{r[3]},10\n")
    curves = nas_eval.search_curves(tmp_path, [{"strategy": "sgas", "seed": 1}, {"strategy": "zero_cost", "seed": 0}])
    assert list(curves) == ["search-sgas-s1"]
    c = curves["search-sgas-s1"]
    assert c["alpha_entropy"] == [0.99, 0.97, 0.95, None] and c["supernet_acc"] == [60.0, 70.0, 75.5, 80.0]
    assert c["first_decision_epoch"] == 3 and c["entropy_at_first_decision"] == 0.95 and c["epochs"] == 4
    md = nas_eval.summary_markdown({"genotypes": [], "strategies": {}, "searches": curves})
    assert "| search-sgas-s1 | 4 | 0.99000 | 3 / 0.95000 | 0.95000 | 60.0 / 80.0 | 50 % |" in md
    path = nas_eval.plot_search_curves(curves, tmp_path / "s.png")
    assert path is None or path.stat().st_size > 0


def test_target_b_needs_the_pool_p75_a_small_p_and_three_search_seeds():
    from nas.models.genotypes import genotype_to_dict
    from nas.search.random_cells import sample_genotype

    g = genotype_to_dict(sample_genotype(["sep_conv_3x3", "skip_connect", "max_pool_3x3"], seed=0))

    def row(name, kind, strategy, acc):
        return {"genotype": name, "kind": kind, "strategy": strategy, "search_seed": "", "train_seed": "0",
                "params": "1000", "flops": "2000", "test_acc": str(acc), "selected_epoch": "3", "last_epoch": "4"}

    rows = [row(f"random_{k:02d}", "random", "random", 80 + k) for k in range(8)]       # p75: 85.25
    cells = {"good": (90, 91, 92), "two": (95, 96), "mid": (83, 84, 85.5)}
    searched = []
    for s, accs in cells.items():
        for k, a in enumerate(accs):
            rows.append(row(f"{s}_s{k}", "searched", s, a))
            searched.append({"strategy": s, "genotype": g})
    summary = nas_eval.summarize(rows, searched)
    st = summary["strategies"]
    assert summary["random"]["p75_test_acc"] == pytest.approx(85.25)
    # the 3 best of 11 by exact permutation: p = 1 / C(11, 3) = 1/165
    assert st["good"]["p_value_vs_random"] == pytest.approx(1 / 165) and st["good"]["target_b"]
    assert st["two"]["above_pool_p75"] and not st["two"]["target_b"]                    # 2 search seeds
    assert st["mid"]["mean_test_acc"] == pytest.approx(84.1667, abs=1e-3) and not st["mid"]["above_pool_p75"]
    md = nas_eval.summary_markdown(summary)
    assert "75th percentile (85.25 %)" in md and "good: holds (3 cells" in md and "two: not met (2 cells" in md
    # every cell the same size: no slope to fit, so no size-adjusted line
    assert math.isnan(st["good"]["vs_random_size_adjusted"]["diff"]) and "At equal size" not in md


def test_size_adjusted_comparison_in_the_summary():
    """A strategy whose larger cells sit on the random cells' accuracy-size line gains nothing
    at equal size, though its raw mean is higher."""
    from nas.models.genotypes import genotype_to_dict
    from nas.search.random_cells import sample_genotype

    g = genotype_to_dict(sample_genotype(["sep_conv_3x3", "skip_connect", "max_pool_3x3"], seed=0))

    def row(name, kind, strategy, params, acc):
        return {"genotype": name, "kind": kind, "strategy": strategy, "search_seed": "", "train_seed": "0",
                "params": str(params), "flops": "2000", "test_acc": str(acc), "selected_epoch": "3", "last_epoch": "4"}

    rows = [row(f"random_{k:02d}", "random", "random", 40_000 + 1000 * k, 90 + 0.1 * k + (0.05 if k % 2 else -0.05))
            for k in range(10)]
    rows += [row(f"big_s{k}", "searched", "big", 60_000 + 1000 * k, 92 + 0.1 * k) for k in range(3)]
    summary = nas_eval.summarize(rows, [{"strategy": "big", "genotype": g}] * 3)
    st = summary["strategies"]["big"]
    assert st["vs_random"]["diff"] > 1.5 and st["vs_random"]["p"] < 0.01         # raw: far above the pool
    adj = st["vs_random_size_adjusted"]
    assert abs(adj["diff"]) < 0.15 and adj["p"] > 0.05 and adj["outside_b_range"] == 3
    assert adj["slope"] == pytest.approx(0.1, abs=0.01)                            # points per 1,000 parameters
    md = nas_eval.summary_markdown(summary)
    assert "At equal size" in md and f"big: {adj['diff']:+.2f} points (" in md
    assert f"slope {10 * adj['slope']:+.2f} points per 10,000 parameters" in md
    assert "3 of its 3 cells outside the random cells' size range" in md
