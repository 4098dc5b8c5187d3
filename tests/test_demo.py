"""``python -m nas demo --quick`` end to end, in a subprocess as a user runs it.

One quick demo (the suite's one run, by the installed copy: tests/installed.py; about 1.5
minutes on one CPU thread) is checked against
the files its stages wrote: the report's figures must be the ones in results.json,
metrics.csv, ensemble.csv, folds.csv and subjects.csv, the found genotype must load and
be the one that was retrained and relabelled, and the linked PNGs must exist. Then the
overwrite policy: a second run is refused, --resume reuses finished stages and redoes an
unfinished one with the same figures, --force never touches a folder that holds no demo.
"""
from __future__ import annotations

import csv
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.slow,  # the quick demo: about a minute
              pytest.mark.xdist_group("installed")]  # one worker runs the one install and demo

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["data", "search", "train_found", "train_fer_v1", "relabel", "ensemble", "ck48", "jaffe"]


def demo(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "nas", "demo", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def quick(quick_demo):
    """The one quick demo of the suite, run by the installed copy (tests/installed.py)."""
    return quick_demo


def rows_of(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def summary(out: Path) -> dict[str, list[str]]:
    """REPORT.md's summary table: stage -> [what ran, result, wall time]."""
    table = {}
    for line in (out / "REPORT.md").read_text(encoding="utf-8").splitlines():
        m = re.match(r"\| \[?(\w+)\]?(?:\(\w+/\))? \| (.*) \| (.*) \| (.*) \|$", line)
        if m and m.group(1) != "stage":
            table[m.group(1)] = [m.group(2), m.group(3), m.group(4)]
    return table


def pct(text: str, after: str) -> float:
    m = re.search(re.escape(after) + r" ([0-9.]+) %", text)
    assert m, (after, text)
    return float(m.group(1))


def test_report_has_every_stage_and_the_summary_is_printed(quick):
    out, r = quick
    table = summary(out)
    assert list(table) == STAGES + ["total"]
    for name in STAGES:
        what, result, wall = table[name]
        assert what and what != "not run" and re.search(r"\d", result), (name, table[name])
        assert re.fullmatch(r"\d+ s", wall), wall
    state = json.loads((out / "demo.json").read_text())
    assert state["config"]["quick"] is True and all(state["stages"][s]["complete"] for s in STAGES)
    # the printed summary (end of stdout) holds the same results
    tail = r.stdout[r.stdout.rindex("what ran -> result"):]
    for name in STAGES:
        assert name in tail
    assert "report:" in tail and str(out / "REPORT.md") in tail


def test_linked_pngs_exist(quick):
    out, _ = quick
    text = (out / "REPORT.md").read_text(encoding="utf-8")
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    for link in links:
        assert not link.startswith("/") and (out / link).is_file(), link
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "matplotlib is not installed" in text
        return
    need = {"data/preview_fer2013.png", "data/preview_ck48.png", "data/preview_jaffe.png", "search/cell_normal.png",
            "search/cell_reduce.png", "train_found/curves.png", "train_found/confusion.png",
            "train_fer_v1/curves.png", "relabel/relabel.png", "ensemble/confusion.png", "ck48/confusion.png",
            "jaffe/confusion.png"}
    assert need <= set(links), need - set(links)


def test_found_genotype_loads_and_is_what_was_retrained_and_relabelled(quick, tmp_path):
    from nas.runtime.checkpoint import safe_load
    from nas.models.genotypes import genotype_to_dict, load_genotype

    out, _ = quick
    text = (out / "REPORT.md").read_text(encoding="utf-8")
    block = re.search(r"## Found genotype.*?```json\n(.+?)\n```", text, flags=re.S)
    assert block
    f = tmp_path / "from_report.json"
    f.write_text(block.group(1))
    g = load_genotype(f)
    assert g == load_genotype(out / "search" / "genotype.json")
    assert genotype_to_dict(g) == genotype_to_dict(load_genotype(
        (safe_load(out / "train_found" / "best.pt")["model_spec"]["genotype"])))
    # relabelling started from a snapshot of that retraining run, and kept its architecture
    res = json.loads((out / "relabel" / "results.json").read_text())
    start = Path(res["start_checkpoint"])
    assert start.parent.name == "train_found" and start.name.startswith("snapshot_train") and start.is_file()
    snap = safe_load(start)
    assert snap["epoch"] <= snap["epochs"] and snap["model_spec"]["genotype"] == genotype_to_dict(g)
    assert safe_load(out / "relabel" / "best.pt")["model_spec"]["genotype"] == genotype_to_dict(g)
    # the cross-dataset stages tested the relabelled model
    for stage in ("ck48", "jaffe"):
        assert Path(json.loads((out / stage / "results.json").read_text())["checkpoint"]) == out / "relabel" / "best.pt"


def test_report_figures_agree_with_the_stages_files(quick):
    out, _ = quick
    table = summary(out)

    # data: flipped labels counted from the export itself (fer2013.csv vs its clean-label sidecar)
    rows = rows_of(out / "data" / "fer2013" / "fer2013.csv")
    clean = {int(r["file"]): int(r["clean_label"]) for r in rows_of(out / "data" / "fer2013" / "clean_labels.csv")}
    train = [i for i, r in enumerate(rows) if r["Usage"] == "Training"]
    flipped = sum(int(rows[i]["emotion"]) != clean[i] for i in train)
    assert f"{flipped} of {len(train)} training labels flipped" in table["data"][1]

    # retraining: PrivateTest at the epoch selected by PublicTest, from results.json and metrics.csv
    for stage in ("train_found", "train_fer_v1", "relabel"):
        res = json.loads((out / stage / "results.json").read_text())
        metrics = {int(r["epoch"]): r for r in rows_of(out / stage / "metrics.csv")}
        best_val = max(float(r["val_acc"]) for r in metrics.values())
        assert float(metrics[res["selected_epoch"]]["val_acc"]) == pytest.approx(best_val)
        shown = pct(table[stage][1], "PrivateTest")
        assert shown == pytest.approx(round(res["test_acc"], 2), abs=0.006)
        assert shown == pytest.approx(float(metrics[res["selected_epoch"]]["test_acc"]), abs=0.006)

    # relabelling: totals recomputed from its metrics.csv
    m = rows_of(out / "relabel" / "metrics.csv")
    changed = sum(int(float(r["relabel_changed"])) for r in m)
    restored = sum(int(float(r["relabel_restored"])) for r in m)
    result = table["relabel"][1]
    assert f"{changed} label changes" in result
    if changed:
        assert pct(result, "precision") == pytest.approx(100 * restored / changed, abs=0.006)
    assert pct(result, "recall") == pytest.approx(statistics.mean(float(r["relabel_recall"]) for r in m), abs=0.006)
    assert pct(result, "harm") == pytest.approx(statistics.mean(float(r["relabel_harm"]) for r in m), abs=0.006)

    # ensemble: the ensemble row and the members of ensemble.csv
    ens = rows_of(out / "ensemble" / "ensemble.csv")
    assert len(ens) == 4 and ens[-1]["name"].startswith("ensemble (softmax")
    assert pct(table["ensemble"][1], "PrivateTest") == pytest.approx(float(ens[-1]["private_acc"]), abs=0.006)
    members = re.search(r"members (.+)\)", table["ensemble"][1]).group(1)
    assert [float(v) for v in re.findall(r"([0-9.]+) %", members)] == \
        pytest.approx([float(r["private_acc"]) for r in ens[:3]], abs=0.006)

    # CK+ and JAFFE: mean and sample std over the per-fold CSV, 10 folds / 10 subjects
    for stage, name in (("ck48", "folds.csv"), ("jaffe", "subjects.csv")):
        accs = [float(r["accuracy"]) for r in rows_of(out / stage / name)]
        assert len(accs) == 10
        mean, std = re.search(r"([0-9.]+) % ± ([0-9.]+)", table[stage][1]).groups()
        assert float(mean) == pytest.approx(statistics.mean(accs), abs=0.006)
        assert float(std) == pytest.approx(statistics.stdev(accs), abs=0.006)


def test_overwrite_policy(quick, capsys):
    out, _ = quick
    report = (out / "REPORT.md").read_bytes()
    before = summary(out)

    # a second run into the same folder is refused in one line, nothing touched
    r = demo("--quick", "--out", str(out))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "already holds a demo" in r.stderr, r.stderr
    assert (out / "REPORT.md").read_bytes() == report

    # --resume of a finished demo reuses every stage
    r = demo("--out", str(out), "--resume")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("finished earlier, reused") == len(STAGES)
    assert summary(out) == before

    # an unfinished stage is redone on --resume (the JAFFE subjects are read back), same figures
    state = json.loads((out / "demo.json").read_text())
    del state["stages"]["jaffe"]
    (out / "demo.json").write_text(json.dumps(state))
    r = demo("--out", str(out), "--resume")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("finished earlier, reused") == len(STAGES) - 1
    after = summary(out)
    assert {k: v[:2] for k, v in after.items()} == {k: v[:2] for k, v in before.items()}
    assert (out / "jaffe" / "subjects.csv").is_file()

    # a resume cannot switch the demo to other settings
    from nas.apps.demo import cli

    with pytest.raises(SystemExit) as e:
        cli(["--out", str(out), "--resume", "--seed", "3"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "seed 0" in err and err.count("\n") == 1


def test_bad_input_is_one_line_and_touches_nothing(tmp_path, capsys):
    """In-process (``nas.apps.demo.cli``, what ``python -m nas demo`` calls): every fault is
    detected before any work, one line on stderr, exit status 2."""
    from nas.apps.demo import cli

    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "demo.json").write_text(json.dumps({"kind": "fer-nas-demo", "config": {"quick": False, "seed": 0},
                                                "stages": {}}))
    cases = ((["--out", str(other), "--force"], "holds no demo"),  # --force never deletes a folder without a demo
             (["--out", str(other)], "holds no demo"),
             (["--out", str(other), "--resume"], "nothing to resume"),
             (["--out", str(fake), "--resume", "--force"], "exclude each other"),
             (["--out", str(fake), "--resume", "--quick"], "holds a full demo"),
             (["--out", str(fake)], "already holds a demo"),
             (["--out", str(tmp_path / "dev"), "--device", "banana"], "--device"),
             (["--out", str(tmp_path / "t"), "--threads", "0"], "--threads"),
             (["--out", str(tmp_path / "x"), "--no_such_flag"], "unrecognized arguments"))
    for args, msg in cases:
        with pytest.raises(SystemExit) as e:
            cli(args)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1 and msg in err and "Traceback" not in err, (args, err)
    assert (other / "notes.txt").read_text() == "keep me" and sorted(p.name for p in other.iterdir()) == ["notes.txt"]
    assert sorted(p.name for p in fake.iterdir()) == ["demo.json"]
    assert not any((tmp_path / n).exists() for n in ("dev", "t", "x"))


def test_main_dispatch_and_help():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "nas", "demo", "--help"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "--quick" in r.stdout and "--resume" in r.stdout
    r = subprocess.run([sys.executable, "-m", "nas", "nonsense"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "unknown command" in r.stderr


def test_pick_snapshot_prefers_a_snapshot_before_the_last_epoch(tmp_path):
    from nas.runtime.checkpoint import atomic_save
    from nas.apps.demo import pick_snapshot
    from nas.runtime.errors import FerNasError

    with pytest.raises(FerNasError, match="no snapshot"):
        pick_snapshot(tmp_path)
    for thr, epoch in ((20, 1), (30, 2), (40, 3)):
        atomic_save({"epoch": epoch, "epochs": 3, "model": {"w": torch.zeros(1)}}, tmp_path / f"snapshot_train{thr}.pt")
    assert pick_snapshot(tmp_path).name == "snapshot_train30.pt"
    (tmp_path / "snapshot_train20.pt").unlink()
    (tmp_path / "snapshot_train30.pt").unlink()
    assert pick_snapshot(tmp_path).name == "snapshot_train40.pt"  # only one at the last epoch: use it
