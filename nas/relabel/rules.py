"""The relabelling rule of Auto-FERNet, as batched tensor code.

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

__all__ = ["FESLike", "relabel", "relabel_mask", "relabel_loop", "fes_gate", "transition_counts"]

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
