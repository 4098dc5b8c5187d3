"""Evaluation metrics against hand-computed values, test-time views, bootstrap CI."""
import math

import pytest
import torch
from torch import nn

from nas.engine import evaluate as ev
from nas.runtime.errors import FerNasError


def test_confusion_matrix_and_per_class_by_hand():
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    pred = torch.tensor([0, 0, 1, 1, 2, 2, 2, 0])
    cm = ev.confusion_matrix(pred, labels, 3)
    assert cm.tolist() == [[2, 1, 0], [0, 1, 1], [1, 0, 2]]
    rows = ev.per_class_metrics(cm, ["a", "b", "c"])
    # class a: precision 2/3, recall 2/3; b: 1/2, 1/2; c: 2/3, 2/3
    for r, (p, rc) in zip(rows, [(2 / 3, 2 / 3), (1 / 2, 1 / 2), (2 / 3, 2 / 3)]):
        assert r["precision"] == pytest.approx(p) and r["recall"] == pytest.approx(rc)
        assert r["f1"] == pytest.approx(2 * p * rc / (p + rc))
    assert [r["support"] for r in rows] == [3, 2, 3]
    assert ev.accuracy(pred, labels) == pytest.approx(5 / 8)


def test_never_predicted_class_has_zero_precision():
    cm = ev.confusion_matrix(torch.tensor([0, 0]), torch.tensor([0, 1]), 2)
    rows = ev.per_class_metrics(cm, ["a", "b"])
    assert rows[1] == {"class": "b", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_out_of_range_label_is_one_line_error():
    with pytest.raises(FerNasError, match="outside"):
        ev.confusion_matrix(torch.tensor([0]), torch.tensor([5]), 3)


def test_topk_accuracy_by_hand():
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7], [0.4, 0.35, 0.25]])
    labels = torch.tensor([1, 0, 2])
    assert ev.topk_accuracy(probs, labels, 1) == 0.0
    assert ev.topk_accuracy(probs, labels, 2) == pytest.approx(1 / 3)  # only row 0 (label 1 second)
    assert ev.topk_accuracy(probs, labels, 3) == 1.0


def test_bootstrap_ci_seeded_and_matches_normal_approximation():
    n, p = 2000, 0.7
    correct = torch.zeros(n, dtype=torch.bool)
    correct[: int(n * p)] = True
    lo, hi = ev.bootstrap_ci(correct, n_boot=2000, seed=1)
    assert (lo, hi) == ev.bootstrap_ci(correct, n_boot=2000, seed=1)
    assert lo < p < hi
    half = 1.96 * math.sqrt(p * (1 - p) / n)  # binomial normal approximation
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.15)
    assert ev.bootstrap_ci(torch.ones(50, dtype=torch.bool), n_boot=100) == (1.0, 1.0)


class _Probe(nn.Module):
    """Logits depend on the crop's content so that views differ."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.fc = nn.Linear(2, 7)

    def forward(self, x):
        feats = torch.stack([x.mean((1, 2, 3)), x[..., :4, :4].mean((1, 2, 3))], 1)
        return self.fc(feats)


def test_predict_averages_softmax_over_views():
    from nas.data.augment import eval_views

    model = _Probe().eval()
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (5, 1, 48, 48), dtype=torch.uint8, generator=g)
    probs = ev.predict(model, images, mean=0.5, std=0.25, crop=44, tta="tencrop", batch_size=2)
    views = eval_views(images, "tencrop", 44, 0.5, 0.25)
    ref = torch.stack([model(v).softmax(1) for v in views]).mean(0)
    torch.testing.assert_close(probs, ref)
    center = ev.predict(model, images, mean=0.5, std=0.25, crop=44, tta="center")
    torch.testing.assert_close(center, model(views[4]).softmax(1))
    assert not torch.allclose(center, probs)
    with pytest.raises(FerNasError):
        ev.predict(model, images, mean=0.5, std=0.25, crop=44, tta="sixcrop")


def test_summarize_and_evaluate_split_agree():
    model = _Probe().eval()
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (40, 1, 48, 48), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 7, (40,), generator=g)
    probs = ev.predict(model, images, mean=0.5, std=0.25, crop=44, tta="center")
    s = ev.summarize(probs, labels, [str(i) for i in range(7)], n_boot=200)
    r = ev.evaluate_split(model, images, labels, mean=0.5, std=0.25, crop=44, tta="center")
    assert s["accuracy"] == pytest.approx(r["acc"]) == pytest.approx(100 * float((probs.argmax(1) == labels).float().mean()))
    nll = -probs[torch.arange(40), labels].log().mean()
    assert r["loss"] == pytest.approx(float(nll), rel=1e-5)
    assert sum(map(sum, s["confusion_matrix"])) == 40
    assert s["ci95"][0] <= s["accuracy"] <= s["ci95"][1]
