"""The relabelling rule of Auto-FERNet, as batched tensor code.

A training label ``t`` is replaced by the model's prediction ``p = argmax(probs)`` when
the model is nearly sure of ``p`` over ``t``::

    0 < probs[p] - probs[t] < threshold

and, when a facial-expression-similarity matrix is given, the two expressions are
similar enough for the label to be a plausible mistake: ``FES[t][p] > fes_threshold``.
Both inequalities are strict: equal probabilities (margin 0), a margin of exactly
``threshold`` and a similarity of exactly ``fes_threshold`` leave the label alone.
Margins are compared with ``threshold`` in ``probs``'s dtype; a NaN row changes nothing.

Everything runs on ``probs``'s device with no per-sample Python loop (CPU float
batches through NumPy views of the same memory, whose calls cost less than torch's);
:func:`relabel_loop` is the literal per-sample reference the tests and the benchmark
compare against.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import torch

from nas.runtime.errors import FerNasError

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


# dtypes the CPU path hands to NumPy (which has no bfloat16; half stays in torch too)
_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}


@lru_cache(maxsize=32)
def _cached_limit_np(fes_bytes: bytes, shape: tuple[int, ...], fes_threshold: float, threshold: float,
                     dtype: type) -> np.ndarray:
    gate = np.frombuffer(fes_bytes, dtype=np.float64).reshape(shape) > fes_threshold
    out = np.where(gate, dtype(threshold), dtype(0.0)).astype(dtype)
    out.flags.writeable = False
    return out


def _rule_numpy(probs: torch.Tensor, targets: torch.Tensor, threshold: float, fes: Any,
                fes_threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rule on a CPU batch through NumPy views of the tensors' memory (no copy):
    ``(changed, pred, targets)`` as arrays. At training batch sizes the rule costs
    per-call dispatch, not arithmetic, and a NumPy call costs about a microsecond
    against several for a torch op; the ops and the comparison dtype are the torch
    path's."""
    np_dtype = _NUMPY_DTYPES[probs.dtype]
    P = (probs.detach() if probs.requires_grad else probs).numpy()
    T = targets.numpy()
    K = P.shape[1]
    # NumPy would wrap a negative index silently: one reduction over the bits as unsigned
    # catches both ends (a negative int64 reads as a huge uint64)
    if T.size and T.view(np.uint64).max() >= K:
        raise ValueError(f"targets must lie in [0, {K}), got {int(T.min())}..{int(T.max())}")
    pred = P.argmax(axis=1).astype(np.int64, copy=False)  # NaN counts as the maximum, as in torch.argmax: NaN rows get NaN margins
    rows = np.arange(P.shape[0])
    margin = P[rows, pred] - P[rows, T]  # fancy indexing: a row-wise max reduction is 4x slower here
    if fes is None:
        limit: Any = np_dtype(threshold)
    else:
        if isinstance(fes, torch.Tensor):  # compared in its own dtype, as documented for tensors
            gate = fes_gate(fes, fes_threshold, K, "cpu").numpy()
            table = np.where(gate, np_dtype(threshold), np_dtype(0.0))
        else:
            arr = np.ascontiguousarray(fes, dtype=np.float64)
            if arr.shape != (K, K):
                raise FerNasError(f"FES matrix is {arr.shape} but the model has {K} classes")
            table = _cached_limit_np(arr.tobytes(), arr.shape, float(fes_threshold), float(threshold), np_dtype)
        limit = table[T, pred]
    changed = margin > np_dtype(0.0)
    changed &= margin < limit
    return changed, pred, T


def _numpy_path(probs: torch.Tensor, backend: str) -> bool:
    """Whether to run the rule through NumPy: ``auto`` does for CPU float32/float64."""
    fits = probs.device.type == "cpu" and probs.dtype in _NUMPY_DTYPES
    if backend == "auto":
        return fits
    if backend not in ("numpy", "torch"):
        raise ValueError(f"backend must be auto, numpy or torch, got {backend!r}")
    if backend == "numpy" and not fits:
        raise ValueError(f"backend 'numpy' needs float32/float64 probabilities on the CPU, got {probs.dtype} "
                         f"on {probs.device}")
    return backend == "numpy"


def relabel_mask(probs: torch.Tensor, targets: torch.Tensor, threshold: float, fes: Any = None,
                 fes_threshold: float = 0.03, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """``(changed, pred)``: boolean mask of the samples whose label the rule changes,
    and the predicted class of every sample (the new label where ``changed``).
    ``backend``: ``torch`` (whole-batch torch ops on ``probs``'s device), ``numpy``
    (the same ops through NumPy, CPU float32/float64 only) or ``auto`` (NumPy where it
    applies: the same answer at a fraction of the per-call overhead)."""
    if probs.dim() != 2:
        raise ValueError(f"probs must be N x K, got shape {tuple(probs.shape)}")
    if targets.shape != probs.shape[:1]:
        raise ValueError(f"targets must have shape ({probs.shape[0]},), got {tuple(targets.shape)}")
    if targets.dtype != torch.long or targets.device != probs.device:
        targets = targets.to(device=probs.device, dtype=torch.long)
    if _numpy_path(probs, backend):
        changed, pred, _ = _rule_numpy(probs, targets, threshold, fes, fes_threshold)
        return torch.from_numpy(changed), torch.from_numpy(pred)
    # At batch 64 the cost is per-op overhead, not arithmetic, so the rule is a handful
    # of whole-batch ops. argmax + amax rather than max(dim=1): the values+indices
    # reduction takes a parallel path that costs milliseconds on small CPU batches
    # when the cores are busy. amax equals probs[pred] (NaN rows give NaN margins,
    # which change nothing).
    pred = probs.argmax(dim=1)
    margin = probs.amax(dim=1).sub_(probs.gather(1, targets.view(-1, 1)).view(-1))
    device = str(probs.device)
    if fes is None:
        limit = _scalar(float(threshold), probs.dtype, device)
    else:
        # row t of the bound table, then its entry at pred: two cheap gathers instead
        # of one advanced index (which costs as much as the rest of the rule)
        table = _margin_limit(fes, fes_threshold, threshold, probs)
        limit = table.index_select(0, targets).gather(1, pred.view(-1, 1)).view(-1)
    changed = margin.gt(_scalar(0.0, probs.dtype, device)).logical_and_(margin.lt(limit))
    return changed, pred


def relabel(probs: torch.Tensor, targets: torch.Tensor, threshold: float, fes: Any = None,
            fes_threshold: float = 0.03, return_mask: bool = False, backend: str = "auto"
            ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """New int64 targets after the relabelling rule (see the module docstring).

    ``probs``: ``N x K`` softmax probabilities; ``targets``: ``N`` class indices;
    ``fes``: optional ``K x K`` similarity matrix (array, list or tensor). With
    ``return_mask`` also return the boolean mask of changed samples; ``backend`` as in
    :func:`relabel_mask`. The inputs are not modified; the result lives on ``probs``'s
    device."""
    if probs.dim() == 2 and targets.shape == probs.shape[:1] and _numpy_path(probs, backend):
        t = targets if targets.dtype == torch.long and targets.device.type == "cpu" else targets.to("cpu", torch.long)
        changed_np, pred_np, t_np = _rule_numpy(probs, t, threshold, fes, fes_threshold)
        new = torch.from_numpy(np.where(changed_np, pred_np, t_np))
        return (new, torch.from_numpy(changed_np)) if return_mask else new
    changed, pred = relabel_mask(probs, targets, threshold, fes, fes_threshold, backend)
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
