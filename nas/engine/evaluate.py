"""Evaluation: accuracy with test-time views, per-class figures, confusion matrix,
top-2 accuracy and a bootstrap confidence interval.

Predictions are made in batches on the model's device from the uint8 images
(``eval_views`` crops and normalises on the device); probabilities of the
views are averaged (``tencrop``: the mean softmax of ten crops). Results stay
on the device until one transfer at the end.

``fernas evaluate --checkpoint RUN/best.pt --data fer2013.csv`` rebuilds the model
from the checkpoint alone and prints JSON (``--out DIR`` also writes the confusion
matrix and per-class CSVs).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import nn

from nas.data.dataset import FERData
from nas.runtime.errors import FerNasError

if TYPE_CHECKING:
    from nas.runtime.distributed import DistInfo

__all__ = [
    "TTA_MODES", "predict", "evaluate_split", "accuracy", "topk_accuracy", "confusion_matrix",
    "per_class_metrics", "bootstrap_ci", "summarize", "load_model_from_checkpoint", "checkpoint_norm",
    "evaluate_checkpoint", "write_csvs",
]

TTA_MODES = ("none", "center", "tencrop")


# ----------------------------------------------------------------------------- metrics
def accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of ``pred == labels`` (both int tensors of length N), in [0, 1]."""
    if labels.numel() == 0:
        return float("nan")
    return float((pred == labels).float().mean())


def topk_accuracy(probs: torch.Tensor, labels: torch.Tensor, k: int = 2) -> float:
    """Fraction of samples whose label is among the ``k`` highest scores."""
    if labels.numel() == 0:
        return float("nan")
    k = min(k, probs.shape[1])
    top = probs.topk(k, dim=1).indices
    return float((top == labels[:, None]).any(dim=1).float().mean())


def confusion_matrix(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """C×C int64 counts; row = true class, column = predicted class."""
    pred = pred.to(torch.int64).cpu()
    labels = labels.to(torch.int64).cpu()
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise FerNasError(f"labels outside 0..{num_classes - 1} cannot be scored")
    return torch.bincount(labels * num_classes + pred, minlength=num_classes * num_classes).view(num_classes, num_classes)


def per_class_metrics(cm: torch.Tensor, classes: Sequence[str]) -> list[dict[str, Any]]:
    """Precision, recall, F1 and support per class from a confusion matrix.
    A class never predicted has precision 0 (and F1 0), as scikit-learn's default."""
    cm = cm.double()
    tp = cm.diag()
    support = cm.sum(1)
    predicted = cm.sum(0)
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(support > 0, tp / support.clamp(min=1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-12), torch.zeros_like(tp))
    return [{"class": c, "precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
             "support": int(support[i])} for i, c in enumerate(classes)]


def bootstrap_ci(correct: torch.Tensor, n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                 chunk: int = 256) -> tuple[float, float]:
    """Percentile bootstrap interval of accuracy from per-sample correctness.

    Resamples N indices with replacement ``n_boot`` times (seeded, vectorised in
    chunks so memory stays at ``chunk × N``)."""
    c = correct.detach().to("cpu", torch.float32).flatten()
    n = c.numel()
    if n == 0 or n_boot <= 0:
        return float("nan"), float("nan")
    g = torch.Generator().manual_seed(int(seed))
    accs = []
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        idx = torch.randint(0, n, (b, n), generator=g)
        accs.append(c[idx].mean(1))
    a = torch.cat(accs).double()
    alpha = (1.0 - level) / 2
    lo, hi = torch.quantile(a, torch.tensor([alpha, 1 - alpha], dtype=torch.float64)).tolist()
    return float(lo), float(hi)


# ----------------------------------------------------------------------------- prediction
def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, *, mean: float, std: float, crop: int,
            tta: str = "center", batch_size: int = 256, amp: bool = False,
            channels_last: bool = False) -> torch.Tensor:
    """Class probabilities (N×C float32, on the model's device) for uint8 ``images``
    (N×1×H×W, any device), averaging softmax over the test-time views of ``tta``."""
    from nas.data.augment import eval_views
    from nas.runtime.device import autocast

    if tta not in TTA_MODES:
        raise FerNasError(f"--tta {tta!r}: unknown view (choose from {', '.join(TTA_MODES)})")
    device = _model_device(model)
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, images.shape[0], batch_size):
            x = images[start:start + batch_size].to(device, non_blocking=True)
            views = eval_views(x, tta, crop, mean, std)  # V×B×1×c×c
            v, b = views.shape[:2]
            flat = views.reshape(v * b, *views.shape[2:])
            if channels_last:
                flat = flat.contiguous(memory_format=torch.channels_last)
            with autocast(device, amp):
                logits = model(flat)
            if isinstance(logits, (tuple, list)):
                logits = logits[0]
            probs = logits.float().softmax(dim=1).view(v, b, -1).mean(0)
            out.append(probs)
    finally:
        model.train(was_training)
    if not out:
        return torch.zeros(0, 0, device=device)
    return torch.cat(out)


def evaluate_split(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, mean: float, std: float,
                   crop: int, tta: str = "center", batch_size: int = 256, amp: bool = False,
                   channels_last: bool = False, dist_info: DistInfo | None = None) -> dict[str, float]:
    """Accuracy (%) and loss (NLL of the view-averaged probabilities) of one split.

    Under DDP (``dist_info.world_size`` > 1) each rank scores a disjoint shard and
    the sums are all-reduced, so every rank returns the same figures. One host
    sync at the end."""
    from nas.runtime.distributed import all_reduce_sum

    device = _model_device(model)
    if dist_info is not None and dist_info.world_size > 1:
        images = images[dist_info.rank::dist_info.world_size]
        labels = labels[dist_info.rank::dist_info.world_size]
    labels = labels.to(device)
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # correct, nll, n
    if labels.numel():
        probs = predict(model, images, mean=mean, std=std, crop=crop, tta=tta, batch_size=batch_size,
                        amp=amp, channels_last=channels_last)
        sums[0] = (probs.argmax(1) == labels).sum()
        sums[1] = -probs.gather(1, labels[:, None]).clamp_min(1e-12).log().sum()
        sums[2] = labels.numel()
    all_reduce_sum(sums)
    correct, nll, n = sums.tolist()
    if n == 0:
        return {"acc": float("nan"), "loss": float("nan"), "n": 0}
    return {"acc": 100.0 * correct / n, "loss": nll / n, "n": int(n)}


def summarize(probs: torch.Tensor, labels: torch.Tensor, classes: Sequence[str], *, n_boot: int = 1000,
              seed: int = 0) -> dict[str, Any]:
    """Accuracy, top-2 and the bootstrap 95 % CI (all in %), macro F1, per-class
    precision/recall/F1 (fractions) and the confusion matrix (nested lists) of one
    set of predictions."""
    probs = probs.float().cpu()
    labels = labels.cpu()
    pred = probs.argmax(1)
    correct = pred == labels
    cm = confusion_matrix(pred, labels, len(classes))
    per_class = per_class_metrics(cm, classes)
    lo, hi = bootstrap_ci(correct, n_boot=n_boot, seed=seed)
    return {
        "n": int(labels.numel()),
        "accuracy": 100 * accuracy(pred, labels),
        "top2_accuracy": 100 * topk_accuracy(probs, labels, 2),
        "ci95": [100 * lo, 100 * hi],
        "macro_f1": float(sum(r["f1"] for r in per_class) / max(1, len(per_class))),
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
    }


# ----------------------------------------------------------------------------- checkpoints
def load_model_from_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model from a training checkpoint alone (``model_spec`` + weights),
    in eval mode on ``device``. Returns ``(model, checkpoint_dict)``."""
    from nas.runtime.checkpoint import safe_load
    from nas.models import model_from_spec

    ckpt = safe_load(path, map_location="cpu")
    p = ckpt.get("path", str(path))
    for key in ("model", "model_spec"):
        if key not in ckpt:
            raise FerNasError(f"{p}: not a fer-nas model checkpoint (no {key!r} entry)")
    try:
        model = model_from_spec(ckpt["model_spec"], where=str(p))
    except FerNasError as e:
        raise FerNasError(f"{p}: {e}") from None
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise FerNasError(f"{p}: weights do not fit the architecture it names ({' '.join(str(e).split())[:160]})") from None
    model.to(device).eval()
    return model, ckpt


def checkpoint_norm(ckpt: dict) -> tuple[float, float, int]:
    """``(mean, std, input_size)`` stored by the trainer."""
    norm = ckpt.get("normalization") or {}
    try:
        return float(norm["mean"]), float(norm["std"]), int(ckpt["input_size"])
    except (KeyError, TypeError, ValueError):
        raise FerNasError(f"{ckpt.get('path', 'checkpoint')}: missing normalisation or input size") from None


def checkpoint_image_size(ckpt: dict) -> int:
    """The side of the faces a checkpoint was trained on (48 when it predates the record)."""
    pre = ckpt.get("preprocess")
    try:
        return int(pre["image_size"]) if isinstance(pre, dict) and "image_size" in pre else 48
    except (TypeError, ValueError):
        raise FerNasError(f"{ckpt.get('path', 'checkpoint')}: preprocess.image_size is not a number") from None


def evaluate_checkpoint(path: str | Path, data: FERData, *, split: str = "PrivateTest", tta: Sequence[str] = TTA_MODES,
                        device: torch.device | str = "cpu", batch_size: int = 256, n_boot: int = 1000,
                        seed: int = 0, amp: bool = False) -> dict[str, Any]:
    """Score a checkpoint on one split of ``data`` (a :class:`FERData`) with each
    view in ``tta``. Class names of the checkpoint and the data must agree."""
    model, ckpt = load_model_from_checkpoint(path, device)
    mean, std, crop = checkpoint_norm(ckpt)
    classes = list(ckpt.get("classes") or data.classes)
    if list(data.classes) != classes:
        raise FerNasError(f"{path}: the model's classes {classes} differ from the data's {list(data.classes)}")
    part = data.subset(split) if split != "all" else data
    if len(part) == 0:
        raise FerNasError(f"{data.source}: no {split} samples to evaluate")
    labels = part.labels.cpu()
    device = torch.device(device)
    out: dict[str, Any] = {"checkpoint": str(ckpt.get("path", path)), "split": split, "n": len(part),
                           "epoch": ckpt.get("epoch"), "classes": classes, "views": {}}
    for mode in tta:
        probs = predict(model, part.images, mean=mean, std=std, crop=crop, tta=mode, batch_size=batch_size,
                        amp=amp and device.type == "cuda")
        out["views"][mode] = summarize(probs, labels, classes, n_boot=n_boot, seed=seed)
    return out


def write_csvs(result: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """``confusion_<view>.csv`` (rows true, columns predicted) and ``per_class_<view>.csv``."""
    from nas.runtime.checkpoint import write_csv

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    classes = result["classes"]
    for mode, r in result["views"].items():
        rows = [{"true\\pred": c, **{p: r["confusion_matrix"][i][j] for j, p in enumerate(classes)}}
                for i, c in enumerate(classes)]
        p = out / f"confusion_{mode}.csv"
        write_csv(p, rows, ["true\\pred", *classes])
        written.append(p)
        p = out / f"per_class_{mode}.csv"
        write_csv(p, r["per_class"], ["class", "precision", "recall", "f1", "support"])
        written.append(p)
    return written
