"""Relabelling: the rules (:mod:`nas.relabel.rules`) and the stage that continues training
from a snapshot while it relabels (:mod:`nas.relabel.stage`).

``nas.relabel.relabel(probs, targets, threshold, fes=None, fes_threshold=0.03)`` is the
reference rule as batched tensor code (a public contract)."""
from nas.relabel.rules import fes_gate, relabel, relabel_loop, relabel_mask, transition_counts

__all__ = ["relabel", "relabel_mask", "relabel_loop", "fes_gate", "transition_counts"]
