"""Ensembles: combiners against hand computations, greedy selection on constructed cases,
and ensemble.py on two tiny SynthFER checkpoints that differ in architecture, input size
and normalisation (files and figures recomputed from the members' saved outputs)."""
from __future__ import annotations

import json
import math

import pytest
import torch

from nas.runtime.checkpoint import read_csv_rows, safe_load
from nas.data import load_dataset
from nas.ensemble import METHODS, combine, fit_weights, greedy_select
from nas.runtime.errors import FerNasError
from tests.cli_util import assert_one_line_error, run_inprocess
from tests.xdata_util import export, make_checkpoint, with_classes


# ------------------------------------------------------------------------------ combiners
def _toy(seed: int = 0, m: int = 3, n: int = 40, c: int = 4):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(m, n, c, generator=g) * 2
    return logits, logits.softmax(-1), torch.randint(0, c, (n,), generator=g)


def test_plain_and_accuracy_weighted_combiners_match_hand_sums():
    logits, probs, y = _toy()
    m = logits.shape[0]
    s = combine("logits", logits, probs, fit_weights("logits", probs, y))
    torch.testing.assert_close(s, (logits[0] + logits[1] + logits[2]) / 3)
    s = combine("softmax", logits, probs, fit_weights("softmax", probs, y))
    torch.testing.assert_close(s, probs.mean(0))
    acc = [float((probs[k].argmax(1) == y).float().mean()) for k in range(m)]
    s = combine("accuracy_weighted", logits, probs, fit_weights("accuracy_weighted", probs, y))
    torch.testing.assert_close(s, sum(acc[k] * probs[k] for k in range(m)) / sum(acc))


def test_class_weighted_is_smoothed_precision_normalised_per_class():
    logits, probs, y = _toy(1)
    m, n, c = probs.shape
    w = fit_weights("class_weighted", probs, y)
    expect = torch.zeros(m, c, dtype=torch.float64)
    for k in range(m):                      # a plain loop: TP and predicted counts per class
        pred = probs[k].argmax(1).tolist()
        for cls in range(c):
            tp = sum(1 for i in range(n) if pred[i] == cls and y[i] == cls)
            said = sum(1 for i in range(n) if pred[i] == cls)
            expect[k, cls] = (tp + 1) / (said + 2)
    expect /= expect.sum(0, keepdim=True)
    torch.testing.assert_close(w.double(), expect, atol=1e-6, rtol=0)
    s = combine("class_weighted", logits, probs, w)
    torch.testing.assert_close(s[5, 2], sum(float(w[k, 2]) * probs[k, 5, 2] for k in range(m)), atol=1e-6, rtol=0)


def test_multiplicities_scale_weights_and_bad_inputs_are_refused():
    logits, probs, y = _toy(2)
    w = fit_weights("softmax", probs, y, [2, 1, 0])
    torch.testing.assert_close(w[:, 0], torch.tensor([2 / 3, 1 / 3, 0.0]))
    with pytest.raises(FerNasError, match="method"):
        fit_weights("median", probs, y)
    with pytest.raises(FerNasError, match="multiplicities"):
        fit_weights("softmax", probs, y, [0, 0, 0])


# ------------------------------------------------------------------------------ greedy
def _two_class(p0):
    p = torch.tensor(p0, dtype=torch.float32)
    probs = torch.stack([torch.stack([q, 1 - q], -1) for q in p])   # M×N×2
    return probs.log(), probs


def test_greedy_adds_the_complementary_member_and_skips_the_harmful_one():
    # labels 0,0,1,1; A says 0 everywhere, B says 1 everywhere (50 % each, same NLL),
    # C is wrong everywhere; the average of A and B is right everywhere.
    y = torch.tensor([0, 0, 1, 1])
    logits, probs = _two_class([[0.9, 0.9, 0.6, 0.6], [0.4, 0.4, 0.1, 0.1], [0.2, 0.2, 0.8, 0.8]])
    counts, hist = greedy_select("softmax", logits, probs, y)
    assert counts == [1, 1, 0]                       # A first (tie broken by order), then B, then stop
    assert [h["added"] for h in hist] == [0, 1] and [h["public_acc"] for h in hist] == [50.0, 100.0]


def test_greedy_with_replacement_adds_a_member_twice():
    # A alone 50 %, A+B 75 %, 2A+B 100 % (worked out by hand for the four samples):
    #   s1 (label 0): A .75, B .10 -> A+B .425 wrong, 2A+B .533 right
    #   s2 (label 1): A .55, B .05 -> right in both;  s3 (label 1): A .60, B .10 -> right in both
    #   s4 (label 0): A .90, B .20 -> right in both;  A alone is wrong on s2 and s3
    y = torch.tensor([0, 1, 1, 0])
    logits, probs = _two_class([[0.75, 0.55, 0.60, 0.90], [0.10, 0.05, 0.10, 0.20]])
    counts, hist = greedy_select("softmax", logits, probs, y, replacement=True)
    assert counts == [2, 1] and [h["public_acc"] for h in hist] == [50.0, 75.0, 100.0]
    counts, hist = greedy_select("softmax", logits, probs, y, replacement=False)
    assert counts == [1, 1] and hist[-1]["public_acc"] == 75.0


# ------------------------------------------------------------------------------ the CLI
@pytest.fixture(scope="module")
def members(tmp_path_factory):
    """Two members that differ in architecture, input size and normalisation."""
    root = tmp_path_factory.mktemp("ens")
    fer = export("fer2013", root, 420)
    data = load_dataset(fer)
    a = make_checkpoint(root / "a", "cnn_shallow", data, epochs=2, crop=40, norm=(0.45, 0.3))
    b = make_checkpoint(root / "b", "FER_V1", data, train=False, init_channels=4, layers=3, auxiliary=False)
    return root, fer, data, a, b


def test_ensemble_cli_writes_the_table_and_figures_that_recompute_from_saved_outputs(members):
    from nas.engine.evaluate import checkpoint_norm, load_model_from_checkpoint, predict

    root, fer, data, a, b = members
    out = root / "out_cw"
    proc = run_inprocess("ensemble.py", ["--model_names", f"{a.parent},{b}", "--data", fer, "--method",
                                         "class_weighted", "--save", out, "--device", "cpu", "--layers", "3"])
    assert proc.returncode == 0, proc.stderr
    assert "PrivateTest" in proc.stdout and "ensemble (class_weighted" in proc.stdout
    assert {"ensemble.csv", "methods.csv", "confusion.csv", "per_class.csv", "predictions.pt", "results.json",
            "config.yaml", "log.txt"} <= {p.name for p in out.iterdir()}
    pred = safe_load(out / "predictions.pt")
    val, test = pred["splits"]["PublicTest"], pred["splits"]["PrivateTest"]
    # each member predicted with its own crop and normalisation (checked against nas.engine.evaluate.predict)
    for k, ck in enumerate((a, b)):
        model, state = load_model_from_checkpoint(ck)
        mean, std, crop = checkpoint_norm(state)
        ref = predict(model, data.subset("PrivateTest").images, mean=mean, std=std, crop=crop, tta="center")
        torch.testing.assert_close(test["probs"][k], ref, atol=1e-5, rtol=0)
    assert checkpoint_norm(safe_load(a))[1:] == (0.3, 40)
    # every combiner's figures, recomputed by hand from the saved outputs
    methods = {r["method"]: r for r in read_csv_rows(out / "methods.csv")}
    assert set(methods) == set(METHODS)
    yv, yt = val["labels"], test["labels"]
    for meth in METHODS:
        src_v = val["logits"] if meth == "logits" else val["probs"]
        src_t = test["logits"] if meth == "logits" else test["probs"]
        accs = [float((val["probs"][k].argmax(1) == yv).double().mean()) for k in range(2)]
        if meth in ("logits", "softmax"):
            w = torch.full((2, 7), 0.5)
        elif meth == "accuracy_weighted":
            w = torch.tensor(accs)[:, None].expand(2, 7) / sum(accs)
        else:
            w = fit_weights(meth, val["probs"], yv)  # its formula is checked above
        for src, y, key in ((src_v, yv, "public_acc"), (src_t, yt, "private_acc")):
            scores = sum(w[k] * src[k] for k in range(2))
            acc = 100 * float((scores.argmax(1) == y).double().mean())
            assert math.isclose(float(methods[meth][key]), acc, abs_tol=1e-3), (meth, key)
    # the table: members' own accuracies and the ensemble row; the confusion matrix is the ensemble's
    rows = read_csv_rows(out / "ensemble.csv")
    assert len(rows) == 3 and rows[-1]["name"].startswith("ensemble (class_weighted")
    for k in range(2):
        assert math.isclose(float(rows[k]["private_acc"]),
                            100 * float((test["probs"][k].argmax(1) == yt).double().mean()), abs_tol=1e-3)
    assert rows[0]["input_size"] == "40" and rows[1]["layers"] == "3" and rows[0]["layers"] == ""
    assert rows[-1]["private_acc"] == methods["class_weighted"]["private_acc"]
    cm = torch.tensor([[int(v) for k_, v in r.items() if k_ != "true\\pred"] for r in read_csv_rows(out / "confusion.csv")])
    res = json.loads((out / "results.json").read_text())
    assert int(cm.sum()) == yt.numel() == res["n"]["PrivateTest"]
    assert math.isclose(100 * int(cm.trace()) / int(cm.sum()), res["ensemble"]["private_acc"], abs_tol=1e-6)


def test_ensemble_cli_greedy_tencrop_and_positional_members(members):
    root, fer, data, a, b = members
    out = root / "out_greedy"
    proc = run_inprocess("ensemble.py", [a, b, "--data", fer, "--greedy", "--tta", "tencrop", "--method", "softmax",
                                         "--save", out, "--device", "cpu"])
    assert proc.returncode == 0, proc.stderr
    res = json.loads((out / "results.json").read_text())
    pred = safe_load(out / "predictions.pt")
    val, test = pred["splits"]["PublicTest"], pred["splits"]["PrivateTest"]
    counts, hist = greedy_select("softmax", val["logits"], val["probs"], val["labels"])
    assert res["ensemble"]["counts"] == counts and res["tta"] == "tencrop"
    scores = sum(c * test["probs"][k] for k, c in enumerate(counts)) / sum(counts)
    assert math.isclose(res["ensemble"]["private_acc"],
                        100 * float((scores.argmax(1) == test["labels"]).double().mean()), abs_tol=1e-6)
    assert res["ensemble"]["public_acc"] == hist[-1]["public_acc"]


def test_ensemble_bad_inputs_one_line_exit_2(members, tmp_path):
    root, fer, data, a, b = members
    proc = run_inprocess("ensemble.py", ["--model_names", f"{a},{tmp_path / 'missing.pt'}", "--data", fer,
                                         "--save", tmp_path / "o1"])
    assert_one_line_error(proc, "missing.pt", "not found")
    proc = run_inprocess("ensemble.py", ["--model_names", f"{a},{b}", "--layers", "20", "--data", fer,
                                         "--save", tmp_path / "o2"])
    assert_one_line_error(proc, "best.pt", "3 layers", "--layers 20")
    eight = with_classes(a, tmp_path / "eight.pt", [*data.classes, "contempt"])
    proc = run_inprocess("ensemble.py", ["--model_names", f"{a},{eight}", "--data", fer, "--save", tmp_path / "o3"])
    assert_one_line_error(proc, "eight.pt", "8 classes")
    proc = run_inprocess("ensemble.py", ["--data", fer, "--save", tmp_path / "o4"])
    assert_one_line_error(proc, "no ensemble members")
