"""``--strategy zero_cost``: sample cells of the search space and keep the best by a zero-cost proxy.

An :class:`~nas.engine.loop.Objective` of the one loop whose step scores one candidate: the loop
owns the position (candidates scored so far), resume after SIGKILL, signals and the progress bar,
as for any search. The candidates are ``--zc_samples`` random genotypes of ``--search_space``
(seeded by ``--seed``), each built as the network it would be retrained as (``--init_channels``,
``--layers``) and scored at initialisation on one fixed Training batch of ``--batch_size``
images (:mod:`nas.search.proxies`). ``--zc_min_params`` / ``--zc_max_params`` restrict the
candidates to a parameter budget (as zero-shot searches such as Zen-NAS do): the proxies grow
with a network's size, and without a budget the kept cell is often just the largest. The kept
cell is the best by ``--zc_proxy`` (one proxy, or ``vote``: the best mean rank over all five).
``proxies.csv`` holds every candidate's scores.
"""
from __future__ import annotations

import argparse
import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from nas.data.dataset import FERData
from nas.engine.loop import Callback, Loop, Objective, StepContext, StepResult
from nas.models.genotypes import Genotype, genotype_from_dict, genotype_to_dict
from nas.models.ops import search_space
from nas.runtime.checkpoint import write_csv
from nas.runtime.distributed import DistInfo
from nas.runtime.errors import FerNasError
from nas.search.proxies import PROXIES, rank_vote, score_network
from nas.search.config import ZC_PROXIES, search_config
from nas.search.random_cells import sample_genotype

__all__ = ["ZeroCostSearch", "ProxyRecorder", "ZC_CHOICES"]

ZC_CHOICES = ZC_PROXIES  # the five proxies and their vote (tests/test_proxies checks the list)


class ZeroCostSearch(Objective):
    """The candidates, the batch they are scored on, and the scores so far."""

    kind = "fer-nas-zero-cost"
    sum_names = ("n",)
    sgas = None
    sampled = None
    total_epochs = 1
    sync_free = False  # a step reads its scores back: it is a measurement, not a training step

    def __init__(self, args: argparse.Namespace, data: FERData, *, device: torch.device, dist: DistInfo) -> None:
        self.args, self.device, self.dist = args, device, dist
        cfg = self.cfg = search_config(args)  # checked: --zc_samples, --zc_proxy
        self.model = nn.Identity()  # the loop's batch-norm and finiteness checks find nothing to do
        self.classes = list(data.classes)
        self.cells: list[Genotype] = self._sample(search_space(cfg.search_space), int(data.images.shape[1]))
        train = data.subset("Training")
        if len(train) < 2:
            raise FerNasError(f"{data.source}: the Training split has {len(train)} images; need at least 2")
        g = torch.Generator().manual_seed(int(cfg.seed))
        pick = torch.randperm(len(train), generator=g)[:cfg.batch_size]
        from nas.data.augment import eval_views

        self.crop = int(cfg.crop)
        x = eval_views(train.images[pick], mode="center", crop=self.crop, mean=0.5, std=0.25)[0]
        self.x, self.y = x.to(device), train.labels[pick].to(device)
        self.scores: list[dict[str, float] | None] = [None] * len(self.cells)

    def _sample(self, primitives: Sequence[str], in_channels: int) -> list[Genotype]:
        """``--zc_samples`` random cells (seeded), within ``--zc_min_params`` .. ``--zc_max_params``
        when a budget is set (rejection sampling: the network is built, not run)."""
        from nas.models import build_model, count_parameters

        cfg = self.cfg
        rng = np.random.default_rng([int(cfg.seed), 7])
        lo, hi = cfg.zc_min_params, cfg.zc_max_params or math.inf
        if not cfg.zc_min_params and not cfg.zc_max_params:
            return [sample_genotype(primitives, 4, rng) for _ in range(cfg.zc_samples)]
        cells: list[Genotype] = []
        draws = 200 * cfg.zc_samples
        for _ in range(draws):
            g = sample_genotype(primitives, 4, rng)
            n = count_parameters(build_model(g, num_classes=len(self.classes), init_channels=cfg.init_channels,
                                             layers=cfg.layers, auxiliary=False, in_channels=in_channels))
            if lo <= n <= hi:
                cells.append(g)
                if len(cells) == cfg.zc_samples:
                    return cells
        raise FerNasError(f"--zc_min_params {cfg.zc_min_params} / --zc_max_params {cfg.zc_max_params}: only "
                          f"{len(cells)} of {cfg.zc_samples} cells of {cfg.search_space} within the budget after "
                          f"{draws} draws; widen it")

    # -- the loop's calls -----------------------------------------------------------------
    def epoch_batches(self, epoch: int, generator: torch.Generator) -> list[int]:
        """One "batch" per candidate: its index (the loop skips the ones a resumed run scored)."""
        return list(range(len(self.cells)))

    def step(self, epoch: int, step: int, batch: int, ctx: StepContext) -> StepResult:
        """Build candidate ``batch`` with its own seed and score it on the fixed batch."""
        from nas.models import build_model

        # the weights of candidate k come from their own seed: the same whatever was scored before
        torch.manual_seed(int(self.cfg.seed) * 100_003 + int(batch))
        model = build_model(self.cells[batch], num_classes=len(self.classes), init_channels=self.cfg.init_channels,
                            layers=self.cfg.layers, auxiliary=False, in_channels=int(self.x.shape[1])).to(self.device)
        self.scores[batch] = score_network(model, self.x, self.y)
        one = torch.ones(1, dtype=torch.float64, device=self.device)
        return StepResult(one, torch.zeros((), device=self.device))

    def epoch_row(self, epoch: int, sums: Mapping[str, float]) -> dict[str, Any]:
        """metrics.csv: how many cells were scored and the index of the best."""
        best = self.best_index()
        return {"scored": sum(s is not None for s in self.scores), "best_candidate": best}

    def describe(self) -> str:
        """The line logged when the run starts."""
        cfg = self.cfg
        budget = (f" of {cfg.zc_min_params:,} to {cfg.zc_max_params:,} parameters" if cfg.zc_max_params
                  else f" of at least {cfg.zc_min_params:,} parameters" if cfg.zc_min_params else "")
        return (f"zero-cost search: {len(self.cells)} random cells of {cfg.search_space}{budget}, scored at "
                f"initialisation as C{cfg.init_channels} L{cfg.layers} networks on {len(self.y)} Training "
                f"images; kept by {cfg.zc_proxy}")

    def epoch_line(self, row: Mapping[str, Any], epochs: int) -> str:
        """The line logged after the epoch."""
        return f"scored {row['scored']} cells; best by {self.cfg.zc_proxy}: candidate {row['best_candidate']}"

    # -- the result -----------------------------------------------------------------------
    def best_index(self) -> int:
        """The scored candidate kept by ``--zc_proxy`` (the first one on ties)."""
        done = [k for k, s in enumerate(self.scores) if s is not None]
        if not done:
            return 0
        if self.cfg.zc_proxy == "vote":
            votes = rank_vote([self.scores[k] for k in done], list(PROXIES))
            return done[int(np.argmax(votes))]
        vals = [self.scores[k][self.cfg.zc_proxy] for k in done]
        vals = [v if math.isfinite(v) else -math.inf for v in vals]
        return done[int(np.argmax(vals))]

    def genotype(self) -> Genotype:
        """The kept cell."""
        return self.cells[self.best_index()]

    def rows(self) -> list[dict[str, Any]]:
        """proxies.csv: a row per scored candidate, its scores, its vote and whether it was kept."""
        from nas.search.searcher import genotype_line

        done = [k for k, s in enumerate(self.scores) if s is not None]
        votes = rank_vote([self.scores[k] for k in done], list(PROXIES)) if done else []
        best = self.best_index()
        return [{"candidate": k, **{p: self.scores[k][p] for p in PROXIES}, "vote": v, "kept": int(k == best),
                 "genotype": genotype_line(self.cells[k])} for k, v in zip(done, votes)]

    def state_dict(self) -> dict[str, Any]:
        """The candidates and the scores so far (plain values)."""
        return {"cells": [genotype_to_dict(g) for g in self.cells],
                "scores": [None if s is None else dict(s) for s in self.scores]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Back to a checkpoint's candidates and scores."""
        self.cells = [genotype_from_dict(g) for g in state["cells"]]
        self.scores = [None if s is None else {k: float(v) for k, v in s.items()} for s in state["scores"]]


class ProxyRecorder(Callback):
    """Writes ``proxies.csv`` after the epoch."""

    name = "proxies"

    def __init__(self, objective: ZeroCostSearch) -> None:
        self.obj = objective

    def on_save(self, loop: Loop, row: Mapping[str, Any]) -> None:
        """Rewrite proxies.csv from the scores so far."""
        if loop.run.enabled:
            rows = self.obj.rows()
            write_csv(loop.run.file("proxies.csv"), rows, list(rows[0]) if rows else ["candidate"])


def proxy_columns() -> Sequence[str]:
    """The score columns of proxies.csv."""
    return tuple(PROXIES)
