"""Cross-dataset tests of a trained checkpoint: CK+ folds, JAFFE subjects, and any dataset
the readers know (``fernas crosstest``, :func:`crosstest_folds`).

Two modes, one loop (:func:`cross_validate`):

* **fine-tune** (default): for each fold a fresh copy of the checkpoint is trained
  on the fold's training part with the engine (:class:`nas.engine.trainer.Trainer`) and
  tested on the held-out part. The held-out part is never used for model
  selection: the fold's figure is the last epoch's (the fold dataset has a
  Training and a PrivateTest split and no PublicTest).
* **direct** (``--no_finetune``): the checkpoint predicts every image as it is;
  the per-fold figures are the same predictions sliced by fold.

Folds:

* :func:`subject_folds` — CK+'s default: no subject in both parts of any fold.
  Subjects are dealt to folds greedily, largest first (ties in a seeded random
  order), each to the fold that keeps the per-class share of every fold closest
  to 1/k and the fold sizes closest to equal (stratified group k-fold).
* :func:`reference_folds` — the reference implementation's split, for comparison.
  Images are ordered by class (anger, disgust, fear, happy, sadness, surprise,
  contempt: the CK+48 folders, i.e. CK+'s label order here) and by file name
  within a class; fold ``f < k`` tests the ``f``-th contiguous block of
  12/18/9/21/9/24/6 images of each class, fold ``k`` the last block of each
  class. Those counts are the reference's for CK+48's 135/177/75/207/84/249/54
  images (near a tenth of each class, not exactly). The reference's quirks are
  kept, and logged: blocks are cut from one running index, so fold 9's fear
  block (9 x 9 = 81 > 75 images) runs 6 images into happy; folds 9 and 10
  overlap; 15 anger and 9 surprise images are never tested; contiguous blocks
  cut through subjects and sequences, so frames of one person sit on both
  sides (what makes the reference's 99 % optimistic). For other class sizes or
  fold counts the block sizes scale: ``round(block * n_class / 135-style count
  * 10 / k)``, at least 1.
* :func:`loso_folds` — leave one subject out (JAFFE).

Class mapping. CK+ uses FER2013's order with *contempt* at index 6 where FER has
*neutral*. Fine-tuning with ``head="keep"`` (the reference's way) keeps the whole
classifier, so the unit trained for neutral becomes contempt's; ``head="reinit"``
gives the classifier (and the auxiliary head's classifier) fresh weights for the
data's classes, which also allows a checkpoint with another class count. A direct
test matches classes by name: images of a class the model lacks (contempt) are left
out, and a prediction of a class the data lacks (neutral) counts as wrong;
``accuracy_restricted`` takes the argmax over the shared classes only.
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from nas.data.dataset import FERData
from nas.engine.session import Session
from nas.engine.trainer import TrainConfig
from nas.runtime.checkpoint import RunDir
from nas.runtime.distributed import DistInfo
from nas.runtime.errors import FerNasError

__all__ = ["REFERENCE_BLOCKS", "REFERENCE_COUNTS", "REFERENCE_FOLDERS", "HEADS", "Fold", "subject_folds",
           "reference_folds", "loso_folds", "fold_report", "head_keys", "prepare_model", "fold_dataset",
           "direct_scores", "cross_validate", "mean_std", "add_crossdata_args", "checked_checkpoint", "run_crossdata",
           "plan_crossdata", "check_crossdata_args", "CrossPlan",
           "CROSSVAL_KIND"]

#: The reference's CK+48 class order (its h5 file: folders in this order, files sorted by name).
REFERENCE_FOLDERS = ("anger", "disgust", "fear", "happy", "sadness", "surprise", "contempt")
#: Images per class per test fold in the reference's 10-fold split, in REFERENCE_FOLDERS order.
REFERENCE_BLOCKS = (12, 18, 9, 21, 9, 24, 6)
#: CK+48's images per class, same order (981 in all).
REFERENCE_COUNTS = (135, 177, 75, 207, 84, 249, 54)
HEADS = ("keep", "reinit")


@dataclass
class Fold:
    """One split of the samples: ``test`` is held out, ``train`` fine-tunes."""

    name: str
    train: torch.Tensor
    test: torch.Tensor
    test_subjects: list[str] = field(default_factory=list)


def _fold(name: str, test: Sequence[int] | np.ndarray, n: int, subjects: Sequence[str] | None) -> Fold:
    test_t = torch.as_tensor(np.unique(np.asarray(test, dtype=np.int64)), dtype=torch.int64)
    mask = torch.ones(n, dtype=torch.bool)
    mask[test_t] = False
    subj = sorted({subjects[i] for i in test_t.tolist()}) if subjects is not None else []
    return Fold(name=name, train=mask.nonzero().flatten(), test=test_t, test_subjects=subj)


# ----------------------------------------------------------------------------- folds
def subject_folds(subjects: Sequence[str], labels: torch.Tensor | Sequence[int], k: int = 10, seed: int = 0,
                  num_classes: int | None = None) -> list[Fold]:
    """``k`` folds with no subject on both sides, balanced in size and class mix (seeded)."""
    subjects = list(subjects)
    lab = np.asarray(torch.as_tensor(labels).cpu(), dtype=np.int64)
    n = len(lab)
    if len(subjects) != n:
        raise FerNasError(f"{len(subjects)} subject ids for {n} samples")
    names = sorted(set(subjects))
    if k < 2:
        raise FerNasError(f"--folds {k}: need at least 2 folds")
    if len(names) < k:
        raise FerNasError(f"--folds {k}: only {len(names)} subjects; subject-independent folds need at least one "
                          "subject per fold")
    c = int(num_classes or (lab.max() + 1 if n else 1))
    sid = np.array([names.index(s) for s in subjects]) if n else np.zeros(0, np.int64)
    per_subject = np.zeros((len(names), c), dtype=np.float64)
    np.add.at(per_subject, (sid, lab), 1.0)
    class_total = np.maximum(per_subject.sum(0), 1.0)
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(len(names))
    order = shuffled[np.argsort(-per_subject[shuffled].sum(1), kind="stable")]  # largest first, ties random
    fold_counts = np.zeros((k, c), dtype=np.float64)
    owner = np.full(len(names), -1, dtype=np.int64)
    for rank, s in enumerate(order):
        if rank < k:  # the k largest subjects open one fold each: no fold stays empty
            f = rank
        else:
            trial = fold_counts[None, :, :] + np.eye(k)[:, :, None] * per_subject[s][None, None, :]  # k×k×c
            share = trial / class_total                                       # per class, share held by each fold
            sizes = trial.sum(2)
            cost = share.std(1).mean(1) + sizes.std(1) / max(1.0, n)
            f = int(np.argmin(np.round(cost, 12)))
        fold_counts[f] += per_subject[s]
        owner[s] = f
    folds = []
    for f in range(k):
        members = set(np.nonzero(owner == f)[0].tolist())
        test = [i for i in range(n) if sid[i] in members]
        folds.append(_fold(str(f + 1), test, n, subjects))
    return folds


def reference_blocks(class_sizes: Sequence[int], k: int = 10) -> list[int]:
    """The reference's per-class test block sizes: exactly 12/18/9/21/9/24/6 for CK+48's class
    sizes and 10 folds, otherwise scaled to the class sizes and fold count (at least 1)."""
    sizes = [int(s) for s in class_sizes]
    if k == 10 and tuple(sizes) == REFERENCE_COUNTS:
        return list(REFERENCE_BLOCKS)
    if len(sizes) != len(REFERENCE_BLOCKS):
        raise FerNasError(f"--protocol reference needs CK+'s 7 classes, the data has {len(sizes)}")
    return [max(1, int(round(b * s / rc * 10 / k))) for b, s, rc in zip(REFERENCE_BLOCKS, sizes, REFERENCE_COUNTS)]


def reference_folds(labels: torch.Tensor | Sequence[int], keys: Sequence[str], k: int = 10,
                    subjects: Sequence[str] | None = None, blocks: Sequence[int] | None = None) -> list[Fold]:
    """The reference's contiguous per-class blocks (see the module docstring), quirks included.
    ``keys`` order the images within a class (file names); labels are in CK+'s order."""
    lab = np.asarray(torch.as_tensor(labels).cpu(), dtype=np.int64)
    n = len(lab)
    if k < 2:
        raise FerNasError(f"--folds {k}: need at least 2 folds")
    order = sorted(range(n), key=lambda i: (int(lab[i]), str(keys[i])))  # class by class, files sorted
    sizes = np.bincount(lab, minlength=len(REFERENCE_BLOCKS))
    blocks = list(blocks) if blocks is not None else reference_blocks(sizes.tolist(), k)
    start = np.concatenate([[0], np.cumsum(sizes)])
    folds = []
    for f in range(1, k + 1):
        pos = []
        for j, t in enumerate(blocks):
            if f != k:
                pos += [int(start[j]) + (f - 1) * t + q for q in range(t)]
            else:  # the last fold counts back from the end of each class
                pos += [int(start[j + 1]) - 1 - q for q in range(t)]
        pos = [p for p in pos if 0 <= p < n]
        folds.append(_fold(str(f), [order[p] for p in pos], n, subjects))
    return folds


def loso_folds(subjects: Sequence[str], only: Sequence[str] | None = None) -> list[Fold]:
    """One fold per subject (sorted), holding that subject out; ``only`` keeps some subjects' folds."""
    subjects = list(subjects)
    names = sorted(set(subjects))
    if len(names) < 2:
        raise FerNasError(f"leave-one-subject-out needs at least 2 subjects, the data has {len(names)}")
    if only:
        wanted = [s.upper() for s in only]
        missing = [s for s in wanted if s not in names]
        if missing:
            raise FerNasError(f"--subjects {','.join(missing)}: not in the data (subjects: {', '.join(names)})")
        names = [s for s in names if s in wanted]
    n = len(subjects)
    return [_fold(s, [i for i in range(n) if subjects[i] == s], n, subjects) for s in names]


def crosstest_folds(data: FERData, how: str, *, k: int = 10, seed: int = 0, split: str = "auto",
                    only: Sequence[str] | None = None) -> tuple[list[Fold], str]:
    """The folds of ``fernas crosstest`` and a phrase for the log.

    ``how="none"`` (direct test): one part holding the images ``split`` names (``auto``:
    PrivateTest where the data has its own test part beside training images, else every
    image). ``folds``: ``k`` subject-independent folds where the reader gives subject ids,
    else stratified folds of single images (said in the phrase). ``loso``: one fold per
    subject (needs subject ids)."""
    from nas.data.dataset import SPLITS

    n = len(data)
    if how == "none":
        test = data.split == SPLITS.index("PrivateTest")
        if split == "auto":
            split = "PrivateTest" if test.any() and not test.all() else "all"
        if split != "all":
            if split not in SPLITS:
                raise FerNasError(f"--split {split!r}: choose from auto, all, {', '.join(SPLITS)}")
            idx = (data.split == SPLITS.index(split)).nonzero().flatten().cpu()
            if not idx.numel():
                raise FerNasError(f"{data.source}: no {split} images to test (try --split all)")
        else:
            idx = torch.arange(n)
        return [_fold(split, idx.numpy(), n, data.subjects)], f"direct test on {split} ({idx.numel()} images)"
    if how == "loso":
        if data.subjects is None:
            raise FerNasError(f"{data.source}: the {data.format} reader gives no subject ids; --finetune loso needs "
                              "them (use --finetune folds)")
        return loso_folds(data.subjects, only), "leave-one-subject-out"
    if how != "folds":
        raise FerNasError(f"--finetune {how!r}: choose from none, folds, loso")
    if data.subjects is not None:
        return (subject_folds(data.subjects, data.labels, k, seed=seed, num_classes=len(data.classes)),
                f"{k} subject-independent folds")
    ids = [str(i) for i in range(n)]  # one "subject" per image: stratified k-fold
    return (subject_folds(ids, data.labels, k, seed=seed, num_classes=len(data.classes)),
            f"{k} stratified folds of images (the {data.format} reader gives no subject ids, so a person may be "
            "on both sides)")


def fold_report(folds: Sequence[Fold], n: int, subjects: Sequence[str] | None = None) -> dict[str, Any]:
    """How the folds cover the samples: images never tested, tested more than once, and
    folds with a test subject also in their training part (subject leakage)."""
    times = torch.zeros(n, dtype=torch.int64)
    leaks = []
    for f in folds:
        times[f.test] += 1
        if subjects is not None:
            train_subj = {subjects[i] for i in f.train.tolist()}
            shared = sorted(set(f.test_subjects) & train_subj)
            if shared:
                leaks.append({"fold": f.name, "subjects_on_both_sides": len(shared)})
    return {"never_tested": int((times == 0).sum()), "tested_more_than_once": int((times > 1).sum()),
            "folds_with_subject_leakage": leaks}


# ----------------------------------------------------------------------------- models
def head_keys(spec: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> set[str]:
    """Names of the weights whose shape depends on the class count (the classifier and the
    auxiliary classifier), found by building the architecture with one class more."""
    from nas.models import model_from_spec

    kwargs = dict(spec.get("kwargs") or {})
    kwargs["num_classes"] = int(kwargs.get("num_classes", 7)) + 1
    probe = model_from_spec({**spec, "kwargs": kwargs}).state_dict()
    return {k for k, v in state.items() if k in probe and probe[k].shape != v.shape}


def prepare_model(path: str | Path, classes: Sequence[str], head: str = "keep", *, seed: int = 0,
                  device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any], str]:
    """A copy of the checkpoint's model to fine-tune for ``classes``.

    ``keep``: the whole network, classifier included, class ``i`` of the checkpoint becomes
    class ``i`` of the data (needs the same class count; names must agree except a
    checkpoint's *neutral* where the data has *contempt*). ``reinit``: the classifier(s)
    start fresh (seeded) with ``len(classes)`` outputs. Returns ``(model, checkpoint,
    description of the mapping)``."""
    from nas.engine.evaluate import load_model_from_checkpoint
    from nas.models import model_from_spec

    if head not in HEADS:
        raise FerNasError(f"--head {head!r}: choose from {', '.join(HEADS)}")
    model, ckpt = load_model_from_checkpoint(path, "cpu")
    where = ckpt.get("path", str(path))
    src = [str(c) for c in (ckpt.get("classes") or [])]
    classes = list(classes)
    if head == "keep":
        if len(src) != len(classes):
            raise FerNasError(f"{where}: the checkpoint has {len(src)} classes, the data {len(classes)} "
                              f"({', '.join(classes)}); use --head reinit to fine-tune a fresh classifier")
        bad = [(i, a, b) for i, (a, b) in enumerate(zip(src, classes)) if a != b and not (a == "neutral" and b == "contempt")]
        if bad:
            i, a, b = bad[0]
            raise FerNasError(f"{where}: class {i} is {a!r} in the checkpoint but {b!r} in the data; "
                              "use --head reinit to fine-tune a fresh classifier")
        renamed = [f"{a}->{b}" for a, b in zip(src, classes) if a != b]
        how = "classifier kept" + (f" ({', '.join(renamed)} by index)" if renamed else "")
        return model.to(device), ckpt, how
    spec = dict(ckpt["model_spec"])
    kwargs = dict(spec.get("kwargs") or {})
    old = ckpt["model"]
    drop = head_keys(spec, old)
    kwargs["num_classes"] = len(classes)
    torch.manual_seed(int(seed))
    fresh = model_from_spec({**spec, "kwargs": kwargs}, where=str(where))
    fresh_state = fresh.state_dict()
    keep = {k: v for k, v in old.items() if k not in drop and k in fresh_state and fresh_state[k].shape == v.shape}
    fresh.load_state_dict(keep, strict=False)
    return fresh.to(device), ckpt, f"classifier re-initialised ({len(drop)} tensors, {len(classes)} classes)"


def fold_dataset(data: FERData, fold: Fold) -> FERData:
    """The fold as a dataset: its training part as Training, its held-out part as PrivateTest
    (no PublicTest, so the engine reports the last epoch, not one chosen on the test part)."""
    from nas.data.dataset import SPLITS

    split = torch.full((len(data),), -1, dtype=torch.int64)
    split[fold.train] = SPLITS.index("Training")
    split[fold.test] = SPLITS.index("PrivateTest")  # a sample in both (never by construction) is tested
    keep = (split >= 0).nonzero().flatten()
    return replace(data, split=split.to(data.split.device)).select(keep)


# ----------------------------------------------------------------------------- scoring
def direct_scores(probs: torch.Tensor, labels: torch.Tensor, model_classes: Sequence[str],
                  data_classes: Sequence[str]) -> dict[str, torch.Tensor]:
    """Match classes by name. Returns ``scored`` (bool: the label's class is one the model
    has), ``correct`` (argmax over all model classes names the label), ``correct_restricted``
    (argmax over the classes both share) and ``pred`` (model class index)."""
    model_classes, data_classes = list(model_classes), list(data_classes)
    shared = [c for c in data_classes if c in model_classes]
    if not shared:
        raise FerNasError(f"the model's classes {model_classes} share none with the data's {data_classes}")
    to_model = torch.tensor([model_classes.index(c) if c in model_classes else -1 for c in data_classes])
    target = to_model[labels.cpu()]
    scored = target >= 0
    probs = probs.float().cpu()
    pred = probs.argmax(1)
    mask = torch.full((len(model_classes),), float("-inf"))
    mask[[model_classes.index(c) for c in shared]] = 0.0
    pred_r = (probs + mask).argmax(1)
    return {"scored": scored, "correct": scored & (pred == target), "correct_restricted": scored & (pred_r == target),
            "pred": pred, "target": target}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n-1; 0 for a single value)."""
    v = [float(x) for x in values if x is not None and not math.isnan(float(x))]
    if not v:
        return float("nan"), float("nan")
    m = sum(v) / len(v)
    sd = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
    return m, sd


def _pct(num: float, den: float) -> float:
    return 100.0 * num / den if den else float("nan")


# ----------------------------------------------------------------------------- the loop
def cross_validate(checkpoint: str | Path, data: FERData, folds: Sequence[Fold], run: RunDir, *,
                   finetune: bool = True, cfg: TrainConfig | None = None, head: str = "keep",
                   dist: DistInfo | None = None, tta: str = "center",
                   batch_size: int = 256, seed: int = 0, verbose: bool = False, fold_label: str = "fold",
                   csv_name: str = "folds.csv", keep_checkpoints: bool = False, resume: bool = False,
                   args: Mapping[str, Any] | None = None, extra: Mapping[str, Any] | None = None,
                   folds_done: Sequence[str] | None = None,
                   on_fold_done: Callable[[list[str]], None] | None = None) -> dict[str, Any]:
    """Fine-tune (or directly test) ``checkpoint`` on each fold and score the held-out parts.

    Writes into ``run`` (a RunDir; only rank 0's writes anything): ``csv_name`` (one row per
    fold: fold, n_train, n_test, test subjects, accuracy), ``results.json`` (mean ± sample
    std over folds, pooled accuracy), ``confusion.csv``/``.png`` over all folds, and per
    fold a ``fold_<name>/`` run directory (metrics.csv, log.txt, results.json, the held-out
    predictions ``heldout.pt``; checkpoints only with ``keep_checkpoints``). With ``resume``,
    the folds named in ``folds_done`` (the run's recorded position) are read back from their
    ``heldout.pt`` and an interrupted fold continues from its own last.pt; ``on_fold_done`` is
    called with the finished folds' names after each fine-tuned fold (the run records them)."""
    from nas.runtime.checkpoint import atomic_save, atomic_write_text, json_safe, safe_load, write_csv
    from nas.runtime.distributed import single_process
    from nas.engine.evaluate import checkpoint_norm, load_model_from_checkpoint, predict

    dist = dist or single_process("cpu")
    device = dist.device
    data_classes = list(data.classes)
    labels_all = data.labels.cpu()
    rows: list[dict[str, Any]] = []
    pooled_pred: list[torch.Tensor] = []
    pooled_true: list[torch.Tensor] = []
    mapping = ""

    if not finetune:
        model, ckpt = load_model_from_checkpoint(checkpoint, device)
        mean, std, crop = checkpoint_norm(ckpt)
        model_classes = [str(c) for c in (ckpt.get("classes") or [])]
        # only the images some fold tests (fernas crosstest --split PrivateTest tests a part of the data)
        tested = torch.unique(torch.cat([f.test for f in folds])) if folds else torch.zeros(0, dtype=torch.int64)
        probs = torch.zeros(len(data), len(model_classes))
        probs[tested] = predict(model, data.images[tested.to(data.images.device)], mean=mean, std=std, crop=crop,
                                tta=tta, batch_size=batch_size, amp=device.type == "cuda").cpu().float()
        sc = direct_scores(probs, labels_all, model_classes, data_classes)
        left_out = [c for c in data_classes if c not in model_classes]
        never = [c for c in model_classes if c not in data_classes]
        parts = ["classes matched by name"]
        if left_out:
            parts.append(f"{', '.join(left_out)} images left out (the model has no such class)")
        if never:
            parts.append(f"predictions of {', '.join(never)} count as wrong (the data has no such class)")
        mapping = "; ".join(parts)
        for f in folds:
            t = f.test
            s = sc["scored"][t]
            rows.append({fold_label: f.name, "n_train": 0, "n_test": int(s.sum()), "n_left_out": int((~s).sum()),
                         "test_subjects": " ".join(f.test_subjects),
                         "accuracy": _pct(float(sc["correct"][t].sum()), float(s.sum())),
                         "accuracy_restricted": _pct(float(sc["correct_restricted"][t].sum()), float(s.sum()))})
        col_names = model_classes
        all_idx = torch.cat([f.test for f in folds]) if folds else torch.zeros(0, dtype=torch.int64)
        keep = all_idx[sc["scored"][all_idx]]
        cm = _confusion(sc["pred"][keep], labels_all[keep], len(data_classes), len(model_classes))
        pooled = {"accuracy": _pct(float(sc["correct"][keep].sum()), keep.numel()),
                  "accuracy_restricted": _pct(float(sc["correct_restricted"][keep].sum()), keep.numel()),
                  "n": int(keep.numel())}
        run.log(f"direct test: {mapping}")
    else:
        col_names = data_classes
        for k, f in enumerate(folds):
            fdir = run.path / (f"fold_{int(f.name):02d}" if f.name.isdigit() else f"{fold_label}_{f.name}")
            if folds_done is None:  # a run from before the position was recorded: the files say
                done = resume and (fdir / "heldout.pt").is_file() and (fdir / "results.json").is_file()
            else:
                done = resume and f.name in folds_done
                if done and not ((fdir / "heldout.pt").is_file() and (fdir / "results.json").is_file()):
                    raise FerNasError(f"{fdir}: {fold_label} {f.name} is recorded as finished but its heldout.pt or "
                                      f"results.json is missing; start the run again")
            if done:
                held = safe_load(fdir / "heldout.pt")
                probs, res = held["probs"], json.loads((fdir / "results.json").read_text())
                mapping = held.get("mapping", mapping)
            else:
                probs, res, mapping = _finetune_fold(checkpoint, data, f, fdir, cfg=cfg, head=head, dist=dist,
                                                     seed=seed + k, verbose=verbose, tta=tta, batch_size=batch_size,
                                                     resume=resume, args=args)
                if dist.is_main:
                    atomic_save({"kind": "fer-nas-heldout", "index": f.test, "labels": labels_all[f.test],
                                 "probs": probs, "classes": data_classes, "mapping": mapping}, fdir / "heldout.pt")
                    if not keep_checkpoints:
                        for name in ("last.pt", "best.pt"):
                            (fdir / name).unlink(missing_ok=True)
            pred = probs.argmax(1)
            true = labels_all[f.test]
            acc = _pct(float((pred == true).sum()), true.numel())
            pooled_pred.append(pred)
            pooled_true.append(true)
            rows.append({fold_label: f.name, "n_train": int(f.train.numel()), "n_test": int(f.test.numel()),
                         "test_subjects": " ".join(f.test_subjects), "accuracy": acc,
                         "engine_test_acc": res.get("test_acc"), "epochs": res.get("epochs")})
            run.log(f"{fold_label} {f.name} ({k + 1}/{len(folds)}): {f.train.numel()} train / {f.test.numel()} "
                    f"test images, {len(f.test_subjects)} test subject(s): accuracy {acc:.2f}%")
            if on_fold_done is not None:
                on_fold_done([g.name for g in folds[:k + 1]])
        pred_all = torch.cat(pooled_pred) if pooled_pred else torch.zeros(0, dtype=torch.int64)
        true_all = torch.cat(pooled_true) if pooled_true else torch.zeros(0, dtype=torch.int64)
        cm = _confusion(pred_all, true_all, len(data_classes), len(data_classes))
        pooled = {"accuracy": _pct(float((pred_all == true_all).sum()), true_all.numel()), "n": int(true_all.numel())}

    m, sd = mean_std([r["accuracy"] for r in rows])
    results: dict[str, Any] = {
        "checkpoint": str(checkpoint), "data": str(data.source), "mode": "finetune" if finetune else "direct",
        "head": head if finetune else None, "class_mapping": mapping, "folds": len(folds),
        "mean_accuracy": m, "std_accuracy": sd, "std": "sample standard deviation over folds (n-1)",
        "pooled": pooled, "per_fold": rows, "classes": data_classes, "confusion_columns": col_names,
        "confusion_matrix": cm.tolist(), "tta": tta, **dict(extra or {}),
    }
    if "accuracy_restricted" in (rows[0] if rows else {}):
        results["mean_accuracy_restricted"], results["std_accuracy_restricted"] = \
            mean_std([r["accuracy_restricted"] for r in rows])
    if run.enabled:
        header = [fold_label, "n_train", "n_test", *(["n_left_out"] if not finetune else []), "test_subjects",
                  "accuracy", *(["accuracy_restricted"] if not finetune else ["engine_test_acc", "epochs"])]
        write_csv(run.file(csv_name), rows, header)
        write_csv(run.file("confusion.csv"),
                  [{"true\\pred": c, **{p: int(cm[i, j]) for j, p in enumerate(col_names)}}
                   for i, c in enumerate(data_classes)], ["true\\pred", *col_names])
        atomic_write_text(json.dumps(json_safe(results), indent=2) + "\n", run.file("results.json"))
        from nas.engine.report import have_matplotlib, plot_confusion

        if have_matplotlib() and cm.shape[0] == cm.shape[1]:
            plot_confusion(cm, data_classes, run.file("confusion.png"),
                           title=f"all folds, {'fine-tuned' if finetune else 'direct'}: {m:.2f}% ± {sd:.2f}")
        elif have_matplotlib():
            _plot_rect_confusion(cm, data_classes, col_names, run.file("confusion.png"),
                                 title=f"direct test: {m:.2f}% ± {sd:.2f}")
    run.log(summary(results, fold_label))
    return results


def summary(results: Mapping[str, Any], fold_label: str = "fold") -> str:
    """One line: mean ± std over folds and the pooled figure."""
    kind = "fine-tuned" if results["mode"] == "finetune" else "direct test"
    line = (f"result ({kind}, {results['folds']} {fold_label}s): {results['mean_accuracy']:.2f}% ± "
            f"{results['std_accuracy']:.2f} (mean ± sample std over {fold_label}s); pooled "
            f"{results['pooled']['accuracy']:.2f}% of {results['pooled']['n']} images")
    if results.get("mean_accuracy_restricted") is not None:
        line += f"; argmax over shared classes {results['mean_accuracy_restricted']:.2f}%"
    return line


def _finetune_fold(checkpoint: str | Path, data: FERData, fold: Fold, fdir: Path, *, cfg: TrainConfig, head: str,
                   dist: DistInfo, seed: int, verbose: bool, tta: str, batch_size: int, resume: bool,
                   args: Mapping[str, Any] | None) -> tuple[torch.Tensor, dict[str, Any], str]:
    from dataclasses import replace as dc_replace

    from nas.engine.evaluate import checkpoint_norm, predict
    from nas.engine.trainer import Trainer

    model, ckpt, mapping = prepare_model(checkpoint, data.classes, head, seed=seed)
    mean, std, crop = checkpoint_norm(ckpt)
    fdata = fold_dataset(data, fold)
    can_resume = resume and (fdir / "last.pt").is_file()
    frun = RunDir(fdir, resume=can_resume, force=not can_resume, enabled=dist.is_main, quiet=not verbose)
    fcfg = dc_replace(cfg, crop=crop, tta=tta, eval_batch_size=batch_size, seed=int(seed))
    spec_arch = (ckpt.get("model_spec") or {}).get("arch", "model")
    trainer = Trainer(model, fdata, fcfg, frun, dist=dist, norm=(mean, std),
                      args={**dict(args or {}), "arch": spec_arch, "fold": fold.name}, stage="crossdata-fold")
    if can_resume:
        trainer.resume(fdir)
    res = trainer.fit()
    test_images = fdata.subset("PrivateTest").images
    probs = predict(trainer.model, test_images, mean=mean, std=std, crop=crop, tta=tta, batch_size=batch_size,
                    amp=trainer.amp, channels_last=trainer.channels_last).cpu()
    # the fold dataset keeps the original order, so its PrivateTest rows are fold.test in order
    return probs, res, mapping


def _confusion(pred: torch.Tensor, true: torch.Tensor, n_rows: int, n_cols: int) -> torch.Tensor:
    pred, true = pred.to(torch.int64).cpu(), true.to(torch.int64).cpu()
    return torch.bincount(true * n_cols + pred, minlength=n_rows * n_cols).view(n_rows, n_cols)


def _plot_rect_confusion(cm: torch.Tensor, rows: Sequence[str], cols: Sequence[str], path: Path, title: str) -> None:
    """Rows: the data's classes; columns: the model's (a direct test across label sets)."""
    from nas.engine.report import _plt, save_figure

    plt = _plt()
    cm = cm.double()
    rates = cm / cm.sum(1, keepdim=True).clamp(min=1)
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(cols), 0.8 + 0.7 * len(rows)))
    ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    for i in range(len(rows)):
        for j in range(len(cols)):
            ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=7,
                    color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("predicted (model's classes)")
    ax.set_ylabel("true (data's classes)")
    ax.set_title(title)
    save_figure(fig, path)




# ----------------------------------------------------------------------------- the scripts
def add_crossdata_args(parser: argparse.ArgumentParser, *, kind: str) -> argparse.ArgumentParser:
    """Flags of test_ck48.py (``kind="ck48"``), test_jaffe.py (``kind="jaffe"``) and ``fernas
    crosstest`` (``kind="any"``): the checkpoint, the data, the fine-tuning recipe (the
    reference's defaults: 60 epochs, learning rate 0.01794073, batch 64) and the engine's
    training flags."""
    from nas.data import add_data_args
    from nas.data.source import name_list
    from nas.engine.session import add_session_args
    from nas.engine.trainer import add_train_args
    from nas.runtime.cli import int_list

    parser.add_argument("--config", default=None, help="YAML file of flag values (command-line flags override it)")
    parser.add_argument("--checkpoint", default=None, help="a .pt checkpoint, or a run folder (its best.pt); required "
                        "unless --resume")
    if kind == "ck48":
        parser.add_argument("--protocol", default="subject", choices=["subject", "reference"],
                            help="subject: no subject in both parts of a fold (default); reference: the reference "
                                 "implementation's per-class contiguous blocks, for comparison")
        parser.add_argument("--folds", type=int, default=10, help="number of folds")
        parser.add_argument("--only_folds", type=int_list, default=None,
                            help="run only these folds (1-based, comma-separated)")
        parser.add_argument("--fold_seed", type=int, default=0, help="seed of the subject-to-fold assignment")
        parser.add_argument("--no_finetune", action="store_true",
                            help="direct test: score the checkpoint as it is (classes matched by name)")
    elif kind == "jaffe":
        parser.add_argument("--finetune", default="none", choices=["none", "loso"],
                            help="none: direct test (default); loso: leave-one-subject-out fine-tuning")
        parser.add_argument("--subjects", default=None, type=name_list,
                            help="hold out only these subjects (comma-separated codes, e.g. KA,KL); default all")
    else:
        parser.add_argument("--finetune", default="none", choices=["none", "folds", "loso"],
                            help="none: direct test, classes matched by name (default); folds: k-fold fine-tuning, "
                                 "subject-independent where the data has subject ids; loso: leave one subject out")
        parser.add_argument("--split", default="auto", choices=["auto", "all", "Training", "PublicTest", "PrivateTest"],
                            help="direct test: the images tested (auto: PrivateTest where the data has its own test "
                                 "part, else all)")
        parser.add_argument("--folds", type=int, default=10, help="--finetune folds: number of folds")
        parser.add_argument("--fold_seed", type=int, default=0, help="seed of the assignment to folds")
        parser.add_argument("--subjects", default=None, type=name_list,
                            help="--finetune loso: hold out only these subjects (comma-separated); default all")
    parser.add_argument("--head", default="keep", choices=HEADS,
                        help="keep: fine-tune the whole network, the checkpoint's class i becomes the data's class i "
                             "(neutral -> contempt on CK+); reinit: fresh classifier for the data's classes")
    parser.add_argument("--eval_every", type=int, default=None,
                        help="also score the held-out part every N epochs (curves only; default: last epoch only)")
    parser.add_argument("--keep_checkpoints", action="store_true", help="keep each fold's last.pt/best.pt")
    parser.add_argument("--verbose", action="store_true", help="print every fold's epoch lines")
    add_data_args(parser, synth_format=kind if kind in ("ck48", "jaffe") else "fer2013")
    add_train_args(parser, epochs=60, learning_rate=0.01794073, batch_size=64, snapshot_at=[])
    add_session_args(parser)
    return parser


CROSSVAL_KIND = "fer-nas-crossval"


def _finetunes(args: argparse.Namespace, kind: str) -> bool:
    if kind == "ck48":
        return not args.no_finetune
    return args.finetune != "none"


def checked_checkpoint(args: argparse.Namespace, kind: str) -> dict[str, Any] | None:
    """Before a new run: ``--checkpoint`` is given, loads, and (for fine-tuning) its head
    fits the data's classes; returns the checkpoint (None on resume)."""
    from nas.data.ck48 import CK48_CLASSES
    from nas.data.dataset import FER_CLASSES
    from nas.engine.evaluate import load_model_from_checkpoint

    if args.resume:
        return None
    if not args.checkpoint:
        raise FerNasError("--checkpoint PATH is required (a .pt file or a run folder), or --resume RUN_DIR")
    model, ckpt = load_model_from_checkpoint(args.checkpoint, "cpu")
    if _finetunes(args, kind):
        from nas.engine.robust import check_robust

        check_robust(args.robust, model, (ckpt.get("model_spec") or {}).get("arch", "the model"))
    if _finetunes(args, kind) and kind != "any":  # crosstest checks the head against the data it reads
        prepare_model(args.checkpoint, list(CK48_CLASSES if kind == "ck48" else FER_CLASSES), args.head,
                      seed=args.seed)
    return ckpt


@dataclass
class CrossPlan:
    """What a cross-dataset run tests, worked out from the flags and the data before its run
    folder exists: the data, its folds, what a fold is called, the CSV and the protocol notes."""

    data: FERData
    folds: list
    label: str
    csv_name: str
    extra: dict[str, Any]


def check_crossdata_args(args: argparse.Namespace, kind: str) -> None:
    """The flags' one-line errors (no data read)."""
    from nas.engine.trainer import check_train_args

    if getattr(args, "folds", 2) < 2:
        raise FerNasError(f"--folds {args.folds}: need at least 2")
    if getattr(args, "only_folds", None) and min(args.only_folds) < 1:
        raise FerNasError(f"--only_folds {min(args.only_folds)}: folds are numbered from 1")
    if args.eval_every is not None and args.eval_every < 1:
        raise FerNasError(f"--eval_every {args.eval_every}: must be at least 1")
    check_train_args(args, eval_every=args.eval_every or args.epochs, snapshot_at=[])


def plan_crossdata(args: argparse.Namespace, kind: str) -> CrossPlan:
    """Read the data and draw the folds (every data-dependent refusal happens here, before a
    run folder exists): subject ids where folds need them, the checkpoint's head against the
    data's classes, the folds asked for."""
    from nas.data import open_data_from_args
    from nas.data.ck48 import CK48_CLASSES
    from nas.data.dataset import FER_CLASSES

    check_crossdata_args(args, kind)
    finetune = _finetunes(args, kind)
    data = open_data_from_args(args)
    expected = list(CK48_CLASSES if kind == "ck48" else FER_CLASSES if kind == "jaffe" else data.classes)
    if data.subjects is None and kind != "any":
        raise FerNasError(f"{data.source}: the {data.format} reader gives no subject ids; "
                          f"{'CK+ folds' if kind == 'ck48' else 'JAFFE subjects'} need them")
    if finetune and args.head == "keep" and (kind == "any" or list(data.classes) != expected):
        prepare_model(args.checkpoint, data.classes, "keep")  # raises with the mismatch named
    n = len(data)
    if kind == "ck48":
        if args.protocol == "subject":
            folds = subject_folds(data.subjects, data.labels, args.folds, seed=args.fold_seed,
                                  num_classes=len(data.classes))
        else:
            keys = data.meta.get("files") or [str(i) for i in range(n)]
            folds = reference_folds(data.labels, keys, args.folds, subjects=data.subjects)
        if args.only_folds:
            bad = [f for f in args.only_folds if not 1 <= f <= len(folds)]
            if bad:
                raise FerNasError(f"--only_folds {bad[0]}: folds are numbered 1..{len(folds)}")
            folds = [folds[i - 1] for i in sorted(set(args.only_folds))]
        label, csv_name = "fold", "folds.csv"
        extra = {"protocol": args.protocol, "fold_seed": args.fold_seed,
                 "coverage": fold_report(folds, n, data.subjects)}
    elif kind == "any":
        folds, how = crosstest_folds(data, args.finetune, k=args.folds, seed=args.fold_seed, split=args.split,
                                     only=args.subjects)
        label = {"none": "part", "folds": "fold", "loso": "subject"}[args.finetune]
        csv_name = f"{label}s.csv"
        extra = {"protocol": how, "dataset": data.format, "coverage": fold_report(folds, n, data.subjects)}
    else:
        folds = loso_folds(data.subjects, args.subjects)
        label, csv_name = "subject", "subjects.csv"
        extra = {"protocol": "leave-one-subject-out" if finetune else "direct test, per subject",
                 "coverage": fold_report(folds, n, data.subjects)}
    return CrossPlan(data, list(folds), label, csv_name, extra)


def run_crossdata(s: Session, kind: str, ckpt: Mapping[str, Any] | None = None,
                  plan: CrossPlan | None = None) -> dict[str, Any]:
    """The body of test_ck48.py (``kind="ck48"``), test_jaffe.py (``kind="jaffe"``) and
    ``fernas crosstest`` (``kind="any"``) in a session (``plan``: from :func:`plan_crossdata`,
    made before the session's run folder; made here when not given). The run folder's own
    ``last.pt`` holds the position: the flags (what ``--resume`` takes back) and the folds
    finished so far, rewritten after each fold; on resume those are read back and an
    interrupted fold continues from its own last.pt."""
    from nas.engine.trainer import config_from_args
    from nas.runtime.checkpoint import safe_load

    args, run, dist = s.args, s.run, s.dist
    finetune = _finetunes(args, kind)
    if ckpt is None:
        ckpt = safe_load(args.checkpoint)
    if plan is None:
        plan = plan_crossdata(args, kind)
    def record(done: list[str]) -> None:
        # the run's position: its flags (what --resume takes back) and the folds finished so far
        run.save("last.pt", {"kind": CROSSVAL_KIND, "stage": "crosstest" if kind == "any" else kind,
                             "args": {k: v for k, v in vars(args).items()}, "folds_done": list(done),
                             "folds": [f.name for f in plan.folds], "epoch": len(done), "step": 0})

    folds_done = None if s.state is None else s.state.get("folds_done")
    if s.state is None:
        record([])
    data, folds, label, csv_name, extra = plan.data, plan.folds, plan.label, plan.csv_name, plan.extra
    n = len(data)
    cov = extra["coverage"]
    n_subj = f"{len(set(data.subjects))} subjects" if data.subjects is not None else "no subject ids"
    run.log(f"{data.source}: {n} images, {n_subj}, {len(folds)} {label}s "
            f"({extra['protocol']}); never tested {cov['never_tested']}, tested more than once "
            f"{cov['tested_more_than_once']}, {label}s with a subject on both sides "
            f"{len(cov['folds_with_subject_leakage'])}")
    cfg = config_from_args(args, eval_every=args.eval_every or args.epochs, snapshot_at=[])
    extra.update(seed=args.seed, epochs=args.epochs if finetune else 0,
                 learning_rate=args.learning_rate if finetune else None, world_size=dist.world_size,
                 checkpoint_epoch=ckpt.get("epoch"))
    return cross_validate(args.checkpoint, data, folds, run, finetune=finetune, cfg=cfg, head=args.head,
                          dist=dist, tta=args.tta, seed=args.seed, verbose=args.verbose, fold_label=label,
                          csv_name=csv_name, keep_checkpoints=args.keep_checkpoints, resume=s.state is not None,
                          args=vars(args), extra=extra, folds_done=folds_done,
                          on_fold_done=record if finetune else None)
