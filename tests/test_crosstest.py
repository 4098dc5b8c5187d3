"""``fernas crosstest``: a checkpoint on any dataset. The direct test on an official test part
recomputed by hand, classes matched by name (AffectNet's contempt left out and counted), k-fold
fine-tuning on data without subject ids (stratified folds covering every image once), the
CK+ neutral/contempt mismatch refused under --head keep, and leave-one-subject-out refused
without subject ids."""
from __future__ import annotations

import json
import math

import pytest
import torch

from nas.data import load_dataset
from nas.data.dataset import SPLITS
from nas.runtime.checkpoint import read_csv_rows
from tests.cli_util import assert_one_line_error, run_inprocess
from tests.xdata_util import export, make_checkpoint


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from nas.data import synthfer

    root = tmp_path_factory.mktemp("crosstest")
    fer = load_dataset(export("fer2013", root, 280))
    ckpt = make_checkpoint(root / "src", "cnn_shallow", fer, epochs=1)
    raf = root / "raf"
    synthfer.export("rafdb", raf, size=210, seed=3)
    aff = root / "aff"
    synthfer.export("affectnet", aff, size=210, seed=4)
    return root, ckpt, raf, aff


def _probs(ckpt, images):
    from nas.engine.evaluate import checkpoint_norm, load_model_from_checkpoint, predict

    model, state = load_model_from_checkpoint(ckpt)
    mean, std, crop = checkpoint_norm(state)
    return predict(model, images, mean=mean, std=std, crop=crop, tta="center")


def test_direct_test_on_the_official_test_part_recomputed(setup):
    root, ckpt, raf, _ = setup
    out = root / "direct_raf"
    proc = run_inprocess("nas.apps.crosstest", ["--checkpoint", ckpt, "--data", raf, "--save", out, "--device", "cpu"])
    assert proc.returncode == 0, proc.stderr
    data = load_dataset(raf)
    test = (data.split == SPLITS.index("PrivateTest")).nonzero().flatten()
    right = _probs(ckpt, data.images[test]).argmax(1) == data.labels[test]
    res = json.loads((out / "results.json").read_text())
    assert res["mode"] == "direct" and res["folds"] == 1 and res["dataset"] == "rafdb"
    assert res["pooled"]["n"] == test.numel() and test.numel() < len(data)
    assert math.isclose(res["pooled"]["accuracy"], 100 * float(right.double().mean()), abs_tol=1e-6)
    rows = read_csv_rows(out / "parts.csv")
    assert [r["part"] for r in rows] == ["PrivateTest"] and rows[0]["n_left_out"] == "0"
    # --split all tests every image
    out2 = root / "direct_raf_all"
    proc = run_inprocess("nas.apps.crosstest", ["--checkpoint", ckpt, "--data", raf, "--split", "all", "--save", out2,
                                                 "--device", "cpu"])
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out2 / "results.json").read_text())["pooled"]["n"] == len(data)


def test_classes_the_model_lacks_are_left_out_and_counted(setup):
    root, ckpt, _, aff = setup
    out = root / "direct_aff8"
    proc = run_inprocess("nas.apps.crosstest", ["--checkpoint", ckpt, "--data", aff, "--classes", "8", "--split", "all",
                                                 "--save", out, "--device", "cpu"])
    assert proc.returncode == 0, proc.stderr
    data = load_dataset(aff, classes=["8"])
    contempt = int((data.labels == data.classes.index("contempt")).sum())
    rows = read_csv_rows(out / "parts.csv")
    assert int(rows[0]["n_left_out"]) == contempt and int(rows[0]["n_test"]) == len(data) - contempt
    res = json.loads((out / "results.json").read_text())
    assert "contempt images left out" in res["class_mapping"]


def test_kfold_finetuning_without_subject_ids_covers_every_image_once(setup):
    root, ckpt, raf, _ = setup
    out = root / "folds"
    proc = run_inprocess("nas.apps.crosstest", ["--checkpoint", ckpt, "--data", raf, "--finetune", "folds", "--folds", 3,
                                                 "--epochs", 1, "--batch_size", 32, "--save", out, "--device", "cpu"])
    assert proc.returncode == 0, proc.stderr
    data = load_dataset(raf)
    res = json.loads((out / "results.json").read_text())
    assert res["mode"] == "finetune" and res["folds"] == 3
    assert res["coverage"]["never_tested"] == 0 and res["coverage"]["tested_more_than_once"] == 0
    assert "stratified folds of images" in res["protocol"]
    rows = read_csv_rows(out / "folds.csv")
    assert sum(int(r["n_test"]) for r in rows) == len(data) == res["pooled"]["n"]
    accs = [float(r["accuracy"]) for r in rows]
    assert math.isclose(res["mean_accuracy"], sum(accs) / 3, abs_tol=1e-3)
    # per-class counts of the folds stay near a third each (stratified)
    assert all(abs(int(r["n_test"]) - len(data) / 3) <= 7 for r in rows)


def test_head_keep_refuses_other_classes_and_loso_needs_subjects(setup, tmp_path):
    root, ckpt, raf, aff = setup
    proc = run_inprocess("nas.apps.crosstest", ["--checkpoint", ckpt, "--data", aff, "--classes", "8", "--finetune",
                                                 "folds", "--save", tmp_path / "a", "--device", "cpu"])
    assert_one_line_error(proc, "the checkpoint has 7 classes, the data 8", "--head reinit")
    proc = run_inprocess("nas.apps.crosstest", ["--checkpoint", ckpt, "--data", raf, "--finetune", "loso",
                                                 "--save", tmp_path / "b", "--device", "cpu"])
    assert_one_line_error(proc, "gives no subject ids", "--finetune folds")
    # and a reinitialised head fine-tunes for the eight classes
    out = tmp_path / "c"
    proc = run_inprocess("nas.apps.crosstest", ["--checkpoint", ckpt, "--data", aff, "--classes", "8", "--finetune",
                                                 "folds", "--folds", 2, "--head", "reinit", "--epochs", 1,
                                                 "--batch_size", 32, "--save", out, "--device", "cpu"])
    assert proc.returncode == 0, proc.stderr
    res = json.loads((out / "results.json").read_text())
    assert len(res["classes"]) == 8 and "re-initialised" in res["class_mapping"]
