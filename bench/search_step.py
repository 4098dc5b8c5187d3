"""Throughput and memory of one architecture-search step, against the naive baseline.

    python bench/search_step.py [--device cpu|cuda|auto] [--unrolled] [--quick] [--batch_size 24]
                                [--init_channels 16] [--layers 8] [--size 44] [--steps 3] [--threads N]
                                [--memory_batch 96]

One step = the architecture update on one batch plus the weight update on another
(:func:`nas.search.searcher.search_step`), on the SGAS supernet (Auto-FERNet space) at three
points of a search: ``start`` (no edge decided), ``mid`` (4 of 8 decisions per cell
type made, the nodes concerned pruned) and ``late`` (all decisions made).

* ``fast``: the toolkit's path: decided edges run only their op, pruned edges and
  ``none`` ops run nothing; on CUDA bf16 autocast and channels_last.
* ``naive``: every op of every edge computed (decisions applied through one-hot
  weights, as a DARTS supernet does), fp32, contiguous tensors.
* ``pc4`` (start only): the fast path with PC-DARTS partial channels K=4;
  ``fast_channels_last`` (start, CPU only): the fast path in channels_last.

Figures per variant: images/s (training images per second: batch / step time, the
best of ``--steps`` timed rounds after two warm-up steps; the variants of a row are
timed in alternation so that they share the machine's load), ``saved_mb`` (bytes of
the tensors autograd saves for backward in one step: the activation memory that
decides whether a batch fits, measured the same way on every device) and, on CUDA,
``peak_mb`` (``torch.cuda.max_memory_allocated``). ``speedup``: the median over the
rounds of naive / fast step time within a round (the variants go ABBA; a within-round
ratio cancels the load drift of a shared machine); ``speedup_of_bests`` the ratio of
the best images/s; ``speedup_cpu_time`` the same median on this process's CPU time
(with one torch thread: the work of a step, whatever other jobs take of the cores).
``memory``: the activation memory of one step at ``--memory_batch`` (96) with and
without ``--partial_channels 4`` (``start``: nothing decided, the heaviest point).
Prints one JSON document; :func:`run` returns it for ``bench/run.py``.
"""
from __future__ import annotations

import argparse
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from nas.search.architect import Architect
from nas.runtime.cli import ArgumentParser, run as cli_run
from nas.search.searcher import search_step
from nas.search.supernet import PRUNED, SearchNetwork, node_edge_ranges
from nas.runtime.device import resolve_device

if __package__ in (None, ""):
    from common import add_out_arg, emit
else:
    from bench.common import add_out_arg, emit

PHASES = ("start", "mid", "late")


def _decide(model: SearchNetwork, phase: str, seed: int = 0) -> None:
    """Put the supernet in the decision state of ``phase`` (deterministic choices:
    the first two inputs of each completed node, a seeded random non-none op)."""
    g = torch.Generator().manual_seed(seed)
    n_ops = len(model.primitives)
    nodes = {"start": 0, "mid": 2, "late": model.steps}[phase]
    for cell in ("normal", "reduce"):
        st = model.edge_state[cell]
        for i, (a, b) in enumerate(node_edge_ranges(model.steps)):
            if i >= nodes:
                break
            for e in range(a, b):
                st[e] = 1 + int(torch.randint(n_ops - 1, (1,), generator=g)) if e < a + 2 else PRUNED


class _SavedBytes:
    """Sum of the storage bytes autograd saves for backward (each storage once), leaving
    out ``resident`` storages (the parameters, held anyway: not activation memory)."""

    def __init__(self, resident: Any = ()) -> None:
        self.seen: set[int] = {p.untyped_storage().data_ptr() for p in resident}
        self.bytes = 0

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        try:
            s = t.untyped_storage()
            key = s.data_ptr()
            if key not in self.seen:
                self.seen.add(key)
                self.bytes += s.nbytes()
        except (RuntimeError, NotImplementedError):
            pass
        return t

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Variant:
    """A supernet, its optimizers and a fixed pair of batches, ready to time steps."""

    def __init__(self, device: torch.device, *, phase: str, naive: bool, unrolled: bool, C: int, layers: int,
                 batch: int, size: int, partial_channels: int = 1, channels_last: bool | None = None,
                 seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.device, self.batch = device, batch
        fast_gpu = device.type == "cuda" and not naive
        cl = fast_gpu if channels_last is None else channels_last
        model = SearchNetwork(C=C, num_classes=7, layers=layers, primitives="auto_fernet",
                              partial_channels=partial_channels, always_compute_all=naive).to(device)
        if cl:
            model = model.to(memory_format=torch.channels_last)
        _decide(model, phase, seed)
        self.amp = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if fast_gpu else None
        self.model = model
        self.arch = Architect(model, unrolled=unrolled, autocast=self.amp)
        self.opt = torch.optim.SGD(model.weight_parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)
        g = torch.Generator(device=device).manual_seed(seed)
        xs = [torch.randn(batch, 1, size, size, device=device, generator=g) for _ in range(2)]
        if cl:
            xs = [x.contiguous(memory_format=torch.channels_last) for x in xs]
        self.xt, self.xa = xs
        self.yt, self.ya = (torch.randint(0, 7, (batch,), device=device, generator=g) for _ in range(2))
        self.times: list[float] = []
        self.cpu_times: list[float] = []  # this process's CPU time: immune to other jobs' time slices
        self.saved_mb = 0.0
        self.saved_pass_mb = 0.0
        self.peak_mb: float | None = None

    def step(self) -> None:
        search_step(self.model, self.arch, self.opt, self.xt, self.yt, self.xa, self.ya, 0.025, 5.0, self.amp)

    def warm_up(self) -> None:
        """One plain step (allocator, kernel choice), then one that counts saved bytes
        and, on CUDA, the peak memory."""
        self.step()
        self.measure_memory()

    def measure_memory(self) -> None:
        """One step that counts the bytes autograd saves (in the architecture step's
        forward passes and in the weight step's, separately: each graph is freed by its
        backward, so the larger of the two bounds what is held at once) and, on CUDA,
        the peak memory."""
        params = list(self.model.parameters())
        arch_saved, w_saved = _SavedBytes(params), _SavedBytes(params)

        def counting(saved: _SavedBytes):
            @contextmanager
            def ctx():
                with saved.hooks(), (self.amp() if self.amp is not None else nullcontext()):
                    yield
            return ctx

        if self.device.type == "cuda":
            _sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        arch_ctx = self.arch.autocast
        self.arch.autocast = counting(arch_saved)
        try:
            search_step(self.model, self.arch, self.opt, self.xt, self.yt, self.xa, self.ya, 0.025, 5.0,
                        counting(w_saved))
        finally:
            self.arch.autocast = arch_ctx
        self.saved_mb = round((arch_saved.bytes + w_saved.bytes) / 2**20, 1)
        self.saved_pass_mb = round(max(arch_saved.bytes, w_saved.bytes) / 2**20, 1)
        if self.device.type == "cuda":
            _sync(self.device)
            self.peak_mb = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)

    def timed_step(self) -> None:
        _sync(self.device)
        t0, c0 = time.perf_counter(), time.process_time()
        self.step()
        _sync(self.device)
        self.times.append(time.perf_counter() - t0)
        self.cpu_times.append(time.process_time() - c0)

    def figures(self) -> dict[str, Any]:
        best = min(self.times)
        out: dict[str, Any] = {"images_per_s": round(self.batch / best, 2), "step_ms": round(1000 * best, 1),
                               "saved_mb": self.saved_mb, "times": [round(t, 4) for t in self.times],
                               "cpu_times": [round(t, 4) for t in self.cpu_times]}
        if self.peak_mb is not None:
            out["peak_mb"] = self.peak_mb
        return out


def measure_pair(device: torch.device, *, phase: str, unrolled: bool, C: int, layers: int, batch: int, size: int,
                 steps: int, extra: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Fast and naive (and ``extra`` variants) timed in alternation, ``steps`` rounds,
    best step of each: paired under the same machine load."""
    kw = dict(phase=phase, unrolled=unrolled, C=C, layers=layers, batch=batch, size=size)
    variants = {"fast": _Variant(device, naive=False, **kw), "naive": _Variant(device, naive=True, **kw)}
    for name, opts in (extra or {}).items():
        variants[name] = _Variant(device, naive=False, **kw, **opts)
    for v in variants.values():
        v.warm_up()
    order = list(variants.values())
    for r in range(steps):
        for v in (order if r % 2 == 0 else order[::-1]):  # ABBA: no variant always goes first
            v.timed_step()
    return {name: v.figures() for name, v in variants.items()}


def paired_speedup(fast: _Variant | dict[str, Any], naive: _Variant | dict[str, Any], key: str = "times") -> float:
    """Median over the timed rounds of naive / fast step time, each pair from the same
    round: on a shared machine the load drifts between rounds, and a ratio within a
    round cancels the drift that a ratio of two separate bests does not. ``key``:
    ``times`` (wall clock) or ``cpu_times`` (this process's CPU time)."""
    tf, tn = (v[key] if isinstance(v, dict) else getattr(v, key) for v in (fast, naive))
    ratios = sorted(n / f for f, n in zip(tf, tn))
    mid = len(ratios) // 2
    return ratios[mid] if len(ratios) % 2 else 0.5 * (ratios[mid - 1] + ratios[mid])


def memory_at_batch(device: torch.device, batch: int, *, C: int, layers: int, size: int,
                    partial_channels: tuple[int, ...] = (1, 4)) -> dict[str, Any]:
    """Activation memory of one first-order step at ``start`` (nothing decided: the
    heaviest point of a search) at ``batch``, per ``--partial_channels`` value:
    ``saved_mb`` (bytes autograd keeps for backward, summed over the step's architecture
    and weight passes), ``saved_largest_pass_mb`` (the larger pass: what must fit at
    once) and, on CUDA, ``peak_mb``."""
    out: dict[str, Any] = {"batch_size": batch, "init_channels": C, "layers": layers, "image_size": size}
    for k in partial_channels:
        v = _Variant(device, phase="start", naive=False, unrolled=False, C=C, layers=layers, batch=batch, size=size,
                     partial_channels=k)
        v.measure_memory()
        fig: dict[str, Any] = {"saved_mb": v.saved_mb, "saved_largest_pass_mb": v.saved_pass_mb}
        if v.peak_mb is not None:
            fig["peak_mb"] = v.peak_mb
        out[f"partial_channels_{k}"] = fig
        del v
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if len(partial_channels) > 1:
        a, b = (out[f"partial_channels_{k}"]["saved_mb"] for k in partial_channels[:2])
        out["saved_ratio"] = round(a / max(b, 1e-9), 2)
    return out


def run(device: str = "cpu", quick: bool = False, *, unrolled: bool | None = None, batch_size: int | None = None,
        init_channels: int | None = None, layers: int | None = None, size: int | None = None,
        steps: int | None = None, memory_batch: int | None = 96) -> dict[str, Any]:
    """The benchmark as a dict. ``quick`` shrinks the supernet (C8, L3, batch 8, 24x24,
    five timed rounds, phases start/late) so that the CPU suite stays short. ``unrolled=None``
    runs first order at every phase plus second order at ``start``; True: second order
    at every phase. ``memory_batch``: also the activation memory at that batch with and
    without ``--partial_channels 4`` (None: skip)."""
    dev = resolve_device(device)
    C = init_channels or (8 if quick else 16)
    L = layers or (3 if quick else 8)
    B = batch_size or (8 if quick else 24)
    size = size or (24 if quick else 44)
    n = steps or 5
    phases = ("start", "late") if quick else PHASES
    configs = [(p, False) for p in phases]
    if unrolled is None:
        configs.append(("start", True))
    elif unrolled:
        configs = [(p, True) for p in phases]
    results = []
    for phase, unr in configs:
        extra = {}
        if phase == "start" and not unr:
            extra["pc4"] = {"partial_channels": 4}
            if dev.type == "cpu" and not quick:
                extra["fast_channels_last"] = {"channels_last": True}
        figs = measure_pair(dev, phase=phase, unrolled=unr, C=C, layers=L, batch=B, size=size, steps=n, extra=extra)
        fast, naive = figs["fast"], figs["naive"]
        row = {"phase": phase, "order": "second" if unr else "first", **figs,
               "speedup": round(paired_speedup(fast, naive), 2),
               "speedup_of_bests": round(fast["images_per_s"] / naive["images_per_s"], 2),
               "speedup_cpu_time": round(paired_speedup(fast, naive, "cpu_times"), 2),
               "saved_memory_ratio": round(naive["saved_mb"] / max(fast["saved_mb"], 1e-9), 2)}
        results.append(row)
    out = {
        "benchmark": "search_step", "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "settings": {"init_channels": C, "layers": L, "batch_size": B, "image_size": size, "timed_steps": n,
                     "search_space": "auto_fernet",
                     "fast": "bf16 autocast + channels_last" if dev.type == "cuda" else "fp32",
                     "naive": "fp32 contiguous, every op of every edge computed"},
        "results": results,
    }
    if memory_batch:
        out["memory"] = memory_at_batch(dev, memory_batch, C=C, layers=L, size=size)
    return out


def get_args_parser() -> ArgumentParser:
    p = ArgumentParser(prog="bench/search_step.py", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--unrolled", action="store_true", help="second order at every phase")
    p.add_argument("--batch_size", type=int, default=None)
    p.add_argument("--init_channels", type=int, default=None)
    p.add_argument("--layers", type=int, default=None)
    p.add_argument("--size", type=int, default=None, help="image size (default 44; 24 with --quick)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per variant (best is reported)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--memory_batch", type=int, default=96,
                   help="also measure activation memory at this batch, with and without --partial_channels 4 (0: skip)")
    add_out_arg(p)
    return p


def main(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    res = run(args.device, args.quick, unrolled=True if args.unrolled else None, batch_size=args.batch_size,
              init_channels=args.init_channels, layers=args.layers, size=args.size, steps=args.steps,
              memory_batch=args.memory_batch or None)
    return emit(res, args, indent=2)


if __name__ == "__main__":
    cli_run(main, get_args_parser())
