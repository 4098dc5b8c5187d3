"""Relabelling rules, as batched tensor code.

:data:`RULES` names them (``--rule``); each is a small function of probabilities (or their
running average), labels and optionally the FES matrix:

* ``autofernet`` (:func:`relabel`): the reference's near-tie window, below.
* ``confident`` (:func:`confident`): relabel when the model is confidently against the
  label, ``p[pred] - p[label] > delta`` (Self-Cure Network's form), optionally FES-gated.
* ``consensus`` (:func:`ema_update`, :func:`consensus`): an exponential moving average of
  each sample's softmax over epochs; a label follows the averaged prediction only after it
  has disagreed with the *original* label by more than ``delta`` for ``k`` consecutive
  epochs, and returns to the original as soon as that stops holding.
* ``soft`` (:func:`soft_targets`): no hard flip; the target is
  ``(1 - lam) * onehot(label) + lam * p_avg`` (bootstrapping with the running average),
  the mass that leaves the label optionally shaped by the label's FES row.

:func:`nas.data.ferplus.fes_smoothing` is label smoothing whose off-label mass follows the FES
row (``--fes_smoothing``, a training option of every classification stage, not a rule).

The reference rule
------------------
A training label ``t`` is replaced by the model's prediction ``p = argmax(probs)`` when
the model is nearly sure of ``p`` over ``t``::

    0 < probs[p] - probs[t] < threshold

and, when a facial-expression-similarity matrix is given, the two expressions are
similar enough for the label to be a plausible mistake: ``FES[t][p] > fes_threshold``.
Both inequalities are strict: equal probabilities (margin 0), a margin of exactly
``threshold`` and a similarity of exactly ``fes_threshold`` leave the label alone.
Margins are compared with ``threshold`` in ``probs``'s dtype; a NaN row changes nothing
(argmax takes the NaN, so the margin is NaN and both comparisons are false).

A handful of whole-batch ops on ``probs``'s device, no per-sample Python loop;
:func:`relabel_loop` is the literal per-sample reference the tests and the benchmark
compare against.
"""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch

from nas.runtime.errors import FerNasError

__all__ = ["FESLike", "RULES", "relabel", "relabel_mask", "relabel_loop", "fes_gate", "transition_counts",
           "confident", "ema_update", "consensus", "soft_targets"]

#: The rules behind ``--rule`` (``autofernet`` is the reference, the default).
RULES = ("autofernet", "confident", "consensus", "soft")

#: A K×K similarity matrix: an array or nested lists (compared in float64 on the host, so a
#: stored value equal to the threshold compares equal as written) or a tensor (compared in
#: its own dtype on its own device: what a training loop passes, with no host round trip).
FESLike = Union[np.ndarray, Sequence[Sequence[float]], torch.Tensor]


def fes_gate(fes: FESLike, fes_threshold: float, num_classes: int, device: torch.device | str) -> torch.Tensor:
    """Boolean ``K x K`` matrix ``FES > fes_threshold`` on ``device``."""
    if isinstance(fes, torch.Tensor):
        gate = fes > fes_threshold
    else:
        gate = torch.from_numpy(np.asarray(fes, dtype=np.float64) > fes_threshold)
    if tuple(gate.shape) != (num_classes, num_classes):
        raise FerNasError(f"FES matrix is {tuple(gate.shape)} but the model has {num_classes} classes")
    return gate.to(device)


def relabel_mask(probs: torch.Tensor, targets: torch.Tensor, threshold: float, fes: FESLike | None = None,
                 fes_threshold: float = 0.03) -> tuple[torch.Tensor, torch.Tensor]:
    """``(changed, pred)``: boolean mask of the samples whose label the rule changes, and
    the predicted class of every sample (the new label where ``changed``)."""
    if probs.dim() != 2:
        raise ValueError(f"probs must be N x K, got shape {tuple(probs.shape)}")
    if targets.shape != probs.shape[:1]:
        raise ValueError(f"targets must have shape ({probs.shape[0]},), got {tuple(targets.shape)}")
    probs = probs.detach()
    targets = targets.to(device=probs.device, dtype=torch.long)
    pred = probs.argmax(dim=1)
    margin = probs.gather(1, pred[:, None]).squeeze(1) - probs.gather(1, targets[:, None]).squeeze(1)
    changed = (margin > 0) & (margin < threshold)
    if fes is not None:
        changed &= fes_gate(fes, fes_threshold, probs.shape[1], probs.device)[targets, pred]
    return changed, pred


def relabel(probs: torch.Tensor, targets: torch.Tensor, threshold: float, fes: FESLike | None = None,
            fes_threshold: float = 0.03, return_mask: bool = False
            ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """New int64 targets after the relabelling rule (see the module docstring).

    ``probs``: ``N x K`` softmax probabilities; ``targets``: ``N`` class indices;
    ``fes``: optional ``K x K`` similarity matrix (:data:`FESLike`). With ``return_mask``
    also return the boolean mask of changed samples. The inputs are not modified; the
    result lives on ``probs``'s device."""
    changed, pred = relabel_mask(probs, targets, threshold, fes, fes_threshold)
    new = torch.where(changed, pred, targets.to(device=probs.device, dtype=torch.long))
    return (new, changed) if return_mask else new


def relabel_loop(probs: torch.Tensor, targets: torch.Tensor, threshold: float, fes: FESLike | None = None,
                 fes_threshold: float = 0.03) -> torch.Tensor:
    """Per-sample Python reference of :func:`relabel` (slow; for tests and benchmarks):
    one sample at a time, as the reference implementation loops. Margins are compared
    in ``probs``'s dtype, like the batched rule, so the two agree bit for bit."""
    gate = None if fes is None else fes_gate(fes, fes_threshold, probs.shape[1], "cpu").tolist()
    new = targets.clone().long()
    for i in range(probs.shape[0]):
        row = probs[i]
        t = int(targets[i])
        pred = int(torch.argmax(row))
        margin = row[pred] - row[t]
        if bool(margin > 0) and bool(margin < threshold) and (gate is None or gate[t][pred]):
            new[i] = pred
    return new


def transition_counts(old: torch.Tensor, new: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``K x K`` int64 counts of label changes, row = old class, column = new class
    (unchanged labels are not counted); on ``old``'s device, without a host sync."""
    old = old.long()
    new = new.to(old.device).long()
    moved = (old != new).long()
    counts = torch.zeros(num_classes * num_classes, dtype=torch.long, device=old.device)
    return counts.index_add_(0, old * num_classes + new, moved).view(num_classes, num_classes)


# ----------------------------------------------------------------------------- beyond the reference
def _margin(probs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pred = probs.argmax(dim=1)
    return probs.gather(1, pred[:, None]).squeeze(1) - probs.gather(1, targets[:, None]).squeeze(1), pred


def confident(probs: torch.Tensor, targets: torch.Tensor, delta: float, fes: FESLike | None = None,
              fes_threshold: float = 0.03) -> tuple[torch.Tensor, torch.Tensor]:
    """``(new, changed)``: the label becomes the prediction where ``p[pred] - p[label] > delta``
    (strict; with ``fes`` also ``FES[label][pred] > fes_threshold``). ``delta`` must be >= 0,
    so a changed label always differs from the old one; a NaN row changes nothing."""
    probs = probs.detach()
    targets = targets.to(device=probs.device, dtype=torch.long)
    margin, pred = _margin(probs, targets)
    changed = margin > delta
    if fes is not None:
        changed &= fes_gate(fes, fes_threshold, probs.shape[1], probs.device)[targets, pred]
    return torch.where(changed, pred, targets), changed


@torch.no_grad()
def ema_update(avg: torch.Tensor, seen: torch.Tensor, idx: torch.Tensor, probs: torch.Tensor,
               momentum: float) -> None:
    """In place: ``avg[idx] = momentum * avg[idx] + (1 - momentum) * probs`` for samples seen
    before, ``avg[idx] = probs`` for a first sighting (no bias towards the zero start);
    ``seen[idx] = True``. ``avg`` is float32 N x K, ``seen`` bool N. Each sample is seen once
    per epoch, so this is an average over epochs."""
    probs = probs.detach().to(avg.dtype)
    old = avg[idx]
    avg[idx] = torch.where(seen[idx, None], momentum * old + (1.0 - momentum) * probs, probs)
    seen[idx] = True


@torch.no_grad()
def consensus(avg: torch.Tensor, original: torch.Tensor, streak: torch.Tensor, last_pred: torch.Tensor,
              delta: float, k: int, gate: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One epoch's decision of the consensus rule: ``(labels, streak, pred)``.

    ``pred`` is the averaged prediction; a sample disagrees with its original label when
    ``avg[pred] - avg[original] > delta`` (and ``gate[original, pred]`` when given). The
    streak counts consecutive epochs of disagreement towards the same class (it restarts at
    1 when the predicted class changes, at 0 when the sample agrees). The label is ``pred``
    while the streak is at least ``k``, else the original label: evidence that reverses
    brings the original back."""
    original = original.long()
    margin, pred = _margin(avg, original)
    disagree = margin > delta
    if gate is not None:
        disagree &= gate[original, pred]
    streak = torch.where(disagree, torch.where(pred == last_pred, streak + 1, torch.ones_like(streak)),
                         torch.zeros_like(streak))
    labels = torch.where(streak >= k, pred, original)
    return labels, streak, pred


@torch.no_grad()
def soft_targets(avg: torch.Tensor, labels: torch.Tensor, lam: float,
                 fes_off: torch.Tensor | None = None) -> torch.Tensor:
    """Bootstrapped targets ``(1 - lam) * onehot(label) + lam * avg`` (N x K float32).

    With ``fes_off`` (the FES rows without their diagonal, normalised:
    :func:`nas.data.ferplus.fes_offlabel`, computed once by the caller), the part of
    ``lam * avg`` off the label is spread over the other classes in proportion to
    ``avg * FES[label]``, so mass only leaves a label towards expressions that are both
    predicted and similar; the label's own share is as without the prior. Rows sum to 1."""
    avg = avg.float()
    labels = labels.long()
    # scatter, not F.one_hot, which reads the labels' range back from the device (a host sync)
    onehot = torch.zeros_like(avg).scatter_(1, labels[:, None], 1.0)
    mix = avg
    if fes_off is not None:
        w = avg * fes_off.to(avg.device)[labels]
        total = w.sum(dim=1, keepdim=True)
        off_mass = 1.0 - avg.gather(1, labels[:, None])
        # no predicted mass on a similar class: keep the prediction's own spread
        shaped = torch.where(total > 0, w / total.clamp_min(1e-12) * off_mass, avg * (1.0 - onehot))
        mix = shaped + avg * onehot
    return (1.0 - lam) * onehot + lam * mix
