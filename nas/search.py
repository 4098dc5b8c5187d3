"""The architecture-search engine behind ``search.py``: flags, the loop, state and resume.

Data protocol: only the Training split is used, split (stratified, seeded) into a part
for the weights (``--train_portion``) and a part for the architecture parameters. Each
step first updates the architecture on a batch of the second part (:class:`Architect`),
then the weights on a batch of the first (SGD, cosine schedule, gradient clipping).
With ``--strategy sgas`` (default) :class:`~nas.sgas.SGAS` decides one edge per cell type
at each decision epoch and the batch size grows; with ``--strategy darts`` all epochs
train every edge and the genotype comes from DARTS's rule.

Every epoch writes, in the run directory: a metrics row, the architecture weights
(``alphas.csv``), the current genotype (``genotype.json``) and ``last.pt`` (atomic).
SIGINT/SIGTERM stop after the current step, save ``last.pt`` (mid-epoch position
included) and exit; ``--resume RUN_DIR`` continues bit-for-bit on the same machine.

Multi-process runs (``torchrun``; :func:`run_search` joins the process group) shard
each global batch across ranks; the all-reduce points are :meth:`Searcher._reduce_weight_grads`,
:meth:`Architect.reduce_gradients` (so architecture weights and SGAS decisions stay
identical on every rank), :meth:`Searcher._sync_batchnorm_stats`, :meth:`Searcher._reduce_sums`
and :meth:`Searcher._stop_requested`. Only rank 0 writes files.
"""
from __future__ import annotations

import argparse
import os
import sys
from contextlib import nullcontext
import time
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F

from nas.architect import Architect
from nas.checkpoint import RunDir, atomic_write_text, read_csv_rows, safe_load, write_csv
from nas.cli import ArgumentParser
from nas.distributed import all_gather_objects
from nas.errors import FerNasError, RunInterrupted
from nas.genotypes import (Genotype, export_genotype, genotype_dir, genotype_to_dict, genotype_to_json,
                           is_genotype_name)
from nas.ops import SEARCH_SPACES, search_space
from nas.sgas import CELL_TYPES, SGAS
from nas.supernet import PRUNED, UNDECIDED, SearchNetwork, edge_list
from nas.utils import GracefulStop, autocast, get_rng_state, make_generator, resolve_device, seed_everything, \
    set_rng_state

__all__ = ["add_search_args", "get_args_parser", "Searcher", "run_search", "search_step", "plot_cell", "CHECKPOINT_KIND"]

CHECKPOINT_KIND = "fernas-search"
# Flags that may differ when resuming; everything else is taken from the checkpoint.
_RESUME_OVERRIDES = ("resume", "device", "export", "force", "progress")


def add_search_args(parser: argparse.ArgumentParser) -> None:
    """All flags of ``search.py`` (the reference's names and defaults, plus the toolkit's)."""
    from nas.data import add_data_args

    add_data_args(parser, dataset="auto")
    g = parser.add_argument_group("search")
    g.add_argument("--config", default=None, help="YAML file of flag values (command-line flags win)")
    g.add_argument("--strategy", default="sgas", choices=("sgas", "darts"),
                   help="sgas: greedy edge decisions; darts: train all epochs, DARTS genotype rule")
    g.add_argument("--search_space", default="auto_fernet",
                   help=f"candidate operations per edge: {', '.join(SEARCH_SPACES)}, or a comma-separated "
                        "list of operation names")
    g.add_argument("--batch_size", type=int, default=24, help="initial batch size")
    g.add_argument("--batch_increase", type=int, default=8, help="batch size increase after each decision (0: fixed)")
    g.add_argument("--learning_rate", type=float, default=0.025, help="initial weight learning rate")
    g.add_argument("--learning_rate_min", type=float, default=0.001, help="final learning rate (cosine)")
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--weight_decay", type=float, default=3e-4)
    g.add_argument("--init_channels", type=int, default=16)
    g.add_argument("--layers", type=int, default=8, help="cells in the supernet")
    g.add_argument("--seed", type=int, default=2)
    g.add_argument("--grad_clip", type=float, default=5.0, help="weight gradient norm clip (0: off)")
    g.add_argument("--train_portion", type=float, default=0.5,
                   help="fraction of Training for the weights (the rest trains the architecture)")
    g.add_argument("--unrolled", action="store_true", help="second-order (unrolled) architecture gradient")
    g.add_argument("--arch_learning_rate", type=float, default=3e-4)
    g.add_argument("--arch_weight_decay", type=float, default=1e-3)
    g.add_argument("--complexity_weight", type=float, default=0.0,
                   help="weight of the expected-parameter-cost regulariser over all edges (0: off)")
    g.add_argument("--partial_channels", type=int, default=1,
                   help="PC-DARTS: 1/K of the channels through the mixed ops, edge normalisation (1: off)")
    g.add_argument("--warmup_dec_epoch", type=int, default=9, help="first decision epoch (sgas)")
    g.add_argument("--decision_freq", type=int, default=5, help="epochs between decisions (sgas)")
    g.add_argument("--use_history", action="store_true", help="SGAS criterion 2 (histogram intersection)")
    g.add_argument("--history_size", type=int, default=4)
    g.add_argument("--epochs_after_last_decision", type=int, default=5, help="post-train epochs (sgas)")
    g.add_argument("--epochs", type=int, default=None,
                   help="epochs for --strategy darts (default 50); sgas derives its own count")
    g.add_argument("--post_val", action="store_true", help="evaluate on the architecture half after each epoch")
    g.add_argument("--crop", type=int, default=44, help="random-crop size (images are padded-free crops)")
    g.add_argument("--cutout", type=int, default=0, help="cutout square side (0: off)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    g.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA (ignored on CPU)")
    g.add_argument("--save", default=None, help="run directory (default runs/search-<timestamp>)")
    g.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue the search saved in RUN_DIR")
    g.add_argument("--export", default=None, metavar="NAME", help="also write genotypes/NAME.json")
    g.add_argument("--force", action="store_true", help="overwrite an existing run directory / exported genotype")
    g.add_argument("--progress", default=None, type=_bool, help="progress bar (default: when stderr is a terminal)")


def _bool(v: str) -> bool:
    from nas.cli import str2bool

    return str2bool(v)


def get_args_parser() -> ArgumentParser:
    p = ArgumentParser(prog="search.py", description="Search a cell (SGAS or DARTS) on FER data; "
                       "writes a run directory and the genotype.")
    add_search_args(p)
    return p


def _plain_args(args: argparse.Namespace) -> dict[str, Any]:
    out = {}
    for k, v in vars(args).items():
        if k.startswith("_"):
            continue
        if isinstance(v, (list, tuple)):
            v = [x if isinstance(x, (str, int, float, bool)) or x is None else str(x) for x in v]
        elif not (isinstance(v, (str, int, float, bool)) or v is None):
            v = str(v)
        out[k] = v
    return out


def _check_args(args: argparse.Namespace) -> None:
    if args.batch_size < 1:
        raise FerNasError(f"--batch_size {args.batch_size}: must be >= 1")
    if args.batch_increase < 0:
        raise FerNasError(f"--batch_increase {args.batch_increase}: must be >= 0")
    if not 0.0 < args.train_portion < 1.0:
        raise FerNasError(f"--train_portion {args.train_portion}: must be between 0 and 1")
    if args.decision_freq < 1:
        raise FerNasError(f"--decision_freq {args.decision_freq}: must be >= 1")
    for name in ("warmup_dec_epoch", "epochs_after_last_decision", "history_size", "cutout"):
        if getattr(args, name) < 0:
            raise FerNasError(f"--{name} {getattr(args, name)}: must be >= 0")
    search_space(args.search_space)
    if args.init_channels < 1 or args.layers < 3:
        raise FerNasError("--init_channels must be >= 1 and --layers >= 3")
    if args.epochs is not None:
        if args.strategy == "sgas":
            raise FerNasError("--epochs applies to --strategy darts; SGAS derives its epochs from "
                              "--warmup_dec_epoch, --decision_freq and --epochs_after_last_decision")
        if args.epochs < 1:
            raise FerNasError(f"--epochs {args.epochs}: must be >= 1")
    if args.export is not None:
        if not is_genotype_name(args.export):
            raise FerNasError(f"--export {args.export!r}: genotype names must match [A-Za-z0-9_]+")
        target = genotype_dir() / f"{args.export}.json"
        if target.exists() and not args.force:  # fail now, not after hours of search
            raise FerNasError(f"{target}: genotype {args.export!r} already exists; pass --force to overwrite it")


def _dist() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def search_step(model: SearchNetwork, architect: Architect, w_optimizer: torch.optim.Optimizer,
                xt: torch.Tensor, yt: torch.Tensor, xa: torch.Tensor, ya: torch.Tensor, lr: float,
                grad_clip: float = 5.0, amp: Any = None, weights: list[torch.Tensor] | None = None,
                reduce_grads: Any = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One search step: the architecture update on ``(xa, ya)``, then the weight update
    on ``(xt, yt)``. ``amp`` is a zero-argument context factory (autocast); ``reduce_grads``
    is called between backward and the optimizer step (the weights' all-reduce point).
    Returns ``(train loss, train logits, architecture loss)`` as tensors (no host sync)."""
    arch_loss = architect.step(xt, yt, xa, ya, lr, w_optimizer)
    weights = model.weight_parameters() if weights is None else weights
    w_optimizer.zero_grad(set_to_none=True)
    with (amp() if amp is not None else nullcontext()):
        logits = model(xt)
    loss = F.cross_entropy(logits.float(), yt)
    loss.backward(inputs=weights)
    if reduce_grads is not None:
        reduce_grads()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(weights, grad_clip)
    w_optimizer.step()
    return loss.detach(), logits.detach(), arch_loss


def _cycle(sampler) -> Iterator[torch.Tensor]:
    """Endless batches; each pass draws a new order from the sampler's generator."""
    while True:
        yield from sampler


class Searcher:
    """One search run: builds data, supernet, optimizers and controller from ``args``
    (or from the checkpoint in ``args.resume``) and runs the epochs.

    ``data`` may be given (a :class:`~nas.data.FERData`) instead of reading ``--data``;
    ``stop`` is anything with ``requested`` (and ``signum``), by default a
    :class:`~nas.utils.GracefulStop` installed while :meth:`run` runs."""

    def __init__(self, args: argparse.Namespace, data: Any = None, *, stop: Any = None) -> None:
        ckpt = None
        if getattr(args, "resume", None):
            run_path = Path(args.resume)
            ckpt = safe_load(run_path / "last.pt") if (run_path / "last.pt").is_file() else None
            if ckpt is None:
                raise FerNasError(f"{run_path}: nothing to resume (no last.pt)")
            if ckpt.get("kind") != CHECKPOINT_KIND:
                raise FerNasError(f"{run_path / 'last.pt'}: not a search checkpoint (kind {ckpt.get('kind')!r})")
            saved = dict(ckpt["args"])
            for k in _RESUME_OVERRIDES:
                if hasattr(args, k):
                    saved[k] = getattr(args, k)
            saved["save"] = str(run_path)
            args = argparse.Namespace(**saved)
        _check_args(args)
        self.args = args
        self.rank, self.world = _dist()
        self.device = resolve_device(args.device)
        if self.world > 1 and self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())  # torchrun: cuda:LOCAL_RANK
        self.amp = bool(args.amp) and self.device.type == "cuda"
        self.channels_last = self.device.type == "cuda"
        self.stop = stop
        if not args.save:
            from nas.distributed import broadcast_object

            stamp = broadcast_object(time.strftime("%Y%m%d-%H%M%S"))  # one folder name on every rank
            args.save = str(Path("runs") / f"search-{stamp}")
        self.run_dir = RunDir(args.save, resume=ckpt is not None, force=bool(args.force) and ckpt is None,
                              enabled=self.rank == 0)
        seed_everything(args.seed)

        # -- data: Training split only, halves for weights and architecture --------------
        if data is None:
            from nas.data import open_data_from_args

            data = open_data_from_args(args)
        from nas.data.loader import stratified_split

        train = data.subset("Training")
        train = train.select(train.labels >= 0)  # formats without labels mark them -1
        if len(train) == 0:
            raise FerNasError(f"{args.data or args.dataset}: the data has no Training split to search on")
        self.classes = list(data.classes)
        arch_idx, w_idx = stratified_split(train.labels, args.train_portion, seed=args.seed)
        if min(len(arch_idx), len(w_idx)) < 2:
            raise FerNasError(f"only {len(train)} Training images: too few to split for search")
        self.images = train.images.to(self.device)
        self.labels = train.labels.to(self.device)
        self.w_idx, self.arch_idx = w_idx, arch_idx
        from nas.data.augment import BatchAugment

        self.mean, self.std = 0.5, 0.25
        self.augment = BatchAugment(crop=args.crop, flip=True, brightness=0.0, contrast=0.0, rotate=0.0,
                                    translate=0.0, scale=(1.0, 1.0), cutout=args.cutout, mean=self.mean,
                                    std=self.std)

        # -- model, optimizers, controller -----------------------------------------------
        self.model_kwargs = dict(C=args.init_channels, num_classes=len(self.classes), layers=args.layers,
                                 primitives=search_space(args.search_space), steps=4, multiplier=4,
                                 in_channels=int(self.images.shape[1]), partial_channels=args.partial_channels)
        model = SearchNetwork(**self.model_kwargs).to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.w_optimizer = torch.optim.SGD(model.weight_parameters(), lr=args.learning_rate, momentum=args.momentum,
                                           weight_decay=args.weight_decay)
        self.architect = Architect(model, args.arch_learning_rate, args.arch_weight_decay, unrolled=args.unrolled,
                                   complexity_weight=args.complexity_weight,
                                   autocast=lambda: autocast(self.device, self.amp))
        self.sgas = None
        if args.strategy == "sgas":
            self.sgas = SGAS(model, args.warmup_dec_epoch, args.decision_freq, args.use_history, args.history_size,
                             args.batch_size, args.batch_increase, args.epochs_after_last_decision)
            self.total_epochs = self.sgas.total_epochs
        else:
            self.total_epochs = args.epochs or 50
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.w_optimizer, float(self.total_epochs),
                                                                    eta_min=args.learning_rate_min)
        self.batch_size = args.batch_size
        # Separate streams: batch order (CPU, drawn at epoch start) and augmentation.
        self.g_data = make_generator(args.seed + 1, "cpu")
        # Augmentation differs per rank (rank 0 keeps the single-process stream): the ranks'
        # shards of a batch must not share crop offsets and flips.
        self.g_aug = make_generator(args.seed + 2 + 7919 * self.rank, self.device)
        self.epoch = 0  # completed epochs
        self.step = 0  # batches done in the current epoch
        self.global_step = 0
        self.epoch_gen_state = self.g_data.get_state()
        self.sums = torch.zeros(5, dtype=torch.float64, device=self.device)
        self.epoch_time = 0.0
        self.last_decisions: list[dict[str, Any]] = []
        if ckpt is not None:
            self.load_state_dict(ckpt)

    # -- state ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly (tensors and plain values only)."""
        return {
            "kind": CHECKPOINT_KIND, "epoch": self.epoch, "step": self.step, "global_step": self.global_step,
            "total_epochs": self.total_epochs, "args": _plain_args(self.args), "model_kwargs": self.model_kwargs,
            "model": self.model.state_dict(), "w_optimizer": self.w_optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "architect": self.architect.state_dict(),
            "sgas": self.sgas.state_dict() if self.sgas is not None else None, "batch_size": self.batch_size,
            "rng": get_rng_state(), "generators": {"data": self.g_data.get_state(), "aug": self.g_aug.get_state(),
                                                   "epoch_start": self.epoch_gen_state},
            "sums": self.sums.cpu(), "epoch_time": self.epoch_time,
            "genotype": genotype_to_dict(self.genotype()), "classes": self.classes,
            "world_size": self.world,
            # DDP: every rank's own augmentation stream and partial sums (rank 0 saves them all)
            "aug_ranks": all_gather_objects(self.g_aug.get_state()) if self.world > 1 else None,
            "sums_ranks": all_gather_objects(self.sums.cpu()) if self.world > 1 else None,
        }

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.model.load_state_dict(s["model"])
        self.w_optimizer.load_state_dict(s["w_optimizer"])
        self.scheduler.load_state_dict(s["scheduler"])
        self.architect.load_state_dict(s["architect"])
        if self.sgas is not None and s.get("sgas") is not None:
            self.sgas.load_state_dict(s["sgas"])
        self.batch_size = int(s["batch_size"])
        self.epoch, self.step, self.global_step = int(s["epoch"]), int(s["step"]), int(s["global_step"])
        set_rng_state(s["rng"])
        gens = s["generators"]
        self.g_data.set_state(gens["data"].cpu())
        same_world = int(s.get("world_size", 1)) == self.world
        aug, sums = s.get("aug_ranks"), s.get("sums_ranks")
        self.g_aug.set_state((aug[self.rank] if aug and same_world else gens["aug"]).cpu())
        self.epoch_gen_state = gens["epoch_start"].cpu()
        self.sums = (sums[self.rank] if sums and same_world else s["sums"]).to(self.device, torch.float64)
        self.epoch_time = float(s.get("epoch_time", 0.0))
        # rows written after this checkpoint belong to the lost future: drop them
        self.run_dir.truncate_metrics("epoch", self.epoch)
        self.run_dir.truncate_metrics("epoch", self.epoch, name="alphas.csv")

    # -- genotype ---------------------------------------------------------------------
    def genotype(self) -> Genotype:
        """The current genotype: SGAS's (forced while edges are open) or DARTS's rule."""
        if self.sgas is not None:
            return self.sgas.forced_genotype()
        return self.model.darts_genotype()

    # -- all-reduce points (no-ops in one process) --------------------------------------
    def _reduce_weight_grads(self) -> None:
        """Average the weight gradients over ranks in one flat all-reduce (a supernet has
        hundreds of small tensors; one message each would be latency-bound)."""
        if self.world > 1:
            params = self.model.weight_parameters()
            for p in params:
                if p.grad is None:  # pruned edges and unused ops: zero on every rank alike
                    p.grad = torch.zeros_like(p)
            grads = [p.grad for p in params]
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat)
            flat.div_(self.world)
            offset = 0
            for g in grads:
                g.copy_(flat[offset:offset + g.numel()].view_as(g))
                offset += g.numel()

    def _sync_batchnorm_stats(self) -> None:
        """Average the batch-norm running statistics over ranks (each rank's forwards
        updated them from its own shard), so ranks evaluate and save the same model."""
        if self.world > 1:
            with torch.no_grad():
                for name, b in self.model.named_buffers():
                    if b.is_floating_point() and ("running_mean" in name or "running_var" in name):
                        dist.all_reduce(b)
                        b.div_(self.world)

    def _reduce_sums(self) -> torch.Tensor:
        s = self.sums.clone()
        if self.world > 1:
            dist.all_reduce(s)
        return s

    def _stop_requested(self) -> bool:
        flag = self.stop is not None and bool(self.stop.requested)
        if self.world > 1:
            t = torch.tensor([1.0 if flag else 0.0], device=self.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = bool(t.item())
        return flag

    # -- the loop ---------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Search from the current position to the end; returns the result summary.
        Raises :class:`RunInterrupted` after saving ``last.pt`` on SIGINT/SIGTERM."""
        ctx = GracefulStop() if self.stop is None else None
        if ctx is not None:
            self.stop = ctx.__enter__()
        try:
            if self.epoch == 0 and self.step == 0:
                self._log_start()
            elif self.epoch < self.total_epochs:
                self.run_dir.log(f"resuming at epoch {self.epoch + 1}"
                                 f"{f' step {self.step}' if self.step else ''} from {self.run_dir.path / 'last.pt'}")
            while self.epoch < self.total_epochs:
                self.train_epoch()
                self.end_epoch()
                if self.epoch < self.total_epochs and self._stop_requested():
                    self._interrupt()
            return self.finish()
        finally:
            if ctx is not None:
                ctx.__exit__(None, None, None)

    def _log_start(self) -> None:
        a = self.args
        self.run_dir.write_config(a)
        n_w = sum(p.numel() for p in self.model.weight_parameters())
        self.run_dir.log(
            f"search ({a.strategy}, {a.search_space}, {'second' if a.unrolled else 'first'} order): supernet C={a.init_channels} "
            f"L={a.layers}, {n_w:,} weights, {len(self.w_idx)} images for weights / {len(self.arch_idx)} for "
            f"architecture (Training split only), crop {a.crop}, {self.total_epochs} epochs, device {self.device}"
            f"{' x' + str(self.world) if self.world > 1 else ''}, amp {'bf16' if self.amp else 'off'}"
            f"{f', partial channels 1/{a.partial_channels}' if a.partial_channels > 1 else ''}"
            f"{f', complexity weight {a.complexity_weight}' if a.complexity_weight else ''}")

    def _batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.world > 1:
            idx = idx[self.rank::self.world]
        idx = idx.to(self.device)
        x = self.augment(self.images[idx], self.g_aug)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, self.labels[idx]

    def _samplers(self):
        from nas.data.loader import BatchSampler

        gb = self.batch_size * self.world  # global batch, sliced per rank
        w = BatchSampler(self.w_idx, gb, shuffle=True, drop_last=True, generator=self.g_data)
        a = BatchSampler(self.arch_idx, gb, shuffle=True, drop_last=True, generator=self.g_data)
        if len(w) == 0 or len(a) == 0:
            raise FerNasError(f"batch size {self.batch_size} (x{self.world} ranks) exceeds the {min(len(self.w_idx), len(self.arch_idx))} "
                              "images of a search half; lower --batch_size or --batch_increase, or use more data")
        return w, a

    def train_epoch(self) -> None:
        """Train (architecture step, then weight step) over the weights half once,
        from batch ``self.step`` on."""
        a = self.args
        model = self.model
        model.train()
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=self.device)
        if self.step == 0:
            self.epoch_gen_state = self.g_data.get_state()
            self.sums.zero_()
            self.epoch_time = 0.0
        else:  # mid-epoch resume: same orders again, skip the batches already done
            self.g_data.set_state(self.epoch_gen_state)
        w_sampler, a_sampler = self._samplers()
        steps = len(w_sampler)
        w_iter, a_iter = iter(w_sampler), _cycle(a_sampler)
        for _ in range(self.step):
            next(w_iter)
            next(a_iter)
        lr = self.scheduler.get_last_lr()[0]
        weights = model.weight_parameters()
        bar = self._progress(steps)
        t0 = time.perf_counter()
        for it in w_iter:
            ia = next(a_iter)
            xt, yt = self._batch(it)
            xa, ya = self._batch(ia)
            loss, logits, arch_loss = search_step(model, self.architect, self.w_optimizer, xt, yt, xa, ya, lr,
                                                  a.grad_clip, lambda: autocast(self.device, self.amp),
                                                  weights, self._reduce_weight_grads)

            n, na = yt.numel(), ya.numel()
            with torch.no_grad():
                # remember the first non-finite step on the device; checked at sync points
                bad = ~(torch.isfinite(loss) & torch.isfinite(arch_loss))
                self.first_bad = torch.where(bad & (self.first_bad < 0), self.step + 1, self.first_bad)
            if self.device.type == "cpu" or (self.step + 1) % 10 == 0:
                self._check_finite()
            with torch.no_grad():  # running sums on the device: no host sync per step
                self.sums[0:2] += torch.stack([loss.detach().double() * n, (logits.argmax(1) == yt).sum().double()])
                self.sums[2] += n
                self.sums[3] += arch_loss.double() * na
                self.sums[4] += na
            self.step += 1
            self.global_step += 1
            if bar is not None:
                bar.update(1)
                if self.step % 10 == 0 or self.step == steps:
                    s = self.sums.tolist()  # the only host sync: at the progress interval
                    bar.set_postfix(loss=f"{s[0] / max(s[2], 1):.3f}", acc=f"{100 * s[1] / max(s[2], 1):.1f}")
            if self.step < steps and self._stop_requested():
                self._check_finite()
                self.epoch_time += time.perf_counter() - t0
                if bar is not None:
                    bar.close()
                self._interrupt()
        if bar is not None:
            bar.close()
        self._check_finite()
        self.epoch_time += time.perf_counter() - t0

    def _check_finite(self) -> None:
        """Stop with one line when a step of this epoch had a non-finite loss; the bad
        state is never saved (``last.pt`` stays that of the last good epoch)."""
        bad = self.first_bad.clone()
        if self.world > 1:
            bad = torch.where(bad < 0, torch.full_like(bad, 2**62), bad)
            dist.all_reduce(bad, op=dist.ReduceOp.MIN)
            bad = torch.where(bad == 2**62, torch.full_like(bad, -1), bad)
        step = int(bad)
        if step < 0:
            return
        ck = self.run_dir.file("last.pt")
        kept = f"the last good checkpoint is kept ({ck})" if ck.exists() else "no checkpoint yet"
        raise FerNasError(f"non-finite loss at epoch {self.epoch + 1} step {step}; search stopped, {kept}; "
                          "try a lower --learning_rate or --arch_learning_rate, or --grad_clip")

    def _progress(self, steps: int):
        show = self.args.progress if getattr(self.args, "progress", None) is not None else sys.stderr.isatty()
        if not show or self.rank != 0:
            return None
        try:
            from tqdm import tqdm
        except ImportError:  # pragma: no cover
            return None
        return tqdm(total=steps, initial=self.step, desc=f"epoch {self.epoch + 1}/{self.total_epochs}",
                    leave=False, dynamic_ncols=True)

    @torch.no_grad()
    def evaluate(self) -> float:
        """Accuracy (%) of the supernet on the architecture half (centre crop)."""
        from nas.data.augment import eval_views

        self.model.eval()
        correct = torch.zeros((), dtype=torch.float64, device=self.device)
        idx_all = self.arch_idx[self.rank::self.world].to(self.device)
        bs = max(self.batch_size, 64)
        for i in range(0, idx_all.numel(), bs):
            idx = idx_all[i:i + bs]
            x = eval_views(self.images[idx], "center", self.args.crop, self.mean, self.std)[0]
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(self.device, self.amp):
                logits = self.model(x)
            correct += (logits.argmax(1) == self.labels[idx]).sum()
        if self.world > 1:
            dist.all_reduce(correct)
        self.model.train()
        return 100.0 * float(correct) / self.arch_idx.numel()

    def end_epoch(self) -> None:
        """Schedule, decisions, metrics, alphas, genotype and last.pt for the epoch just trained."""
        a = self.args
        epoch = self.epoch
        lr = self.scheduler.get_last_lr()[0]
        batch_size = self.batch_size
        self.scheduler.step()
        self._sync_batchnorm_stats()
        decisions = self.sgas.end_of_epoch(epoch) if self.sgas is not None else []
        if self.sgas is not None:
            self.batch_size = self.sgas.batch_size
        self.last_decisions = decisions
        valid_acc = self.evaluate() if a.post_val else None
        loss, correct, n, arch_loss, arch_n = self._reduce_sums().tolist()
        genotype = self.genotype()
        self.epoch += 1
        self.step = 0
        row = {"epoch": self.epoch, "lr": lr, "batch_size": batch_size, "train_loss": loss / max(n, 1),
               "train_acc": 100.0 * correct / max(n, 1), "arch_loss": arch_loss / max(arch_n, 1),
               "valid_acc": "" if valid_acc is None else valid_acc,
               "decided": " ".join(f"{d['cell']}:{d['node']}<-{d['input']}:{d['op']}" for d in decisions),
               "n_decided": self._n_decided(), "time_s": round(self.epoch_time, 2),
               "images_per_s": round(n / self.epoch_time, 1) if self.epoch_time > 0 else "",
               "genotype": _genotype_str(genotype)}
        self.run_dir.append_metrics(row)
        self._write_alphas()
        if self.run_dir.enabled:
            atomic_write_text(genotype_to_json(genotype), self.run_dir.file("genotype.json"))
        self.run_dir.save("last.pt", self.state_dict())
        self.run_dir.log(self._epoch_line(row, decisions))

    def _n_decided(self) -> int:
        return sum(s >= 0 for c in CELL_TYPES for s in self.model.edge_state[c])

    def _epoch_line(self, row: dict[str, Any], decisions: list[dict[str, Any]]) -> str:
        parts = [f"epoch {row['epoch']}/{self.total_epochs}", f"lr {row['lr']:.5f}", f"bs {row['batch_size']}",
                 f"train loss {row['train_loss']:.4f} acc {row['train_acc']:.2f}%",
                 f"arch loss {row['arch_loss']:.4f}"]
        if row["valid_acc"] != "":
            parts.append(f"valid acc {row['valid_acc']:.2f}%")
        if self.sgas is not None:
            parts.append(f"decided {row['n_decided']}/{2 * self.sgas.num_decisions}")
            for d in decisions:
                pruned = f" (pruned {len(d['pruned'])})" if d["pruned"] else ""
                parts.append(f"+{d['cell']} node {d['node']} <- {d['input']} {d['op']}{pruned}")
        parts.append(f"{row['time_s']:.1f}s")
        return " | ".join(parts) + f"\n  genotype {row['genotype']}"

    def _write_alphas(self) -> None:
        """Append this epoch's architecture weights (softmax per edge) to alphas.csv."""
        if not self.run_dir.enabled:
            return
        m = self.model
        prims = m.primitives
        header = ["epoch", "cell", "edge", "node", "input", "state"] + prims + (["beta"] if m.partial_channels > 1 else [])
        rows = []
        for c in CELL_TYPES:
            w = F.softmax(m.alphas(c).detach().float(), dim=-1).cpu()
            betas = m.betas(c)
            for e, (node, inp) in enumerate(edge_list(m.steps)):
                st = m.edge_state[c][e]
                state = "open" if st == UNDECIDED else "pruned" if st == PRUNED else prims[st]
                r = {"epoch": self.epoch, "cell": c, "edge": e, "node": node, "input": inp, "state": state}
                r.update({p: f"{float(w[e, k]):.6g}" for k, p in enumerate(prims)})
                if betas is not None:
                    r["beta"] = f"{float(betas[e].detach()):.6g}"
                rows.append(r)
        path = self.run_dir.file("alphas.csv")
        old = read_csv_rows(path) if path.exists() else []
        write_csv(path, old + rows, header)

    def _interrupt(self) -> None:
        self.run_dir.save("last.pt", self.state_dict())
        signum = int(getattr(self.stop, "signum", None) or 2)
        where = f"epoch {self.epoch + 1} step {self.step}" if self.step else f"the end of epoch {self.epoch}"
        msg = (f"interrupted at {where}; state saved to {self.run_dir.path / 'last.pt'}; "
               f"continue with --resume {self.run_dir.path}")
        self.run_dir.log(msg, echo=False)
        raise RunInterrupted(signum, msg)

    def finish(self) -> dict[str, Any]:
        """Final genotype: genotype.json, cell PNGs, optional export; returns a summary."""
        a = self.args
        g = self.genotype()
        complete = self.sgas.complete if self.sgas is not None else True
        result = {"genotype": genotype_to_dict(g), "complete": complete, "epochs": self.epoch,
                  "run_dir": str(self.run_dir.path), "exported": None}
        if self.run_dir.enabled:
            atomic_write_text(genotype_to_json(g), self.run_dir.file("genotype.json"))
            try:
                from nas.report import plot_cells

                plot_cells(g, self.run_dir.path)
            except FerNasError:
                raise
            except Exception as e:  # noqa: BLE001 - a plotting failure must not lose a finished search
                self.run_dir.log(f"notice: cell plots skipped ({type(e).__name__}: {e})")
            if a.export:
                result["exported"] = str(export_genotype(g, a.export, force=a.force))
        note = "" if complete else " (forced: not every edge was decided)"
        self.run_dir.log(f"search done after {self.epoch} epochs; genotype{note}: {_genotype_str(g)}")
        self.run_dir.log(f"genotype written to {self.run_dir.file('genotype.json')}"
                         + (f" and {result['exported']} (use --arch {a.export})" if result["exported"] else ""))
        return result


def _genotype_str(g: Genotype) -> str:
    def cell(pairs):
        return " ".join(f"{op}@{i}" for op, i in pairs)

    return f"normal [{cell(g.normal)}] reduce [{cell(g.reduce)}]"


def run_search(args: argparse.Namespace, data: Any = None, stop: Any = None) -> dict[str, Any]:
    """Build a :class:`Searcher` from ``args`` and run it to the end. Launched by
    ``torchrun`` (``WORLD_SIZE`` > 1) it joins the process group first (gloo on CPU,
    NCCL on CUDA) and leaves it at the end; an already initialised group is used as is."""
    from nas.distributed import cleanup, init_distributed

    own_group = False
    if not (dist.is_available() and dist.is_initialized()):
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            init_distributed(resolve_device(getattr(args, "device", "auto")))
            own_group = True
    try:
        return Searcher(args, data, stop=stop).run()
    finally:
        if own_group:
            cleanup()


def plot_cell(cell, concat, path, title: str = "") -> Path:
    """Draw a cell with graphviz (``graphviz`` package and ``dot`` binary). Raises when
    graphviz is unavailable, so :func:`nas.report.plot_cells` falls back to matplotlib."""
    import graphviz  # noqa: F401 - ImportError -> caller falls back

    g = graphviz.Digraph(format="png", edge_attr={"fontsize": "11"},
                         node_attr={"style": "filled", "shape": "rect", "align": "center", "fontsize": "12",
                                    "height": "0.5", "width": "0.5", "penwidth": "2"}, engine="dot")
    g.body.extend(["rankdir=LR"])
    g.node("c_{k-2}", fillcolor="darkseagreen2")
    g.node("c_{k-1}", fillcolor="darkseagreen2")
    steps = len(cell) // 2
    for i in range(steps):
        g.node(str(i), fillcolor="lightblue")
    for k, (op, j) in enumerate(cell):
        src = "c_{k-2}" if j == 0 else "c_{k-1}" if j == 1 else str(j - 2)
        g.edge(src, str(k // 2), label=op, fillcolor="gray")
    g.node("c_{k}", fillcolor="palegoldenrod")
    for j in concat:
        g.edge(str(j - 2), "c_{k}", fillcolor="gray")
    out = Path(path)
    g.render(str(out.with_suffix("")), cleanup=True)
    return out
