"""The training engine behind train_searched.py, relabel_training.py and test_ck48.py.

Read it top to bottom: configuration and flags, then :class:`Trainer`, whose
``fit()`` is the whole loop:

    for epoch:                                  drop-path prob = p * (offset + epoch) / total
        for batch of indices (BatchSampler):    uint8 images stay on the device
            x = BatchAugment(images[idx])       batched, seeded generator, on the device
            logits(, aux) = model(x)            bf16 autocast + channels_last on CUDA
            targets = target_hook(...)          relabelling plugs in here
            loss.backward(); clip; step         a non-finite batch is skipped on the device
        validate on PublicTest, score PrivateTest, keep best.pt by PublicTest accuracy
        metrics.csv row, snapshots, last.pt

Honest selection: the result is PrivateTest accuracy at the epoch of best
PublicTest accuracy; the best PrivateTest accuracy is logged as such, for
reference only.

No host syncs in the step loop: losses and counts accumulate as device tensors
and are read every ``log_interval`` steps. A non-finite loss or gradient norm
becomes a device-side flag that the fused CUDA optimizer honours (``found_inf``:
the step is a no-op), so neither NaN policy syncs per step on a GPU (on CPU
the flag is read in Python, which costs nothing there); ``stop`` notices the
flag at the next logging point and exits without saving the bad state
(last.pt of the previous epoch stays the last good checkpoint).

Resume is exact: a checkpoint holds the model, optimizer, schedule, epoch and
step within the epoch, the global RNG, the sampling generator's state at the
start of the epoch (the permutation is drawn again and the done batches are
skipped), the augmentation generator, the running sums of the epoch and the
best-so-far figures.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nas import __version__
from nas.checkpoint import RunDir, atomic_write_text, read_csv_rows, safe_load
from nas.distributed import DistInfo, all_gather_objects, all_reduce_max, all_reduce_sum, shard_batch, single_process
from nas.errors import FerNasError, RunInterrupted
from nas.evaluate import TTA_MODES, evaluate_split, load_model_from_checkpoint, predict
from nas.optim import OPTIMIZERS, SCHEDULERS, build_optimizer, build_scheduler, current_lr, set_found_inf, \
    supports_found_inf
from nas.utils import GracefulStop, autocast, get_rng_state, make_generator, set_rng_state

__all__ = ["TrainConfig", "add_train_args", "config_from_args", "Trainer", "TargetHook", "EpochCallback",
           "load_model_from_checkpoint", "write_run_report", "resumed_args", "summary_line", "training_norm",
           "NAN_POLICIES", "LABEL_MODES"]

NAN_POLICIES = ("stop", "skip_batch")
LABEL_MODES = ("fer", "ferplus_majority", "ferplus_soft")

#: ``target_hook(epoch, step, indices, logits_detached, targets) -> targets``: may rewrite a
#: batch's targets after the forward pass and before the loss (relabelling). ``indices`` index
#: the whole dataset; an object with ``state_dict()``/``load_state_dict()`` is checkpointed.
TargetHook = Callable[[int, int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
#: ``epoch_callback(epoch, trainer) -> dict | None``: extra columns for that epoch's metrics row.
EpochCallback = Callable[[int, "Trainer"], "Mapping[str, Any] | None"]


# ----------------------------------------------------------------------------- configuration
@dataclass
class TrainConfig:
    """Everything the loop needs besides the model and the data. Defaults are the
    reference (Auto-FERNet/DARTS) retraining recipe."""

    epochs: int = 600
    batch_size: int = 64
    learning_rate: float = 0.025
    learning_rate_min: float = 0.0
    momentum: float = 0.9
    weight_decay: float = 3e-4
    optimizer: str = "sgd"
    scheduler: str = "cosine"
    grad_clip: float = 5.0
    auxiliary_weight: float = 0.4
    drop_path_prob: float = 0.2
    label_smoothing: float = 0.0
    cutout: bool = False
    cutout_length: int = 16
    crop: int | None = None           # None: model.default_input_size
    tta: str = "center"               # test-time view for validation and test during training
    eval_every: int = 1
    eval_batch_size: int = 256
    snapshot_at: Sequence[float] = (85, 90)
    nan_policy: str = "stop"
    log_interval: int = 50
    seed: int = 0
    soft_targets: bool = False        # train on data.soft_labels (FER+ vote distributions)
    amp: bool | None = None           # None: on for CUDA (bf16), off on CPU; True on CPU: CPU bf16
    channels_last: bool | None = None  # None: on (CPU and CUDA)
    compile: bool = False
    progress: bool | None = None      # None: a tqdm bar when stderr is a terminal

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise FerNasError(f"--optimizer {self.optimizer!r}: choose from {', '.join(OPTIMIZERS)}")
        if self.scheduler not in SCHEDULERS:
            raise FerNasError(f"--scheduler {self.scheduler!r}: choose from {', '.join(SCHEDULERS)}")
        if self.nan_policy not in NAN_POLICIES:
            raise FerNasError(f"--nan_policy {self.nan_policy!r}: choose from {', '.join(NAN_POLICIES)}")
        if self.tta not in TTA_MODES:
            raise FerNasError(f"--tta {self.tta!r}: choose from {', '.join(TTA_MODES)}")
        for name in ("epochs", "batch_size", "eval_every", "log_interval", "eval_batch_size"):
            if int(getattr(self, name)) < 1:
                raise FerNasError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.learning_rate <= 0 or not math.isfinite(self.learning_rate):
            raise FerNasError(f"--learning_rate must be positive, got {self.learning_rate}")
        if not 0.0 <= self.drop_path_prob < 1.0:
            raise FerNasError(f"--drop_path_prob must be in [0, 1), got {self.drop_path_prob}")
        self.snapshot_at = [float(t) for t in (self.snapshot_at or [])]


def add_train_args(parser: argparse.ArgumentParser, **defaults: Any) -> argparse.ArgumentParser:
    """The training flags shared by train_searched.py and relabel_training.py
    (model flags such as ``--arch``/``--layers`` stay with each script).
    ``defaults`` overrides a flag's default, e.g. ``learning_rate=0.02272721``."""
    from nas.cli import float_list, str2bool

    have = set(parser._option_string_actions)

    def add(*flags: str, **kw: Any) -> None:
        if any(f in have for f in flags):  # e.g. --labels/--ferplus already added by nas.data.add_data_args
            return
        dest = kw.get("dest") or flags[0].lstrip("-").replace("-", "_")
        if dest in defaults:
            kw["default"] = defaults[dest]
        parser.add_argument(*flags, **kw)

    g = parser.add_argument_group("training")
    parser_add = parser.add_argument
    parser.add_argument = g.add_argument  # type: ignore[method-assign]
    try:
        add("--batch_size", type=int, default=64, help="per-process batch size")
        add("--learning_rate", type=float, default=0.025)
        add("--learning_rate_min", type=float, default=0.0, help="cosine schedule floor / plateau minimum")
        add("--momentum", type=float, default=0.9)
        add("--weight_decay", type=float, default=3e-4)
        add("--epochs", type=int, default=600)
        add("--optimizer", default="sgd", choices=OPTIMIZERS)
        add("--scheduler", default="cosine", choices=SCHEDULERS[:2])
        add("--grad_clip", type=float, default=5.0, help="max gradient norm (0: no clipping)")
        add("--auxiliary_weight", type=float, default=0.4)
        add("--cutout", action="store_true", default=False)
        add("--cutout_length", type=int, default=16)
        add("--drop_path_prob", type=float, default=0.2)
        add("--label_smoothing", type=float, default=0.0)
        add("--seed", type=int, default=0)
        add("--labels", default="fer", choices=LABEL_MODES,
            help="training targets: FER2013 labels, FER+ majority, or FER+ vote distributions (needs --ferplus)")
        add("--ferplus", default=None, help="FER+ votes file fer2013new.csv (for --labels ferplus_*)")
        add("--tta", default="center", choices=TTA_MODES, help="test-time view for validation/test")
        add("--eval_every", type=int, default=1, help="validate every N epochs (and at the last)")
        add("--snapshot_at", type=float_list, default=[85.0, 90.0],
            help="save snapshot_trainXX.pt at the first epoch whose training accuracy reaches XX %%")
        add("--nan_policy", default="stop", choices=NAN_POLICIES,
            help="non-finite loss: stop (keep the last good checkpoint) or skip_batch (drop that update)")
        add("--log_interval", "--report_every", type=int, default=50, dest="log_interval",
            help="steps between progress updates (the only host syncs in the loop)")
        add("--device", default="auto", help="auto, cpu, cuda or cuda:N")
        add("--amp", type=str2bool, default=None,
            help="bf16 autocast (default: on for CUDA, off on CPU; True on CPU uses CPU bf16)")
        add("--channels_last", type=str2bool, default=None, help="NHWC memory layout (default: on)")
        add("--compile", type=str2bool, nargs="?", const=True, default=False, help="torch.compile the model")
        add("--progress", type=str2bool, default=None, help="tqdm bar per epoch (default: when a terminal)")
        add("--plots", type=str2bool, default=True, help="write the PNG reports at the end (needs matplotlib)")
        add("--save", default=None, help="run directory")
        add("--resume", default=None, metavar="RUN_DIR", help="continue the run in RUN_DIR exactly")
        add("--force", action="store_true", default=False, help="overwrite a run directory that holds a run")
    finally:
        parser.add_argument = parser_add  # type: ignore[method-assign]
    return parser


def config_from_args(args: argparse.Namespace | Mapping[str, Any], **overrides: Any) -> TrainConfig:
    """A :class:`TrainConfig` from parsed flags (unknown keys ignored)."""
    d = dict(vars(args) if isinstance(args, argparse.Namespace) else args)
    if "labels" in d and "soft_targets" not in d:
        d["soft_targets"] = d["labels"] == "ferplus_soft"
    names = {f.name for f in fields(TrainConfig)}
    kw = {k: v for k, v in d.items() if k in names}
    if not d.get("auxiliary", True):
        kw["auxiliary_weight"] = 0.0
    kw.update(overrides)
    return TrainConfig(**kw)


#: Flags a resumed run takes from the command line; everything else comes from the run's checkpoint.
RESUME_OVERRIDES = ("resume", "device", "progress", "force", "log_interval", "plots")


def resumed_args(args: argparse.Namespace) -> argparse.Namespace:
    """For ``--resume RUN_DIR``: the flags the run was started with (from its last.pt),
    except :data:`RESUME_OVERRIDES` and ``--data`` when given (the data may have moved)."""
    p = Path(args.resume)
    if p.is_file():
        p = p.parent
    state = safe_load(p / "last.pt" if (p / "last.pt").exists() else p)
    saved = state.get("args")
    if not isinstance(saved, Mapping) or not saved:
        raise FerNasError(f"{state.get('path', p)}: checkpoint holds no flags to resume with")
    merged = {**vars(args), **saved}
    for k in RESUME_OVERRIDES:
        merged[k] = getattr(args, k, None)
    merged["resume"] = str(p)
    if getattr(args, "data", None):
        merged["data"] = args.data
    return argparse.Namespace(**merged)


# ----------------------------------------------------------------------------- the trainer

def cpu_channels_last_unsafe(model: nn.Module) -> bool:
    """True when ``model`` has a stride-2 1x1 convolution with fewer than 16 input channels.

    torch 2.14.1's multi-threaded CPU backward of such a convolution in channels_last
    corrupts the heap for some batch sizes (odd ones: 3, 21, 33 ... measured; the process
    dies with "double free" or a segfault), so the trainer keeps these models contiguous
    on CPU unless it runs on one thread or ``--channels_last True`` is given."""
    return any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride == (2, 2) and m.in_channels < 16
               for m in model.modules())

class Trainer:
    """Trains ``model`` on the Training split of ``data`` (a ``FERData``), validates on
    PublicTest, scores PrivateTest, writes into ``run`` (a :class:`RunDir`).

    Args:
        norm: ``(mean, std)`` on the 0–1 scale; default: computed on the Training split.
        target_hook / epoch_callback: see :data:`TargetHook`, :data:`EpochCallback`.
        drop_path_offset / drop_path_total: drop-path probability at epoch ``e`` is
            ``drop_path_prob * (offset + e) / total`` (``total`` defaults to ``epochs``), so
            a run continued from a snapshot keeps the schedule where it left off.
        args: the flags, stored in every checkpoint.
        stop: an object with ``requested``/``signum`` (default: :class:`GracefulStop`).
    """

    def __init__(self, model: nn.Module, data: Any, cfg: TrainConfig, run: RunDir, *,
                 dist: DistInfo | None = None, device: torch.device | str | None = None,
                 norm: tuple[float, float] | None = None, target_hook: TargetHook | None = None,
                 epoch_callback: EpochCallback | None = None, drop_path_offset: float = 0.0,
                 drop_path_total: float | None = None, args: Mapping[str, Any] | None = None,
                 stop: Any = None) -> None:
        from nas.data.augment import BatchAugment
        from nas.data.dataset import SPLITS
        from nas.data.loader import BatchSampler

        self.cfg, self.run = cfg, run
        self.dist = dist or single_process(device or "cpu")
        self.device = torch.device(device) if device is not None else self.dist.device
        if self.dist.enabled:
            self.device = self.dist.device
        cuda = self.device.type == "cuda"
        self.amp = cuda if cfg.amp is None else bool(cfg.amp)  # --amp True on CPU: CPU bf16 autocast
        # channels_last also on CPU: oneDNN's NHWC kernels measured 1.76x faster for FER_V1
        # C36 L12 b64 (bench/train_step.py), and as deterministic
        self.channels_last = True if cfg.channels_last is None else bool(cfg.channels_last)
        self.cpu_threads_layout_note = (cfg.channels_last is None and not cuda and torch.get_num_threads() > 1
                                         and cpu_channels_last_unsafe(model))
        if self.cpu_threads_layout_note:
            self.channels_last = False
        # CPU bf16 in channels_last: oneDNN's weight gradient of dilated depthwise convs
        # (dil_conv_*) comes out wrong at 32x32 and larger maps (measured on torch 2.14.1,
        # relative error ~1, values up to 1e38); the contiguous layout is correct.
        self.cpu_amp_layout_note = self.amp and not cuda and self.channels_last
        if self.cpu_amp_layout_note:
            self.channels_last = False
        self.target_hook, self.epoch_callback = target_hook, epoch_callback
        self.args = dict(args or {})
        self.stop = stop
        self.drop_path_offset = float(drop_path_offset)
        self.drop_path_total = float(drop_path_total or cfg.epochs)

        # -- data: one uint8 tensor on the device; batches are index tensors into it
        self.data = data.to(self.device)
        self.classes = list(data.classes)
        split = self.data.split
        self.train_idx = (split == SPLITS.index("Training")).nonzero().flatten()
        self.val_idx = (split == SPLITS.index("PublicTest")).nonzero().flatten()
        self.test_idx = (split == SPLITS.index("PrivateTest")).nonzero().flatten()
        if self.train_idx.numel() < 2:
            raise FerNasError(f"{data.source}: the Training split has {self.train_idx.numel()} samples; need at least 2")
        if cfg.soft_targets:
            if self.data.soft_labels is None:
                raise FerNasError("--labels ferplus_soft needs FER+ vote distributions (pass --ferplus fer2013new.csv)")
            self.targets = self.data.soft_labels.float()
        else:
            self.targets = self.data.labels
        if int(self.data.labels[self.train_idx].min()) < 0:
            raise FerNasError(f"{data.source}: some Training samples have no label")
        self.mean, self.std = norm if norm is not None else training_norm(self.data.images[self.train_idx])

        # -- model: the raw module (saved, evaluated), and the one the step calls (DDP / compiled)
        self.model = model.to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.crop = int(cfg.crop or getattr(model, "default_input_size", 44))
        self.has_aux = bool(getattr(model, "auxiliary", False) or getattr(model, "auxiliary_head", None) is not None)
        fwd: nn.Module = self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            fwd = DDP(self.model, device_ids=[self.device] if cuda else None,
                      find_unused_parameters=cfg.auxiliary_weight == 0 and self.has_aux)
        if cfg.compile:
            fwd = torch.compile(fwd)
        self.fwd = fwd

        # -- optimisation
        self.optimizer = build_optimizer(self.model, cfg.optimizer, lr=cfg.learning_rate, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay)
        self.scheduler = build_scheduler(self.optimizer, cfg.scheduler, epochs=cfg.epochs,
                                         lr_min=cfg.learning_rate_min)
        self.fused = supports_found_inf(self.optimizer)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        # The forward pass updates BatchNorm running statistics before the loss is known; under
        # skip_batch they are put back for a skipped batch, else its NaN activations stay in them.
        self.bn_buffers = [b for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                           for b in m.buffers(recurse=False)] if cfg.nan_policy == "skip_batch" else []

        # -- randomness: shuffling and augmentation have their own generators (same
        # sampling seed on every rank: the shards of a global batch are disjoint)
        self.sample_gen = make_generator(cfg.seed, self.device)
        self.aug_gen = make_generator(cfg.seed + 7919 * (self.dist.rank + 1), self.device)
        self.sampler = BatchSampler(self.train_idx, cfg.batch_size * self.dist.world_size, shuffle=True,
                                    generator=self.sample_gen)
        self.augment = BatchAugment(crop=self.crop, cutout=cfg.cutout_length if cfg.cutout else 0,
                                    mean=self.mean, std=self.std)

        # -- position and bookkeeping (all of it goes into checkpoints)
        self.epoch = 0                 # epochs completed
        self.step = 0                  # batches done in the current epoch
        self.epoch_start_gen: torch.Tensor | None = None
        self.best: dict[str, Any] = {"score": -1.0, "epoch": None, "val_acc": None, "val_loss": None,
                                     "test_acc": None, "best_test_acc": -1.0, "best_test_epoch": None}
        self.snapshots_done: list[float] = []
        self.skipped_total = 0
        self.last_row: dict[str, Any] = {}
        self._reset_sums()

    # ------------------------------------------------------------------ helpers
    def _reset_sums(self) -> None:
        # loss sum, correct, samples, skipped batches (float64 so counts stay exact)
        self.sums = torch.zeros(4, dtype=torch.float64, device=self.device)
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=self.device)

    def drop_path_at(self, epoch: int) -> float:
        return self.cfg.drop_path_prob * (self.drop_path_offset + epoch) / self.drop_path_total

    @property
    def steps_per_epoch(self) -> int:
        return len(self.sampler)

    # ------------------------------------------------------------------ one step
    def train_step(self, epoch: int, step: int, idx: torch.Tensor) -> None:
        """Forward, loss, backward, clip and (unless non-finite) an optimizer step.
        Everything stays on the device."""
        cfg = self.cfg
        saved_bn = [b.clone() for b in self.bn_buffers]
        x = self.augment(self.data.images[idx], self.aug_gen)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = self.targets[idx]
        with autocast(self.device, self.amp):
            out = self.fwd(x)
        logits, aux = (out[0], out[1]) if isinstance(out, (tuple, list)) else (out, None)
        logits = logits.float()
        if self.target_hook is not None:
            y = self.target_hook(epoch, step, idx, logits.detach(), y)
        loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
        if aux is not None and cfg.auxiliary_weight > 0:
            loss = loss + cfg.auxiliary_weight * F.cross_entropy(aux.float(), y, label_smoothing=cfg.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            norm = nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
        else:
            norm = nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])
        bad = (~(torch.isfinite(loss.detach()) & torch.isfinite(norm))).float()
        if self.dist.enabled:
            all_reduce_max(bad)  # a rank's bad loss skips the step everywhere (weights stay equal)
        if self.fused:
            set_found_inf(self.optimizer, bad)
            self.optimizer.step()
            for b, old in zip(self.bn_buffers, saved_bn):  # on the device: no sync
                b.copy_(torch.where(bad > 0, old, b))
        elif not bool(bad):  # CPU: reading the flag costs nothing (no asynchronous device)
            self.optimizer.step()
        else:
            for b, old in zip(self.bn_buffers, saved_bn):
                b.copy_(old)
        good = 1.0 - bad
        hard = y.argmax(1) if y.is_floating_point() else y
        n = self.sums.new_full((), float(idx.numel()))  # a fill kernel, not a host-to-device copy
        batch = torch.stack([torch.nan_to_num(loss.detach().double() * n, 0.0, 0.0, 0.0),
                             (logits.detach().argmax(1) == hard).sum().double(), n, torch.ones_like(n)])
        self.sums += batch * torch.stack([good, good, good, bad]).double()
        self.first_bad = torch.where((self.first_bad < 0) & (bad > 0), torch.full_like(self.first_bad, step),
                                     self.first_bad)

    # ------------------------------------------------------------------ checks
    def _check_finite(self, epoch: int) -> int:
        """Sync point: how many batches were non-finite so far this epoch. Under
        ``stop`` any is an error (nothing from this epoch is saved)."""
        n_bad = int(round(float(self.sums[3])))
        if n_bad and self.cfg.nan_policy == "stop":
            step = int(self.first_bad)
            where = f"{self.run.path}/last.pt" if (self.run.path / "last.pt").exists() else "no checkpoint yet"
            raise FerNasError(f"non-finite loss at epoch {epoch + 1} step {step + 1}; stopped, the last good "
                              f"checkpoint is kept ({where}); try a lower --learning_rate, --grad_clip, or "
                              "--nan_policy skip_batch")
        return n_bad

    def _weights_finite(self) -> bool:
        flags = [torch.isfinite(t).all() for t in (*self.model.parameters(), *self.model.buffers())
                 if t.is_floating_point()]
        return bool(torch.stack(flags).all()) if flags else True

    def _stop_requested(self) -> bool:
        """Single process: a Python flag (no device work). DDP: every rank must stop at
        the same step, so the flags are all-reduced (called at logging intervals only)."""
        local = self.stop is not None and self.stop.requested
        if not self.dist.enabled:
            return local
        flag = torch.full((1,), 1.0 if local else 0.0, device=self.device)
        all_reduce_max(flag)
        return bool(flag.item())

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, which: str) -> dict[str, float]:
        """Accuracy (%) and loss on ``val`` (PublicTest) or ``test`` (PrivateTest)."""
        idx = self.val_idx if which == "val" else self.test_idx
        return evaluate_split(self.model, self.data.images[idx], self.data.labels[idx], mean=self.mean,
                              std=self.std, crop=self.crop, tta=self.cfg.tta, batch_size=self.cfg.eval_batch_size,
                              amp=self.amp, channels_last=self.channels_last, dist_info=self.dist)

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict[str, Any]:
        """Train from the current position to ``cfg.epochs``; return the results
        (also written to results.json). Raises :class:`RunInterrupted` after saving
        ``last.pt`` when SIGINT/SIGTERM (or ``stop.requested``) arrives."""
        ctx = GracefulStop() if self.stop is None else _NullCtx(self.stop)
        with ctx as stop:
            self.stop = stop
            if self.epoch == 0 and self.step == 0:
                self._log_start()
            while self.epoch < self.cfg.epochs:
                self._train_epoch(self.epoch)
                self._end_epoch(self.epoch)
                if self.epoch < self.cfg.epochs and self._stop_requested():
                    self._interrupt(self.epoch)  # last.pt of this boundary is already written
        return self.finish()

    def _log_start(self) -> None:
        from nas.models import count_parameters

        n = count_parameters(self.model)
        self.run.log(f"training {self.args.get('arch', type(self.model).__name__)}: {n:,} parameters, "
                     f"{self.train_idx.numel()} train / {self.val_idx.numel()} val / {self.test_idx.numel()} test "
                     f"images, crop {self.crop}, device {self.device}"
                     f"{' x' + str(self.dist.world_size) if self.dist.enabled else ''}, "
                     f"amp {'bf16' if self.amp else 'off'}, channels_last {self.channels_last}"
                     + (" (off: CPU bf16 gets dilated-conv gradients wrong in channels_last)"
                        if self.cpu_amp_layout_note else "")
                     + (" (off: narrow stride-2 1x1 convs crash multi-threaded CPU backward in channels_last)"
                        if self.cpu_threads_layout_note else ""))

    def _train_epoch(self, epoch: int) -> None:
        cfg = self.cfg
        self.model.train()
        self.model.drop_path_prob = self.drop_path_at(epoch)
        if self.step == 0:
            self.epoch_start_gen = self.sample_gen.get_state()
            self._reset_sums()
            self.epoch_time = 0.0
        else:  # resumed mid-epoch: draw the same permutation again and skip the done batches
            self.sample_gen.set_state(self.epoch_start_gen)
        t0 = time.perf_counter()
        bar = self._progress(epoch)
        for step_in, idx in enumerate(self.sampler.iter_from(self.step), start=self.step):
            if idx.numel() < 2 * self.dist.world_size:
                # a last batch too small for batch norm on every rank: skipped on all ranks alike
                self.step = step_in + 1
                continue
            self.train_step(epoch, step_in, shard_batch(idx, self.dist))
            self.step = step_in + 1
            if bar is not None:
                bar.update(1)
            if self.step % cfg.log_interval == 0:  # the loop's only host sync
                loss, correct, n, n_bad = self.sums.tolist()
                if n_bad:
                    self._check_finite(epoch)
                if bar is not None and n:
                    bar.set_postfix(loss=f"{loss / n:.3f}", acc=f"{100 * correct / n:.1f}")
            check_stop = (not self.dist.enabled) or self.step % cfg.log_interval == 0
            if check_stop and self.step < self.steps_per_epoch and self._stop_requested():
                self.epoch_time += time.perf_counter() - t0
                self._interrupt(epoch)
        if bar is not None:
            bar.close()
        self.epoch_time += time.perf_counter() - t0

    def _progress(self, epoch: int):
        show = self.cfg.progress if self.cfg.progress is not None else sys.stderr.isatty()
        if not (show and self.dist.is_main):
            return None
        try:
            from tqdm import tqdm
        except ImportError:  # pragma: no cover
            return None
        return tqdm(total=self.steps_per_epoch, initial=self.step, desc=f"epoch {epoch + 1}/{self.cfg.epochs}",
                    leave=False, dynamic_ncols=True)

    def _sync_buffers(self) -> None:
        """DDP: average batch-norm running statistics over ranks (each rank's last
        forward updated them from its own shard), so every rank evaluates and saves
        the same model."""
        if not self.dist.enabled:
            return
        with torch.no_grad():
            for b in self.model.buffers():
                if b.is_floating_point():
                    all_reduce_sum(b)
                    b.div_(self.dist.world_size)

    def _end_epoch(self, epoch: int) -> None:
        cfg = self.cfg
        all_reduce_sum(self.sums)
        self._sync_buffers()
        n_bad = self._check_finite(epoch)
        if n_bad and not self._weights_finite():
            raise FerNasError(f"model weights became non-finite at epoch {epoch + 1} despite skipping "
                              f"{n_bad} batch(es); the last good checkpoint is kept; lower --learning_rate")
        self.skipped_total += n_bad
        loss_sum, correct, n, _ = self.sums.tolist()
        lr = current_lr(self.optimizer)
        row: dict[str, Any] = {
            "epoch": epoch + 1, "lr": lr, "drop_path_prob": self.model.drop_path_prob,
            "train_loss": loss_sum / n if n else float("nan"), "train_acc": 100.0 * correct / n if n else float("nan"),
            "val_loss": "", "val_acc": "", "test_loss": "", "test_acc": "", "skipped_batches": n_bad,
            "time_s": round(self.epoch_time, 3), "images_per_s": round(n / self.epoch_time, 1) if self.epoch_time else "",
        }
        last = epoch + 1 == cfg.epochs
        evaluated = (epoch + 1) % cfg.eval_every == 0 or last
        new_best = False
        if evaluated:
            val = self.evaluate("val") if self.val_idx.numel() else None
            test = self.evaluate("test") if self.test_idx.numel() else None
            if val is not None:
                row.update(val_loss=val["loss"], val_acc=val["acc"])
            if test is not None:
                row.update(test_loss=test["loss"], test_acc=test["acc"])
                if test["acc"] > self.best["best_test_acc"]:
                    self.best.update(best_test_acc=test["acc"], best_test_epoch=epoch + 1)
            # selection score: PublicTest accuracy; with no PublicTest split the latest
            # evaluated epoch is the selected one
            score = val["acc"] if val is not None else float(epoch + 1)
            if score > self.best["score"]:
                new_best = True
                self.best.update(score=score, epoch=epoch + 1, val_acc=val["acc"] if val is not None else None,
                                 val_loss=val["loss"] if val is not None else None,
                                 test_acc=test["acc"] if test is not None else None)
            if cfg.scheduler == "plateau" and val is not None:
                self.scheduler.step(val["acc"])
        if cfg.scheduler != "plateau":
            self.scheduler.step()
        if self.epoch_callback is not None:
            extra = self.epoch_callback(epoch, self) or {}
            row.update(extra)
        self.last_row = row
        # the position moves to the next epoch before anything is saved
        self.epoch, self.step = epoch + 1, 0
        self._reset_sums()
        self.run.append_metrics(row)
        if new_best:
            self.run.save("best.pt", self.state_dict())
        for thr in cfg.snapshot_at:
            if thr not in self.snapshots_done and row["train_acc"] >= thr:
                self.snapshots_done.append(thr)
                name = f"snapshot_train{_thr_name(thr)}.pt"
                self.run.save(name, self.state_dict())
                self.run.log(f"  saved {name} (training accuracy {row['train_acc']:.2f}% >= {_thr_name(thr)}%)",
                             echo=False)
        self.run.save("last.pt", self.state_dict())
        self.run.log(self._epoch_line(row, new_best))

    def _epoch_line(self, row: Mapping[str, Any], new_best: bool) -> str:
        parts = [f"epoch {row['epoch']}/{self.cfg.epochs}", f"lr {row['lr']:.3g}",
                 f"train loss {row['train_loss']:.4f} acc {row['train_acc']:.2f}%"]
        if row["val_acc"] != "":
            parts.append(f"val {row['val_acc']:.2f}%")
        if row["test_acc"] != "":
            parts.append(f"test {row['test_acc']:.2f}%")
        if row["skipped_batches"]:
            parts.append(f"skipped {row['skipped_batches']} non-finite batch(es)")
        parts.append(f"{row['images_per_s']} img/s" if row["images_per_s"] != "" else "")
        return " | ".join(p for p in parts if p) + (" *" if new_best else "")

    def _interrupt(self, epoch: int) -> None:
        """Save the position (mid-epoch or at a boundary) to last.pt and raise
        :class:`RunInterrupted`."""
        if self.step:
            self._check_finite(epoch)
            self.run.save("last.pt", self.state_dict())
        signum = int(getattr(self.stop, "signum", None) or 2)
        where = f"epoch {epoch + 1} step {self.step}/{self.steps_per_epoch}" if self.step else \
            f"the end of epoch {epoch}"
        msg = (f"interrupted at {where}; state saved to "
               f"{self.run.path / 'last.pt'}; continue with --resume {self.run.path}")
        self.run.log(msg, echo=False)
        raise RunInterrupted(signum, msg)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild the model alone, or to continue exactly."""
        from nas.models import count_parameters, model_spec

        rng_ranks = all_gather_objects(get_rng_state()) if self.dist.enabled else None
        aug_ranks = all_gather_objects(self.aug_gen.get_state()) if self.dist.enabled else None
        hook_state = None
        if self.target_hook is not None and hasattr(self.target_hook, "state_dict"):
            hook_state = self.target_hook.state_dict()
        state = {
            "kind": "fer-nas-train",
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "model_spec": model_spec(self.model),
            "classes": self.classes,
            "normalization": {"mean": float(self.mean), "std": float(self.std)},
            "input_size": self.crop,
            "num_params": count_parameters(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "epochs": self.cfg.epochs,
            "drop_path": {"prob": float(self.cfg.drop_path_prob), "offset": self.drop_path_offset,
                          "total": self.drop_path_total, "current": float(getattr(self.model, "drop_path_prob", 0.0))},
            "rng": get_rng_state(),
            "rng_ranks": rng_ranks,
            "generators": {"sample": self.sample_gen.get_state(), "augment": self.aug_gen.get_state(),
                           "augment_ranks": aug_ranks,
                           "sample_epoch_start": self.epoch_start_gen if self.step else None,
                           "device": self.device.type},
            "sums": self.sums.cpu() if self.step else None,
            "sums_ranks": all_gather_objects(self.sums.cpu()) if self.step and self.dist.enabled else None,
            "first_bad": int(self.first_bad) if self.step else -1,
            "epoch_time": getattr(self, "epoch_time", 0.0) if self.step else 0.0,
            "best": dict(self.best),
            "snapshots_done": list(self.snapshots_done),
            "skipped_total": self.skipped_total,
            "metrics": dict(self.last_row),
            "world_size": self.dist.world_size,
            "config": _plain(asdict(self.cfg)),
            "args": _plain(self.args),
            "hook_state": hook_state,
            "toolkit_version": __version__,
        }
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a checkpoint written by :meth:`state_dict` (same config)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        gens = state["generators"]
        same_world = int(state.get("world_size", 1)) == self.dist.world_size
        if gens.get("device", self.device.type) == self.device.type:
            self.sample_gen.set_state(gens["sample"])
            aug = gens.get("augment_ranks") if self.dist.enabled and same_world else None
            self.aug_gen.set_state(aug[self.dist.rank] if aug else gens["augment"])
            if self.step:
                self.epoch_start_gen = gens["sample_epoch_start"]
        elif self.step:
            raise FerNasError(f"{state.get('path', 'checkpoint')}: saved mid-epoch on {gens.get('device')}; "
                              f"resume it on the same kind of device")
        ranks = state.get("rng_ranks")
        set_rng_state(ranks[self.dist.rank] if ranks and same_world and self.dist.enabled else state["rng"])
        self.best = dict(state["best"])
        self.snapshots_done = [float(t) for t in state.get("snapshots_done", [])]
        self.skipped_total = int(state.get("skipped_total", 0))
        self.last_row = dict(state.get("metrics") or {})
        self._reset_sums()
        if self.step and state.get("sums") is not None and same_world:
            sums = state["sums_ranks"][self.dist.rank] if self.dist.enabled else state["sums"]
            self.sums.copy_(sums.to(self.device))
            self.first_bad.fill_(int(state.get("first_bad", -1)))
            self.epoch_time = float(state.get("epoch_time", 0.0))
        dp = state.get("drop_path") or {}
        self.drop_path_offset = float(dp.get("offset", self.drop_path_offset))
        self.drop_path_total = float(dp.get("total", self.drop_path_total))
        if self.target_hook is not None and hasattr(self.target_hook, "load_state_dict") and state.get("hook_state") is not None:
            self.target_hook.load_state_dict(state["hook_state"])
        self.run.truncate_metrics("epoch", self.epoch)

    def resume(self, path: str | Path) -> dict[str, Any]:
        """Load ``path`` (a last.pt or a run folder) and continue from it."""
        p = Path(path)
        state = safe_load(p / "last.pt" if p.is_dir() else p, map_location="cpu")
        self.load_state_dict(state)
        self.run.log(f"resumed from {state.get('path', p)} at epoch {self.epoch + 1} step {self.step}")
        return state

    # ------------------------------------------------------------------ the end
    def finish(self) -> dict[str, Any]:
        """results.json and the summary line (honest selection, best-test labelled)."""
        from nas.models import count_parameters

        b = self.best
        res = {
            "selected_epoch": b["epoch"],
            "selection": "best PublicTest accuracy" if self.val_idx.numel() else "last epoch (no PublicTest split)",
            "val_acc": b["val_acc"],
            "test_acc": b["test_acc"],
            "best_test_acc_for_reference_only": b["best_test_acc"] if b["best_test_epoch"] else None,
            "best_test_epoch_for_reference_only": b["best_test_epoch"],
            "final_train_acc": self.last_row.get("train_acc"),
            "epochs": self.cfg.epochs,
            "tta": self.cfg.tta,
            "params": count_parameters(self.model),
            "arch": self.args.get("arch"),
            "seed": self.cfg.seed,
            "skipped_batches": self.skipped_total,
            "world_size": self.dist.world_size,
            "toolkit_version": __version__,
        }
        if self.run.enabled:
            atomic_write_text(json.dumps(_plain(res), indent=2) + "\n", self.run.file("results.json"))
        self.run.log(summary_line(res))
        return res


def summary_line(res: Mapping[str, Any]) -> str:
    """One line: the result, and the best test figure clearly marked as not a result."""
    def pct(v):
        return "n/a" if v is None else f"{v:.2f}%"
    line = f"result: PrivateTest {pct(res['test_acc'])} at epoch {res['selected_epoch']}"
    if res.get("val_acc") is not None:
        line += f" (selected by PublicTest {pct(res['val_acc'])})"
    else:
        line += f" ({res.get('selection')})"
    if res.get("best_test_epoch_for_reference_only"):
        line += (f"; best PrivateTest {pct(res['best_test_acc_for_reference_only'])} at epoch "
                 f"{res['best_test_epoch_for_reference_only']} (for reference only, not a result)")
    return line + f"; {res['params']:,} parameters, seed {res['seed']}"


class _NullCtx:
    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __enter__(self) -> Any:
        return self.obj

    def __exit__(self, *exc: Any) -> None:
        return None


def _thr_name(t: float) -> str:
    return str(int(t)) if float(t).is_integer() else str(t).replace(".", "p")


def _plain(v: Any) -> Any:
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return v.item()
    return str(v)


@torch.no_grad()
def training_norm(images: torch.Tensor, chunk: int = 8192) -> tuple[float, float]:
    """Mean and standard deviation of uint8 images on the 0–1 scale (float64 sums, chunked)."""
    s = torch.zeros((), dtype=torch.float64, device=images.device)
    s2 = torch.zeros((), dtype=torch.float64, device=images.device)
    for i in range(0, images.shape[0], chunk):
        x = images[i:i + chunk].double()
        s += x.sum()
        s2 += (x * x).sum()
    n = images.numel()
    mean = float(s) / n / 255.0
    var = max(float(s2) / n / 255.0**2 - mean**2, 1e-12)
    return mean, math.sqrt(var)


# ----------------------------------------------------------------------------- reports
def write_run_report(run: RunDir, data: Any, *, checkpoint: str = "best.pt", device: torch.device | str = "cpu",
                     split: str = "PrivateTest", batch_size: int = 256) -> list[Path]:
    """Plots of a finished run from its files: curves from metrics.csv, and from the
    selected checkpoint the confusion matrix, misclassification panel and saliency
    maps on ``split``, plus the cell diagrams when the model has a genotype."""
    from nas.evaluate import checkpoint_norm
    from nas.report import have_matplotlib, write_report

    if not run.enabled or not have_matplotlib():
        return []
    ckpt_path = run.file(checkpoint)
    if not ckpt_path.exists():
        ckpt_path = run.file("last.pt")
    model, ckpt = load_model_from_checkpoint(ckpt_path, device)
    mean, std, crop = checkpoint_norm(ckpt)
    part = data.subset(split)
    if len(part) == 0:
        part = data.subset("PublicTest")
    tta = (ckpt.get("config") or {}).get("tta", "center")
    probs = predict(model, part.images, mean=mean, std=std, crop=crop, tta=tta, batch_size=batch_size) \
        if len(part) else None
    rows = read_csv_rows(run.file("metrics.csv")) if run.file("metrics.csv").exists() else []
    genotype = (ckpt.get("model_spec") or {}).get("genotype")
    return write_report(run.path, model=model, metrics_rows=rows, images=part.images.cpu(), labels=part.labels.cpu(),
                        probs=probs.cpu() if probs is not None else None, classes=list(ckpt.get("classes") or data.classes),
                        mean=mean, std=std, crop=crop, genotype=genotype, split_name=split)
