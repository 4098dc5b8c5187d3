"""One-shot ranking proxies: does the trained supernet know which cells are good?

A search is only as good as the ranking its supernet implies. Two proxies score any cell of
the searched space with a finished search's supernet, without training the cell:

* :func:`alpha_score`: the supernet's own edge scores, the sum over the cell's edges of the
  log-softmax of the architecture weight of the chosen operation (DARTS's argmax rule picks
  the cell that maximises it, edge by edge);
* :func:`oneshot_accuracy`: the supernet's accuracy with every edge forced to the cell's
  operation and every other edge removed (weight sharing, as in Bender et al. 2018 and
  SPOS). Batch-norm statistics are recomputed for the forced path first, since the
  statistics the supernet kept were those of the mixture.

:func:`kendall_tau` compares such a ranking with the cells' retrained accuracies
(``bench/nas_eval.py``). Only the Training split's architecture half is used: a proxy is part
of search and never sees PublicTest/PrivateTest.
"""
from __future__ import annotations

import argparse
from pathlib import Path


import torch
import torch.nn as nn
import torch.nn.functional as F

from nas.models.genotypes import Genotype
from nas.runtime.errors import FerNasError
from nas.runtime.stats import kendall_tau  # re-exported: the proxies' agreement measure
from nas.search.supernet import PRUNED, SearchNetwork, edge_list

__all__ = ["force_genotype", "alpha_score", "oneshot_accuracy", "kendall_tau", "load_supernet"]


def _edge_ops(model: SearchNetwork, genotype: Genotype, cell: str) -> dict[int, int]:
    """``{edge row: op index}`` of one cell type of ``genotype`` in ``model``'s alpha layout."""
    rows = {e: k for k, e in enumerate(edge_list(model.steps))}
    pairs = genotype.normal if cell == "normal" else genotype.reduce
    if len(pairs) != 2 * model.steps:
        raise FerNasError(f"genotype has {len(pairs) // 2} nodes per {cell} cell; the supernet has {model.steps}")
    out: dict[int, int] = {}
    for k, (op, j) in enumerate(pairs):
        if op not in model.primitives:
            raise FerNasError(f"genotype op {op!r} is not in the supernet's space ({', '.join(model.primitives)})")
        if (k // 2, int(j)) not in rows:
            raise FerNasError(f"genotype {cell} node {k // 2} takes state {j}, which the cell does not have")
        out[rows[(k // 2, int(j))]] = model.primitives.index(op)
    return out


def force_genotype(model: SearchNetwork, genotype: Genotype) -> None:
    """Set every edge of ``model`` to ``genotype``'s operation, or remove it (in place)."""
    for cell in ("normal", "reduce"):
        chosen = _edge_ops(model, genotype, cell)
        model.edge_state[cell] = [chosen.get(e, PRUNED) for e in range(model.num_edges)]


def alpha_score(model: SearchNetwork, genotype: Genotype) -> float:
    """Sum over the cell's edges of log softmax(alpha)[chosen op], both cell types."""
    total = 0.0
    for cell in ("normal", "reduce"):
        logp = F.log_softmax(model.alphas(cell).detach().float(), dim=-1)
        total += sum(float(logp[e, o]) for e, o in _edge_ops(model, genotype, cell).items())
    return total


def _batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


@torch.no_grad()
def oneshot_accuracy(model: SearchNetwork, genotype: Genotype, images: torch.Tensor, labels: torch.Tensor, *,
                     crop: int, mean: float = 0.5, std: float = 0.25, batch_size: int = 256) -> float:
    """Accuracy (%) of ``model`` with ``genotype`` forced on the centre-cropped uint8 ``images``,
    after recomputing every batch-norm's statistics on those images for that path.
    ``model``'s edge states and statistics are restored afterwards."""
    from nas.data.augment import eval_views

    saved_state = {c: list(s) for c, s in model.edge_state.items()}
    was_training = model.training
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved_bn = [(m.momentum, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
                for m in bns]
    x_all = eval_views(images, "center", crop, mean, std)[0]
    try:
        force_genotype(model, genotype)
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the recalibration batches
        model.train()
        for s in _batches(len(x_all), batch_size):
            model(x_all[s])
        model.eval()
        correct = 0
        for s in _batches(len(x_all), batch_size):
            correct += int((model(x_all[s]).argmax(1) == labels[s]).sum())
        return 100.0 * correct / max(len(x_all), 1)
    finally:
        model.edge_state = saved_state
        for m, (momentum, mean_, var, n) in zip(bns, saved_bn):
            m.momentum = momentum
            m.running_mean.copy_(mean_)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(n)
        model.train(was_training)


def load_supernet(folder: str | Path) -> tuple[SearchNetwork, torch.Tensor, torch.Tensor, int]:
    """A finished search's supernet (``folder/last.pt``) with the architecture half of its
    Training split: ``(model, images, labels, crop)``."""
    from nas.data import open_data_from_args
    from nas.data.loader import stratified_split
    from nas.runtime.checkpoint import safe_load

    state = safe_load(Path(folder) / "last.pt")
    if state.get("kind") != "fer-nas-search":
        raise FerNasError(f"{folder}/last.pt: not a search checkpoint (kind {state.get('kind')!r})")
    args = argparse.Namespace(**state["args"])
    model = SearchNetwork(**state["model_kwargs"])
    model.load_state_dict(state["model"])
    data = open_data_from_args(args)
    train = data.subset("Training")
    train = train.select(train.labels >= 0)
    arch_idx, _ = stratified_split(train.labels, args.train_portion, seed=args.seed)
    return model, train.images[arch_idx], train.labels[arch_idx], int(args.crop)
