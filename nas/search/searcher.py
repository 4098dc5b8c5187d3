"""Architecture search as an objective of the one loop: the bilevel step, the strategy, the run.

Data protocol: only the Training split is used, split (stratified, seeded) into a part
for the weights (``--train_portion``) and a part for the architecture parameters. Each
step (:func:`search_step`) first updates the architecture on a batch of the second part
(:class:`~nas.search.architect.Architect`), then the weights on a batch of the first (SGD,
cosine schedule, gradient clipping); each update is applied only when it is finite.

Strategies: ``--strategy sgas`` (default): the :class:`~nas.search.sgas.SGAS` controller
decides one edge per cell type at each decision epoch and owns the batch size, which grows
after each decision; ``--strategy darts``: every epoch trains every edge and the genotype
comes from DARTS's rule. Two DARTS variants against its collapse to parameter-free
operations: ``beta_darts`` (β-DARTS: a Beta-Decay term on the architecture loss whose weight
rises linearly, ``--beta_decay_slope`` × epoch, as in the authors' code: 50 × epoch / 100)
and ``darts_minus`` (DARTS-: an auxiliary skip connection on every edge, its weight decaying
linearly from ``--aux_skip_start`` to 0 at the last epoch). ``--strategy random`` trains
nothing: it samples a cell of the space (:mod:`nas.search.random_cells`, seeded by
``--seed``), the baseline every comparison carries.

Every epoch writes, in the run directory: a metrics row and ``last.pt`` (the loop), the
architecture weights (``alphas.csv``) and the current genotype (``genotype.json``)
(:class:`SearchRecorder`). Resume, signals, the NaN policy and the DDP reductions are the
loop's (:mod:`nas.engine.loop`); the weights' and architecture's gradients are averaged
over ranks in one flat all-reduce each, so decisions are identical on every rank.
"""
from __future__ import annotations

import argparse
from contextlib import nullcontext
from itertools import chain, repeat
from typing import Any, Callable, ContextManager, Mapping

import torch
import torch.nn.functional as F

from nas.data.dataset import FERData
from nas.engine.loop import Callback, Loop, Objective, StepContext, StepResult, StopRequest, UpdateGuard, nonfinite
from nas.engine.optim import all_fused, build_optimizer
from nas.engine.session import Session
from nas.models.genotypes import Genotype, export_genotype, genotype_to_dict, genotype_to_json
from nas.runtime.checkpoint import atomic_write_text, read_csv_rows, write_csv
from nas.runtime.device import autocast, memory_layout
from nas.runtime.distributed import DistInfo, all_reduce_mean_grads, all_reduce_sum, shard_batch
from nas.runtime.errors import FerNasError
from nas.search.architect import Architect
from nas.models.ops import search_space
from nas.search.config import STRATEGIES, SearchConfig, add_search_args, check_args, search_config  # noqa: F401 (re-exported)
from nas.search.random_cells import is_parameter_free, parameter_free_share
from nas.search.sgas import CELL_TYPES, SGAS
from nas.search.supernet import PRUNED, UNDECIDED, SearchNetwork, edge_list

__all__ = ["run_search", "SearchConfig", "search_config", "STRATEGIES", "add_search_args", "check_args", "search_step", "BilevelSearch", "SearchRecorder",
           "Searcher", "genotype_line"]

def search_step(model: SearchNetwork, architect: Architect, w_optimizer: torch.optim.Optimizer,
                xt: torch.Tensor, yt: torch.Tensor, xa: torch.Tensor, ya: torch.Tensor, lr: float,
                grad_clip: float = 5.0, amp: Callable[[], ContextManager] | None = None,
                weights: list[torch.Tensor] | None = None,
                guard: UpdateGuard | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One search step: the architecture update on ``(xa, ya)``, then the weight update on
    ``(xt, yt)``, each applied only when finite. ``amp`` is a zero-argument context factory
    (autocast). Returns ``(train loss, train logits, architecture loss, bad)`` as device
    tensors (no host sync); ``bad`` is 1 when either update was skipped."""
    arch_loss, bad_arch = architect.step(xt, yt, xa, ya, lr, w_optimizer, guard=guard)
    weights = model.weight_parameters() if weights is None else weights
    w_optimizer.zero_grad(set_to_none=True)
    with (amp() if amp is not None else nullcontext()):
        logits = model(xt)
    loss = F.cross_entropy(logits.float(), yt)
    loss.backward(inputs=weights)
    all_reduce_mean_grads(weights)
    if grad_clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(weights, grad_clip)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in weights if p.grad is not None])
    bad_w = guard.flag(loss, norm) if guard is not None else nonfinite(loss, norm)
    UpdateGuard.apply(w_optimizer, bad_w)
    return loss.detach(), logits.detach(), arch_loss, torch.maximum(bad_arch, bad_w)


# ----------------------------------------------------------------------------- the objective
class BilevelSearch(Objective):
    """The supernet, its two optimizers and the strategy's controller, as an
    :class:`~nas.engine.loop.Objective`. ``data`` is the whole dataset; only its Training
    split is used."""

    kind = "fer-nas-search"
    sum_names = ("loss", "correct", "n", "arch_loss", "arch_n")

    def __init__(self, args: argparse.Namespace, data: FERData, *, device: torch.device, dist: DistInfo) -> None:
        from nas.data.augment import BatchAugment
        from nas.data.loader import stratified_split

        self.args, self.device, self.dist = args, device, dist
        cfg = self.cfg = search_config(args)
        train = data.subset("Training")
        train = train.select(train.labels >= 0)  # formats without labels mark them -1
        if len(train) == 0:
            raise FerNasError(f"{args.data or args.dataset}: the data has no Training split to search on")
        self.classes = list(data.classes)
        self.arch_idx, self.w_idx = stratified_split(train.labels, cfg.train_portion, seed=cfg.seed)
        if min(len(self.arch_idx), len(self.w_idx)) < 2:
            raise FerNasError(f"only {len(train)} Training images: too few to split for search")
        self.images = train.images.to(device)
        self.labels = train.labels.to(device)
        self.mean, self.std = 0.5, 0.25
        self.augment = BatchAugment(crop=cfg.crop, flip=True, brightness=0.0, contrast=0.0, rotate=0.0,
                                    translate=0.0, scale=(1.0, 1.0), cutout=cfg.cutout_length if cfg.cutout else 0,
                                    mean=self.mean, std=self.std)
        self.amp = device.type == "cuda" if args.amp is None else bool(args.amp)
        self.model_kwargs = dict(C=cfg.init_channels, num_classes=len(self.classes), layers=cfg.layers,
                                 primitives=search_space(cfg.search_space), steps=4, multiplier=4,
                                 in_channels=int(self.images.shape[1]), partial_channels=cfg.partial_channels)
        model = SearchNetwork(**self.model_kwargs).to(device)
        # channels_last by default on CUDA only: the CPU supernet was not measured faster in NHWC
        self.channels_last, self.layout_note = memory_layout(model, device, self.amp, args.channels_last,
                                                             default=device.type == "cuda")
        self.model = model.to(memory_format=torch.channels_last) if self.channels_last else model
        self.weights = self.model.weight_parameters()
        if cfg.compile:
            # in place: the module (its state dict, the optimizers' parameters) stays the same object;
            # the decided edges are Python state the graph depends on, so each decision recompiles
            self.model.compile(mode=None if cfg.compile_mode == "default" else cfg.compile_mode,
                               backend=cfg.compile_backend)
        # the training builder's SGD (fused on CUDA: a non-finite step is skipped on the device)
        self.w_optimizer = build_optimizer(self.weights, "sgd", lr=cfg.learning_rate, momentum=cfg.momentum,
                                           weight_decay=cfg.weight_decay, fused=cfg.fused)
        self.architect = Architect(self.model, cfg.arch_learning_rate, cfg.arch_weight_decay,
                                   unrolled=cfg.unrolled, complexity_weight=cfg.complexity_weight,
                                   autocast=self._autocast, fused=cfg.fused)
        self.sync_free = all_fused(self.w_optimizer, self.architect.optimizer)
        self.sgas: SGAS | None = None
        self.sampled: Genotype | None = None
        if cfg.strategy == "sgas":
            self.sgas = SGAS(self.model, cfg.warmup_dec_epoch, cfg.decision_freq, cfg.use_history,
                             cfg.history_size, cfg.batch_size, cfg.batch_increase, cfg.epochs_after_last_decision)
            self.total_epochs = self.sgas.total_epochs
        elif cfg.strategy == "random":
            from nas.search.random_cells import sample_genotype

            self.sampled = sample_genotype(self.model.primitives, self.model.steps, seed=cfg.seed)
            self.total_epochs = 0
        else:
            self.total_epochs = cfg.epochs or 50
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.w_optimizer, float(max(self.total_epochs, 1)),
                                                                    eta_min=cfg.learning_rate_min)
        self.last_decisions: list[dict[str, Any]] = []

    def _autocast(self) -> ContextManager:
        return autocast(self.device, self.amp)

    @property
    def batch_size(self) -> int:
        """The per-process batch size of the coming epoch: the SGAS controller's (it grows
        after each decision), else ``--batch_size``."""
        return self.sgas.batch_size if self.sgas is not None else int(self.cfg.batch_size)

    def genotype(self) -> Genotype:
        """The current genotype: SGAS's (forced while edges are open), the sampled one
        (``random``) or DARTS's rule."""
        if self.sampled is not None:
            return self.sampled
        return self.sgas.forced_genotype() if self.sgas is not None else self.model.darts_genotype()

    def set_schedules(self, epoch: int) -> None:
        """The strategies' per-epoch weights (derived from the epoch alone, so a resumed run
        gets the same): β-DARTS's Beta-Decay weight and DARTS-'s auxiliary skip."""
        a = self.cfg
        if a.strategy == "beta_darts":
            self.architect.beta_decay_weight = a.beta_decay_slope * epoch
        if a.strategy == "darts_minus":
            self.model.aux_skip = a.aux_skip_start * (1.0 - epoch / max(self.total_epochs - 1, 1))

    # -- the loop's calls ---------------------------------------------------------------
    def samplers(self, generator: torch.Generator) -> tuple[Any, Any]:
        """Batch samplers over the two halves (global batches, sliced per rank)."""
        from nas.data.loader import BatchSampler

        gb = self.batch_size * self.dist.world_size
        w = BatchSampler(self.w_idx, gb, shuffle=True, drop_last=True, generator=generator)
        a = BatchSampler(self.arch_idx, gb, shuffle=True, drop_last=True, generator=generator)
        if len(w) == 0 or len(a) == 0:
            raise FerNasError(f"batch size {self.batch_size} (x{self.dist.world_size} ranks) exceeds the "
                              f"{min(len(self.w_idx), len(self.arch_idx))} images of a search half; lower "
                              "--batch_size or --batch_increase, or use more data")
        return w, a

    def epoch_batches(self, epoch: int, generator: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """One pass over the weights half, each batch paired with an architecture batch (that
        half is cycled through as often as needed, a new order each time)."""
        self.model.train()
        self.set_schedules(epoch)
        w, a = self.samplers(generator)
        weight_batches = list(w)
        arch_batches = list(chain.from_iterable(list(a) for _ in repeat(None, -(-len(weight_batches) // len(a)))))
        return list(zip(weight_batches, arch_batches))

    def _batch(self, idx: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        idx = shard_batch(idx, self.dist).to(self.device)
        x = self.augment(self.images[idx], gen)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, self.labels[idx]

    def step(self, epoch: int, step: int, batch: tuple[torch.Tensor, torch.Tensor], ctx: StepContext) -> StepResult:
        """One bilevel step: an architecture update on a held-out batch, then a weight update, guarded by ``ctx.guard``."""
        ctx.guard.begin()
        xt, yt = self._batch(batch[0], ctx.augment)
        xa, ya = self._batch(batch[1], ctx.augment)
        loss, logits, arch_loss, bad = search_step(self.model, self.architect, self.w_optimizer, xt, yt, xa, ya,
                                                   self.scheduler.get_last_lr()[0], self.cfg.grad_clip,
                                                   self._autocast, self.weights, ctx.guard)
        ctx.guard.end(bad)
        n = loss.new_full((), float(yt.numel()), dtype=torch.float64)
        na = loss.new_full((), float(ya.numel()), dtype=torch.float64)
        sums = torch.stack([torch.nan_to_num(loss.double() * n, 0.0, 0.0, 0.0), (logits.argmax(1) == yt).sum().double(),
                            n, torch.nan_to_num(arch_loss.double() * na, 0.0, 0.0, 0.0), na])
        return StepResult(sums, bad)

    def epoch_row(self, epoch: int, sums: Mapping[str, float]) -> dict[str, Any]:
        row = {"lr": self.scheduler.get_last_lr()[0], "batch_size": self.batch_size,
               "train_loss": sums["loss"] / max(sums["n"], 1), "train_acc": 100.0 * sums["correct"] / max(sums["n"], 1),
               "arch_loss": sums["arch_loss"] / max(sums["arch_n"], 1),
               # before this epoch's decisions: how far the architecture weights have moved from uniform
               "alpha_entropy": round(self.model.alpha_entropy(), 5)}
        if getattr(self.args, "compile", False):
            from nas.runtime.device import compiled_graphs

            row["compiled_graphs"] = compiled_graphs()  # in this process so far: bounded by the decisions
        return row

    def end_epoch(self, epoch: int, row: dict[str, Any]) -> None:
        """The schedule moves on, the controller decides, and the row gets the decisions,
        the architecture half's accuracy (``--post_val``) and the genotype."""
        self.scheduler.step()
        self.last_decisions = self.sgas.end_of_epoch(epoch) if self.sgas is not None else []
        row["valid_acc"] = self.evaluate() if self.cfg.post_val else ""
        row["decided"] = " ".join(f"{d['cell']}:{d['node']}<-{d['input']}:{d['op']}" for d in self.last_decisions)
        row["n_decided"] = sum(s >= 0 for c in CELL_TYPES for s in self.model.edge_state[c])
        g = self.genotype()
        row["genotype"] = genotype_line(g)
        row["param_free_share"] = parameter_free_share(g)
        row["beta_decay_weight"] = self.architect.beta_decay_weight
        row["aux_skip"] = self.model.aux_skip

    @torch.no_grad()
    def evaluate(self) -> float:
        """Accuracy (%) of the supernet on the architecture half (centre crop)."""
        from nas.data.augment import eval_views

        self.model.eval()
        correct = torch.zeros((), dtype=torch.float64, device=self.device)
        idx_all = shard_batch(self.arch_idx, self.dist).to(self.device)
        bs = max(self.batch_size, 64)
        for i in range(0, idx_all.numel(), bs):
            idx = idx_all[i:i + bs]
            x = eval_views(self.images[idx], "center", self.cfg.crop, self.mean, self.std)[0]
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with self._autocast():
                logits = self.model(x)
            correct += (logits.argmax(1) == self.labels[idx]).sum()
        all_reduce_sum(correct)
        self.model.train()
        return 100.0 * float(correct) / self.arch_idx.numel()

    def describe(self) -> str:
        a = self.cfg
        n_w = sum(p.numel() for p in self.weights)
        return (f"search ({a.strategy}, {a.search_space}, {'second' if a.unrolled else 'first'} order): supernet "
                f"C={a.init_channels} L={a.layers}, {n_w:,} weights, {len(self.w_idx)} images for weights / "
                f"{len(self.arch_idx)} for architecture (Training split only), crop {a.crop}, {self.total_epochs} "
                f"epochs, device {self.device}{' x' + str(self.dist.world_size) if self.dist.enabled else ''}, amp "
                f"{'bf16' if self.amp else 'off'}, channels_last {self.channels_last}{self.layout_note}"
                f"{f', partial channels 1/{a.partial_channels}' if a.partial_channels > 1 else ''}"
                f"{f', complexity weight {a.complexity_weight}' if a.complexity_weight else ''}")

    def epoch_line(self, row: Mapping[str, Any], epochs: int) -> str:
        parts = [f"epoch {row['epoch']}/{epochs}", f"lr {row['lr']:.5f}", f"bs {row['batch_size']}",
                 f"train loss {row['train_loss']:.4f} acc {row['train_acc']:.2f}%", f"arch loss {row['arch_loss']:.4f}"]
        if row["valid_acc"] != "":
            parts.append(f"valid acc {row['valid_acc']:.2f}%")
        if row["skipped_batches"]:
            parts.append(f"skipped {row['skipped_batches']} non-finite step(s)")
        if self.sgas is not None:
            parts.append(f"decided {row['n_decided']}/{2 * self.sgas.num_decisions}")
            for d in self.last_decisions:
                pruned = f" (pruned {len(d['pruned'])})" if d["pruned"] else ""
                parts.append(f"+{d['cell']} node {d['node']} <- {d['input']} {d['op']}{pruned}")
        parts.append(f"{row['time_s']:.1f}s")
        return " | ".join(parts) + f"\n  genotype {row['genotype']}"

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "model_kwargs": self.model_kwargs,
                "w_optimizer": self.w_optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "architect": self.architect.state_dict(),
                "sgas": self.sgas.state_dict() if self.sgas is not None else None,
                "genotype": genotype_to_dict(self.genotype()), "classes": self.classes}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.w_optimizer.load_state_dict(state["w_optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.architect.load_state_dict(state["architect"])
        if self.sgas is not None and state.get("sgas") is not None:
            self.sgas.load_state_dict(state["sgas"])


class SearchRecorder(Callback):
    """Writes, after each epoch, the architecture weights (``alphas.csv``: softmax per
    edge, with each edge's state), the current genotype (``genotype.json``) and the curves
    (``search.png``, with the parameter-free share that shows collapse)."""

    name = "search_files"

    def __init__(self, objective: BilevelSearch) -> None:
        self.obj = objective

    def on_save(self, loop: Loop, row: Mapping[str, Any]) -> None:
        run = loop.run
        if not run.enabled:
            return
        atomic_write_text(genotype_to_json(self.obj.genotype()), run.file("genotype.json"))
        m = self.obj.model
        prims = m.primitives
        header = (["epoch", "cell", "edge", "node", "input", "state", "top", "top_param_free"] + prims
                  + (["beta"] if m.partial_channels > 1 else []))
        rows = []
        for c in CELL_TYPES:
            w = F.softmax(m.alphas(c).detach().float(), dim=-1).cpu()
            betas = m.betas(c)
            for e, (node, inp) in enumerate(edge_list(m.steps)):
                st = m.edge_state[c][e]
                state = "open" if st == UNDECIDED else "pruned" if st == PRUNED else prims[st]
                top = prims[st] if st >= 0 else max((p for p in prims if p != "none"),
                                                    key=lambda p: float(w[e, prims.index(p)]))
                r = {"epoch": loop.epoch, "cell": c, "edge": e, "node": node, "input": inp, "state": state, "top": top,
                     "top_param_free": int(is_parameter_free(top))}
                r.update({p: f"{float(w[e, k]):.6g}" for k, p in enumerate(prims)})
                if betas is not None:
                    r["beta"] = f"{float(betas[e].detach()):.6g}"
                rows.append(r)
        path = run.file("alphas.csv")
        old = read_csv_rows(path) if path.exists() else []
        write_csv(path, old + rows, header)
        a = self.obj.args
        if a.plots:
            try:
                from nas.engine.report import plot_search_curves

                plot_search_curves(read_csv_rows(run.file("metrics.csv")), run.file("search.png"),
                                   title=f"search ({a.strategy}, {a.search_space}), C={a.init_channels} L={a.layers}")
            except Exception as e:  # noqa: BLE001 - a plotting failure must not stop a search
                run.log(f"notice: search.png skipped ({type(e).__name__}: {e})")


def genotype_line(g: Genotype) -> str:
    """A genotype on one line: ``normal [op@input ...] reduce [...]``."""
    def cell(pairs):
        return " ".join(f"{op}@{i}" for op, i in pairs)

    return f"normal [{cell(g.normal)}] reduce [{cell(g.reduce)}]"


# ----------------------------------------------------------------------------- the run
class Searcher:
    """One search run in a :class:`~nas.engine.session.Session`: the objective, the loop,
    and at the end the genotype (``genotype.json``, cell PNGs, ``--export``).

    ``data`` may be given (a :class:`~nas.data.FERData`) instead of reading ``--data``;
    ``stop`` is anything with ``requested`` (and ``signum``)."""

    def __init__(self, session: Session, data: FERData | None = None, *, stop: StopRequest | None = None) -> None:
        args = session.args
        check_args(args)
        cfg = search_config(args)
        self.args, self.run_dir = args, session.run
        if data is None:
            from nas.data import open_data_from_args

            data = open_data_from_args(args)
        if cfg.strategy == "zero_cost":
            from nas.search.zero_cost import ProxyRecorder, ZeroCostSearch

            self.objective = ZeroCostSearch(args, data, device=session.device, dist=session.dist)
            recorder: Callback = ProxyRecorder(self.objective)
        else:
            self.objective = BilevelSearch(args, data, device=session.device, dist=session.dist)
            recorder = SearchRecorder(self.objective)
        # --strategy random trains nothing; the loop still holds the run's position and files
        self.loop = Loop(self.objective, epochs=max(self.objective.total_epochs, 1), run=session.run,
                         dist=session.dist, seed=cfg.seed, device=session.device,
                         callbacks=[recorder], nan_policy=args.nan_policy,
                         log_interval=args.log_interval, progress=args.progress, args=vars(args), stage="search",
                         stop=stop)
        if session.state is not None:
            self.loop.load_state_dict(session.state)
            self.run_dir.truncate_metrics("epoch", self.loop.epoch, name="alphas.csv")

    # the pieces, for callers that look inside
    model = property(lambda self: self.objective.model)
    images = property(lambda self: self.objective.images)
    w_idx = property(lambda self: self.objective.w_idx)
    arch_idx = property(lambda self: self.objective.arch_idx)
    total_epochs = property(lambda self: self.objective.total_epochs)
    global_step = property(lambda self: self.loop.global_step)

    def run(self) -> dict[str, Any]:
        """Search from the current position to the end; returns the result summary.
        Raises :class:`~nas.runtime.errors.RunInterrupted` after saving ``last.pt``.
        ``--strategy random`` trains nothing: its sampled cell is the result."""
        if self.objective.sampled is None:
            self.loop.fit()
        return self.finish()

    def finish(self) -> dict[str, Any]:
        """Final genotype: genotype.json, cell PNGs, optional export; returns a summary."""
        a, run = self.args, self.run_dir
        g = self.objective.genotype()
        sgas = self.objective.sgas
        complete = sgas.complete if sgas is not None else True
        result = {"genotype": genotype_to_dict(g), "complete": complete, "epochs": self.loop.epoch,
                  "run_dir": str(run.path), "exported": None}
        if run.enabled:
            atomic_write_text(genotype_to_json(g), run.file("genotype.json"))
            if a.plots:
                try:
                    from nas.engine.report import plot_cells

                    plot_cells(g, run.path)
                except Exception as e:  # noqa: BLE001 - a plotting failure must not lose a finished search
                    run.log(f"notice: cell plots skipped ({type(e).__name__}: {e})")
            if a.export:
                result["exported"] = str(export_genotype(g, a.export, force=a.force))
        note = "" if complete else " (forced: not every edge was decided)"
        run.log(f"search done after {self.loop.epoch} epochs; genotype{note}: {genotype_line(g)}")
        run.log(f"genotype written to {run.file('genotype.json')}"
                + (f" and {result['exported']} (use --arch {a.export})" if result["exported"] else ""))
        return result


def run_search(s: Session, data: FERData | None = None, *, stop: StopRequest | None = None) -> dict[str, Any]:
    """The search stage's entry: search in session ``s`` from its position to the end and write
    the genotype; returns the summary (``data``: a FERData instead of reading ``--data``)."""
    return Searcher(s, data, stop=stop).run()
