"""SGAS: sequential greedy edge decisions during differentiable search (Li et al., CVPR 2020).

Per cell type and edge, from the softmax of the architecture weights ``p`` (op ``none``
excluded from the distribution):

* importance ``I_e = sum_{o != none} p_e[o]``;
* selection certainty ``1 - H(q_e) / log(|O| - 1)`` with ``q_e = p_e[non-none] / I_e``;
* criterion 1: ``score = norm(I) * norm(1 - H)``;
* criterion 2 (``use_history``): times ``norm(mean_t sum_o min(q_e^t, q_e))``, the mean
  histogram intersection with the last ``history_size`` epochs' distributions;

``norm`` is min-max normalisation over the edges of the cell type (zeros when all are
equal). At each decision epoch the undecided edge with the highest score is fixed to
its strongest non-none op; once a node has two decided inputs its other edges are
pruned. One edge per cell type is decided per decision epoch; decisions start at epoch
``warmup_dec_epoch`` and come every ``decision_freq`` epochs until every node has its
two inputs (``2 * steps`` decisions), followed by ``epochs_after_last_decision`` epochs.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from nas.models.genotypes import Genotype
from nas.search.supernet import PRUNED, UNDECIDED, SearchNetwork, node_edge_ranges

__all__ = ["normalize", "histogram_intersection", "edge_scores", "SGAS", "CELL_TYPES"]

CELL_TYPES = ("normal", "reduce")


def normalize(v: torch.Tensor) -> torch.Tensor:
    """Min-max normalisation to [0, 1]; zeros when all entries are equal."""
    lo, hi = v.min(), v.max()
    if hi - lo > 0:
        return (v - lo) / (hi - lo)
    return torch.zeros_like(v)


def histogram_intersection(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise ``sum_o min(a[o], b[o])`` of two (edges x ops) distributions."""
    return torch.minimum(a, b).sum(dim=-1)


def edge_scores(alphas: torch.Tensor, none_index: int | None = 0,
                history: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """SGAS quantities for every edge of one cell type.

    ``alphas``: (edges x ops) architecture weights. ``history``: previous epochs'
    non-none distributions for criterion 2 (None = criterion 1; an empty list gives a
    zero history term, as in SGAS). Returns ``importance``, ``probs`` (non-none
    distribution), ``entropy`` (normalised), ``score`` and, with history, ``histogram``."""
    mat = F.softmax(alphas.detach().double(), dim=-1)
    keep = [i for i in range(mat.shape[1]) if i != none_index]
    sub = mat[:, keep]
    importance = sub.sum(dim=-1)
    probs = sub / importance[:, None]
    n = probs.shape[1]
    entropy = torch.special.entr(probs).sum(dim=-1) / math.log(n) if n > 1 else torch.zeros_like(importance)
    score = normalize(importance) * normalize(1 - entropy)
    out = {"importance": importance, "probs": probs, "entropy": entropy}
    if history is not None:
        hist = torch.zeros_like(importance)
        for h in history:
            hist = hist + histogram_intersection(h.to(probs), probs)
        if history:
            hist = hist / len(history)
        score = score * normalize(hist)
        out["histogram"] = hist
    out["score"] = score
    return out


class SGAS:
    """The SGAS decision controller for a :class:`SearchNetwork`.

    The decisions themselves live in ``model.edge_state`` (so they travel with the
    model's ``state_dict``); this object keeps the schedule, the distribution history,
    the batch size and a log of decisions, and saves/restores them with
    :meth:`state_dict` / :meth:`load_state_dict`."""

    def __init__(self, model: SearchNetwork, warmup_dec_epoch: int = 9, decision_freq: int = 5,
                 use_history: bool = False, history_size: int = 4, batch_size: int = 24, batch_increase: int = 8,
                 epochs_after_last_decision: int = 5) -> None:
        if decision_freq < 1:
            raise ValueError("decision_freq must be >= 1")
        self.model = model
        self.warmup_dec_epoch = int(warmup_dec_epoch)
        self.decision_freq = int(decision_freq)
        self.use_history = bool(use_history)
        self.history_size = int(history_size)
        self.batch_size = int(batch_size)
        self.batch_increase = int(batch_increase)
        self.epochs_after_last_decision = int(epochs_after_last_decision)
        self.none_index = model.primitives.index("none") if "none" in model.primitives else None
        self.history: dict[str, list[torch.Tensor]] = {c: [] for c in CELL_TYPES}
        self.decisions: list[dict[str, Any]] = []

    # -- schedule ---------------------------------------------------------------------
    @property
    def num_decisions(self) -> int:
        """Decision epochs needed: two inputs for each node."""
        return 2 * self.model.steps

    @property
    def total_epochs(self) -> int:
        """``warmup + freq * (decisions - 1) + post + 1`` (50 with the defaults)."""
        return (self.warmup_dec_epoch + self.decision_freq * (self.num_decisions - 1)
                + self.epochs_after_last_decision + 1)

    def candidates(self, cell_type: str) -> list[int]:
        """The undecided edges of ``cell_type``."""
        return [e for e, s in enumerate(self.model.edge_state[cell_type]) if s == UNDECIDED]

    def is_decision_epoch(self, epoch: int) -> bool:
        """Whether an edge is decided after ``epoch`` (past the warm-up, on the decision frequency, while edges remain)."""
        return (epoch >= self.warmup_dec_epoch and (epoch - self.warmup_dec_epoch) % self.decision_freq == 0
                and any(self.candidates(c) for c in CELL_TYPES))

    @property
    def complete(self) -> bool:
        """Every node of both cells has its two inputs."""
        return not any(self.candidates(c) for c in CELL_TYPES)

    # -- scores and decisions ---------------------------------------------------------
    def scores(self, cell_type: str) -> dict[str, torch.Tensor]:
        """Current scores against the stored history (does not update it)."""
        return edge_scores(self.model.alphas(cell_type), self.none_index,
                           self.history[cell_type] if self.use_history else None)

    def _op_index(self, probs_row: torch.Tensor) -> int:
        """Primitive index of the strongest non-none op."""
        k = int(torch.argmax(probs_row))
        if self.none_index is not None and k >= self.none_index:
            k += 1
        return k

    def prune(self, cell_type: str) -> list[int]:
        """Prune the undecided edges of every node that has two decided inputs;
        returns the pruned edges."""
        st = self.model.edge_state[cell_type]
        pruned = []
        for a, b in node_edge_ranges(self.model.steps):
            if sum(1 for s in st[a:b] if s >= 0) >= 2:
                for e in range(a, b):
                    if st[e] == UNDECIDED:
                        st[e] = PRUNED
                        pruned.append(e)
        return pruned

    def decide(self, cell_type: str, scores: dict[str, torch.Tensor], epoch: int) -> dict[str, Any] | None:
        """Fix the best-scoring undecided edge of ``cell_type`` to its strongest op."""
        cands = self.candidates(cell_type)
        if not cands:
            return None
        score = scores["score"]
        best = cands[0]
        for e in cands[1:]:
            if score[e] > score[best]:  # first maximum wins, as torch.argmax
                best = e
        op = self._op_index(scores["probs"][best])
        self.model.edge_state[cell_type][best] = op
        pruned = self.prune(cell_type)
        node, inp = _edge_node(best, self.model.steps)
        rec = {"epoch": epoch, "cell": cell_type, "edge": best, "node": node, "input": inp,
               "op": self.model.primitives[op], "score": float(score[best]), "pruned": pruned}
        self.decisions.append(rec)
        return rec

    def end_of_epoch(self, epoch: int) -> list[dict[str, Any]]:
        """Score both cell types, update the history, and at a decision epoch decide one
        edge per cell type and grow the batch size. Returns the decisions made."""
        decide = self.is_decision_epoch(epoch)
        made = []
        for c in CELL_TYPES:
            s = self.scores(c)
            if self.use_history:
                self.history[c].append(s["probs"].float().cpu())
                if len(self.history[c]) > self.history_size:
                    self.history[c].pop(0)
            if decide:
                rec = self.decide(c, s, epoch)
                if rec is not None:
                    made.append(rec)
        if made:
            self.batch_size += self.batch_increase
        return made

    # -- genotypes --------------------------------------------------------------------
    def forced_genotype(self) -> Genotype:
        """Decided edges plus, for nodes still open, the remaining edges with the
        highest importance (each with its strongest non-none op), two inputs per node."""
        cells = []
        for c in CELL_TYPES:
            s = edge_scores(self.model.alphas(c), self.none_index)
            st = self.model.edge_state[c]
            gene: list[tuple[str, int]] = []
            for a, b in node_edge_ranges(self.model.steps):
                chosen = [e for e in range(a, b) if st[e] >= 0]
                rest = sorted((e for e in range(a, b) if st[e] == UNDECIDED),
                              key=lambda e: -float(s["importance"][e]))
                chosen = sorted((chosen + rest)[:2])
                for e in chosen:
                    op = st[e] if st[e] >= 0 else self._op_index(s["probs"][e])
                    gene.append((self.model.primitives[op], e - a))
            cells.append(gene)
        concat = list(range(2 + self.model.steps - self.model.multiplier, self.model.steps + 2))
        return Genotype(cells[0], concat, cells[1], concat)

    # -- state ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The decisions made so far, the scores' history and the grown batch size, for an exact resume."""
        return {"history": {c: [h.clone() for h in v] for c, v in self.history.items()},
                "batch_size": self.batch_size, "decisions": [dict(d) for d in self.decisions]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""
        self.history = {c: [h.clone() for h in state["history"].get(c, [])] for c in CELL_TYPES}
        self.batch_size = int(state["batch_size"])
        self.decisions = [dict(d) for d in state["decisions"]]


def _edge_node(edge: int, steps: int) -> tuple[int, int]:
    for i, (a, b) in enumerate(node_edge_ranges(steps)):
        if a <= edge < b:
            return i, edge - a
    raise IndexError(edge)
