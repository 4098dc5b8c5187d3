"""Ensembles of trained checkpoints: combiners and greedy member selection.

Each member is a self-describing checkpoint (``model_spec``, weights, classes,
normalisation and input size), so members may differ in genotype, layers,
input size or normalisation, or be baselines: every member predicts with its
own crop size and normalisation. Each member's outputs on each split are
computed once (:func:`member_outputs`: view-averaged logits and softmax
probabilities) and kept in memory; the combiners and the selection work on
those tensors only.

Combiners (``score[n, c]`` is the ensemble's score for class ``c``; the
prediction is its argmax):

``logits``
    mean of the members' logits (the seeds' simple averaging of network outputs;
    members with larger logits weigh more).
``softmax``
    mean of the members' probabilities.
``accuracy_weighted``
    ``sum_m w_m p_m`` with ``w_m`` proportional to member ``m``'s overall
    PublicTest accuracy (weights sum to 1).
``class_weighted``
    ``sum_m w_mc p_mc``: for each class ``c`` the members' weights are
    proportional to their PublicTest precision on ``c`` with Laplace smoothing,
    ``(TP_mc + 1) / (predicted_mc + 2)`` (how far a member can be trusted when it
    says ``c``; a member that never predicts ``c`` gets 1/2), normalised over
    members for each class.

Weights come from PublicTest only; PrivateTest is only scored.

Greedy selection (``greedy_select``, Caruana et al. 2004): start from the best
single member on PublicTest, then repeatedly add the member whose addition gives
the highest PublicTest accuracy of the ensemble (ties: lower PublicTest NLL, then
the earlier member), while that accuracy strictly improves. Selection is *with
replacement* by default: a member may be added again, which raises its weight
(its multiplicity multiplies its weight in every combiner).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from nas.data.dataset import FERData
from nas.runtime.checkpoint import RunDir
from nas.runtime.errors import FerNasError

__all__ = ["METHODS", "Member", "Outputs", "load_member", "member_outputs", "fit_weights", "combine",
           "ensemble_scores", "greedy_select", "accuracy_of", "run_ensemble", "parse_member_names"]

METHODS = ("logits", "softmax", "accuracy_weighted", "class_weighted")


# ----------------------------------------------------------------------------- members
@dataclass
class Member:
    """One loaded checkpoint and what it needs to predict."""

    name: str                 # as the user gave it
    path: str                 # the checkpoint file read
    model: nn.Module
    classes: list[str]
    mean: float
    std: float
    crop: int
    arch: str
    layers: int | None        # None for baselines (no cell count)
    params: int
    tta: str = "center"
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Outputs:
    """A member's outputs on one split (CPU float32, N×C): the mean over test-time
    views of the logits and of the softmax probabilities."""

    logits: torch.Tensor
    probs: torch.Tensor


def parse_member_names(positional: Sequence[str] | None, model_names: str | None) -> list[str]:
    """Member names from positional arguments and/or ``--model_names a,b,c``."""
    names = [n for n in (positional or []) if n.strip()]
    if model_names:
        names += [n.strip() for n in model_names.split(",") if n.strip()]
    if not names:
        raise FerNasError("no ensemble members: pass --model_names a,b,c (checkpoint files or run directories)")
    return names


def load_member(name: str, device: torch.device | str = "cpu", layers: int | None = None) -> Member:
    """Load checkpoint file or run directory ``name`` (a folder: its best.pt, else last.pt).
    ``layers``, when given, must match the cell count the checkpoint records (baselines have
    none and are not checked)."""
    from nas.engine.evaluate import checkpoint_norm, load_model_from_checkpoint
    from nas.models import count_parameters

    model, ckpt = load_model_from_checkpoint(name, device)
    path = str(ckpt.get("path", name))
    mean, std, crop = checkpoint_norm(ckpt)
    spec = ckpt.get("model_spec") or {}
    kwargs = spec.get("kwargs") or {}
    has_cells = spec.get("genotype") is not None
    ck_layers = int(kwargs["layers"]) if has_cells and "layers" in kwargs else None
    if layers is not None and ck_layers is not None and ck_layers != int(layers):
        raise FerNasError(f"{path}: checkpoint has {ck_layers} layers but --layers {layers} was given "
                          "(checkpoints describe themselves; drop --layers or pick the matching checkpoint)")
    classes = ckpt.get("classes")
    if not isinstance(classes, (list, tuple)) or not classes:
        raise FerNasError(f"{path}: checkpoint records no class names")
    tta = str((ckpt.get("config") or {}).get("tta", "center"))
    return Member(name=name, path=path, model=model, classes=[str(c) for c in classes], mean=mean, std=std,
                  crop=crop, arch=str(spec.get("arch", "?")), layers=ck_layers, params=count_parameters(model),
                  tta=tta, info={"epoch": ckpt.get("epoch"), "metrics": ckpt.get("metrics")})


@torch.no_grad()
def member_outputs(member: Member, images: torch.Tensor, *, tta: str = "center", batch_size: int = 256,
                   amp: bool = False) -> Outputs:
    """Logits and probabilities of ``member`` on uint8 ``images`` (N×1×H×W), each averaged
    over the views of ``tta`` (the probabilities equal :func:`nas.engine.evaluate.predict`'s)."""
    from nas.data.augment import eval_views
    from nas.engine.evaluate import TTA_MODES
    from nas.runtime.device import autocast

    if tta not in TTA_MODES:
        raise FerNasError(f"--tta {tta!r}: choose from {', '.join(TTA_MODES)}")
    model = member.model
    device = next(model.parameters()).device
    model.eval()
    logits_out, probs_out = [], []
    for start in range(0, images.shape[0], batch_size):
        x = images[start:start + batch_size].to(device, non_blocking=True)
        views = eval_views(x, tta, member.crop, member.mean, member.std)  # V×B×1×c×c
        v, b = views.shape[:2]
        with autocast(device, amp):
            out = model(views.reshape(v * b, *views.shape[2:]))
        if isinstance(out, (tuple, list)):
            out = out[0]
        out = out.float().view(v, b, -1)
        logits_out.append(out.mean(0).cpu())
        probs_out.append(out.softmax(-1).mean(0).cpu())
    c = len(member.classes)
    if not logits_out:
        return Outputs(torch.zeros(0, c), torch.zeros(0, c))
    return Outputs(torch.cat(logits_out), torch.cat(probs_out))


# ----------------------------------------------------------------------------- combiners
def accuracy_of(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Accuracy in % of ``argmax(scores)`` (NaN for no samples)."""
    if labels.numel() == 0:
        return float("nan")
    return 100.0 * float((scores.argmax(1) == labels).double().mean())


def _counts(m: int, counts: torch.Tensor | Sequence[int] | None) -> torch.Tensor:
    c = torch.ones(m, dtype=torch.float64) if counts is None else torch.as_tensor(counts, dtype=torch.float64)
    if c.shape != (m,) or bool((c < 0).any()) or float(c.sum()) <= 0:
        raise FerNasError(f"member multiplicities must be {m} non-negative numbers, not all zero")
    return c


def fit_weights(method: str, val_probs: torch.Tensor, val_labels: torch.Tensor,
                counts: torch.Tensor | Sequence[int] | None = None) -> torch.Tensor:
    """M×C member weights (each column sums to 1) for ``method``, from the members'
    PublicTest probabilities ``val_probs`` (M×N×C) and labels; ``counts`` are member
    multiplicities (greedy selection), 1 each by default."""
    if method not in METHODS:
        raise FerNasError(f"--method {method!r}: choose from {', '.join(METHODS)}")
    m, _, c = val_probs.shape
    cnt = _counts(m, counts)
    if method in ("logits", "softmax"):
        w = cnt[:, None].expand(m, c).clone()
    else:
        if val_labels.numel() == 0:
            raise FerNasError(f"--method {method} needs PublicTest samples to weigh members")
        pred = val_probs.argmax(2)                                   # M×N
        if method == "accuracy_weighted":
            acc = (pred == val_labels[None]).double().mean(1)        # M
            w = (cnt * acc)[:, None].expand(m, c).clone()
        else:
            onehot_pred = torch.nn.functional.one_hot(pred, c).double()          # M×N×C
            hit = (pred == val_labels[None]).double()[..., None]                 # M×N×1
            tp = (onehot_pred * hit).sum(1)                                      # M×C
            predicted = onehot_pred.sum(1)
            w = cnt[:, None] * (tp + 1.0) / (predicted + 2.0)
    total = w.sum(0, keepdim=True)
    # a column of zeros (every selected member scored 0 %) falls back to the multiplicities
    w = torch.where(total > 0, w / total.clamp(min=1e-300), (cnt / cnt.sum())[:, None].expand(m, c))
    return w.float()


def combine(method: str, logits: torch.Tensor, probs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Ensemble scores N×C from the members' logits and probabilities (M×N×C) and the
    M×C weights of :func:`fit_weights`. ``logits`` combines logits, every other method
    probabilities."""
    src = logits if method == "logits" else probs
    return torch.einsum("mnc,mc->nc", src.float(), weights.float())


def ensemble_scores(method: str, val: tuple[torch.Tensor, torch.Tensor], val_labels: torch.Tensor,
                    parts: Sequence[tuple[torch.Tensor, torch.Tensor]],
                    counts: torch.Tensor | Sequence[int] | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Fit the weights on PublicTest (``val`` = (logits, probs), each M×N×C) and combine
    every split in ``parts``. Returns ``(weights, [scores per part])``."""
    w = fit_weights(method, val[1], val_labels, counts)
    return w, [combine(method, lg, pr, w) for lg, pr in parts]


def _nll(method: str, scores: torch.Tensor, labels: torch.Tensor) -> float:
    if labels.numel() == 0:
        return float("nan")
    if method == "logits":
        logp = scores.float().log_softmax(1)
    else:
        p = scores.double().clamp_min(0)
        logp = (p / p.sum(1, keepdim=True).clamp_min(1e-300)).clamp_min(1e-12).log()
    return float(-logp.gather(1, labels[:, None]).mean())


def greedy_select(method: str, val_logits: torch.Tensor, val_probs: torch.Tensor, val_labels: torch.Tensor, *,
                  replacement: bool = True, max_steps: int = 25) -> tuple[list[int], list[dict[str, Any]]]:
    """Forward selection of members on PublicTest (see the module docstring).

    Returns the multiplicity of each member (0 = not selected) and the history:
    one row per step with the member added and the PublicTest accuracy and NLL after it."""
    if method not in METHODS:
        raise FerNasError(f"--method {method!r}: choose from {', '.join(METHODS)}")
    if val_labels.numel() == 0:
        raise FerNasError("--greedy needs PublicTest samples to select members on")
    m = val_probs.shape[0]
    counts = [0] * m
    history: list[dict[str, Any]] = []
    best_acc = -1.0
    for step in range(max(1, int(max_steps))):
        best = None
        for j in range(m):
            if not replacement and counts[j]:
                continue
            trial = list(counts)
            trial[j] += 1
            w = fit_weights(method, val_probs, val_labels, trial)
            s = combine(method, val_logits, val_probs, w)
            # rounded, so that float noise does not break a tie the order should break
            acc, nll = accuracy_of(s, val_labels), _nll(method, s, val_labels)
            key = (round(acc, 9), -round(nll, 6), -j)
            if best is None or key > best[0]:
                best = (key, j, acc, nll)
        if best is None:
            break
        _, j, acc, nll = best
        if history and not acc > best_acc:
            break
        counts[j] += 1
        best_acc = acc
        history.append({"step": step + 1, "added": j, "public_acc": acc, "public_nll": nll})
    return counts, history


# ----------------------------------------------------------------------------- the run
def run_ensemble(names: Sequence[str], data: FERData, run: RunDir, *, method: str = "softmax", greedy: bool = False,
                 replacement: bool = True, greedy_steps: int = 25, tta: str = "center", layers: int | None = None,
                 device: torch.device | str = "cpu", batch_size: int = 256,
                 members: Sequence[Member] | None = None) -> dict[str, Any]:
    """Load the members, predict PublicTest and PrivateTest once each, combine, print the
    table and write ``ensemble.csv``, ``methods.csv``, ``confusion.csv``/``.png``,
    ``predictions.pt`` and ``results.json`` into ``run`` (a :class:`nas.runtime.checkpoint.RunDir`).
    Returns the results dict."""
    from nas.runtime.checkpoint import atomic_save, atomic_write_text, json_safe, write_csv
    from nas.data.dataset import SPLITS
    from nas.engine.evaluate import confusion_matrix, per_class_metrics

    if method not in METHODS:
        raise FerNasError(f"--method {method!r}: choose from {', '.join(METHODS)}")
    device = torch.device(device)
    if members is None:
        members = [load_member(n, device, layers) for n in names]
    classes = list(data.classes)
    for mb in members:
        if mb.classes != classes:
            raise FerNasError(f"{mb.path}: the model's {len(mb.classes)} classes {mb.classes} differ from the "
                              f"data's {len(classes)} classes {classes}")
    split_idx = {s: (data.split.cpu() == SPLITS.index(s)).nonzero().flatten() for s in ("PublicTest", "PrivateTest")}
    if split_idx["PublicTest"].numel() == 0 and (greedy or method in ("accuracy_weighted", "class_weighted")):
        raise FerNasError(f"{data.source}: no PublicTest split; --method {method}"
                          f"{' and --greedy' if greedy else ''} need one to weigh/select members")
    if split_idx["PrivateTest"].numel() == 0:
        raise FerNasError(f"{data.source}: no PrivateTest split to score the ensemble on")

    # each member's outputs on each split: computed once, kept in memory
    labels = {s: data.labels.cpu()[i] for s, i in split_idx.items()}
    outs: dict[str, list[Outputs]] = {s: [] for s in split_idx}
    amp = device.type == "cuda"
    for mb in members:
        for s, i in split_idx.items():
            outs[s].append(member_outputs(mb, data.images[i.to(data.images.device)], tta=tta,
                                          batch_size=batch_size, amp=amp))
    stack = {s: (torch.stack([o.logits for o in outs[s]]), torch.stack([o.probs for o in outs[s]])) for s in outs}
    val, test = stack["PublicTest"], stack["PrivateTest"]

    def evaluate(meth: str) -> dict[str, Any]:
        hist: list[dict[str, Any]] = []
        counts = [1] * len(members)
        if greedy:
            counts, hist = greedy_select(meth, val[0], val[1], labels["PublicTest"], replacement=replacement,
                                         max_steps=greedy_steps)
        w, (s_val, s_test) = ensemble_scores(meth, val, labels["PublicTest"], [val, test], counts)
        return {"method": meth, "counts": counts, "weights": w, "history": hist, "scores_val": s_val,
                "scores_test": s_test, "public_acc": accuracy_of(s_val, labels["PublicTest"]),
                "private_acc": accuracy_of(s_test, labels["PrivateTest"])}

    by_method = {meth: evaluate(meth) for meth in METHODS}
    main = by_method[method]

    # ---- the table
    rows = []
    for k, mb in enumerate(members):
        rows.append({"name": mb.name, "checkpoint": mb.path, "arch": mb.arch,
                     "layers": "" if mb.layers is None else mb.layers, "params": mb.params, "input_size": mb.crop,
                     "count": main["counts"][k], "weight": float(main["weights"][k].mean()),
                     "public_acc": accuracy_of(val[1][k], labels["PublicTest"]),
                     "private_acc": accuracy_of(test[1][k], labels["PrivateTest"])})
    n_used = sum(1 for c in main["counts"] if c)
    ens_name = f"ensemble ({method}{', greedy' if greedy else ''}, {n_used} of {len(members)} members)"
    rows.append({"name": ens_name, "checkpoint": "", "arch": "", "layers": "",
                 "params": sum(r["params"] for r, c in zip(rows, main["counts"]) if c), "input_size": "",
                 "count": sum(main["counts"]), "weight": 1.0, "public_acc": main["public_acc"],
                 "private_acc": main["private_acc"]})
    header = ["name", "checkpoint", "arch", "layers", "params", "input_size", "count", "weight", "public_acc",
              "private_acc"]
    table = format_table(rows)
    if run.enabled:
        for line in table.splitlines():
            run.log(line)
        write_csv(run.file("ensemble.csv"), rows, header)
        write_csv(run.file("methods.csv"),
                  [{"method": m_, "counts": " ".join(map(str, r["counts"])), "public_acc": r["public_acc"],
                    "private_acc": r["private_acc"]} for m_, r in by_method.items()],
                  ["method", "counts", "public_acc", "private_acc"])
        others = ", ".join(f"{m_} {r['private_acc']:.2f}%" for m_, r in by_method.items() if m_ != method)
        run.log(f"other combiners (PrivateTest{', each with its own greedy selection' if greedy else ''}): {others}")

    # ---- confusion matrix and per-class figures of the ensemble on PrivateTest
    pred = main["scores_test"].argmax(1)
    cm = confusion_matrix(pred, labels["PrivateTest"], len(classes))
    per_class = per_class_metrics(cm, classes)
    if run.enabled:
        write_csv(run.file("confusion.csv"),
                  [{"true\\pred": c, **{p: int(cm[i, j]) for j, p in enumerate(classes)}} for i, c in enumerate(classes)],
                  ["true\\pred", *classes])
        write_csv(run.file("per_class.csv"), per_class, ["class", "precision", "recall", "f1", "support"])
        from nas.engine.report import have_matplotlib, plot_confusion

        if have_matplotlib():
            plot_confusion(cm, classes, run.file("confusion.png"),
                           title=f"ensemble ({method}), PrivateTest {main['private_acc']:.2f}%")
        atomic_save({"kind": "fer-nas-ensemble-predictions", "members": [mb.path for mb in members],
                     "names": list(names) if names else [mb.name for mb in members], "classes": classes,
                     "method": method, "tta": tta, "counts": main["counts"], "weights": main["weights"],
                     "splits": {s: {"index": split_idx[s], "labels": labels[s], "logits": stack[s][0],
                                    "probs": stack[s][1]} for s in stack}},
                    run.file("predictions.pt"))
    results = {
        "method": method, "greedy": greedy, "replacement": replacement if greedy else None, "tta": tta,
        "classes": classes, "data": str(data.source),
        "n": {s: int(i.numel()) for s, i in split_idx.items()},
        "members": [{k: v for k, v in r.items()} for r in rows[:-1]],
        "ensemble": {"public_acc": main["public_acc"], "private_acc": main["private_acc"],
                     "counts": main["counts"], "weights": main["weights"].tolist(), "greedy_history": main["history"],
                     "per_class": per_class, "confusion_matrix": cm.tolist()},
        "methods": {m_: {"public_acc": r["public_acc"], "private_acc": r["private_acc"], "counts": r["counts"]}
                    for m_, r in by_method.items()},
        "selection": "weights and member selection from PublicTest only; PrivateTest is the reported figure",
    }
    if run.enabled:
        import json

        atomic_write_text(json.dumps(json_safe(results), indent=2) + "\n", run.file("results.json"))
    return results


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The printed table: name, arch, parameters, input size, count, PublicTest and PrivateTest %."""
    from nas.runtime.cli import fmt_pct

    def pct(v: Any) -> str:
        return fmt_pct(v, unit="")

    names = [_short(str(r["name"])) for r in rows[:-1]] + [str(rows[-1]["name"])]  # the ensemble row in full
    wn = max(12, *(len(n) for n in names))
    head = f"{'member':<{wn}}  {'arch':<14} {'params':>11} {'input':>5} {'count':>5}  {'PublicTest':>10} {'PrivateTest':>11}"
    lines = [head, "-" * len(head)]
    for n, r in zip(names, rows):
        if r is rows[-1]:
            lines.append("-" * len(head))
        params = f"{r['params']:,}" if isinstance(r["params"], int) else str(r["params"])
        lines.append(f"{n:<{wn}}  {str(r['arch'])[:14]:<14} {params:>11} {str(r['input_size']):>5} "
                     f"{str(r['count']):>5}  {pct(r['public_acc']):>10} {pct(r['private_acc']):>11}")
    return "\n".join(lines)


def _short(name: str, width: int = 48) -> str:
    return name if len(name) <= width else "..." + name[-(width - 3):]


