"""The relabelling rule of Auto-FERNet, as batched tensor code.

A training label ``t`` is replaced by the model's prediction ``p = argmax(probs)`` when
the model is nearly sure of ``p`` over ``t``::

    0 < probs[p] - probs[t] < threshold

and, when a facial-expression-similarity matrix is given, the two expressions are
similar enough for the label to be a plausible mistake: ``FES[t][p] > fes_threshold``.
Both inequalities are strict: equal probabilities (margin 0), a margin of exactly
``threshold`` and a similarity of exactly ``fes_threshold`` leave the label alone.
Margins are compared with ``threshold`` in ``probs``'s dtype; a NaN row changes nothing.

Everything runs on ``probs``'s device with no per-sample Python loop;
:func:`relabel_loop` is the literal per-sample reference the tests and the benchmark
compare against.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import torch

from nas.errors import FerNasError

__all__ = ["relabel", "relabel_mask", "relabel_loop", "fes_gate", "transition_counts"]


def _host_gate(fes_bytes: bytes, shape: tuple[int, ...], fes_threshold: float) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(fes_bytes, dtype=np.float64).reshape(shape) > fes_threshold)


@lru_cache(maxsize=32)
def _cached_gate(fes_bytes: bytes, shape: tuple[int, ...], fes_threshold: float, device: str) -> torch.Tensor:
    # Keyed by the matrix's bytes, so an edited matrix can never hit a stale entry.
    return _host_gate(fes_bytes, shape, fes_threshold).to(device)


def fes_gate(fes: Any, fes_threshold: float, num_classes: int, device: torch.device | str) -> torch.Tensor:
    """Boolean ``K x K`` matrix ``FES > fes_threshold`` on ``device``.

    A NumPy array or list is compared in float64 on the host, so a stored value equal
    to the threshold compares equal exactly as written, and the result is cached per
    (matrix, threshold, device) so a training loop pays for the copy once. A tensor is
    compared in its own dtype on its own device (no host round trip). Treat the
    returned tensor as read-only."""
    if isinstance(fes, torch.Tensor):
        gate = fes > fes_threshold
    else:
        arr = np.ascontiguousarray(fes, dtype=np.float64)
        gate = _cached_gate(arr.tobytes(), arr.shape, float(fes_threshold), str(torch.device(device)))
    if gate.shape != (num_classes, num_classes):
        raise FerNasError(f"FES matrix is {tuple(gate.shape)} but the model has {num_classes} classes")
    return gate.to(device)


@lru_cache(maxsize=64)
def _scalar(value: float, dtype: torch.dtype, device: str) -> torch.Tensor:
    # A cached 0-dim tensor in probs's dtype compares exactly like the Python scalar
    # (which torch also casts to that dtype) but skips wrapping the scalar on every
    # call, which costs about as much as a whole comparison on small batches.
    return torch.tensor(value, dtype=dtype, device=device)


@lru_cache(maxsize=32)
def _cached_limit(fes_bytes: bytes, shape: tuple[int, ...], fes_threshold: float, threshold: float,
                  dtype: torch.dtype, device: str) -> torch.Tensor:
    gate = _host_gate(fes_bytes, shape, fes_threshold)
    return torch.where(gate, torch.tensor(threshold, dtype=dtype), torch.tensor(0.0, dtype=dtype)).to(device)


def _margin_limit(fes: Any, fes_threshold: float, threshold: float, probs: torch.Tensor) -> torch.Tensor:
    """``K x K`` upper bound on the margin for a move ``t -> p``: ``threshold`` where the
    FES gate allows the move, 0 where it does not (margins are never negative, so a
    bound of 0 forbids the move). Folding the gate into the bound saves an op."""
    K = probs.shape[1]
    if isinstance(fes, torch.Tensor):
        gate = fes_gate(fes, fes_threshold, K, probs.device)
        return torch.where(gate, _scalar(float(threshold), probs.dtype, str(probs.device)),
                           _scalar(0.0, probs.dtype, str(probs.device)))
    arr = np.ascontiguousarray(fes, dtype=np.float64)
    if arr.shape != (K, K):
        raise FerNasError(f"FES matrix is {arr.shape} but the model has {K} classes")
    return _cached_limit(arr.tobytes(), arr.shape, float(fes_threshold), float(threshold), probs.dtype,
                         str(probs.device))


def relabel_mask(probs: torch.Tensor, targets: torch.Tensor, threshold: float, fes: Any = None,
                 fes_threshold: float = 0.03) -> tuple[torch.Tensor, torch.Tensor]:
    """``(changed, pred)``: boolean mask of the samples whose label the rule changes,
    and the predicted class of every sample (the new label where ``changed``)."""
    if probs.dim() != 2:
        raise ValueError(f"probs must be N x K, got shape {tuple(probs.shape)}")
    if targets.shape != probs.shape[:1]:
        raise ValueError(f"targets must have shape ({probs.shape[0]},), got {tuple(targets.shape)}")
    if targets.dtype != torch.long or targets.device != probs.device:
        targets = targets.to(device=probs.device, dtype=torch.long)
    # At batch 64 the cost is per-op overhead, not arithmetic, so the rule is a handful
    # of whole-batch ops. argmax + amax rather than max(dim=1): the values+indices
    # reduction takes a parallel path that costs milliseconds on small CPU batches
    # when the cores are busy. amax equals probs[pred] (NaN rows give NaN margins,
    # which change nothing).
    pred = probs.argmax(dim=1)
    margin = probs.amax(dim=1) - probs.gather(1, targets.view(-1, 1)).view(-1)
    device = str(probs.device)
    if fes is None:
        limit = _scalar(float(threshold), probs.dtype, device)
    else:
        limit = _margin_limit(fes, fes_threshold, threshold, probs)[targets, pred]
    changed = (margin > _scalar(0.0, probs.dtype, device)).logical_and_(margin < limit)
    return changed, pred


def relabel(probs: torch.Tensor, targets: torch.Tensor, threshold: float, fes: Any = None,
            fes_threshold: float = 0.03, return_mask: bool = False
            ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """New int64 targets after the relabelling rule (see the module docstring).

    ``probs``: ``N x K`` softmax probabilities; ``targets``: ``N`` class indices;
    ``fes``: optional ``K x K`` similarity matrix (array, list or tensor). With
    ``return_mask`` also return the boolean mask of changed samples. The inputs are
    not modified; the result lives on ``probs``'s device."""
    changed, pred = relabel_mask(probs, targets, threshold, fes, fes_threshold)
    new = pred.where(changed, targets.to(device=probs.device, dtype=torch.long))
    return (new, changed) if return_mask else new


def relabel_loop(probs: torch.Tensor, targets: torch.Tensor, threshold: float, fes: Any = None,
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
