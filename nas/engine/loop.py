"""The one loop: epochs of steps, for every objective the toolkit trains.

Training a classifier, the bilevel architecture search, relabelling and the cross-dataset
fine-tuning are each an :class:`Objective`, a step function plus the state it owns
(model, optimizers, schedules). :class:`Loop` drives any of them and owns what they
share::

    for epoch in range(loop.epoch, epochs):
        batches = objective.epoch_batches(epoch, sample_generator)   # the shared 'sample' stream
        for batch in batches[loop.step:]:                             # a resumed epoch skips done batches
            out = objective.step(epoch, step, batch, ctx)             # forward, backward, guarded updates
            sums += out.sums unless out.bad; skipped += out.bad       # on the device: no host sync
            at each log interval: NaN policy, progress bar, stop request
        all-reduce the sums, average batch-norm statistics over ranks, NaN policy
        row = objective.epoch_row(...); callbacks.on_epoch_end(...); objective.end_epoch(...)
        the position moves on; metrics.csv row; callbacks.on_save(...); last.pt

Position and exact resume: a checkpoint holds the epoch and the step within it, the
'sample' generator's state at the start of the epoch (the batches are drawn again and the
done ones skipped), every rank's augmentation generator, global RNG (dropout, drop-path)
and partial sums, the callbacks' state and the objective's. Resuming gives bit-for-bit the
run that was not interrupted.

Signals: SIGINT/SIGTERM (:class:`GracefulStop`) stop the run after the current step; the
position is saved to ``last.pt`` and :class:`~nas.runtime.errors.RunInterrupted` is raised.
Under DDP the request is all-reduced at log intervals so every rank stops at the same step.

Non-finite steps: a step reports a device flag (loss or gradient norm not finite, the
maximum over ranks) and applies none of its updates when it is set (:class:`UpdateGuard`:
the fused CUDA optimizers take the flag as ``found_inf``, so nothing syncs per step).
``nan_policy="stop"`` raises at the next sync point (every step where the optimizers are not
fused, which read the flag on the host anyway; every ``log_interval`` steps where they are,
the default on CUDA), keeping the last good ``last.pt``;
``"skip_batch"`` counts the step, restores the batch-norm statistics its forward pass
changed, and goes on.
"""
from __future__ import annotations

import signal
import sys
import time
from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence

import torch
from torch import nn

from nas import __version__
from nas.runtime.checkpoint import RunDir, plain
from nas.runtime.distributed import DistInfo, all_gather_objects, all_reduce_max, all_reduce_sum, \
    average_batchnorm_stats
from nas.runtime.errors import FerNasError, RunInterrupted
from nas.runtime.heap import retain_freed_heap
from nas.runtime.seeds import get_rng_state, reseed_global, set_rng_state, stream_generator

__all__ = ["NAN_POLICIES", "Objective", "Callback", "StepResult", "StepContext", "UpdateGuard", "Loop",
           "GracefulStop", "StopRequest", "nonfinite", "weights_finite"]

NAN_POLICIES = ("stop", "skip_batch")


# ----------------------------------------------------------------------------- contracts
@dataclass
class StepResult:
    """What one step hands back: ``sums`` (float64, the objective's ``sum_names``) is
    this batch's contribution to the epoch's sums; ``bad`` (0-dim, 0 or 1, the same on
    every rank) says that the step was not finite and changed nothing."""

    sums: torch.Tensor
    bad: torch.Tensor


@dataclass
class StepContext:
    """What the loop lends a step: the rank's augmentation generator and the update guard."""

    augment: torch.Generator
    guard: "UpdateGuard"


class Objective:
    """A training objective: one step function and the state it owns; subclass it.

    What the loop needs, an objective must give: ``kind`` (names its checkpoints), ``sum_names``
    (the columns of :attr:`StepResult.sums`; one must be ``n``, the samples of a step),
    ``model`` (the module whose batch-norm statistics the loop averages over ranks and checks
    for finiteness), :meth:`epoch_batches`, :meth:`step`, :meth:`state_dict` and
    :meth:`load_state_dict`. The rest is optional: :meth:`epoch_row` defaults to the per-sample
    means of the sums, :meth:`end_epoch` to nothing, and the three display hooks
    (:meth:`describe`, :meth:`epoch_line`, :meth:`progress`) to plain text from the row and sums."""

    kind: str
    sum_names: tuple[str, ...]
    model: nn.Module

    def epoch_batches(self, epoch: int, generator: torch.Generator) -> Sequence[Any]:
        """The epoch's batches, drawn from ``generator`` alone (so they can be drawn again)."""
        raise NotImplementedError

    def step(self, epoch: int, step: int, batch: Any, ctx: StepContext) -> StepResult:
        """Forward, backward and the updates of one batch, guarded by ``ctx.guard``."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue bit for bit (models, optimizers, schedules)."""
        raise NotImplementedError

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""
        raise NotImplementedError

    # -- optional, with defaults ------------------------------------------------------------
    def epoch_row(self, epoch: int, sums: Mapping[str, float]) -> dict[str, Any]:
        """The epoch's metrics columns from its summed step results (default: each sum per sample)."""
        n = max(float(sums["n"]), 1.0)
        return {k: float(v) / n for k, v in sums.items() if k not in ("n", "skipped")}

    def end_epoch(self, epoch: int, row: Mapping[str, Any]) -> None:
        """After the callbacks: schedules and controllers move on (default: nothing)."""

    def describe(self) -> str:
        """The line logged when a run starts (default: the objective and its parameter count)."""
        n = sum(p.numel() for p in self.model.parameters())
        return f"{type(self).__name__}: {n:,} parameters"

    def epoch_line(self, row: Mapping[str, Any], epochs: int) -> str:
        """The line logged after each epoch (default: the row's columns)."""
        cols = [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items() if k != "epoch"]
        return " | ".join([f"epoch {row['epoch']}/{epochs}", *cols])

    def progress(self, sums: Mapping[str, float]) -> dict[str, str]:
        """The progress bar's postfix (default: mean loss and accuracy when the sums hold them)."""
        n = float(sums["n"])
        if not n or "loss" not in sums:
            return {}
        out = {"loss": f"{sums['loss'] / n:.3f}"}
        if "correct" in sums:
            out["acc"] = f"{100 * sums['correct'] / n:.1f}"
        return out


class StopRequest(Protocol):
    """What the loop polls for a stop: ``requested`` (a :class:`GracefulStop`, or a test's flag);
    ``signum``, when present, is the signal the interruption reports."""

    @property
    def requested(self) -> bool:
        """Whether the run should stop at the next step boundary."""


class Callback:
    """Hooks around the epochs. ``on_epoch_end`` adds columns to the epoch's row (and may
    set ``loop.stop_reason`` to end the run early); ``on_save`` runs once the position has
    moved to the next epoch and the row is written (checkpoints written there hold it).
    ``name`` keys the callback's state in checkpoints."""

    name = "callback"

    def on_fit_start(self, loop: "Loop") -> None:
        """Before the first epoch of this process (also when a run resumes)."""

    def on_epoch_end(self, loop: "Loop", epoch: int, row: dict[str, Any]) -> None:
        """After an epoch's evaluation: add columns to ``row``, or set ``loop.stop_reason``."""

    def on_save(self, loop: "Loop", row: Mapping[str, Any]) -> None:
        """After the epoch's row is written and the position has moved on: write files."""

    def epoch_note(self, row: Mapping[str, Any]) -> str:
        """Text added to the epoch's log line (empty by default)."""
        return ""

    def state_dict(self) -> dict[str, Any]:
        """The callback's state for checkpoints (empty by default)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""


# ----------------------------------------------------------------------------- guarded updates
class UpdateGuard:
    """Makes a step's updates conditional on it being finite, without a host sync on CUDA.

    A step calls :meth:`begin` before its forward pass, :meth:`flag` on its losses and
    gradient norms, :meth:`apply` for each optimizer and :meth:`end` last."""

    def __init__(self, model: nn.Module, dist: DistInfo, keep_batchnorm: bool) -> None:
        self.dist = dist
        # The forward pass updates batch-norm running statistics before the loss is known;
        # for a skipped step they are put back, else its NaN activations stay in them.
        self.buffers = [b for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                        for b in m.buffers(recurse=False)] if keep_batchnorm else []
        self._saved: list[torch.Tensor] = []

    def begin(self) -> None:
        """Save the batch-norm buffers before the forward pass (put back by :meth:`end` if the step is bad)."""
        self._saved = [b.clone() for b in self.buffers]

    def flag(self, *values: torch.Tensor) -> torch.Tensor:
        """1.0 when any of ``values`` is not finite on any rank, else 0.0 (a device tensor)."""
        bad = nonfinite(*values)
        if self.dist.enabled:
            all_reduce_max(bad)  # one rank's bad step is skipped everywhere: weights stay equal
        return bad

    @staticmethod
    def apply(optimizer: torch.optim.Optimizer, bad: torch.Tensor) -> None:
        """``optimizer.step()`` unless ``bad``."""
        from nas.engine.optim import set_found_inf, supports_found_inf

        if supports_found_inf(optimizer):
            set_found_inf(optimizer, bad)
            optimizer.step()
        elif not bool(bad):  # reading the flag costs nothing where there is no asynchronous device
            optimizer.step()

    def end(self, bad: torch.Tensor) -> None:
        """Restore the saved batch-norm buffers where ``bad`` (a device tensor) is set; no host sync."""
        for b, old in zip(self.buffers, self._saved):
            b.copy_(torch.where(bad > 0, old, b))
        self._saved = []


def nonfinite(first: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
    """1.0 (a 0-dim float device tensor) when any of the tensors holds a NaN or an infinity, else 0.0."""
    ok = torch.stack([torch.isfinite(v.detach()).all() for v in (first, *rest)]).all()
    return (~ok).float()


def weights_finite(model: nn.Module) -> bool:
    """True when every floating-point parameter and buffer of ``model`` is finite."""
    flags = [torch.isfinite(t).all() for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True


# ----------------------------------------------------------------------------- signals
class GracefulStop:
    """Context manager: SIGINT/SIGTERM set ``requested`` instead of killing the
    process, so a loop can finish its step, save ``last.pt`` and exit cleanly.
    A second signal restores the default behaviour (Ctrl-C twice kills at once).
    Only installs handlers in the main thread."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        """Whether SIGINT or SIGTERM has been received."""
        return self.signum is not None

    def _handler(self, signum, frame):  # noqa: ARG002
        if self.signum is not None:
            signal.signal(signum, self._old.get(signum, signal.SIG_DFL))
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> "GracefulStop":
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, getattr(signal, "SIGTERM", None)):
                if sig is not None:
                    self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


# ----------------------------------------------------------------------------- the loop
class Loop:
    """Drives ``objective`` for ``epochs`` epochs, writing into ``run``.

    Args:
        seed: the run's ``--seed``; the loop's 'sample' and 'augment' streams and the
            global RNG of each rank (dropout) derive from it (:mod:`nas.runtime.seeds`).
        device: where the augmentation generator lives (the data's device).
        nan_policy: ``stop`` or ``skip_batch`` (see the module docstring).
        log_interval: steps between host syncs (progress bar, NaN check on CUDA, DDP stop).
        progress: a tqdm bar per epoch (None: when stderr is a terminal).
        args: the run's flags, stored in every checkpoint (resume takes them back).
        stage: the app that runs the loop (``train``, ``search`` ...), recorded so that a
            resume goes through the same app.
        stop: anything with ``requested`` (and ``signum``); default a :class:`GracefulStop`
            installed while :meth:`fit` runs.
    """

    def __init__(self, objective: Objective, *, epochs: int, run: RunDir, dist: DistInfo, seed: int,
                 device: torch.device | str = "cpu", callbacks: Sequence[Callback] = (), nan_policy: str = "stop",
                 log_interval: int = 50, progress: bool | None = None, args: Mapping[str, Any] | None = None,
                 stage: str = "", stop: StopRequest | None = None) -> None:
        if nan_policy not in NAN_POLICIES:
            raise FerNasError(f"--nan_policy {nan_policy!r}: choose from {', '.join(NAN_POLICIES)}")
        if int(epochs) < 1 or int(log_interval) < 1:
            raise FerNasError(f"epochs ({epochs}) and --log_interval ({log_interval}) must be at least 1")
        self.objective, self.callbacks = objective, list(callbacks)
        self.epochs, self.run, self.dist = int(epochs), run, dist
        self.device = torch.device(device)
        self.nan_policy, self.log_interval, self.progress_flag = nan_policy, int(log_interval), progress
        self.args, self.stage = dict(args or {}), stage
        self.stop = stop
        # per-rank streams: the batch order is shared (ranks slice one global batch), crops,
        # flips and dropout masks are each rank's own
        self.sample_gen = stream_generator(seed, "sample", "cpu")
        self.augment_gen = stream_generator(seed, "augment", self.device, dist.rank)
        reseed_global(seed, "dropout", dist.rank)
        self.guard = UpdateGuard(objective.model, dist, keep_batchnorm=nan_policy == "skip_batch")
        # Without found_inf-capable (fused) optimizers the guard reads the flag on the host each
        # step anyway, and the NaN check costs nothing more there; with them, the step has no
        # host sync and the check waits for the log interval (the default on CUDA).
        self.sync_free = bool(getattr(objective, "sync_free", self.device.type == "cuda"))
        self.ctx = StepContext(augment=self.augment_gen, guard=self.guard)
        self.n_index = list(objective.sum_names).index("n")
        # -- position and bookkeeping (all of it goes into checkpoints)
        self.epoch = 0              # epochs completed
        self.step = 0               # batches done in the current epoch
        self.global_step = 0        # batches done in all
        self.steps_in_epoch = 0
        self.epoch_start_gen: torch.Tensor = self.sample_gen.get_state()
        self.epoch_time = 0.0
        self.skipped_total = 0
        self.stop_reason: str | None = None
        self.last_row: dict[str, Any] = {}
        self._reset_sums()

    # ------------------------------------------------------------------ helpers
    def _reset_sums(self) -> None:
        # the objective's sums, then the count of skipped steps (float64: counts stay exact)
        self.sums = torch.zeros(len(self.objective.sum_names) + 1, dtype=torch.float64, device=self.device)
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=self.device)

    def sums_dict(self) -> dict[str, float]:
        """The epoch's sums so far (a host sync), by name; ``skipped`` counts skipped steps."""
        values = self.sums.tolist()
        return {**dict(zip(self.objective.sum_names, values)), "skipped": values[-1]}

    @property
    def finished(self) -> bool:
        """Whether every epoch has run or a callback asked the run to stop."""
        return self.epoch >= self.epochs or self.stop_reason is not None

    # ------------------------------------------------------------------ one step
    def run_step(self, epoch: int, step: int, batch: Any) -> StepResult:
        """One step of the objective, its result added to the epoch's sums (on the device)."""
        out = self.objective.step(epoch, step, batch, self.ctx)
        good = 1.0 - out.bad.double()
        self.sums += torch.cat([out.sums.double() * good, out.bad.double().reshape(1)])
        self.first_bad = torch.where((self.first_bad < 0) & (out.bad > 0),
                                     torch.full_like(self.first_bad, step), self.first_bad)
        return out

    def _check_finite(self, epoch: int) -> int:
        """Sync point: how many steps of this epoch were skipped; under ``stop`` any is an
        error (nothing of this epoch is saved)."""
        n_bad = int(round(float(self.sums[-1])))
        if n_bad and self.nan_policy == "stop":
            last = self.run.file("last.pt")
            kept = f"the last good checkpoint is kept ({last})" if last.exists() else "no checkpoint yet"
            raise FerNasError(f"non-finite loss at epoch {epoch + 1} step {int(self.first_bad) + 1}; stopped, {kept}; "
                              "try a lower --learning_rate, --grad_clip, or --nan_policy skip_batch")
        return n_bad

    def _stop_requested(self) -> bool:
        """Single process: a Python flag. DDP: every rank must stop at the same step, so the
        flags are all-reduced (called at log intervals only)."""
        local = self.stop is not None and bool(self.stop.requested)
        if not self.dist.enabled:
            return local
        flag = torch.full((1,), 1.0 if local else 0.0, device=self.device)
        all_reduce_max(flag)
        return bool(flag.item())

    # ------------------------------------------------------------------ the loop
    def fit(self) -> None:
        """Run from the current position to the last epoch (or an early stop). Raises
        :class:`RunInterrupted` after saving ``last.pt`` when a stop is requested."""
        # a CPU step's temporaries otherwise make glibc shrink and regrow its heap: measured on
        # a cnn_shallow step (batch 64, 100-145 ms), 16-22 ms of system time, 0-6 ms with this
        # (nas.runtime.heap)
        retain_freed_heap()
        own = self.stop is None
        if own:
            self.stop = GracefulStop().__enter__()
        try:
            if self.epoch == 0 and self.step == 0:
                self.run.log(self.objective.describe())
                for cb in self.callbacks:
                    cb.on_fit_start(self)
            elif not self.finished:
                self.run.log(f"resumed at epoch {self.epoch + 1}{f' step {self.step}' if self.step else ''}")
            while not self.finished:
                self._train_epoch(self.epoch)
                self._end_epoch(self.epoch)
                if not self.finished and self._stop_requested():
                    self._interrupt()  # last.pt of this boundary is already written
            if self.stop_reason:
                self.run.log(self.stop_reason)
        finally:
            if own:
                self.stop.__exit__(None, None, None)
                self.stop = None

    def _train_epoch(self, epoch: int) -> None:
        if self.step == 0:
            self.epoch_start_gen = self.sample_gen.get_state()
            self._reset_sums()
            self.epoch_time = 0.0
        else:  # resumed mid-epoch: draw the same batches again and skip the done ones
            self.sample_gen.set_state(self.epoch_start_gen)
        batches = self.objective.epoch_batches(epoch, self.sample_gen)
        self.steps_in_epoch = len(batches)
        if self.steps_in_epoch == 0:
            raise FerNasError(f"epoch {epoch + 1} has no batch: the batch size exceeds the training data")
        every_step = not self.sync_free
        self.run.worked = True  # an error from here on is the run's, not its input's: keep the folder
        bar = self._progress_bar(epoch)
        t0 = time.perf_counter()
        try:
            for step in range(self.step, self.steps_in_epoch):
                self.run_step(epoch, step, batches[step])
                self.step, self.global_step = step + 1, self.global_step + 1
                at_interval = self.step % self.log_interval == 0
                if every_step or at_interval:
                    self._check_finite(epoch)
                if bar is not None:
                    bar.update(1)
                    if at_interval:
                        bar.set_postfix(self.objective.progress(self.sums_dict()))
                if (not self.dist.enabled or at_interval) and self.step < self.steps_in_epoch \
                        and self._stop_requested():
                    self.epoch_time += time.perf_counter() - t0
                    self._interrupt()
        finally:
            if bar is not None:
                bar.close()
        self.epoch_time += time.perf_counter() - t0

    def _progress_bar(self, epoch: int):
        show = self.progress_flag if self.progress_flag is not None else sys.stderr.isatty()
        if not (show and self.dist.is_main):
            return None
        from tqdm import tqdm

        return tqdm(total=self.steps_in_epoch, initial=self.step, desc=f"epoch {epoch + 1}/{self.epochs}",
                    leave=False, dynamic_ncols=True)

    def _end_epoch(self, epoch: int) -> None:
        all_reduce_sum(self.sums)
        average_batchnorm_stats(self.objective.model, self.dist)  # each rank's forwards saw its own shard
        n_bad = self._check_finite(epoch)
        if n_bad and not weights_finite(self.objective.model):
            raise FerNasError(f"model weights became non-finite at epoch {epoch + 1} despite skipping {n_bad} "
                              "batch(es); the last good checkpoint is kept; lower --learning_rate")
        self.skipped_total += n_bad
        sums = self.sums_dict()
        row: dict[str, Any] = {"epoch": epoch + 1, **self.objective.epoch_row(epoch, sums)}
        for cb in self.callbacks:
            cb.on_epoch_end(self, epoch, row)
        n = sums["n"]
        row.update(skipped_batches=n_bad, time_s=round(self.epoch_time, 3),
                   images_per_s=round(n / self.epoch_time, 1) if self.epoch_time > 0 else "")
        self.objective.end_epoch(epoch, row)
        self.last_row = row
        # the position moves to the next epoch before anything is saved
        self.epoch, self.step = epoch + 1, 0
        self._reset_sums()
        self.run.append_metrics(row)
        for cb in self.callbacks:
            cb.on_save(self, row)
        self.run.save("last.pt", self.state_dict())
        self.run.log(self.objective.epoch_line(row, self.epochs) + "".join(cb.epoch_note(row) for cb in self.callbacks))

    def _interrupt(self) -> None:
        """Save the position (mid-epoch or at a boundary) to last.pt and raise RunInterrupted."""
        if self.step:
            self._check_finite(self.epoch)
            self.run.save("last.pt", self.state_dict())
        signum = int(getattr(self.stop, "signum", None) or signal.SIGINT)
        where = (f"epoch {self.epoch + 1} step {self.step}/{self.steps_in_epoch}" if self.step
                 else f"the end of epoch {self.epoch}")
        msg = f"interrupted at {where}; state saved to {self.run.file('last.pt')}; continue with --resume {self.run.path}"
        self.run.log(msg, echo=False)
        raise RunInterrupted(signum, msg)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The objective's state, the callbacks' and the loop's: everything to continue
        exactly. Under DDP a collective (every rank's streams and sums are gathered)."""
        per_rank = all_gather_objects({"rng": get_rng_state(), "augment": self.augment_gen.get_state(),
                                       "sums": self.sums.cpu() if self.step else None})
        return {
            "kind": self.objective.kind,
            **self.objective.state_dict(),
            "epoch": self.epoch, "step": self.step, "global_step": self.global_step, "epochs": self.epochs,
            "loop": {"sample": self.sample_gen.get_state(), "sample_epoch_start": self.epoch_start_gen,
                     "ranks": per_rank, "first_bad": int(self.first_bad) if self.step else -1,
                     "epoch_time": self.epoch_time if self.step else 0.0, "skipped_total": self.skipped_total,
                     "stop_reason": self.stop_reason, "device": self.device.type},
            "callbacks": {cb.name: cb.state_dict() for cb in self.callbacks},
            "metrics": dict(self.last_row),
            "world_size": self.dist.world_size,
            "args": plain(self.args),
            "stage": self.stage,
            "toolkit_version": __version__,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a checkpoint that :meth:`state_dict` wrote (same objective and flags)."""
        where = state.get("path", "checkpoint")
        if state.get("kind") != self.objective.kind:
            raise FerNasError(f"{where}: not a {self.objective.kind} checkpoint (kind {state.get('kind')!r})")
        self.objective.load_state_dict(state)
        lp = state["loop"]
        self.epoch, self.step, self.global_step = int(state["epoch"]), int(state["step"]), int(state["global_step"])
        same_world = int(state.get("world_size", 1)) == self.dist.world_size
        if self.step and not same_world:
            raise FerNasError(f"{where}: saved mid-epoch by {state.get('world_size')} process(es); resume it with "
                              "as many, or from a checkpoint at an epoch boundary")
        if self.step and lp.get("device") != self.device.type:
            raise FerNasError(f"{where}: saved mid-epoch on {lp.get('device')}; resume it on the same kind of device")
        mine = lp["ranks"][self.dist.rank if same_world else 0]
        self.sample_gen.set_state(lp["sample"])
        self.epoch_start_gen = lp["sample_epoch_start"]
        if lp.get("device") == self.device.type:
            self.augment_gen.set_state(mine["augment"])
        set_rng_state(mine["rng"])
        self.skipped_total = int(lp.get("skipped_total", 0))
        self.stop_reason = lp.get("stop_reason")
        self.last_row = dict(state.get("metrics") or {})
        self._reset_sums()
        if self.step:
            self.sums.copy_(mine["sums"].to(self.device))
            self.first_bad.fill_(int(lp.get("first_bad", -1)))
            self.epoch_time = float(lp.get("epoch_time", 0.0))
        saved = state.get("callbacks") or {}
        for cb in self.callbacks:
            if cb.name in saved:
                cb.load_state_dict(saved[cb.name])
        # rows written after this checkpoint belong to a future that did not happen
        self.run.truncate_metrics("epoch", self.epoch)

