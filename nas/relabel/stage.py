"""Relabelling: Auto-FERNet's third stage, behind ``relabel_training.py`` (``fernas relabel``).

Start from a checkpoint saved before convergence (``snapshot_train85.pt`` of a
train_searched.py run) and keep training while the relabelling rule
(:func:`nas.relabel.relabel`: ``0 < p_pred - p_label < threshold``, optionally
gated by the FES matrix) rewrites labels the model nearly disagrees with.

:class:`Relabeller` plugs into the trainer twice: as its ``target_hook`` (per step,
on the device, no host sync) and as a loop callback (once per epoch: statistics, the
transitions CSV, and under DDP the merge of every rank's changes; its label tensors
are checkpointed with the loop's state).

Rules (``--rule``, :mod:`nas.relabel.rules`): ``autofernet`` (the reference, default),
``confident``, ``consensus`` (a per-sample running average of the softmax, decided once
per epoch) and ``soft`` (bootstrapped soft targets). The averaging rules' state (the
average, the streaks) is checkpointed with the labels and merged across DDP ranks.

Modes (autofernet and confident):

* ``batch`` (the reference): a changed label is used for that step only; every
  epoch starts again from the dataset's labels.
* ``persistent``: a changed label is kept in a label tensor and is the sample's
  label from then on (it may change again later). The tensor is checkpointed,
  so ``--resume`` continues exactly.

Per-epoch statistics (columns of metrics.csv; ``epoch`` is 1-based there):

* ``relabel_changed``: samples whose label the rule changed this epoch (each
  training sample is seen once per epoch, so these are distinct samples).
* ``relabel_agreement``: % of training samples whose prediction (the running average
  for consensus/soft, the latest one otherwise) is their current label; with the
  number of changes, what a user without clean labels can watch (it rises as labels
  follow the model, so a rise alone does not mean the labels got cleaner).
* With clean labels (SynthFER): ``relabel_restored`` (changed to the clean label),
  ``relabel_harmed`` (the label was clean and was changed, necessarily to a wrong
  one), ``relabel_wrong_to_wrong`` (a wrong label changed to another wrong one),
  ``relabel_precision = restored / changed``; and over the labels the loss
  actually used this epoch: ``relabel_recall`` = originally noisy samples trained
  on their clean label / originally noisy samples, ``relabel_harm`` = originally
  clean samples trained on a wrong label / originally clean samples,
  ``relabel_label_noise`` = wrong labels trained on / training samples. In batch
  mode recall is ``restored / noisy`` of that epoch; in persistent mode it counts
  corrections made in earlier epochs too (the state of the label tensor).

``relabel_transitions.csv`` holds ``epoch, from, to, count`` for every non-zero
(from, to) pair; per epoch its counts sum to ``relabel_changed``.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from nas.data.dataset import SPLITS, FERData
from nas.data.ferplus import fes_offlabel
from nas.engine.loop import Callback, Loop
from nas.engine.session import Session
from nas.runtime.cli import fmt_pct
from nas.runtime.distributed import DistInfo
from nas.runtime.errors import FerNasError

__all__ = ["RELABEL_MODES", "DEFAULT_THRESHOLDS", "COLLAPSE_RATE", "REFERENCE_RULE_WARNING", "TRANSITIONS_CSV", "REFERENCE_DEFAULTS", "Relabeller",
           "RelabelConfig", "relabel_config", "add_relabel_args", "resolve_fes",
           "drop_path_schedule", "open_relabel_data", "run_relabel", "check_relabel_args", "summarize_relabel", "plot_relabel"]

#: ``--relabel_threshold`` when not given, per rule. The reference's 0.2 for its window; the
#: confident rule's 0.7 because at SCN's 0.2 the training step's own confident predictions
#: become its targets and the model collapses to one class within an epoch (measured on
#: SynthFER, docs/relabelling.md); consensus decides on averaged probabilities.
DEFAULT_THRESHOLDS = {"autofernet": 0.2, "confident": 0.7, "consensus": 0.2, "soft": 0.2}

#: Logged when the reference rule runs: what the grids measured (docs/relabelling.md, "Which rule", and the
#: noisy-label grid's recommendation in docs/robust.md, "What to run").
REFERENCE_RULE_WARNING = ("warning: --rule autofernet (the reference's near-tie window) harmed more clean labels than "
                          "it restored in every cell measured on SynthFER (docs/relabelling.md, 'Which rule') and won "
                          "back the least of the rules at 30 % noise; --rule consensus --fes False is what the "
                          "noisy-label grid recommends there (docs/robust.md, 'What to run')")
#: A rule that changes more than this % of the training labels in one epoch gets a warning.
COLLAPSE_RATE = 50.0
RELABEL_MODES = ("batch", "persistent")
TRANSITIONS_CSV = "relabel_transitions.csv"
REFERENCE_DEFAULTS = {"batch_size": 64, "learning_rate": 0.02272721, "epochs": 100}


# ----------------------------------------------------------------------------- the settings
@dataclass
class RelabelConfig:
    """A relabelling rule's settings, checked in one place (flags: ``--rule``,
    ``--relabel_threshold``, ``--fes_threshold``, ``--relabel_mode``, ``--relabel_warmup``,
    ``--ema_momentum``, ``--consensus_epochs``, ``--soft_lambda``). The stage builds it from its
    flags (:func:`relabel_config`) before its run folder exists; :class:`Relabeller` builds it from
    its arguments, so code that makes a relabeller directly gets the same one-line errors."""

    rule: str = "autofernet"
    threshold: float = 0.2
    fes_threshold: float = 0.03
    mode: str = "batch"
    warmup: int = 1
    ema_momentum: float = 0.7
    consensus_epochs: int = 2
    soft_lambda: float = 0.5

    def __post_init__(self) -> None:
        """The rules between the settings: one-line errors naming the flag."""
        from nas.relabel.rules import RULES

        if self.rule not in RULES:
            raise FerNasError(f"--rule {self.rule!r}: choose from {', '.join(RULES)}")
        if self.mode not in RELABEL_MODES:
            raise FerNasError(f"--relabel_mode {self.mode!r}: choose from {', '.join(RELABEL_MODES)}")
        if self.mode == "persistent" and self.rule in ("consensus", "soft"):
            raise FerNasError(f"--relabel_mode persistent is for the autofernet and confident rules: --rule "
                              f"{self.rule} keeps its own per-sample state across epochs")
        for flag, value, ok, want in (
                ("relabel_threshold", self.threshold, 0.0 <= self.threshold <= 1.0, "in [0, 1]"),
                ("fes_threshold", self.fes_threshold, 0.0 <= self.fes_threshold <= 1.0, "in [0, 1]"),
                ("relabel_warmup", self.warmup, self.warmup >= 0, ">= 0"),
                ("ema_momentum", self.ema_momentum, 0.0 <= self.ema_momentum < 1.0, "in [0, 1)"),
                ("consensus_epochs", self.consensus_epochs, self.consensus_epochs >= 1, ">= 1"),
                ("soft_lambda", self.soft_lambda, 0.0 <= self.soft_lambda <= 1.0, "in [0, 1]")):
            if not ok:  # a NaN fails every comparison, so it is refused too
                raise FerNasError(f"--{flag} must be {want}, got {value}")


def relabel_config(args: argparse.Namespace) -> RelabelConfig:
    """The :class:`RelabelConfig` of parsed flags (after :func:`check_relabel_args` filled the
    threshold)."""
    return RelabelConfig(rule=args.rule, threshold=args.relabel_threshold, fes_threshold=args.fes_threshold,
                         mode=args.relabel_mode, warmup=args.relabel_warmup, ema_momentum=args.ema_momentum,
                         consensus_epochs=args.consensus_epochs, soft_lambda=args.soft_lambda)


# ----------------------------------------------------------------------------- the hook
class Relabeller(Callback):
    """Target hook and loop callback of :class:`nas.engine.trainer.Trainer` that relabels.

    Args:
        labels: int64 N, the dataset's (hard) labels, all splits; indices of the
            hook's calls index this tensor.
        train_idx: indices of the Training split (statistics are over these).
        threshold: margin threshold of the rule; ``<= 0`` never relabels (the
            control run of continued training).
        fes: optional K×K similarity matrix (the gate); None disables the gate.
        mode: ``batch`` or ``persistent`` (see the module docstring).
        warmup: epochs trained before relabelling starts (the reference: 1, i.e.
            epoch 0 trains on the given labels).
        clean_labels: int64 N true labels when known (SynthFER), for precision,
            recall and harm.
        classes: class names (transitions CSV, log).
        dist: :class:`nas.runtime.distributed.DistInfo` (merge of ranks' changes).
        rule: one of :data:`nas.relabel.rules.RULES`; ``threshold`` is its margin
            (``delta`` for confident/consensus; for soft it only switches the rule on).
        ema_momentum / consensus_epochs / soft_lambda: the averaging rules' settings.
    """

    name = "relabel"

    def __init__(self, labels: torch.Tensor, train_idx: torch.Tensor, *, threshold: float,
                 fes: np.ndarray | None = None, fes_threshold: float = 0.03, mode: str = "batch", warmup: int = 1,
                 clean_labels: torch.Tensor | None = None, classes: Sequence[str] = (),
                 dist: DistInfo | None = None, log: bool = True, rule: str = "autofernet",
                 ema_momentum: float = 0.7, consensus_epochs: int = 2, soft_lambda: float = 0.5) -> None:
        self.cfg = RelabelConfig(rule=rule, threshold=threshold, fes_threshold=fes_threshold, mode=mode,
                                 warmup=warmup, ema_momentum=ema_momentum, consensus_epochs=consensus_epochs,
                                 soft_lambda=soft_lambda)
        self.original = labels.long()
        self.device = self.original.device
        self.train_idx = train_idx.to(self.device).long()
        self.threshold, self.fes_threshold = float(threshold), float(fes_threshold)
        # the gate's matrix lives on the labels' device (float64, as compared on the host): a
        # step compares it there, with no host round trip
        self.fes = None if fes is None else torch.tensor(np.asarray(fes, dtype=np.float64), device=self.device)
        self.mode, self.warmup = mode, int(warmup)
        self.classes = list(classes) or [str(i) for i in range(int(labels.max()) + 1)]
        self.num_classes = len(self.classes)
        if self.fes is not None and tuple(self.fes.shape) != (self.num_classes, self.num_classes):
            raise FerNasError(f"FES matrix is {self.fes.shape[0]}x{self.fes.shape[1]} but the data has "
                              f"{self.num_classes} classes")
        self.clean = None if clean_labels is None else clean_labels.to(self.device).long()
        if self.clean is not None and self.clean.shape != self.original.shape:
            raise FerNasError(f"clean labels ({self.clean.numel()}) do not match the labels ({self.original.numel()})")
        self.dist = dist
        self.log = log
        self.rule = rule
        self.ema_momentum, self.consensus_epochs, self.soft_lambda = float(ema_momentum), int(consensus_epochs), \
            float(soft_lambda)
        # base: each sample's label at the start of the epoch; now: after this epoch's changes
        self.base = self.original.clone()
        self.now = self.original.clone()
        n = self.original.numel()
        # per-sample state of the averaging rules: the running softmax, whether a sample has been seen,
        # the consensus streak and the class it points to; `touched` marks rows a rank updated since the
        # last DDP merge. `mass`: the target's probability on the clean class (soft rule, clean labels known)
        self.uses_average = rule in ("consensus", "soft")
        k = self.num_classes if self.uses_average else 0
        self.avg = torch.zeros(n, k, dtype=torch.float32, device=self.device)
        self.seen = torch.zeros(n, dtype=torch.bool, device=self.device)
        self.touched = torch.zeros(n, dtype=torch.bool, device=self.device)
        # every rule: each sample's latest prediction (-1: not seen yet), for the agreement column
        self.pred = torch.full((n,), -1, dtype=torch.long, device=self.device)
        self.streak = torch.zeros(n, dtype=torch.long, device=self.device)
        self.last_pred = torch.full((n,), -1, dtype=torch.long, device=self.device)
        self.mass = torch.ones(n if rule == "soft" else 0, dtype=torch.float32, device=self.device)
        self._gate = None if self.fes is None else (self.fes > self.fes_threshold)
        self._fes_off = None if self.fes is None else fes_offlabel(self.fes)  # the soft rule's prior, once

    @property
    def active(self) -> bool:
        """Whether the rule can change any label (a threshold above 0, and a soft weight above 0 for 'soft')."""
        return self.threshold > 0 and (self.rule != "soft" or self.soft_lambda > 0)

    # -- per step (on the device, no host sync) -------------------------------------
    def __call__(self, epoch: int, step: int, idx: torch.Tensor, logits: torch.Tensor,
                 targets: torch.Tensor) -> torch.Tensor:
        if targets.is_floating_point():  # soft targets are never relabelled (relabel_main refuses the combination)
            return targets
        from nas.relabel import rules

        given = self.base[idx]
        probs = torch.softmax(logits.float(), dim=1)
        self.pred[idx] = probs.argmax(dim=1)
        self.touched[idx] = True
        if self.uses_average:  # the average runs from the first epoch, warm-up included
            rules.ema_update(self.avg, self.seen, idx, probs, self.ema_momentum)
        if epoch < self.warmup or not self.active or self.rule == "consensus":  # consensus decides per epoch
            return given
        if self.rule == "soft":
            soft = rules.soft_targets(self.avg[idx], given, self.soft_lambda, self._fes_off)
            self.now[idx] = soft.argmax(dim=1)
            if self.clean is not None:
                self.mass[idx] = soft.gather(1, self.clean[idx, None]).squeeze(1)
            return soft
        if self.rule == "confident":
            new, _ = rules.confident(probs, given, self.threshold, self.fes, self.fes_threshold)
        else:
            new = rules.relabel(probs, given, self.threshold, self.fes, self.fes_threshold)
        self.now[idx] = new
        return new

    # -- per epoch --------------------------------------------------------------------
    def _merge(self) -> None:
        """DDP: every rank changed labels of its own disjoint shards; combine them.
        A changed label is encoded ``label + 1`` (unchanged 0) and reduced with MAX, which
        is also right for entries every rank already holds (after a mid-epoch resume)."""
        if self.dist is None or not self.dist.enabled:
            self.touched.zero_()
            return
        from nas.runtime.distributed import all_reduce_max, all_reduce_sum

        enc = torch.where(self.now != self.base, self.now + 1, torch.zeros_like(self.now))
        all_reduce_max(enc)
        self.now = torch.where(enc > 0, enc - 1, self.base)
        enc = torch.where(self.touched, self.pred + 1, torch.zeros_like(self.pred))
        all_reduce_max(enc)   # shards are disjoint: one rank touched each row
        self.pred = torch.where(enc > 0, enc - 1, self.pred)
        if self.uses_average:
            # rows a rank updated since the last merge travel as sums over the ranks that touched them
            # (shards are disjoint, so that is one rank; rows every rank holds were merged before)
            count = self.touched.float()
            rows = [torch.where(self.touched[:, None], self.avg, torch.zeros_like(self.avg))]
            if self.mass.numel():
                rows.append(torch.where(self.touched, self.mass, torch.zeros_like(self.mass))[:, None])
            packed = torch.cat([count[:, None], *rows], dim=1)
            all_reduce_sum(packed)
            count, hit = packed[:, 0], packed[:, 0] > 0
            self.avg = torch.where(hit[:, None], packed[:, 1:1 + self.num_classes] / count.clamp_min(1)[:, None],
                                   self.avg)
            if self.mass.numel():
                self.mass = torch.where(hit, packed[:, -1] / count.clamp_min(1), self.mass)
            self.seen |= hit
        self.touched.zero_()

    def statistics(self) -> tuple[dict[str, Any], torch.Tensor]:
        """This epoch's metrics columns and the K×K transition counts (merged over ranks)."""
        from nas.relabel.rules import transition_counts

        self._merge()
        t = self.train_idx
        old, new = self.base[t], self.now[t]
        changed = old != new
        trans = transition_counts(old, new, self.num_classes).cpu()
        n_train = int(t.numel())
        n_changed = int(changed.sum())
        row: dict[str, Any] = {"relabel_changed": n_changed,
                               "relabel_rate": 100.0 * n_changed / n_train if n_train else 0.0,
                               "relabel_agreement": self._agreement(t)}
        if self.clean is not None:
            clean, orig = self.clean[t], self.original[t]
            noisy = orig != clean
            restored = int((changed & (new == clean)).sum())
            harmed = int((changed & (old == clean)).sum())
            n_noisy = int(noisy.sum())
            n_clean = n_train - n_noisy
            row.update(
                relabel_restored=restored, relabel_harmed=harmed,
                relabel_wrong_to_wrong=n_changed - restored - harmed,
                relabel_precision=100.0 * restored / n_changed if n_changed else "",
                relabel_recall=100.0 * int((noisy & (new == clean)).sum()) / n_noisy if n_noisy else "",
                relabel_harm=100.0 * int((~noisy & (new != clean)).sum()) / n_clean if n_clean else "",
                relabel_label_noise=100.0 * int((new != clean).sum()) / n_train if n_train else "",
                relabel_clean_mass=100.0 * float(self._clean_mass(t, new, clean)),
            )
        return row, trans

    def _agreement(self, t: torch.Tensor) -> float | str:
        """% of the training samples seen so far whose prediction (the running average for
        consensus/soft, else the latest one) is their current label: the signal a user without
        clean labels can watch."""
        pred = self.avg[t].argmax(dim=1) if self.uses_average else self.pred[t]
        seen = self.pred[t] >= 0
        n = int(seen.sum())
        return 100.0 * int((pred[seen] == self.now[t][seen]).sum()) / n if n else ""

    def _clean_mass(self, t: torch.Tensor, new: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        """Mean probability the training targets put on the clean class (hard rules: the share
        of clean labels; soft: the targets' mass as last used)."""
        if self.rule == "soft" and self.active:
            return self.mass[t].mean()
        return (new == clean).float().mean()

    def end_epoch(self, epoch: int) -> tuple[dict[str, Any], torch.Tensor]:
        """Statistics of the epoch, then move on: persistent mode keeps the changes, batch mode
        forgets them; consensus takes its per-epoch decision first (its changes are the labels
        of the next epoch) and keeps it."""
        from nas.relabel.rules import consensus

        self._merge()
        if self.rule == "consensus" and self.active and epoch >= self.warmup:
            self.now, self.streak, self.last_pred = consensus(
                self.avg, self.original, self.streak, self.last_pred, self.threshold, self.consensus_epochs,
                self._gate)
        row, trans = self.statistics()
        if self.mode == "persistent" or self.rule == "consensus":
            self.base = self.now.clone()
        else:
            self.now = self.base.clone()
        return row, trans

    def on_epoch_end(self, loop: Loop, epoch: int, row: dict[str, Any]) -> None:
        """Statistics as metrics columns, the epoch's transitions appended to
        relabel_transitions.csv (rank 0 writes)."""
        stats, trans = self.end_epoch(epoch)
        row.update(stats)
        run = loop.run
        for i, j in zip(*np.nonzero(trans.numpy())):
            run.append_metrics({"epoch": epoch + 1, "from": self.classes[i], "to": self.classes[j],
                                "count": int(trans[i, j])}, name=TRANSITIONS_CSV)
        if self.log and self.active and epoch >= self.warmup:
            run.log(f"  relabel epoch {epoch + 1}: {_describe(stats)}")
            if stats["relabel_rate"] > COLLAPSE_RATE:
                run.log(f"warning: the {self.rule} rule changed {stats['relabel_rate']:.0f}% of the training labels in "
                        f"epoch {epoch + 1}: the model is likely confirming its own predictions (collapse); raise "
                        "--relabel_threshold (docs/relabelling.md)")

    # -- checkpointing ----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Label tensors (CPU). Under DDP this merges the ranks' changes (a collective:
        the trainer builds its state on every rank)."""
        self._merge()
        state = {"kind": "fer-nas-relabeller", "mode": self.mode, "rule": self.rule,
                 "original": self.original.cpu(), "base": self.base.cpu(), "now": self.now.cpu(),
                 "pred": self.pred.cpu()}
        if self.uses_average:
            state.update(avg=self.avg.cpu(), seen=self.seen.cpu(), streak=self.streak.cpu(),
                         last_pred=self.last_pred.cpu(), mass=self.mass.cpu())
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the label tensors; the data's labels must be the run's."""
        if state.get("kind") != "fer-nas-relabeller":
            raise FerNasError("checkpoint holds no relabelling state to resume")
        orig = state["original"]
        if tuple(orig.shape) != tuple(self.original.shape) or not torch.equal(orig.to(self.device), self.original):
            raise FerNasError("the data's labels differ from those of the run being resumed "
                              "(pass the same --dataset/--data flags)")
        if state.get("mode") != self.mode:
            raise FerNasError(f"the run used --relabel_mode {state.get('mode')}, not {self.mode}")
        if state.get("rule", "autofernet") != self.rule:
            raise FerNasError(f"the run used --rule {state.get('rule', 'autofernet')}, not {self.rule}")
        self.base = state["base"].to(self.device).long()
        self.now = state["now"].to(self.device).long()
        if "pred" in state:   # runs of fer-nas 0.2 have no agreement column to continue
            self.pred = state["pred"].to(self.device).long()
        if self.uses_average:
            self.avg = state["avg"].to(self.device).float()
            self.seen = state["seen"].to(self.device).bool()
            self.streak = state["streak"].to(self.device).long()
            self.last_pred = state["last_pred"].to(self.device).long()
            self.mass = state["mass"].to(self.device).float()
        self.touched.zero_()


def _pct1(v: object) -> str:
    return fmt_pct(v, digits=1)


def _describe(row: Mapping[str, Any]) -> str:
    s = f"{row['relabel_changed']} labels changed"
    if "relabel_restored" in row:
        pct = _pct1
        s += (f" (restored {row['relabel_restored']}, harmed {row['relabel_harmed']}, wrong->wrong "
              f"{row['relabel_wrong_to_wrong']}); precision {pct(row['relabel_precision'])}, recall "
              f"{pct(row['relabel_recall'])}, harm {pct(row['relabel_harm'])}")
    return s


# ----------------------------------------------------------------------------- flags
def add_relabel_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The relabelling flags (the reference's names and defaults)."""
    from nas.relabel.rules import RULES
    from nas.runtime.cli import str2bool

    g = parser.add_argument_group("relabelling")
    g.add_argument("--checkpoint", default=None,
                   help="checkpoint to start from (e.g. runs/train-.../snapshot_train85.pt); the model, "
                        "genotype and layers come from it")
    g.add_argument("--rule", default="autofernet", choices=RULES,
                   help="autofernet: the reference's near-tie window; confident: p_pred - p_label > threshold; "
                        "consensus: the same on an average over epochs, for --consensus_epochs epochs in a row; "
                        "soft: targets (1-lambda) onehot + lambda p_avg (see docs/relabelling.md)")
    g.add_argument("--relabel_threshold", type=float, default=None,
                   help="the rule's margin: autofernet changes a label when 0 < p_pred - p_label < this, "
                        "confident and consensus when p_pred - p_label > this (0: never relabel, any rule; default "
                        + ", ".join(f"{r} {t}" for r, t in DEFAULT_THRESHOLDS.items()) + ")")
    g.add_argument("--ema_momentum", type=float, default=0.7,
                   help="consensus/soft: per-epoch momentum of each sample's averaged softmax")
    g.add_argument("--consensus_epochs", type=int, default=2,
                   help="consensus: epochs in a row the average must disagree before a label follows it")
    g.add_argument("--soft_lambda", type=float, default=0.5,
                   help="soft: weight of the averaged prediction in the target")
    g.add_argument("--no_relabel", action="store_true", default=False,
                   help="continued training without relabelling (the control run; same as --relabel_threshold 0)")
    g.add_argument("--fes", type=str2bool, default=True,
                   help="gate changes by the FES matrix (True/False); soft: shape the mass leaving a label by it")
    g.add_argument("--fes_threshold", type=float, default=0.03, help="a change t->p needs FES[t][p] > this")
    g.add_argument("--relabel_mode", default="batch", choices=RELABEL_MODES,
                   help="batch: a changed label lives for that step (reference); persistent: it is kept")
    g.add_argument("--relabel_warmup", type=int, default=1,
                   help="epochs trained on the given labels before relabelling starts (reference: 1)")
    return parser


def resolve_fes(args: argparse.Namespace, classes: Sequence[str]) -> np.ndarray | None:
    """The FES gate's matrix, or None with ``--fes False``."""
    from nas.data.ferplus import fes_for_classes

    return fes_for_classes(args.fes_matrix, classes) if args.fes else None


def drop_path_schedule(ckpt: Mapping[str, Any], epochs: int) -> tuple[float, float, float]:
    """``(prob, offset, total)`` for the continued run. The checkpoint's run used
    ``prob * e / total_ckpt`` at epoch ``e``; we continue from ``offset`` = its epoch on
    the same ramp (same total), stretched to ``offset + epochs`` only when the
    relabelling run would otherwise go past the original end, so the probability
    never exceeds ``prob``."""
    dp = ckpt.get("drop_path") or {}
    offset = float(ckpt.get("epoch") or 0)
    prob = float(dp.get("prob", 0.2))
    total = float(dp.get("total") or ckpt.get("epochs") or 0)
    return prob, offset, max(total, offset + epochs)


# ----------------------------------------------------------------------------- the run
def check_relabel_args(args: argparse.Namespace) -> None:
    """The flag combinations that cannot work, refused before any work (and before a run
    folder is made). Fills the rule's default threshold; applies ``--no_relabel`` (threshold 0)."""
    from nas.data.source import check_label_source

    check_label_source(args)
    if args.relabel_threshold is None:
        args.relabel_threshold = DEFAULT_THRESHOLDS[args.rule]
    if args.no_relabel:
        args.relabel_threshold = 0.0
    if args.labels == "ferplus_soft" and args.relabel_threshold > 0:
        raise FerNasError("--labels ferplus_soft trains on FER+ vote distributions, which relabelling (a rule on "
                          "hard labels) does not change: use --labels ferplus_majority, or --no_relabel to "
                          "continue soft training")
    if not args.resume and not args.checkpoint:
        raise FerNasError("--checkpoint PATH is required (e.g. runs/train-FER_V1-.../snapshot_train85.pt)")
    relabel_config(args)
    from nas.engine.trainer import check_train_args

    check_train_args(args)


def open_relabel_data(args: argparse.Namespace, ckpt: Mapping[str, Any]) -> tuple[FERData, np.ndarray | None]:
    """The data (``--data`` or SynthFER) and the FES gate's matrix for a run from checkpoint
    ``ckpt``, checked against it (the same classes); one-line errors, called before the run
    folder exists."""
    from nas.data import open_data_from_args

    data = open_data_from_args(args)
    classes = list(ckpt.get("classes") or data.classes)
    if list(data.classes) != classes:
        raise FerNasError(f"{ckpt.get('path', args.checkpoint)}: the model's classes {classes} differ from the "
                          f"data's {list(data.classes)}")
    return data, resolve_fes(args, data.classes)


def run_relabel(s: Session, start: tuple[nn.Module, dict[str, Any]] | None = None,
                prepared: tuple[FERData, np.ndarray | None] | None = None) -> dict[str, Any]:
    """What ``relabel_training.py`` does in a session (see the script's docstring): the
    model from the snapshot (``start``: already loaded; on resume, the run's last.pt), the
    relabeller as target hook and callback of the trainer, then results.json with the
    relabelling totals and the PNGs (``prepared``: :func:`open_relabel_data`'s answer, else
    it is read here)."""
    from nas.engine.evaluate import checkpoint_norm, load_model_from_checkpoint
    from nas.engine.trainer import Trainer, config_from_args, write_run_report
    from nas.runtime.checkpoint import atomic_write_text, read_csv_rows

    args, run = s.args, s.run
    source = Path(args.resume) / "last.pt" if args.resume else Path(args.checkpoint)
    model, ckpt = start if start is not None and not args.resume else load_model_from_checkpoint(source, "cpu")
    mean, std, crop = checkpoint_norm(ckpt)
    arch = (ckpt.get("model_spec") or {}).get("arch", "model")
    data, fes = prepared if prepared is not None else open_relabel_data(args, ckpt)
    if s.state is not None:
        dp = ckpt.get("drop_path") or {}
        dp_prob, dp_offset, dp_total = float(dp["prob"]), float(dp["offset"]), float(dp["total"])
    else:
        dp_prob, dp_offset, dp_total = drop_path_schedule(ckpt, args.epochs)
        if args.drop_path_prob is not None:
            dp_prob = float(args.drop_path_prob)
        args.drop_path_prob = dp_prob
    cfg = config_from_args(args, crop=crop, drop_path_prob=dp_prob)
    hook = None
    if args.labels != "ferplus_soft":
        hook = Relabeller(data.labels.to(s.device), (data.split == SPLITS.index("Training")).nonzero().flatten(),
                          threshold=args.relabel_threshold, fes=fes, fes_threshold=args.fes_threshold,
                          mode=args.relabel_mode, warmup=args.relabel_warmup, clean_labels=data.clean_labels,
                          classes=data.classes, dist=s.dist, rule=args.rule, ema_momentum=args.ema_momentum,
                          consensus_epochs=args.consensus_epochs, soft_lambda=args.soft_lambda)
    trainer = Trainer(model, data, cfg, run, dist=s.dist, norm=(mean, std), target_hook=hook,
                      callbacks=[hook] if hook is not None else [], drop_path_offset=dp_offset,
                      drop_path_total=dp_total, args={**vars(args), "arch": arch}, stage="relabel")
    if s.state is not None:
        trainer.loop.load_state_dict(s.state)
        run.truncate_metrics("epoch", trainer.epoch, name=TRANSITIONS_CSV)
    else:
        run.log(_start_line(args, ckpt, source, fes, dp_prob, dp_offset, dp_total, data))
        if args.rule == "autofernet" and args.relabel_threshold > 0:
            run.log(REFERENCE_RULE_WARNING)
    results = trainer.fit()
    if s.dist.is_main:
        rows = read_csv_rows(run.file("metrics.csv")) if run.file("metrics.csv").exists() else []
        summary = summarize_relabel(rows, warmup=args.relabel_warmup)
        results["relabel"] = summary
        results["start_checkpoint"] = str(args.checkpoint)
        atomic_write_text(json.dumps(results, indent=2, default=str) + "\n", run.file("results.json"))
        if summary.get("epochs_relabelled"):
            run.log("relabel totals: " + _describe_summary(summary))
        if args.plots:
            for p in write_run_report(run, data, device=s.device):
                run.log(f"  wrote {p.name}", echo=False)
            trans = read_csv_rows(run.file(TRANSITIONS_CSV)) if run.file(TRANSITIONS_CSV).exists() else []
            p = plot_relabel(rows, run.file("relabel.png"), transitions=trans, classes=data.classes)
            if p is not None:
                run.log(f"  wrote {p.name}", echo=False)
    return results


def _start_line(args: argparse.Namespace, ckpt: Mapping[str, Any], source: Path, fes: np.ndarray | None,
                dp_prob: float, dp_offset: float, dp_total: float, data: FERData) -> str:
    gate = "off" if fes is None else f"FES > {args.fes_threshold} ({args.fes_matrix or 'DEFAULT_FES'})"
    extra = {"consensus": f", average momentum {args.ema_momentum}, {args.consensus_epochs} epochs in a row",
             "soft": f", lambda {args.soft_lambda}, average momentum {args.ema_momentum}"}.get(args.rule, "")
    if args.rule == "soft":
        gate = "off" if fes is None else f"FES prior ({args.fes_matrix or 'DEFAULT_FES'})"
    what = (f"relabelling (rule {args.rule}{extra}, {args.relabel_mode} mode, threshold {args.relabel_threshold}, "
            f"gate {gate}, from epoch {args.relabel_warmup + 1})" if args.relabel_threshold > 0
            else "continued training without relabelling")
    line = (f"start from {ckpt.get('path', source)} (epoch {ckpt.get('epoch')}, training accuracy "
            f"{(ckpt.get('metrics') or {}).get('train_acc', 'n/a')}); {what}; drop-path {dp_prob} x (epoch + "
            f"{dp_offset:g}) / {dp_total:g}")
    if data.clean_labels is not None:
        t = data.split == 0
        noise = float((data.labels[t] != data.clean_labels[t]).float().mean()) * 100
        line += f"; clean labels known: {noise:.1f}% of training labels are noisy"
    if args.fes_matrix and fes is None:
        line += "; note: --fes_matrix is ignored with --fes False"
    return line


def summarize_relabel(rows: Sequence[Mapping[str, Any]], warmup: int = 1) -> dict[str, Any]:
    """Totals over the epochs of a run's metrics.csv rows: changes, and with clean
    labels restored / harmed / precision over all changes, the recall and harm of the
    last epoch, and their means over the relabelling epochs (after ``warmup``)."""
    def num(v):
        try:
            return float(v)
        except (TypeError, ValueError):
            return None

    rel = [r for r in rows if num(r.get("relabel_changed")) is not None]
    out: dict[str, Any] = {"epochs_relabelled": sum(1 for r in rel if num(r["relabel_changed"]) > 0),
                           "changed": int(sum(num(r["relabel_changed"]) for r in rel))}
    if rel and num(rel[0].get("relabel_restored")) is not None:
        restored = int(sum(num(r["relabel_restored"]) for r in rel))
        harmed = int(sum(num(r["relabel_harmed"]) for r in rel))
        out.update(restored=restored, harmed=harmed,
                   precision=100.0 * restored / out["changed"] if out["changed"] else None,
                   last_recall=num(rel[-1].get("relabel_recall")), last_harm=num(rel[-1].get("relabel_harm")),
                   last_label_noise=num(rel[-1].get("relabel_label_noise")),
                   last_clean_mass=num(rel[-1].get("relabel_clean_mass")),
                   mean_recall=_mean(num(r.get("relabel_recall")) for r in rel if num(r.get("epoch")) > warmup),
                   mean_harm=_mean(num(r.get("relabel_harm")) for r in rel if num(r.get("epoch")) > warmup))
    return out


def _mean(values) -> float | None:
    v = [x for x in values if x is not None]
    return sum(v) / len(v) if v else None


def _describe_summary(s: Mapping[str, Any]) -> str:
    text = f"{s['changed']} changes over {s['epochs_relabelled']} epoch(s)"
    if "restored" in s:
        pct = _pct1
        text += (f": restored {s['restored']}, harmed {s['harmed']}, precision {pct(s['precision'])}; "
                 f"last epoch recall {pct(s['last_recall'])}, harm {pct(s['last_harm'])}")
    return text


# ----------------------------------------------------------------------------- plot
def plot_relabel(rows: Sequence[Mapping[str, Any]], path: str | Path, *,
                 transitions: Sequence[Mapping[str, Any]] = (), classes: Sequence[str] = ()) -> Path | None:
    """relabel.png: label changes per epoch (restored / harmed / wrong->wrong when the
    clean labels are known), precision, recall and harm over epochs, and the
    transition counts summed over the run. Returns None (with a notice) without
    matplotlib or without relabelling columns."""
    from nas.engine.report import have_matplotlib, save_figure

    if not rows or "relabel_changed" not in rows[0] or not have_matplotlib():
        return None
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    def col(key):
        out = []
        for r in rows:
            try:
                out.append(float(r.get(key, "")))
            except (TypeError, ValueError):
                out.append(float("nan"))
        return out

    epochs = col("epoch")
    have_clean = "relabel_restored" in rows[0]
    have_trans = bool(transitions) and bool(classes)
    n = 2 + have_trans
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 4))
    axes = np.atleast_1d(axes)
    ax = axes[0]
    ax.plot(epochs, col("relabel_changed"), "-o", ms=3, color="black", label="changed")
    if have_clean:
        ax.plot(epochs, col("relabel_restored"), "-o", ms=3, color="tab:green", label="restored (-> clean)")
        ax.plot(epochs, col("relabel_harmed"), "-o", ms=3, color="tab:red", label="harmed (clean -> wrong)")
        ax.plot(epochs, col("relabel_wrong_to_wrong"), "-o", ms=3, color="tab:orange", label="wrong -> wrong")
    ax.set_xlabel("epoch")
    ax.set_ylabel("labels changed in the epoch")
    ax.set_title("label changes")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax = axes[1]
    curves = [("relabel_agreement", "prediction agrees with the label", "black")]
    if have_clean:
        curves += [("relabel_precision", "precision (restored / changed)", "tab:blue"),
                   ("relabel_recall", "recall (noisy labels trained as clean)", "tab:green"),
                   ("relabel_harm", "harm (clean labels trained as wrong)", "tab:red"),
                   ("relabel_label_noise", "noise of the labels trained on", "tab:gray")]
    for key, label, color in curves:
        if key in rows[0]:
            ax.plot(epochs, col(key), "-o", ms=3, color=color, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.set_title("relabelling quality" + (" (clean labels known)" if have_clean else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if have_trans:
        k = len(classes)
        m = np.zeros((k, k))
        index = {c: i for i, c in enumerate(classes)}
        for r in transitions:
            if r.get("from") in index and r.get("to") in index:
                m[index[r["from"]], index[r["to"]]] += float(r.get("count") or 0)
        ax = axes[-1]
        im = ax.imshow(m, cmap="Oranges")
        for i in range(k):
            for j in range(k):
                if m[i, j]:
                    ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(k), classes, rotation=45, ha="right")
        ax.set_yticks(range(k), classes)
        ax.set_xlabel("to")
        ax.set_ylabel("from")
        ax.set_title("transitions, all epochs")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return save_figure(fig, path)
