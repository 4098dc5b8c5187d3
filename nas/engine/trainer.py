"""Training a classifier: the classification objective, model selection and snapshots.

:class:`Trainer` assembles them around the one :class:`~nas.engine.loop.Loop`; it is what
``train_searched.py``, ``relabel_training.py`` and the cross-dataset fine-tuning run::

    step (Classification.step)                   one batch of indices into the uint8 images on the device
        x = BatchAugment(images[idx])             batched, the rank's seeded generator, on the device
        logits(, aux) = model(x)                  bf16 autocast + channels_last on CUDA
        targets = target_hook(...)                relabelling plugs in here
        loss.backward(); clip; guarded step       a non-finite batch changes nothing
    epoch end (callbacks)
        ModelSelection   validate on PublicTest, score PrivateTest, best.pt by PublicTest accuracy,
                         early stopping after --patience epochs without a better PublicTest accuracy
        Snapshots        snapshot_trainXX.pt at the first epoch whose training accuracy reaches XX %

Honest selection: the result is PrivateTest accuracy at the epoch of best PublicTest
accuracy; the best PrivateTest accuracy is logged as such, for reference only.

No host syncs in the step: losses and counts accumulate as device tensors and are read
at log intervals (see :mod:`nas.engine.loop` for resume, signals and the NaN policy).
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nas import __version__
from nas.data.dataset import SPLITS, FERData
from nas.data.ferplus import fes_for_classes, fes_offlabel, fes_smoothing
from nas.engine.evaluate import TTA_MODES, evaluate_split, load_model_from_checkpoint, predict
from nas.engine.loop import NAN_POLICIES, Callback, Loop, Objective, StepContext, StepResult, StopRequest
from nas.engine.session import Session
from nas.engine.optim import OPTIMIZERS, SCHEDULERS, all_fused, check_optimizer_settings, build_optimizer, build_scheduler, current_lr
from nas.runtime.checkpoint import RunDir, atomic_write_text, plain, read_csv_rows
from nas.runtime.device import COMPILE_BACKENDS, COMPILE_MODES, autocast, memory_layout
from nas.runtime.distributed import DistInfo, data_parallel, shard_batch, single_process
from nas.runtime.errors import FerNasError

__all__ = ["run_train", "TrainConfig", "add_train_args", "config_from_args", "check_train_args", "Classification", "ModelSelection", "Snapshots",
           "Trainer", "TargetHook", "write_run_report", "summary_line", "training_norm", "NAN_POLICIES",
           "LABEL_MODES"]

LABEL_MODES = ("fer", "ferplus_majority", "ferplus_soft")
#: Training augmentation: ``default`` (crop, flip, rotation, translation, scale, brightness and
#: contrast jitter) or ``light`` (crop and flip only).
AUGMENTS = ("default", "light")

#: ``target_hook(epoch, step, indices, logits_detached, targets) -> targets``: may rewrite a
#: batch's targets after the forward pass and before the loss (relabelling). ``indices`` index
#: the whole dataset.
TargetHook = Callable[[int, int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------- configuration
@dataclass
class TrainConfig:
    """Everything training needs besides the model and the data. Defaults are the
    reference (Auto-FERNet/DARTS) retraining recipe, written here once (:func:`add_train_args`
    reads them). The rules between flags live in :meth:`__post_init__`, except two that map
    flags onto fields, both in :func:`config_from_args`: ``--labels ferplus_soft`` sets
    ``soft_targets``, and ``--no_auxiliary`` sets ``auxiliary_weight`` to 0."""

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
    fes_smoothing: float = 0.0        # label smoothing whose off-label mass follows the FES row
    fes_matrix: str | None = None     # FES matrix file (None: DEFAULT_FES, FER2013 class order)
    cutout: bool = False
    cutout_length: int = 16
    augment: str = "default"          # default: crop, flip, affine, jitter; light: crop and flip only
    robust: str = "none"              # a noisy-label method (nas.engine.robust)
    robust_lambda: float = 5.0        # eac: weight of the attention consistency
    robust_forget: float = 0.3        # smallloss: the share of each batch dropped once ramped up
    robust_ramp: int = 10             # smallloss: epochs over which that share rises from 0
    crop: int | None = None           # None: model.default_input_size
    tta: str = "center"               # test-time view for validation and test during training
    eval_every: int = 1
    test_curve: bool = True           # False: PrivateTest only where it can be a result (new best, last epoch)
    eval_batch_size: int = 256
    patience: int = 0                 # epochs without a better PublicTest accuracy before stopping (0: never)
    snapshot_at: Sequence[float] = (85.0, 90.0)
    nan_policy: str = "stop"
    log_interval: int = 50
    seed: int = 0
    soft_targets: bool = False        # train on data.soft_labels (FER+ vote distributions)
    amp: bool | None = None           # None: on for CUDA (bf16), off on CPU; True on CPU: CPU bf16
    channels_last: bool | None = None  # None: on (CPU and CUDA) unless a known CPU fault forbids it
    compile: bool = False
    compile_mode: str = "default"     # torch.compile mode; reduce-overhead adds CUDA graphs
    compile_backend: str = "inductor"  # the tests count recompiles with aot_eager (no code generation)
    fused: bool | None = None         # fused optimizer kernels (None: on CUDA), the sync-free path
    progress: bool | None = None      # None: a tqdm bar when stderr is a terminal

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise FerNasError(f"--optimizer {self.optimizer!r}: choose from {', '.join(OPTIMIZERS)}")
        if self.scheduler not in SCHEDULERS:
            raise FerNasError(f"--scheduler {self.scheduler!r}: choose from {', '.join(SCHEDULERS)}")
        if self.tta not in TTA_MODES:
            raise FerNasError(f"--tta {self.tta!r}: choose from {', '.join(TTA_MODES)}")
        for name in ("epochs", "batch_size", "eval_every", "log_interval", "eval_batch_size"):
            if int(getattr(self, name)) < 1:
                raise FerNasError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if int(self.patience) < 0:
            raise FerNasError(f"--patience must be >= 0, got {self.patience}")
        check_optimizer_settings(learning_rate=self.learning_rate, learning_rate_min=self.learning_rate_min,
                                 momentum=self.momentum, weight_decay=self.weight_decay, grad_clip=self.grad_clip)
        for name, ok, want in (("auxiliary_weight", 0.0 <= self.auxiliary_weight < math.inf, ">= 0"),
                               ("cutout_length", int(self.cutout_length) >= 1, ">= 1")):
            if not ok:
                raise FerNasError(f"--{name} must be {want}, got {getattr(self, name)}")
        if self.crop is not None and int(self.crop) < 8:
            raise FerNasError(f"--crop must be at least 8, got {self.crop}")
        if not 0.0 <= self.fes_smoothing < 1.0 or not 0.0 <= self.label_smoothing < 1.0:
            raise FerNasError(f"--label_smoothing and --fes_smoothing must be in [0, 1), got {self.label_smoothing} "
                              f"and {self.fes_smoothing}")
        if self.fes_smoothing > 0 and self.label_smoothing > 0:
            raise FerNasError("--label_smoothing and --fes_smoothing both smooth the targets: choose one")
        from nas.engine.robust import check_robust

        check_robust(self.robust)
        if self.compile_mode not in COMPILE_MODES or self.compile_backend not in COMPILE_BACKENDS:
            raise FerNasError(f"--compile_mode {self.compile_mode!r} / --compile_backend {self.compile_backend!r}: "
                              f"choose from {', '.join(COMPILE_MODES)} / {', '.join(COMPILE_BACKENDS)}")
        if self.augment not in AUGMENTS:
            raise FerNasError(f"--augment {self.augment!r}: choose from {', '.join(AUGMENTS)}")
        if not (0.0 <= self.robust_lambda < math.inf and 0.0 <= self.robust_forget < 1.0 and self.robust_ramp >= 0):
            raise FerNasError(f"--robust_lambda must be >= 0, --robust_forget in [0, 1) and --robust_ramp >= 0, got "
                              f"{self.robust_lambda}, {self.robust_forget} and {self.robust_ramp}")
        if not 0.0 <= self.drop_path_prob < 1.0:
            raise FerNasError(f"--drop_path_prob must be in [0, 1), got {self.drop_path_prob}")
        self.snapshot_at = [float(t) for t in (self.snapshot_at or [])]


def add_train_args(parser: argparse.ArgumentParser, **defaults: Any) -> argparse.ArgumentParser:
    """The training flags of train_searched.py, relabel_training.py and the cross-dataset
    scripts (model flags such as ``--arch``/``--layers`` stay with each app; the run flags
    come from :func:`nas.engine.session.add_session_args`). A flag that is a
    :class:`TrainConfig` field takes its default from the dataclass (the defaults are written
    once, there); ``defaults`` overrides a flag's default for one stage, e.g.
    ``learning_rate=0.02272721``."""
    from nas.runtime.cli import config_flag_adder, float_list

    # flags already on the parser (e.g. --labels/--ferplus from nas.data.add_data_args) are left out
    add = config_flag_adder(parser.add_argument_group("training"), TrainConfig, defaults,
                            skip=parser._option_string_actions)

    add("--batch_size", type=int, help="per-process batch size")
    add("--learning_rate", type=float, help="initial learning rate")
    add("--learning_rate_min", type=float, help="cosine schedule floor / plateau minimum")
    add("--momentum", type=float, help="SGD momentum")
    add("--weight_decay", type=float, help="L2 weight decay")
    add("--epochs", type=int, help="epochs (the length of the cosine schedule)")
    add("--optimizer", choices=OPTIMIZERS, help="sgd (momentum), nesterov or adam")
    add("--scheduler", choices=SCHEDULERS[:2],
        help="cosine per epoch to --learning_rate_min, or plateau (x0.75 after 5 epochs without a better PublicTest accuracy)")
    add("--grad_clip", type=float, help="max gradient norm (0: no clipping)")
    add("--auxiliary_weight", type=float, help="weight of the auxiliary head's loss")
    add("--cutout", action="store_true", help="cutout augmentation (a square of --cutout_length)")
    add("--cutout_length", type=int, help="cutout square side (pixels)")
    add("--augment", choices=AUGMENTS,
        help="default: random crop, flip, rotation, translation, scale, brightness/contrast jitter; light: crop "
             "and flip only")
    from nas.engine.robust import ROBUST_METHODS

    add("--robust", choices=ROBUST_METHODS,
        help="noisy-label training: eac (erasing attention consistency; genotype networks), smallloss (drop the "
             "largest-loss share of each batch); combines with relabelling (docs/robust.md)")
    add("--robust_lambda", type=float, help="eac: weight of the flip attention consistency")
    add("--robust_forget", type=float,
        help="smallloss: share of each batch dropped once ramped up (the noise rate you suspect)")
    add("--robust_ramp", type=int, help="smallloss: epochs over which the dropped share rises from 0")
    add("--drop_path_prob", type=float,
        help="drop-path probability reached at the last epoch (rises linearly from 0)")
    add("--label_smoothing", type=float, help="cross-entropy label smoothing")
    add("--fes_smoothing", type=float,
        help="label smoothing whose off-label mass follows the label's FES row instead of being uniform")
    add("--fes_matrix",
        help="JSON 7x7 FES matrix (fernas fes --out) or FER+ votes CSV, for --fes_smoothing and relabelling "
             "(default: nas.fes.DEFAULT_FES)")
    add("--seed", type=int, help="seed of the weights and of every random stream of the run")
    add("--labels", default="fer", choices=LABEL_MODES,
        help="training targets: FER2013 labels, FER+ majority, or FER+ vote distributions (needs --ferplus)")
    add("--ferplus", default=None, help="FER+ votes file fer2013new.csv (for --labels ferplus_*)")
    add("--tta", choices=TTA_MODES, help="test-time view for validation/test")
    add("--eval_every", type=int, help="validate every N epochs (and at the last)")
    add("--test_curve", type=_bool,
        help="score PrivateTest at every validation (True), or only where it can be a result: an epoch with a "
             "new best PublicTest and the last one (False: the same results, no PrivateTest curve, faster)")
    add("--patience", type=int,
        help="stop after N epochs without a better PublicTest accuracy (0: train every epoch)")
    add("--snapshot_at", type=float_list,
        help="save snapshot_trainXX.pt at the first epoch whose training accuracy reaches XX %%")
    add("--compile", type=_bool, nargs="?", const=True, help="torch.compile the model")
    add("--compile_mode", choices=COMPILE_MODES,
        help="torch.compile mode: default, reduce-overhead (CUDA graphs: static shapes, the GPU step replayed), "
             "max-autotune")
    add("--compile_backend", choices=COMPILE_BACKENDS,
        help="inductor (generated kernels), or aot_eager / eager (no code generation: to check graphs and recompiles)")
    add("--fused", type=_bool,
        help="fused optimizer kernels, which skip a non-finite step without a host sync (default: on CUDA; on CPU "
             "they are slower)")
    add("--plots", type=_bool, default=True, help="write the PNG reports at the end (needs matplotlib)")
    return parser


def _bool(v: str) -> bool:
    from nas.runtime.cli import str2bool

    return str2bool(v)


def check_train_args(args: argparse.Namespace, **overrides: Any) -> None:
    """The training flags' one-line errors (:class:`TrainConfig`'s checks), for a stage to call
    before its run folder exists."""
    overrides.setdefault("drop_path_prob", getattr(args, "drop_path_prob", None) or 0.0)
    config_from_args(args, **overrides)


def config_from_args(args: argparse.Namespace | Mapping[str, Any], **overrides: Any) -> TrainConfig:
    """A :class:`TrainConfig` from parsed flags (unknown keys ignored; the two flag-to-field
    rules are documented on :class:`TrainConfig`)."""
    d = dict(vars(args) if isinstance(args, argparse.Namespace) else args)
    if "labels" in d and "soft_targets" not in d:
        d["soft_targets"] = d["labels"] == "ferplus_soft"
    names = {f.name for f in fields(TrainConfig)}
    kw = {k: v for k, v in d.items() if k in names}
    if not d.get("auxiliary", True):
        kw["auxiliary_weight"] = 0.0
    kw.update(overrides)
    return TrainConfig(**kw)


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


# ----------------------------------------------------------------------------- the objective
class Classification(Objective):
    """Cross-entropy training of ``model`` on the Training split of ``data`` (an
    :class:`~nas.engine.loop.Objective`): augmentation, optional auxiliary head, label
    smoothing or soft targets, gradient clipping, drop-path schedule.

    Args:
        norm: ``(mean, std)`` on the 0–1 scale; default: computed on the Training split.
        target_hook: see :data:`TargetHook`.
        drop_path_offset / drop_path_total: drop-path probability at epoch ``e`` is
            ``drop_path_prob * (offset + e) / total`` (``total`` defaults to ``epochs``), so
            a run continued from a snapshot keeps the schedule where it left off.
    """

    kind = "fer-nas-train"
    sum_names = ("loss", "correct", "n")

    def __init__(self, model: nn.Module, data: FERData, cfg: TrainConfig, *, device: torch.device,
                 dist: DistInfo, norm: tuple[float, float] | None = None, target_hook: TargetHook | None = None,
                 drop_path_offset: float = 0.0, drop_path_total: float | None = None) -> None:
        from nas.data.augment import BatchAugment

        self.cfg, self.dist, self.device = cfg, dist, device
        cuda = device.type == "cuda"
        self.amp = cuda if cfg.amp is None else bool(cfg.amp)  # --amp True on CPU: CPU bf16 autocast
        self.channels_last, self.layout_note = memory_layout(model, device, self.amp, cfg.channels_last)
        self.target_hook = target_hook
        self.drop_path_offset = float(drop_path_offset)
        self.drop_path_total = float(drop_path_total or cfg.epochs)

        # -- data: one uint8 tensor on the device; batches are index tensors into it
        self.data = data.to(device)
        self.classes = list(data.classes)
        split = self.data.split.cpu()
        self.train_idx, self.val_idx, self.test_idx = ((split == SPLITS.index(s)).nonzero().flatten() for s in SPLITS)
        if self.train_idx.numel() < 2:
            raise FerNasError(f"{data.source}: the Training split has {self.train_idx.numel()} samples; need at least 2")
        if cfg.soft_targets:
            if self.data.soft_labels is None:
                raise FerNasError("--labels ferplus_soft needs FER+ vote distributions (pass --ferplus fer2013new.csv)")
            self.targets = self.data.soft_labels.float()
        else:
            self.targets = self.data.labels
        if int(self.data.labels[self.train_idx.to(device)].min()) < 0:
            raise FerNasError(f"{data.source}: some Training samples have no label")
        self.mean, self.std = norm if norm is not None else training_norm(self.data.images[self.train_idx.to(device)])
        self.fes_off = None
        if cfg.fes_smoothing > 0:
            self.fes_off = fes_offlabel(torch.from_numpy(fes_for_classes(cfg.fes_matrix, self.classes))).to(device)

        # -- model: the raw module (saved, evaluated), and the one the step calls (DDP / compiled)
        self.model = model.to(device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.crop = int(cfg.crop or getattr(model, "default_input_size", 44))
        has_aux = bool(getattr(model, "auxiliary", False) or getattr(model, "auxiliary_head", None) is not None)
        if cfg.compile and cfg.drop_path_prob > 0 and hasattr(self.model, "drop_path_traced"):
            self.model.drop_path_traced = True  # one graph for the whole drop-path ramp, 0 included
        fwd = data_parallel(self.model, dist, find_unused_parameters=cfg.auxiliary_weight == 0 and has_aux)
        self.fwd = torch.compile(fwd, mode=None if cfg.compile_mode == "default" else cfg.compile_mode,
                                 backend=cfg.compile_backend) if cfg.compile else fwd

        # -- optimisation
        self.optimizer = build_optimizer(self.model, cfg.optimizer, lr=cfg.learning_rate, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay, fused=cfg.fused)
        # a fused optimizer skips a non-finite step on the device: no host sync in the step
        self.sync_free = all_fused(self.optimizer)
        self.scheduler = build_scheduler(self.optimizer, cfg.scheduler, epochs=cfg.epochs,
                                         lr_min=cfg.learning_rate_min)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        light = {"rotate": 0.0, "translate": 0.0, "scale": (1.0, 1.0), "brightness": 0.0, "contrast": 0.0} \
            if cfg.augment == "light" else {}
        self.augment = BatchAugment(crop=self.crop, cutout=cfg.cutout_length if cfg.cutout else 0,
                                    mean=self.mean, std=self.std, **light)
        from nas.engine.robust import check_robust

        check_robust(cfg.robust, self.model, (getattr(self.model, "fernas_spec", None) or {}).get("arch", "the model"))

    def drop_path_at(self, epoch: int) -> float:
        """The drop-path probability at ``epoch``: ramped linearly over the whole schedule (relabelling continues the ramp)."""
        return self.cfg.drop_path_prob * (self.drop_path_offset + epoch) / self.drop_path_total

    # -- the loop's calls ---------------------------------------------------------------
    def epoch_batches(self, epoch: int, generator: torch.Generator) -> list[torch.Tensor]:
        """This epoch's global batches of Training indices (each rank takes its shard in
        :meth:`step`); a last batch too small for batch norm on every rank is left out."""
        from nas.data.loader import BatchSampler

        self.model.train()
        self.model.drop_path_prob = self.drop_path_at(epoch)
        batches = list(BatchSampler(self.train_idx, self.cfg.batch_size * self.dist.world_size, shuffle=True,
                                    generator=generator))
        if batches and batches[-1].numel() < 2 * self.dist.world_size:
            batches.pop()
        return batches

    def step(self, epoch: int, step: int, batch: torch.Tensor, ctx: StepContext) -> StepResult:
        """Forward, loss, backward, clip and (unless non-finite) an optimizer step; all on the device."""
        cfg = self.cfg
        idx = shard_batch(batch, self.dist).to(self.device, non_blocking=True)
        ctx.guard.begin()
        x = self.augment(self.data.images[idx], ctx.augment)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = self.targets[idx]
        if cfg.robust == "eac":
            loss, logits, y = self._eac_loss(epoch, step, idx, x, y, ctx)
        else:
            with autocast(self.device, self.amp):
                out = self.fwd(x)
            logits, aux = (out[0], out[1]) if isinstance(out, (tuple, list)) else (out, None)
            logits = logits.float()
            y = self._targets(epoch, step, idx, logits, y)
            keep = None
            if cfg.robust == "smallloss":
                from nas.engine.robust import forget_rate, small_loss_mask

                per = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing, reduction="none")
                keep = small_loss_mask(per, 1.0 - forget_rate(epoch, cfg.robust_forget, cfg.robust_ramp))
            loss = self._ce(logits, aux, y, keep)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            norm = nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
        else:
            norm = nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])
        bad = ctx.guard.flag(loss, norm)
        ctx.guard.apply(self.optimizer, bad)
        ctx.guard.end(bad)
        hard = y.argmax(1) if y.is_floating_point() else y
        n = loss.new_full((), float(idx.numel()), dtype=torch.float64)  # a fill kernel, not a host-to-device copy
        sums = torch.stack([torch.nan_to_num(loss.detach().double() * n, 0.0, 0.0, 0.0),
                            (logits.detach().argmax(1) == hard).sum().double(), n])
        return StepResult(sums, bad)

    def _targets(self, epoch: int, step: int, idx: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The batch's targets after the relabelling hook and FES smoothing."""
        if self.target_hook is not None:
            y = self.target_hook(epoch, step, idx, logits.detach(), y)
        if self.fes_off is not None:
            y = fes_smoothing(y, self.cfg.fes_smoothing, self.fes_off)
        return y

    def _ce(self, logits: torch.Tensor, aux: torch.Tensor | None, y: torch.Tensor,
            keep: torch.Tensor | None = None) -> torch.Tensor:
        """Cross-entropy of the logits (and the auxiliary head's, weighted), averaged over the
        batch, or over the samples ``keep`` marks (small-loss selection)."""
        cfg = self.cfg

        def ce(z: torch.Tensor) -> torch.Tensor:
            if keep is None:
                return F.cross_entropy(z.float(), y, label_smoothing=cfg.label_smoothing)
            per = F.cross_entropy(z.float(), y, label_smoothing=cfg.label_smoothing, reduction="none")
            return (per * keep).sum() / keep.sum()

        loss = ce(logits)
        if aux is not None and cfg.auxiliary_weight > 0:
            loss = loss + cfg.auxiliary_weight * ce(aux)
        return loss

    def _eac_loss(self, epoch: int, step: int, idx: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                  ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """EAC (:mod:`nas.engine.robust`): the erased batch and its independently erased flip
        through the network, cross-entropy on the first, flip consistency of the class activation
        maps; returns (loss, logits of the first, its targets after the hooks)."""
        from nas.engine.robust import class_activation_maps, flip_consistency, random_erasing

        cfg = self.cfg
        x1 = random_erasing(x, ctx.augment)
        x2 = random_erasing(torch.flip(x, dims=[-1]), ctx.augment)
        if self.channels_last:
            x1 = x1.contiguous(memory_format=torch.channels_last)
            x2 = x2.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.amp):
            logits, aux, f1 = self.fwd(x1, features=True)
            _, _, f2 = self.fwd(x2, features=True)
        logits = logits.float()
        y = self._targets(epoch, step, idx, logits, y)
        loss = self._ce(logits, aux, y)
        head = self.model.classifier
        loss = loss + cfg.robust_lambda * flip_consistency(class_activation_maps(f1, head),
                                                            class_activation_maps(f2, head))
        return loss, logits, y

    def epoch_row(self, epoch: int, sums: Mapping[str, float]) -> dict[str, Any]:
        n = sums["n"]
        return {"lr": current_lr(self.optimizer), "drop_path_prob": self.model.drop_path_prob,
                "train_loss": sums["loss"] / n if n else float("nan"),
                "train_acc": 100.0 * sums["correct"] / n if n else float("nan")}

    def end_epoch(self, epoch: int, row: Mapping[str, Any]) -> None:
        if self.cfg.scheduler == "plateau":
            if row.get("val_acc", "") != "":
                self.scheduler.step(row["val_acc"])
        else:
            self.scheduler.step()

    def evaluate(self, which: str) -> dict[str, float]:
        """Accuracy (%) and loss on ``val`` (PublicTest) or ``test`` (PrivateTest)."""
        idx = (self.val_idx if which == "val" else self.test_idx).to(self.device)
        return evaluate_split(self.model, self.data.images[idx], self.data.labels[idx], mean=self.mean,
                              std=self.std, crop=self.crop, tta=self.cfg.tta, batch_size=self.cfg.eval_batch_size,
                              amp=self.amp, channels_last=self.channels_last, dist_info=self.dist)

    def describe(self) -> str:
        from nas.models import count_parameters

        arch = (getattr(self.model, "fernas_spec", None) or {}).get("arch", type(self.model).__name__)
        return (f"training {arch}: {count_parameters(self.model):,} parameters, {self.train_idx.numel()} train / "
                f"{self.val_idx.numel()} val / {self.test_idx.numel()} test images, crop {self.crop}, device "
                f"{self.device}{' x' + str(self.dist.world_size) if self.dist.enabled else ''}, amp "
                f"{'bf16' if self.amp else 'off'}, channels_last {self.channels_last}{self.layout_note}")

    def epoch_line(self, row: Mapping[str, Any], epochs: int) -> str:
        parts = [f"epoch {row['epoch']}/{epochs}", f"lr {row['lr']:.3g}",
                 f"train loss {row['train_loss']:.4f} acc {row['train_acc']:.2f}%"]
        if row.get("val_acc", "") != "":
            parts.append(f"val {row['val_acc']:.2f}%")
        if row.get("test_acc", "") != "":
            parts.append(f"test {row['test_acc']:.2f}%")
        if row["skipped_batches"]:
            parts.append(f"skipped {row['skipped_batches']} non-finite batch(es)")
        if row["images_per_s"] != "":
            parts.append(f"{row['images_per_s']} img/s")
        return " | ".join(parts)

    def state_dict(self) -> dict[str, Any]:
        """The model as it can be rebuilt alone, and the optimisation state."""
        from nas.models import count_parameters, model_spec

        return {
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "model_spec": model_spec(self.model),
            "classes": self.classes,
            "normalization": {"mean": float(self.mean), "std": float(self.std)},
            "input_size": self.crop,
            # how the data's faces were made (grey conversion, resize), so predict makes them the same way
            "preprocess": plain(self.data.meta.get("preprocess") or {"image_size": self.data.image_size[0]}),
            "num_params": count_parameters(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "drop_path": {"prob": float(self.cfg.drop_path_prob), "offset": self.drop_path_offset,
                          "total": self.drop_path_total, "current": float(getattr(self.model, "drop_path_prob", 0.0))},
            "config": plain(asdict(self.cfg)),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        dp = state.get("drop_path") or {}
        self.drop_path_offset = float(dp.get("offset", self.drop_path_offset))
        self.drop_path_total = float(dp.get("total", self.drop_path_total))


# ----------------------------------------------------------------------------- callbacks
class ModelSelection(Callback):
    """Validation on PublicTest every ``eval_every`` epochs (and at the last), PrivateTest
    scored alongside (with ``test_curve`` off only at a new best and at the epoch that ends
    the run: the selected and last figures are the same, the curve between them is not
    drawn); ``best.pt`` at the best PublicTest accuracy; with ``patience`` the run ends after
    that many epochs without a better one. Without a PublicTest split the latest evaluated
    epoch is the selected one."""

    name = "selection"

    def __init__(self, objective: Classification, patience: int = 0) -> None:
        self.obj, self.patience = objective, int(patience)
        self.best: dict[str, Any] = {"score": -1.0, "epoch": None, "val_acc": None, "val_loss": None,
                                     "test_acc": None, "best_test_acc": -1.0, "best_test_epoch": None}
        # the latest evaluated epoch: with noisy labels the figure at the end of training tells
        # whether the network memorised them, which the selected epoch can hide
        self.last: dict[str, Any] = {"epoch": None, "val_acc": None, "test_acc": None}
        self.new_best = False

    def on_epoch_end(self, loop: Loop, epoch: int, row: dict[str, Any]) -> None:
        obj, cfg = self.obj, self.obj.cfg
        row.update(val_loss="", val_acc="", test_loss="", test_acc="")
        self.new_best = False
        if not ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == loop.epochs):
            return
        val = obj.evaluate("val") if obj.val_idx.numel() else None
        score = val["acc"] if val is not None else float(epoch + 1)
        self.new_best = score > self.best["score"]
        best_epoch = epoch + 1 if self.new_best else int(self.best["epoch"])
        stops = bool(self.patience) and val is not None and epoch + 1 - best_epoch >= self.patience \
            and epoch + 1 < loop.epochs
        wanted = cfg.test_curve or self.new_best or epoch + 1 == loop.epochs or stops
        test = obj.evaluate("test") if obj.test_idx.numel() and wanted else None
        if val is not None:
            row.update(val_loss=val["loss"], val_acc=val["acc"])
        if test is not None:
            row.update(test_loss=test["loss"], test_acc=test["acc"])
            if test["acc"] > self.best["best_test_acc"]:
                self.best.update(best_test_acc=test["acc"], best_test_epoch=epoch + 1)
        self.last = {"epoch": epoch + 1, "val_acc": val["acc"] if val is not None else None,
                     "test_acc": test["acc"] if test is not None else None}
        if self.new_best:
            self.best.update(score=score, epoch=epoch + 1, val_acc=val["acc"] if val is not None else None,
                             val_loss=val["loss"] if val is not None else None,
                             test_acc=test["acc"] if test is not None else None)
        if stops:
            loop.stop_reason = (f"early stop after epoch {epoch + 1}: no better PublicTest accuracy for "
                                f"{self.patience} epoch(s) since epoch {self.best['epoch']}")

    def on_save(self, loop: Loop, row: Mapping[str, Any]) -> None:
        if self.new_best:
            loop.run.save("best.pt", loop.state_dict())

    def epoch_note(self, row: Mapping[str, Any]) -> str:
        return " *" if self.new_best else ""

    def state_dict(self) -> dict[str, Any]:
        return {"best": dict(self.best), "last": dict(self.last)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best = dict(state["best"])
        self.last = dict(state.get("last") or self.last)


class Snapshots(Callback):
    """``snapshot_trainXX.pt`` at the first epoch whose training accuracy reaches XX %
    (the relabelling stage starts from one)."""

    name = "snapshots"

    def __init__(self, thresholds: Sequence[float]) -> None:
        self.thresholds = [float(t) for t in thresholds]
        self.done: list[float] = []

    def on_save(self, loop: Loop, row: Mapping[str, Any]) -> None:
        for thr in self.thresholds:
            if thr not in self.done and row["train_acc"] >= thr:
                self.done.append(thr)
                name = f"snapshot_train{_thr_name(thr)}.pt"
                loop.run.save(name, loop.state_dict())
                loop.run.log(f"  saved {name} (training accuracy {row['train_acc']:.2f}% >= {_thr_name(thr)}%)",
                             echo=False)

    def state_dict(self) -> dict[str, Any]:
        return {"done": list(self.done)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.done = [float(t) for t in state.get("done", [])]


def _thr_name(t: float) -> str:
    return str(int(t)) if float(t).is_integer() else str(t).replace(".", "p")


# ----------------------------------------------------------------------------- the assembly
class Trainer:
    """Trains ``model`` on the Training split of ``data``, validates on PublicTest, scores
    PrivateTest, writes into ``run``: :class:`Classification` with :class:`ModelSelection`,
    :class:`Snapshots` and any ``callbacks`` (e.g. the relabeller) in the one loop.

    ``args`` (the flags) and ``stage`` (the app) go into every checkpoint; ``stop`` is
    anything with ``requested``/``signum`` (default: SIGINT/SIGTERM while :meth:`fit` runs)."""

    def __init__(self, model: nn.Module, data: FERData, cfg: TrainConfig, run: RunDir, *,
                 dist: DistInfo | None = None, device: torch.device | str | None = None,
                 norm: tuple[float, float] | None = None, target_hook: TargetHook | None = None,
                 callbacks: Sequence[Callback] = (), drop_path_offset: float = 0.0,
                 drop_path_total: float | None = None, args: Mapping[str, Any] | None = None,
                 stage: str = "train", stop: StopRequest | None = None) -> None:
        self.dist = dist or single_process(device or "cpu")
        dev = self.dist.device if self.dist.enabled or device is None else torch.device(device)
        self.cfg, self.run, self.args = cfg, run, dict(args or {})
        self.objective = Classification(model, data, cfg, device=dev, dist=self.dist, norm=norm,
                                        target_hook=target_hook, drop_path_offset=drop_path_offset,
                                        drop_path_total=drop_path_total)
        self.selection = ModelSelection(self.objective, cfg.patience)
        self.loop = Loop(self.objective, epochs=cfg.epochs, run=run, dist=self.dist, seed=cfg.seed, device=dev,
                         callbacks=[self.selection, Snapshots(cfg.snapshot_at), *callbacks],
                         nan_policy=cfg.nan_policy, log_interval=cfg.log_interval, progress=cfg.progress,
                         args=self.args, stage=stage, stop=stop)

    # the pieces, for callers that look inside
    model = property(lambda self: self.objective.model)
    optimizer = property(lambda self: self.objective.optimizer)
    train_idx = property(lambda self: self.objective.train_idx)
    targets = property(lambda self: self.objective.targets)
    amp = property(lambda self: self.objective.amp)
    channels_last = property(lambda self: self.objective.channels_last)
    epoch = property(lambda self: self.loop.epoch)

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint the loop would write now (model, optimisation, position, streams)."""
        return self.loop.state_dict()

    def resume(self, path: str | Path) -> dict[str, Any]:
        """Load ``path`` (a last.pt or a run folder) and continue from it."""
        from nas.runtime.checkpoint import safe_load

        p = Path(path)
        state = safe_load(p / "last.pt" if p.is_dir() else p, map_location="cpu")
        self.loop.load_state_dict(state)
        return state

    def fit(self) -> dict[str, Any]:
        """Train from the current position to the last epoch (or an early stop); return
        the results (also written to results.json)."""
        self.loop.fit()
        return self.finish()

    def finish(self) -> dict[str, Any]:
        """results.json and the summary line (honest selection, best-test labelled)."""
        from nas.models import count_parameters

        b = self.selection.best
        obj = self.objective
        res = {
            "selected_epoch": b["epoch"],
            "selection": "best PublicTest accuracy" if obj.val_idx.numel() else "last epoch (no PublicTest split)",
            "val_acc": b["val_acc"],
            "test_acc": b["test_acc"],
            "last_epoch": self.selection.last["epoch"],
            "last_val_acc": self.selection.last["val_acc"],
            "last_test_acc": self.selection.last["test_acc"],
            # without the PrivateTest curve its maximum is over a few epochs: not reported
            "best_test_acc_for_reference_only": b["best_test_acc"] if b["best_test_epoch"] and self.cfg.test_curve
            else None,
            "best_test_epoch_for_reference_only": b["best_test_epoch"] if self.cfg.test_curve else None,
            "final_train_acc": self.loop.last_row.get("train_acc"),
            "epochs": self.cfg.epochs,
            "epochs_trained": self.loop.epoch,
            "stopped_early": self.loop.stop_reason,
            "tta": self.cfg.tta,
            "params": count_parameters(obj.model),
            "arch": self.args.get("arch"),
            "seed": self.cfg.seed,
            "skipped_batches": self.loop.skipped_total,
            "world_size": self.dist.world_size,
            "toolkit_version": __version__,
        }
        if self.run.enabled:
            atomic_write_text(json.dumps(plain(res), indent=2) + "\n", self.run.file("results.json"))
        self.run.log(summary_line(res))
        return res


def summary_line(res: Mapping[str, Any]) -> str:
    """One line: the result, and the best test figure clearly marked as not a result."""
    from nas.runtime.cli import fmt_pct as pct

    line = f"result: PrivateTest {pct(res['test_acc'])} at epoch {res['selected_epoch']}"
    if res.get("val_acc") is not None:
        line += f" (selected by PublicTest {pct(res['val_acc'])})"
    else:
        line += f" ({res.get('selection')})"
    if res.get("last_epoch") and res.get("last_epoch") != res["selected_epoch"] and res.get("last_test_acc") is not None:
        line += f"; at the last epoch ({res['last_epoch']}) PrivateTest {pct(res['last_test_acc'])}"
    if res.get("best_test_epoch_for_reference_only"):
        line += (f"; best PrivateTest {pct(res['best_test_acc_for_reference_only'])} at epoch "
                 f"{res['best_test_epoch_for_reference_only']} (for reference only, not a result)")
    return line + f"; {res['params']:,} parameters, seed {res['seed']}"



# ----------------------------------------------------------------------------- reports
def write_run_report(run: RunDir, data: FERData, *, checkpoint: str = "best.pt", device: torch.device | str = "cpu",
                     split: str = "PrivateTest", batch_size: int = 256) -> list[Path]:
    """Plots of a finished run from its files: curves from metrics.csv, and from the
    selected checkpoint the confusion matrix, misclassification panel and saliency
    maps on ``split``, plus the cell diagrams when the model has a genotype."""
    from nas.engine.evaluate import checkpoint_norm
    from nas.engine.report import have_matplotlib, write_report

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


def run_train(s: Session, data: FERData | None = None) -> dict[str, Any]:
    """The training stage's entry: build ``--arch`` for the data, train it in session ``s`` from its
    position to the end (PublicTest selects, PrivateTest is the result) and write the report
    PNGs; returns the results (``data``: a FERData instead of reading ``--data``)."""
    from nas.data import open_data_from_args
    from nas.models import build_model

    args = s.args
    if data is None:
        data = open_data_from_args(args)  # the reader refuses --labels ferplus_* without FER+ votes
    model = build_model(args.arch, num_classes=len(data.classes), init_channels=args.init_channels,
                        layers=args.layers, auxiliary=args.auxiliary, in_channels=int(data.images.shape[1]),
                        drop_path_prob=args.drop_path_prob)
    trainer = Trainer(model, data, config_from_args(args), s.run, dist=s.dist, args=vars(args), stage="train")
    if s.state is not None:
        trainer.loop.load_state_dict(s.state)
    results = trainer.fit()
    if s.dist.is_main and args.plots:
        for p in write_run_report(s.run, data, device=s.device):
            s.run.log(f"  wrote {p.name}", echo=False)
    return results
