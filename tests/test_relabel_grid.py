"""bench/relabel_grid.py end to end at a toy size: rows with both epochs' PrivateTest, the
training accuracy and provenance; resumable; a folder of other settings refused in one line."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import relabel_grid  # noqa: E402
from common import PROVENANCE_COLUMNS  # noqa: E402

from nas.runtime.checkpoint import read_csv_rows  # noqa: E402
from nas.runtime.errors import FerNasError  # noqa: E402

def toy(private: int = 60) -> list[str]:
    return ["--quick", "--size", "200", "--public_size", "40", "--private_size", str(private), "--base_epochs", "1",
            "--relabel_epochs", "1", "--rules", "control,clean"]


def test_grid_rows_summary_and_refusal(tmp_path, monkeypatch):
    monkeypatch.setenv("FERNAS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "grid"
    parser = relabel_grid.get_args_parser()
    res = relabel_grid.main(parser.parse_args([*toy(), "--out", str(out)]))
    rows = read_csv_rows(out / relabel_grid.CSV_NAME)
    assert [r["rule"] for r in rows] == ["control", "clean"]
    for r in rows:
        assert all(r[k] != "" for k in ("test_acc", "last_test_acc", "last_epoch", "train_acc", "git_commit",
                                        "torch", "cpu_model", "threads", "flags", "synthfer_revisions"))
        assert set(PROVENANCE_COLUMNS) <= set(r)
        assert json.loads(r["flags"])["private_size"] == 60
    # the PrivateTest figure counts faces out of 60
    assert float(rows[0]["test_acc"]) * 0.6 == pytest.approx(round(float(rows[0]["test_acc"]) * 0.6))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["provenance"]["flags"]["noise_splits"] == "train+val" and summary["runs"] == 2
    clean = [e for e in res["summary"] if e["rule"] == "clean"][0]
    assert "vs_control" in clean and "vs_control_last" in clean
    # resumed: nothing is trained again, the rows stay
    monkeypatch.setattr(relabel_grid, "run_cell", lambda *a, **k: pytest.fail("ran a finished cell again"))
    relabel_grid.main(parser.parse_args([*toy(), "--out", str(out)]))
    # another setting in the same folder: one line, nothing written
    before = (out / relabel_grid.CSV_NAME).read_text()
    with pytest.raises(FerNasError, match="holds runs of another protocol .*private_size"):
        relabel_grid.main(parser.parse_args([*toy(80), "--out", str(out)]))
    assert (out / relabel_grid.CSV_NAME).read_text() == before


def test_bad_grid_flags_are_refused_before_anything_is_written(tmp_path):
    parser = relabel_grid.get_args_parser()
    for argv, msg in ((["--modes", "uniform,typo"], "unknown noise mode 'typo'"),
                      (["--rules", "control,magic"], "unknown rule 'magic'"),
                      (["--private_size", "0"], "--private_size 0: must be at least 1"),
                      (["--noise", "1.5"], "fractions between 0 and 1")):
        with pytest.raises(FerNasError, match=msg):
            relabel_grid.main(parser.parse_args([*argv, "--out", str(tmp_path / "g")]))
        assert not (tmp_path / "g").exists()


def _entry(mode, noise, rule, val, last, diff=None, hw=None, won=None, seeds=3):
    e = {"mode": mode, "noise": noise, "rule": rule, "seeds": seeds, "val_acc": val, "test_acc": last,
         "last_test_acc": last}
    if diff is not None:
        e.update(vs_control_last=diff, vs_control_last_ci=hw)
    if won is not None:
        e["won_back_last"] = won
    return e


def test_the_recommendation_is_chosen_by_public_test_and_gated_by_the_paired_interval():
    s = []
    for mode in ("uniform", "ambiguous"):
        s += [_entry(mode, 0.3, "control", 55.0, 74.0), _entry(mode, 0.3, "clean", 70.0, 94.0),
              # best PrivateTest, worse PublicTest: never chosen
              _entry(mode, 0.3, "smallloss", 60.0, 90.0, 16.0, 2.0, 0.8),
              _entry(mode, 0.3, "consensus", 63.0, 86.0, 12.0, 3.0, 0.6 if mode == "uniform" else 0.45)]
        s += [_entry(mode, 0.1, "control", 80.0, 90.0), _entry(mode, 0.1, "consensus", 81.0, 89.0, -1.0, 1.5)]
    s.append(_entry("uniform", 0.0, "consensus", 90.0, 95.0, -0.4, 0.3))
    rec = relabel_grid.recommend(s)
    assert rec["by_noise"]["30"]["best_by_public_test"] == "consensus"
    assert rec["by_noise"]["30"]["recommended"] == "consensus"
    assert rec["by_noise"]["10"]["recommended"] == "none"          # its interval includes 0
    t = rec["targets"]
    assert t["method"] == "consensus"
    assert t["uniform 30 %"]["met"] and not t["ambiguous 30 %"]["met"]   # 45 % won back < 50 %
    assert t["uniform 0 %"]["met"] and not t["uniform 10 %"]["met"]      # -0.4 within 0.5; -1.0 not
    md = relabel_grid.recommend_markdown(rec)
    assert "| 30 % | ambiguous / uniform | consensus |" in md and "**none**" in md


def test_a_rate_whose_arms_lack_seeds_is_pending_not_recommended():
    # a rule with the best PublicTest over one seed must not beat rules averaged over three
    s = [_entry("uniform", 0.1, "control", 80.0, 88.0), _entry("uniform", 0.1, "eac", 82.0, 89.0, 1.6, 0.9),
         _entry("uniform", 0.1, "consensus", 90.0, 92.0, 3.2, None, seeds=1)]
    rec = relabel_grid.recommend(s)
    assert rec["by_noise"]["10"]["recommended"] == "pending"
    assert rec["by_noise"]["10"]["pending_modes"] == ["uniform"]
    assert "pending: no mode" in relabel_grid.recommend_markdown(rec)
    s[2]["seeds"] = 3
    s[2]["vs_control_last_ci"] = 1.0
    assert relabel_grid.recommend(s)["by_noise"]["10"]["recommended"] == "consensus"
    # a second mode still running (an arm missing, another on fewer seeds): the choice is made on
    # the complete mode alone, and the other is named as pending
    s += [_entry("ferplus", 0.1, "control", 70.0, 80.0, seeds=1),
          _entry("ferplus", 0.1, "eac", 99.0, 99.0, 19.0, None, seeds=1)]
    rec = relabel_grid.recommend(s)["by_noise"]["10"]
    assert rec["modes"] == ["uniform"] and rec["pending_modes"] == ["ferplus"]
    assert rec["best_by_public_test"] == "consensus" and rec["recommended"] == "consensus"
    assert "| 10 % | uniform (ferplus pending) | consensus |" in relabel_grid.recommend_markdown(
        relabel_grid.recommend(s))


def test_a_mode_on_fewer_seeds_than_the_grid_is_pending_and_not_drawn(tmp_path):
    """Every arm of a new mode on its first seed: no interval can gate it yet, so it waits (and the
    PNG leaves it out) until it has the grid's seeds, even where its arms agree on a seed count."""
    s = [_entry("uniform", 0.4, "control", 60.0, 64.0), _entry("uniform", 0.4, "clean", 90.0, 94.0),
         _entry("uniform", 0.4, "consensus", 80.0, 83.0, 19.5, 3.5),
         _entry("ferplus", 0.4, "control", 58.0, 61.0, seeds=1),
         _entry("ferplus", 0.4, "consensus", 70.0, 75.0, 14.0, None, seeds=1)]
    rec = relabel_grid.recommend(s)["by_noise"]["40"]
    assert rec["modes"] == ["uniform"] and rec["pending_modes"] == ["ferplus"]
    assert rec["recommended"] == "consensus"
    assert relabel_grid.recommend(s, seeds=5)["by_noise"]["40"]["recommended"] == "pending"
    import matplotlib

    matplotlib.use("Agg", force=True)
    from unittest import mock

    import matplotlib.axes

    drawn = []  # (panel, arm) per line drawn
    with mock.patch.object(matplotlib.axes.Axes, "errorbar", autospec=True,
                           side_effect=lambda ax, x, y, **kw: drawn.append((id(ax), kw["label"]))):
        relabel_grid.plot(s, tmp_path / "g.png")
    # one column (uniform; ferplus left out), two rows (selected and last epoch), three arms each
    assert len({panel for panel, _ in drawn}) == 2 and len(drawn) == 6
    assert {arm for _, arm in drawn} == {"control", "clean", "consensus"}
