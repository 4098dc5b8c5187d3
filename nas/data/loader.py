"""Batching over in-memory tensors: a seeded batch sampler and a stratified split.

The dataset lives in one tensor (on the GPU when there is one), so a "loader" is
just a stream of index tensors; there are no worker processes and no per-sample
Python work.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

__all__ = ["BatchSampler", "stratified_split", "class_balanced_weights"]


class BatchSampler:
    """Yields int64 index tensors of ``batch_size`` over ``indices_or_n``.

    The order (a permutation, or with ``weights`` a draw of ``len(indices)`` positions
    with replacement) is drawn from ``generator`` when iteration starts. Saving the
    generator state before ``iter()`` and restoring it later therefore reproduces the
    epoch, and :meth:`iter_from` skips the batches already done (mid-epoch resume).
    """

    def __init__(self, indices_or_n: int | Sequence[int] | torch.Tensor, batch_size: int, shuffle: bool = True,
                 drop_last: bool = False, weights: Sequence[float] | torch.Tensor | None = None,
                 generator: torch.Generator | None = None):
        if isinstance(indices_or_n, int):
            indices = torch.arange(indices_or_n, dtype=torch.int64)
        else:
            indices = torch.as_tensor(indices_or_n, dtype=torch.int64).flatten()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.indices = indices
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.generator = generator
        self.weights = None
        if weights is not None:
            w = torch.as_tensor(weights, dtype=torch.float64).flatten()
            if w.numel() != indices.numel():
                raise ValueError(f"weights has {w.numel()} entries for {indices.numel()} indices")
            if (w < 0).any() or not torch.isfinite(w).all() or w.sum() <= 0:
                raise ValueError("weights must be finite, non-negative and not all zero")
            self.weights = w

    def __len__(self) -> int:
        n = self.indices.numel()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _order(self) -> torch.Tensor:
        n = self.indices.numel()
        dev = self.generator.device if self.generator is not None else torch.device("cpu")
        if self.weights is not None:
            pos = torch.multinomial(self.weights.to(dev), n, replacement=True, generator=self.generator)
        elif self.shuffle:
            pos = torch.randperm(n, generator=self.generator, device=dev)
        else:
            return self.indices
        return self.indices[pos.to(self.indices.device)]

    def iter_from(self, start: int = 0) -> Iterator[torch.Tensor]:
        """Draw this epoch's order, then yield batches from number ``start`` on."""
        order = self._order()
        for b in range(start, len(self)):
            yield order[b * self.batch_size:(b + 1) * self.batch_size]

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self.iter_from(0)


def stratified_split(labels: Sequence[int] | torch.Tensor, fraction: float,
                     seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Split sample positions ``0..N-1`` into two sorted int64 tensors; the second holds
    ``floor(fraction * n_c + 0.5)`` random samples of every class ``c`` (the first the
    rest), so both keep the class proportions. Same seed -> same split."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    y = torch.as_tensor(labels, dtype=torch.int64).flatten().cpu()
    n = y.numel()
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=g)
    # a stable sort by label keeps the random order inside each class
    order = perm[torch.sort(y[perm], stable=True).indices]
    y_sorted = y[order]
    classes, counts = torch.unique_consecutive(y_sorted, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n) - torch.repeat_interleave(starts, counts)
    take = torch.floor(counts.double() * fraction + 0.5).long()
    second = rank < torch.repeat_interleave(take, counts)
    return torch.sort(order[~second]).values, torch.sort(order[second]).values


def class_balanced_weights(labels: torch.Tensor) -> torch.Tensor:
    """Per-sample weights 1/count(class) for :class:`BatchSampler` (each class drawn equally often)."""
    y = torch.as_tensor(labels, dtype=torch.int64).flatten().cpu()
    counts = torch.bincount(y.clamp_min(0))
    return 1.0 / counts[y.clamp_min(0)].double()
