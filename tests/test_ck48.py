"""CK+ cross-validation: subject-independent folds, the reference's contiguous blocks (with its
quirks counted by hand), the class mapping, a 2-fold fine-tuning run of test_ck48.py on a
small CK+-style SynthFER export (files and figures recomputed), a direct test, resume,
bad input, and the same run under two gloo ranks."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from nas.runtime.checkpoint import read_csv_rows, safe_load
from nas.crossdata import (REFERENCE_BLOCKS, REFERENCE_COUNTS, direct_scores, fold_report, head_keys, prepare_model,
                           reference_folds, subject_folds)
from nas.data import load_dataset
from nas.data.ck48 import CK48_CLASSES
from nas.data.dataset import FER_CLASSES
from nas.runtime.errors import FerNasError
from tests.cli_util import assert_one_line_error, run_inprocess
from tests.ddp_util import spawn_ranks
from tests.xdata_util import export, make_checkpoint, with_classes


# ------------------------------------------------------------------------------ folds
def _ck_like(n_subjects: int = 118, seed: int = 0):
    """CK+48-sized labels (135/177/75/207/84/249/54) spread over subjects, 3 frames a sequence."""
    g = torch.Generator().manual_seed(seed)
    labels, subjects, keys = [], [], []
    folders = ("anger", "disgust", "fear", "happy", "sadness", "surprise", "contempt")
    for c, n in enumerate(REFERENCE_COUNTS):
        for s in range(n // 3):
            subj = f"S{int(torch.randint(10, 10 + n_subjects, (1,), generator=g)):03d}"
            for fr in range(3):
                labels.append(c)
                subjects.append(subj)
                keys.append(f"{folders[c]}/{subj}_{s:03d}_{fr:08d}.png")
    return torch.tensor(labels), subjects, keys


def test_subject_folds_keep_every_subject_on_one_side_and_cover_everything_once():
    labels, subjects, _ = _ck_like()
    folds = subject_folds(subjects, labels, 10, seed=3, num_classes=7)
    assert len(folds) == 10
    times = torch.zeros(len(labels), dtype=torch.int64)
    for f in folds:
        times[f.test] += 1
        train_s = {subjects[i] for i in f.train.tolist()}
        test_s = {subjects[i] for i in f.test.tolist()}
        assert not train_s & test_s and test_s == set(f.test_subjects)
        assert f.train.numel() + f.test.numel() == len(labels)
    assert bool((times == 1).all())
    assert fold_report(folds, len(labels), subjects) == {"never_tested": 0, "tested_more_than_once": 0,
                                                         "folds_with_subject_leakage": []}
    sizes = [f.test.numel() for f in folds]
    biggest_subject = max(subjects.count(s) for s in set(subjects))
    assert max(sizes) - min(sizes) <= biggest_subject       # balanced up to one subject
    for c in range(7):                                      # every class spread over the folds
        per_fold = [int((labels[f.test] == c).sum()) for f in folds]
        assert max(per_fold) - min(per_fold) <= 2 * biggest_subject, (c, per_fold)
    again = subject_folds(subjects, labels, 10, seed=3, num_classes=7)
    assert all(torch.equal(a.test, b.test) for a, b in zip(folds, again))   # seeded
    other = subject_folds(subjects, labels, 10, seed=4, num_classes=7)
    assert any(not torch.equal(a.test, b.test) for a, b in zip(folds, other))
    with pytest.raises(FerNasError, match="subjects"):
        subject_folds(["S1", "S2"], torch.tensor([0, 1]), 3)


def test_reference_blocks_and_their_quirks_on_ck48_sized_data():
    # The reference orders images class by class (anger, disgust, fear, happy, sadness, surprise,
    # contempt = CK+48's 135/177/75/207/84/249/54 images, cumulative 0,135,312,387,594,678,927,981)
    # and tests blocks of 12/18/9/21/9/24/6 per class: 99 images per fold.
    labels, subjects, keys = _ck_like()
    assert tuple(torch.bincount(labels).tolist()) == REFERENCE_COUNTS and sum(REFERENCE_BLOCKS) == 99
    folds = reference_folds(labels, keys, 10, subjects=subjects)
    for f in folds:
        assert f.test.numel() == 99
    for f in folds[:8]:                                     # folds 1-8: the blocks, class by class
        assert tuple(torch.bincount(labels[f.test], minlength=7).tolist()) == REFERENCE_BLOCKS
    # fold 9: fear's block 72..80 runs past fear's 75 images, 6 images into happy
    assert torch.bincount(labels[folds[8].test], minlength=7).tolist() == [12, 18, 3, 27, 9, 24, 6]
    # fold 1 is each class's first block in file-name order
    order = sorted(range(len(labels)), key=lambda i: (int(labels[i]), keys[i]))
    assert sorted(folds[0].test.tolist()) == sorted(order[:12] + order[135:135 + 18] + order[312:312 + 9]
                                                    + order[387:387 + 21] + order[594:594 + 9]
                                                    + order[678:678 + 24] + order[927:927 + 6])
    rep = fold_report(folds, len(labels), subjects)
    # never tested: anger 108..122 (15) and surprise 216..224 (9)
    assert rep["never_tested"] == 24
    # tested twice: disgust 3 (folds 9/10), fear 6 (8/10) + 3 (9/10), happy 6 (1/9 spill) + 3 (9/10),
    # sadness 6 (9/10), contempt 6 (9/10)
    assert rep["tested_more_than_once"] == 33 == 990 - (981 - 24)
    assert len(rep["folds_with_subject_leakage"]) == 10     # contiguous blocks cut through subjects


def test_reference_blocks_scale_for_other_sizes_and_fold_counts():
    from nas.crossdata import reference_blocks

    assert reference_blocks(list(REFERENCE_COUNTS), 10) == list(REFERENCE_BLOCKS)
    assert reference_blocks(list(REFERENCE_COUNTS), 5) == [24, 36, 18, 42, 18, 48, 12]
    assert reference_blocks([18, 24, 9, 27, 12, 33, 6], 2) == [8, 12, 5, 14, 6, 16, 3]


# ------------------------------------------------------------------------------ class mapping
def test_direct_scores_match_classes_by_name():
    # model in FER order (neutral at 6); data in CK+ order (contempt at 6)
    probs = torch.tensor([[.9, 0, 0, 0, 0, 0, .1],     # angry image, says angry: right
                          [0, .2, 0, 0, 0, 0, .8],     # disgust image, says neutral: wrong (restricted: disgust)
                          [0, 0, 0, 0, 0, .3, .7],     # contempt image: left out
                          [0, 0, 0, .6, .4, 0, 0]])    # sad image, says happy: wrong
    sc = direct_scores(probs, torch.tensor([0, 1, 6, 4]), list(FER_CLASSES), list(CK48_CLASSES))
    assert sc["scored"].tolist() == [True, True, False, True]
    assert sc["correct"].tolist() == [True, False, False, False]
    assert sc["correct_restricted"].tolist() == [True, True, False, False]


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    root = tmp_path_factory.mktemp("ck")
    fer = load_dataset(export("fer2013", root, 280))
    ckpt = make_checkpoint(root / "src", "cnn_shallow", fer, epochs=1, crop=40, norm=(0.48, 0.27))
    ck_dir = export("ck48", root, 84, seed=1)
    return root, ckpt, ck_dir, load_dataset(ck_dir)


def test_head_keep_and_reinit(ck):
    root, ckpt, _, data = ck
    state = safe_load(ckpt)
    model, _, how = prepare_model(ckpt, data.classes, "keep")
    assert "neutral->contempt" in how
    assert all(torch.equal(v, state["model"][k]) for k, v in model.state_dict().items())
    model, _, how = prepare_model(ckpt, data.classes, "reinit", seed=0)
    heads = head_keys(state["model_spec"], state["model"])
    assert heads and all(k.startswith("classifier") for k in heads)
    new = model.state_dict()
    assert all(torch.equal(new[k], state["model"][k]) for k in state["model"] if k not in heads)
    assert all(not torch.equal(new[k], state["model"][k]) for k in heads if new[k].is_floating_point())
    eight = with_classes(ckpt, root / "eight.pt", [*FER_CLASSES, "contempt"])
    with pytest.raises(FerNasError, match="8 classes"):
        prepare_model(eight, data.classes, "keep")
    model, _, _ = prepare_model(eight, data.classes, "reinit")      # a fresh 7-way head fits any source
    assert model(torch.zeros(2, 1, 40, 40)).shape == (2, 7)


# ------------------------------------------------------------------------------ the script
def _cm(path: Path) -> torch.Tensor:
    return torch.tensor([[int(v) for k, v in r.items() if k != "true\\pred"] for r in read_csv_rows(path)])


def test_two_fold_finetuning_run_writes_consistent_files(ck):
    root, ckpt, ck_dir, data = ck
    out = root / "cv"
    argv = ["--checkpoint", ckpt, "--data", ck_dir, "--folds", 2, "--epochs", 1, "--batch_size", 16,
            "--save", out, "--device", "cpu", "--progress", "False"]
    proc = run_inprocess("test_ck48.py", argv)
    assert proc.returncode == 0, proc.stderr
    assert "result (fine-tuned, 2 folds)" in proc.stdout
    rows = read_csv_rows(out / "folds.csv")
    res = json.loads((out / "results.json").read_text())
    assert [r["fold"] for r in rows] == ["1", "2"] and res["protocol"] == "subject" and res["head"] == "keep"
    n = len(data)
    tested = []
    for r in rows:
        fdir = out / f"fold_{int(r['fold']):02d}"
        held = safe_load(fdir / "heldout.pt")
        subj = {data.subjects[i] for i in held["index"].tolist()}
        assert int(r["n_test"]) == held["index"].numel() and int(r["n_train"]) + int(r["n_test"]) == n
        assert set(r["test_subjects"].split()) == subj
        test_idx = set(held["index"].tolist())
        assert not subj & {data.subjects[i] for i in range(n) if i not in test_idx}   # subject-independent
        acc = 100 * float((held["probs"].argmax(1) == data.labels[held["index"]]).double().mean())
        assert math.isclose(float(r["accuracy"]), acc, abs_tol=1e-3)
        assert math.isclose(float(r["engine_test_acc"]), acc, abs_tol=1e-3)  # the engine scored the same part
        assert len(read_csv_rows(fdir / "metrics.csv")) == 1
        assert not (fdir / "last.pt").exists() and not (fdir / "best.pt").exists()
        fold_res = json.loads((fdir / "results.json").read_text())
        assert fold_res["selection"].startswith("last epoch") and fold_res["val_acc"] is None
        tested += held["index"].tolist()
    assert sorted(tested) == list(range(n))
    accs = [float(r["accuracy"]) for r in rows]
    assert math.isclose(res["mean_accuracy"], sum(accs) / 2, abs_tol=1e-3)
    assert math.isclose(res["std_accuracy"], abs(accs[0] - accs[1]) / math.sqrt(2), abs_tol=1e-3)
    cm = _cm(out / "confusion.csv")
    assert int(cm.sum()) == n and math.isclose(100 * int(cm.trace()) / n, res["pooled"]["accuracy"], abs_tol=1e-6)
    assert (out / "config.yaml").exists() and (out / "log.txt").exists()

    # the run's last.pt is its position: the flags and the folds finished, rewritten after each fold
    from nas.runtime.checkpoint import atomic_save

    pos = safe_load(out / "last.pt")
    assert pos["folds_done"] == ["1", "2"] and pos["folds"] == ["1", "2"] and pos["epoch"] == 2
    # a fold recorded as finished whose files are gone: one line, nothing rerun behind the user's back
    (out / "fold_02" / "heldout.pt").unlink()
    proc = run_inprocess("test_ck48.py", ["--resume", out, "--device", "cpu"])
    assert proc.returncode == 2 and "fold 2 is recorded as finished" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    # resume after an interruption during fold 2 (the position says fold 1 is done): fold 2 runs
    # again and gives the same figures (seeded)
    atomic_save({**pos, "folds_done": ["1"], "epoch": 1}, out / "last.pt")
    proc = run_inprocess("test_ck48.py", ["--resume", out, "--device", "cpu"])
    assert proc.returncode == 0, proc.stderr
    again = read_csv_rows(out / "folds.csv")
    assert [r["accuracy"] for r in again] == [r["accuracy"] for r in rows]
    assert safe_load(out / "last.pt")["folds_done"] == ["1", "2"]


def test_direct_test_and_reference_protocol(ck):
    from nas.engine.evaluate import checkpoint_norm, load_model_from_checkpoint, predict

    root, ckpt, ck_dir, data = ck
    out = root / "direct"
    proc = run_inprocess("test_ck48.py", ["--checkpoint", ckpt, "--data", ck_dir, "--no_finetune", "--protocol",
                                          "reference", "--folds", 2, "--save", out, "--device", "cpu"])
    assert proc.returncode == 0, proc.stderr
    res = json.loads((out / "results.json").read_text())
    assert res["mode"] == "direct" and "contempt images left out" in res["class_mapping"]
    model, state = load_model_from_checkpoint(ckpt)
    mean, std, crop = checkpoint_norm(state)
    pred = predict(model, data.images, mean=mean, std=std, crop=crop, tta="center").argmax(1)
    keep = data.labels != 6                                  # contempt: the model has no such class
    right = (pred == data.labels) & keep                     # shared classes keep their index
    rows = read_csv_rows(out / "folds.csv")
    folds = reference_folds(data.labels, data.meta["files"], 2)
    for r, f in zip(rows, folds):
        k = f.test[keep[f.test]]
        assert int(r["n_test"]) == k.numel()
        assert math.isclose(float(r["accuracy"]), 100 * float(right[k].double().mean()), abs_tol=1e-3)
    cm = _cm(out / "confusion.csv")
    assert cm.shape == (7, 7) and int(cm[6].sum()) == 0      # rows CK+ classes, columns the model's
    header = list(read_csv_rows(out / "confusion.csv")[0].keys())
    assert header[-1] == "neutral"


def test_bad_input_one_line_exit_2(ck, tmp_path):
    root, ckpt, ck_dir, _ = ck
    proc = run_inprocess("test_ck48.py", ["--checkpoint", tmp_path / "nope.pt", "--data", ck_dir])
    assert_one_line_error(proc, "nope.pt", "not found")
    eight = with_classes(ckpt, tmp_path / "eight.pt", [*FER_CLASSES, "contempt"])
    proc = run_inprocess("test_ck48.py", ["--checkpoint", eight, "--data", ck_dir, "--save", tmp_path / "o"])
    assert_one_line_error(proc, "eight.pt", "8 classes", "--head reinit")
    proc = run_inprocess("test_ck48.py", ["--checkpoint", ckpt, "--data", ck_dir, "--folds", 500,
                                          "--save", tmp_path / "o2", "--force"])
    assert_one_line_error(proc, "--folds 500", "subjects")


# ------------------------------------------------------------------------------ DDP
def _worker(rank: int, world: int, port: int, ckpt: str, data: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import test_ck48
    from nas.runtime.cli import parse_args

    args = parse_args(test_ck48.get_args_parser(),
                      ["--checkpoint", ckpt, "--data", data, "--folds", "2", "--epochs", "1", "--batch_size", "8",
                       "--device", "cpu", "--save", str(Path(out) / f"run_rank{rank}"), "--progress", "False"])
    res = test_ck48.main(args)
    torch.save({"accs": [r["accuracy"] for r in res["per_fold"]], "world": res["world_size"]},
               Path(out) / f"rank{rank}.pt")


@pytest.mark.slow  # two spawned gloo processes
@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
def test_folds_under_two_gloo_ranks_agree_and_only_rank0_writes(ck, tmp_path):
    root, ckpt, ck_dir, _ = ck
    spawn_ranks(_worker, (str(ckpt), str(ck_dir), str(tmp_path)), tmp_path)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0 == r1 and r0["world"] == 2
    assert (tmp_path / "run_rank0" / "folds.csv").exists() and not (tmp_path / "run_rank1").exists()
    rows = read_csv_rows(tmp_path / "run_rank0" / "folds.csv")
    assert [float(r["accuracy"]) for r in rows] == pytest.approx(r0["accs"], abs=1e-3)
