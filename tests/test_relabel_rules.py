"""The relabelling rules beyond the reference (confident, consensus, soft) and FES label
smoothing: hand-computed values, the hook's per-epoch semantics, exact resume of the
averaging rules' state, and the flags' one-line errors."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nas.data.dataset import FER_CLASSES
from nas.data.ferplus import DEFAULT_FES, fes_offlabel, fes_smoothing
from nas.relabel import rules
from nas.relabel.stage import TRANSITIONS_CSV, Relabeller
from nas.runtime.checkpoint import read_csv_rows, safe_load
from nas.runtime.errors import RunInterrupted
from tests.test_relabel_training import _flags, _interrupting_call, _relabel_cols, logits_for, run_cli, toy  # noqa: F401


# ----------------------------------------------------------------------------- the functions
def test_confident_changes_only_beyond_delta_and_respects_the_gate():
    probs = torch.tensor([[0.70, 0.20, 0.10],    # pred 0, label 1: margin 0.5 > 0.3 -> 0
                          [0.50, 0.20, 0.30],    # pred 0, label 1: margin exactly 0.3, strict -> kept
                          [0.10, 0.80, 0.10],    # agrees with its label
                          [0.60, 0.05, 0.35]])   # pred 0, label 2: 0.25 < 0.3 -> kept
    labels = torch.tensor([1, 1, 1, 2])
    new, changed = rules.confident(probs, labels, 0.3)
    assert new.tolist() == [0, 1, 1, 2] and changed.tolist() == [True, False, False, False]
    # the reference window is the complement on the margin: it takes the near-ties, not the confident case
    assert rules.relabel(probs, labels, 0.3).tolist() == [1, 1, 1, 0]
    gate = [[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.5, 0.5, 1.0]]   # angry<->disgust blocked
    new, changed = rules.confident(probs, labels, 0.3, fes=gate, fes_threshold=0.03)
    assert new.tolist() == [1, 1, 1, 2] and not changed.any()
    nan = torch.tensor([[float("nan"), 0.5, 0.5]])
    assert rules.confident(nan, torch.tensor([1]), 0.1)[0].tolist() == [1]


def test_ema_update_starts_from_the_first_sighting_and_averages_over_epochs():
    avg = torch.zeros(3, 2)
    seen = torch.zeros(3, dtype=torch.bool)
    rules.ema_update(avg, seen, torch.tensor([0, 2]), torch.tensor([[1.0, 0.0], [0.2, 0.8]]), momentum=0.75)
    assert avg.tolist() == [[1.0, 0.0], [0.0, 0.0], [pytest.approx(0.2), pytest.approx(0.8)]]
    assert seen.tolist() == [True, False, True]
    rules.ema_update(avg, seen, torch.tensor([0]), torch.tensor([[0.0, 1.0]]), momentum=0.75)
    assert avg[0].tolist() == pytest.approx([0.75, 0.25])


def test_consensus_needs_k_epochs_in_a_row_and_gives_the_label_back():
    original = torch.tensor([0, 0])
    streak = torch.zeros(2, dtype=torch.long)
    last = torch.full((2,), -1)
    # epoch by epoch averages: sample 0 turns to class 1 for three epochs then back; sample 1 wavers 1, 2
    seq0 = [[0.2, 0.8, 0.0], [0.1, 0.9, 0.0], [0.2, 0.7, 0.1], [0.9, 0.1, 0.0]]
    seq1 = [[0.2, 0.8, 0.0], [0.2, 0.0, 0.8], [0.2, 0.8, 0.0], [0.2, 0.8, 0.0]]
    got = []
    for a, b in zip(seq0, seq1):
        labels, streak, last = rules.consensus(torch.tensor([a, b]), original, streak, last, delta=0.3, k=2)
        got.append((labels.tolist(), streak.tolist()))
    assert got == [([0, 0], [1, 1]),     # one epoch of disagreement: not yet
                   ([1, 0], [2, 1]),     # sample 0: two in a row -> 1; sample 1 changed its mind -> restart
                   ([1, 0], [3, 1]),
                   ([0, 1], [0, 2])]     # sample 0's evidence reversed: back to 0; sample 1 now twice -> 1
    gate = torch.tensor([[True, False, True], [False, True, True], [True, True, True]])
    labels, streak, _ = rules.consensus(torch.tensor([[0.1, 0.9, 0.0]]), torch.tensor([0]), torch.tensor([5]),
                                        torch.tensor([1]), 0.3, 2, gate)
    assert labels.tolist() == [0] and streak.tolist() == [0]


def test_soft_targets_by_hand_with_and_without_the_fes_prior():
    avg = torch.tensor([[0.1, 0.6, 0.3]])
    label = torch.tensor([0])
    t = rules.soft_targets(avg, label, 0.5)
    assert t.tolist()[0] == pytest.approx([0.5 + 0.05, 0.3, 0.15])
    fes = torch.tensor([[1.0, 0.1, 0.3], [0.1, 1.0, 0.2], [0.3, 0.2, 1.0]])
    # off-label weights avg * FES[0] without the diagonal: 0.6 * 0.1 = 0.06 and 0.3 * 0.3 = 0.09 (normalised
    # rows 0.25/0.75 of the off mass 0.9); the label keeps its 0.1 share
    t = rules.soft_targets(avg, label, 0.5, fes_offlabel(fes))
    w1, w2 = 0.6 * 0.25, 0.3 * 0.75
    off = 0.9
    assert t.tolist()[0] == pytest.approx([0.5 + 0.05, 0.5 * off * w1 / (w1 + w2), 0.5 * off * w2 / (w1 + w2)])
    assert float(t.sum()) == pytest.approx(1.0)
    assert rules.soft_targets(avg, label, 0.0).tolist() == [[1.0, 0.0, 0.0]]


def test_fes_smoothing_spreads_the_mass_along_the_fes_row_and_the_loss_is_the_cross_entropy():
    fes = torch.tensor(DEFAULT_FES, dtype=torch.float64)
    off = fes_offlabel(fes)
    assert torch.allclose(off.sum(1), torch.ones(7, dtype=off.dtype)) and float(off.diagonal().abs().sum()) == 0
    y = fes_smoothing(torch.tensor([4]), 0.1, off)[0]          # sad
    row = fes[4].clone()
    row[4] = 0
    want = 0.1 * row / row.sum()
    want[4] = 0.9
    assert y.tolist() == pytest.approx(want.tolist(), abs=1e-6)
    others = y.clone()
    others[4] = 0
    assert int(others.argmax()) == 6                          # sad's mass goes mostly to neutral (FES 0.138)
    logits = torch.randn(1, 7, dtype=torch.float64)
    loss = F.cross_entropy(logits.float(), y[None])
    assert float(loss) == pytest.approx(-float((want * torch.log_softmax(logits, 1)[0]).sum()), rel=1e-5)


# ----------------------------------------------------------------------------- the hook
def test_consensus_hook_decides_once_per_epoch_and_soft_hook_returns_targets():
    labels = torch.tensor([0, 1, 2, 3])
    clean = torch.tensor([6, 1, 2, 3])
    train = torch.arange(4)
    idx = torch.arange(4)
    logits = logits_for([6, 1, 2, 3], 0.9, [0, 1, 2, 3], 0.02)   # the model says neutral for sample 0
    h = Relabeller(labels, train, threshold=0.3, rule="consensus", consensus_epochs=2, warmup=1,
                   clean_labels=clean, classes=FER_CLASSES, log=False)
    rows = []
    for epoch in range(3):
        got = h(epoch, 0, idx, logits, labels[idx])
        assert got.tolist() == h.base[idx].tolist()          # within an epoch the labels stay put
        rows.append(h.end_epoch(epoch)[0])
    assert [r["relabel_changed"] for r in rows] == [0, 0, 1]   # warm-up, one epoch of evidence, then the change
    assert rows[2]["relabel_restored"] == 1 and h.base.tolist() == [6, 1, 2, 3]
    assert rows[2]["relabel_label_noise"] == 0.0 and rows[2]["relabel_clean_mass"] == 100.0
    state = h.state_dict()
    assert state["rule"] == "consensus" and state["streak"].tolist() == [2, 0, 0, 0]

    s = Relabeller(labels, train, threshold=0.3, rule="soft", soft_lambda=0.75, warmup=0, clean_labels=clean,
                   classes=FER_CLASSES, log=False)
    t = s(0, 0, idx, logits, labels[idx])
    probs = torch.softmax(logits.float(), 1)
    want = 0.25 * F.one_hot(labels, 7).float() + 0.75 * probs
    assert t.is_floating_point() and torch.allclose(t, want)
    row = s.end_epoch(0)[0]
    assert row["relabel_changed"] == 1                         # sample 0's target now peaks on neutral
    assert row["relabel_clean_mass"] == pytest.approx(100 * float(want.gather(1, clean[:, None]).mean()), rel=1e-5)


def test_agreement_column_without_clean_labels_by_hand():
    """What a user without clean labels sees: the share of seen samples whose prediction is
    their current label (the running average for consensus), and no clean-label columns."""
    labels = torch.tensor([0, 1, 2, 3, 4])
    train = torch.arange(5)
    # predictions 6, 1, 2, 5 for samples 0-3; sample 4 is never seen this epoch
    logits = logits_for([6, 1, 2, 5], 0.9, [0, 1, 2, 3], 0.02)
    h = Relabeller(labels, train, threshold=0.3, rule="autofernet", warmup=5, classes=FER_CLASSES, log=False)
    h(0, 0, torch.arange(4), logits, labels[:4])
    row = h.end_epoch(0)[0]
    assert row["relabel_agreement"] == pytest.approx(100 * 2 / 4)     # samples 1 and 2 of the 4 seen
    assert "relabel_restored" not in row and "relabel_harm" not in row
    c = Relabeller(labels, train, threshold=0.3, rule="consensus", consensus_epochs=1, warmup=0, classes=FER_CLASSES,
                   log=False)
    c(0, 0, torch.arange(4), logits, labels[:4])
    row = c.end_epoch(0)[0]
    # the margins 0.9 - 0.02 exceed 0.3: samples 0 and 3 follow their average at once, so all 4 agree
    assert row["relabel_changed"] == 2 and row["relabel_agreement"] == pytest.approx(100.0)
    assert c.state_dict()["pred"].tolist() == [6, 1, 2, 5, -1]


# ----------------------------------------------------------------------------- runs
@pytest.mark.parametrize("rule", ["consensus", "soft"])
def test_averaging_rules_resume_mid_epoch_exactly(toy, tmp_path, monkeypatch, rule):  # noqa: F811
    flags = ("--rule", rule, "--relabel_threshold", "0.1", "--fes", "False", "--consensus_epochs", "1",
             "--relabel_warmup", "0")
    full, cut = tmp_path / "full", tmp_path / "cut"
    res = run_cli(*_flags(toy, full, *flags))
    monkeypatch.setattr(Relabeller, "__call__", _interrupting_call((1, 3)))
    with pytest.raises(RunInterrupted):
        run_cli(*_flags(toy, cut, *flags))
    monkeypatch.undo()
    mid = safe_load(cut / "last.pt")["callbacks"]["relabel"]
    assert mid["rule"] == rule and bool(mid["seen"].any())
    run_cli("--resume", cut, "--progress", "False")
    a, b = safe_load(full / "last.pt"), safe_load(cut / "last.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in ("avg", "streak", "base", "mass"):
        assert torch.equal(a["callbacks"]["relabel"][k], b["callbacks"]["relabel"][k]), k
    assert _relabel_cols(read_csv_rows(full / "metrics.csv")) == _relabel_cols(read_csv_rows(cut / "metrics.csv"))
    if rule == "consensus":
        assert res["relabel"]["changed"] > 0
        assert read_csv_rows(full / TRANSITIONS_CSV) == read_csv_rows(cut / TRANSITIONS_CSV)
    else:
        assert not math.isnan(float(read_csv_rows(full / "metrics.csv")[-1]["relabel_clean_mass"]))


def test_fes_smoothing_trains_and_bad_rule_flags_are_one_line_errors(toy, tmp_path, capsys):  # noqa: F811
    from tests.cli_util import run_script

    r = run_cli(*_flags(toy, tmp_path / "fs", "--no_relabel", "--fes_smoothing", "0.2", "--epochs", "1"))
    plain = run_cli(*_flags(toy, tmp_path / "pl", "--no_relabel", "--epochs", "1"))
    rows = [read_csv_rows(tmp_path / n / "metrics.csv")[0] for n in ("fs", "pl")]
    assert float(rows[0]["train_loss"]) > float(rows[1]["train_loss"])   # a smoothed target costs more
    assert r["epochs_trained"] == plain["epochs_trained"] == 1
    csv, ckpt = toy
    for extra, words in ((["--rule", "consensus", "--relabel_mode", "persistent"], "persistent"),
                         (["--rule", "soft", "--soft_lambda", "2"], "--soft_lambda"),
                         (["--rule", "nope"], "--rule"),
                         (["--fes_smoothing", "0.1", "--label_smoothing", "0.1"], "choose one")):
        p = run_script("relabel_training.py", "--checkpoint", ckpt, "--data", csv, "--save", tmp_path / "bad",
                       "--epochs", "1", *extra)
        assert p.returncode == 2, (extra, p.stderr)
        lines = p.stderr.strip().splitlines()
        assert len(lines) >= 1 and words in lines[-1] and "Traceback" not in p.stderr, (extra, p.stderr)


def test_rule_defaults_and_the_collapse_warning(toy, tmp_path):  # noqa: F811
    """Without --relabel_threshold each rule takes its own margin (confident 0.7, not SCN's 0.2
    that collapses); a rule that changes most labels in an epoch is warned about in the log."""
    from types import SimpleNamespace

    from nas.relabel.stage import COLLAPSE_RATE, DEFAULT_THRESHOLDS, REFERENCE_RULE_WARNING

    out = tmp_path / "confident"
    run_cli(*_flags(toy, out, "--rule", "confident", "--fes", "False", "--epochs", "1", "--relabel_warmup", "0"))
    assert safe_load(out / "last.pt")["args"]["relabel_threshold"] == DEFAULT_THRESHOLDS["confident"] == 0.7
    assert "warning: --rule autofernet" not in (out / "log.txt").read_text()
    ref = tmp_path / "reference"
    run_cli(*_flags(toy, ref, "--epochs", "1"))            # relabel_training.py --fes True, the published command
    log = (ref / "log.txt").read_text()
    assert log.count(REFERENCE_RULE_WARNING) == 1 and "docs/relabelling.md" in REFERENCE_RULE_WARNING
    assert safe_load(ref / "last.pt")["args"]["relabel_threshold"] == 0.2

    logged: list[str] = []
    run = SimpleNamespace(log=logged.append, append_metrics=lambda *a, **k: None)
    labels = torch.tensor([0, 1, 2, 3])
    for pred, warned in (([6, 6, 6, 3], True), ([6, 1, 2, 3], False)):   # 3 of 4 changed (75 %), then 1 of 4
        h = Relabeller(labels, torch.arange(4), threshold=0.3, rule="confident", warmup=0, classes=FER_CLASSES)
        h(0, 0, torch.arange(4), logits_for(pred, 0.9, [0, 1, 2, 3], 0.02), labels)
        logged.clear()
        h.on_epoch_end(SimpleNamespace(run=run), 0, {})
        assert any("is likely confirming its own predictions" in m for m in logged) == warned
    assert COLLAPSE_RATE == 50.0
