"""The device script: everything issue 35 asks of one GPU lease, in one call of at most 8 minutes.

    python bench/gpu.py [--device cuda] [--quick] [--out bench/results-cuda-gpu.json] [--budget_s 420]

1. **FER_V1 C36 L12 training step** at batch 64 / 128 / 256: the reference-style eager fp32 step
   (host batches, unfused SGD, ``.item()`` every step), the trainer's eager step (bf16 autocast +
   channels_last on CUDA), compiled, and compiled with CUDA graphs (``mode="reduce-overhead"``);
   images/s, ms per step, peak memory.
2. **The supernet step** at the paper's settings (auto_fernet space, C16 L8, batch 24, 44×44), first
   and second order, at the start of a search (nothing decided) and after the last decision.
3. **An epoch on 28,709 faces** (FER2013's Training size) of the fastest training variant at its
   best batch, and of the first-order supernet at the start; from them the projected 600-epoch
   retrain and 50-epoch search, against the targets (30 and 20 minutes).

Variants are timed in turns (ABAB), the best round kept; compile and graph capture happen in the
warm-up and are reported separately. The compiled variants are measured at one batch size, the
one where the trainer's eager step was fastest (a compile takes a minute or more on a GPU). On a CPU (``--device cpu --quick``, what the test runs) the
sizes shrink, the compiled variants use the aot_eager backend and CUDA graphs are skipped: the
script runs end to end but its numbers are not the GPU's. Stops adding measurements once
``--budget_s`` is spent (the rest is marked skipped) so that one call fits the lease, and writes
what it has measured to ``--out`` after each measurement (``"partial": true`` until the end), so
that a call killed at the lease's limit still leaves its figures.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from nas.runtime.cli import ArgumentParser, run as cli_run

if __package__ in (None, ""):
    from common import add_out_arg, emit
    import search_step as ss
    import train_step as ts
else:
    from bench import search_step as ss, train_step as ts
    from bench.common import add_out_arg, emit

FER2013_TRAIN = 28_709
TARGETS = {"retrain_600_epochs_min": 30.0, "search_50_epochs_min": 20.0, "train_images_per_s": 10_000}


class Budget:
    """Seconds left of the call; a measurement that would start after it is skipped."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def training(dev: torch.device, quick: bool, budget: Budget, save: Callable[[], None] = lambda: None
             ) -> dict[str, Any]:
    """The FER_V1 step's eager variants at each batch size, then the compiled ones at the batch
    where the trainer's eager step was fastest: each compile costs a minute or more on a GPU, and
    one per variant and batch size would not fit a lease."""
    C, L = (2, 3) if quick else (36, 12)
    batches = (4,) if quick else (64, 128, 256)
    cuda = dev.type == "cuda"
    backend = "inductor" if cuda else "aot_eager"
    kw = dict(init_channels=C, layers=L)
    out: dict[str, Any] = {"arch": "FER_V1", "init_channels": C, "layers": L, "by_batch": {}}
    steps, warmup, rounds = (1, 1, 1) if quick else (20, 5, 3)
    for b in batches:
        if budget.left() < (5 if quick else 30):
            out["by_batch"][str(b)] = {"skipped": "time budget spent"}
            continue
        t0 = time.monotonic()
        variants: dict[str, tuple] = {
            "eager_fp32_reference": (*ts.make_naive("FER_V1", dev, b, **kw), torch.get_num_threads()),
            "eager_trainer": (*ts.make_fast("FER_V1", dev, b, **kw), torch.get_num_threads()),
        }
        res = ts.measure(variants, dev, b, steps=steps, warmup=warmup, rounds=rounds)
        res["setup_s"] = round(time.monotonic() - t0, 1)
        out["by_batch"][str(b)] = res
        del variants
        save()
    eager = [(r["eager_trainer"]["images_per_s"], b) for b, r in out["by_batch"].items() if "eager_trainer" in r]
    if eager:
        b = max(eager)[1]
        compiled = {"compiled": dict(compile=True, compile_backend=backend)}
        if cuda:
            compiled["compiled_graphs"] = dict(compile=True, compile_mode="reduce-overhead")
        else:
            out["by_batch"][b]["compiled_graphs"] = {"skipped": "CUDA graphs need a GPU"}
        for name, flags in compiled.items():
            if budget.left() < (5 if quick else 150):  # a compile and its timing: about two minutes
                out["by_batch"][b][name] = {"skipped": "time budget spent"}
                continue
            t0 = time.monotonic()
            res = ts.measure({name: (*ts.make_fast("FER_V1", dev, int(b), **flags, **kw), torch.get_num_threads())},
                             dev, int(b), steps=steps, warmup=warmup, rounds=rounds)[name]
            res["setup_and_compile_s"] = round(time.monotonic() - t0, 1)  # the warm-up steps compile and capture
            out["by_batch"][b][name] = res
            save()
    best = [(v["images_per_s"], int(b), name) for b, r in out["by_batch"].items() for name, v in r.items()
            if isinstance(v, dict) and "images_per_s" in v]
    if best:
        ips, b, name = max(best)
        out["best"] = {"images_per_s": ips, "batch_size": b, "variant": name}
    return out


def supernet(dev: torch.device, quick: bool, budget: Budget) -> dict[str, Any]:
    """The search step at the start and after the last decision, first and second order."""
    C, L, B, size = (2, 3, 4, 16) if quick else (16, 8, 24, 44)
    out: dict[str, Any] = {"search_space": "auto_fernet", "init_channels": C, "layers": L, "batch_size": B,
                           "image_size": size}
    for unrolled in (False, True):
        for phase in ("start", "late"):
            key = f"{'second' if unrolled else 'first'}_order_{phase}"
            if budget.left() < (5 if quick else 30):
                out[key] = {"skipped": "time budget spent"}
                continue
            r = ss.measure_pair(dev, phase=phase, unrolled=unrolled, C=C, layers=L, batch=B, size=size,
                                steps=1 if quick else 10)
            out[key] = {"fast": r["fast"], "naive": r["naive"]}
    return out


def epochs(dev: torch.device, quick: bool, best: dict[str, Any] | None, search: dict[str, Any],
           budget: Budget) -> dict[str, Any]:
    """An epoch of FER2013's size, measured for training and estimated for the search from its
    step time, and the projections against the targets."""
    n = 64 if quick else FER2013_TRAIN
    out: dict[str, Any] = {"faces": n}
    if best and budget.left() > (5 if quick else 60):
        from nas.engine.trainer import TrainConfig, Trainer
        from nas.runtime.checkpoint import RunDir

        b = best["batch_size"]
        variant = best["variant"]
        cfg = TrainConfig(epochs=1, batch_size=b, cutout=True, progress=False, snapshot_at=[],
                          compile=variant.startswith("compiled"), compile_backend="inductor" if dev.type == "cuda" else "aot_eager",
                          compile_mode="reduce-overhead" if variant == "compiled_graphs" else "default")
        data = ts._synthetic_data(n + 64, "cpu")
        C, L = (2, 3) if quick else (36, 12)
        trainer = Trainer(ts._model("FER_V1", C, L), data, cfg, RunDir("unused", enabled=False), device=dev)
        batches = trainer.objective.epoch_batches(0, torch.Generator().manual_seed(0))
        for i in range(min(3, len(batches))):  # compile and capture before the clock starts
            trainer.loop.run_step(0, i, batches[i])
        _sync(dev)
        t0 = time.perf_counter()
        for i, batch in enumerate(batches):
            trainer.loop.run_step(0, i, batch)
        _sync(dev)
        dt = time.perf_counter() - t0
        per_epoch = dt * FER2013_TRAIN / (len(batches) * b)
        out["train"] = {"variant": variant, "batch_size": b, "epoch_s": round(dt, 2),
                        "images_per_s": round(len(batches) * b / dt, 1),
                        "projected_600_epochs_min": round(600 * per_epoch / 60, 1)}
    first = search.get("first_order_start", {}).get("fast", {})
    late = search.get("first_order_late", {}).get("fast", {})
    if "ms_per_step" in first or "step_ms" in first:
        def ms(v: dict[str, Any]) -> float:
            return float(v.get("ms_per_step", v.get("step_ms")))
        # a search epoch: half of Training trains the weights, half the architecture; each step
        # takes one batch of each, so an epoch is (n / 2) / batch steps; SGAS's epochs run from
        # nothing decided to all decided, so the mean of the two ends is the estimate
        steps = (FER2013_TRAIN / 2) / search["batch_size"]
        mean_ms = (ms(first) + ms(late or first)) / 2
        out["search"] = {"steps_per_epoch": round(steps), "epoch_s_estimate": round(steps * mean_ms / 1000, 1),
                         "projected_50_epochs_min": round(50 * steps * mean_ms / 1000 / 60, 1),
                         "note": "from the measured step times at the start and after the last decision"}
    return out


def get_args_parser() -> ArgumentParser:
    p = ArgumentParser(prog="bench/gpu.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (the lease) or cpu (the test's smoke run)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: the CPU smoke test")
    p.add_argument("--budget_s", type=float, default=420.0, help="stop adding measurements after this many seconds")
    add_out_arg(p)
    return p


def main(args: argparse.Namespace) -> dict[str, Any]:
    from nas.runtime.device import resolve_device
    from nas.runtime.errors import FerNasError

    if args.budget_s <= 0:
        raise FerNasError(f"--budget_s {args.budget_s}: must be positive")
    dev = resolve_device(args.device)
    budget = Budget(args.budget_s)
    t0 = time.monotonic()
    doc: dict[str, Any] = {"bench": "gpu", "device": str(dev), "torch": torch.__version__,
                           "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None, "quick": args.quick,
                           "targets": TARGETS}
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True

    def save() -> None:  # what is measured so far, on disk: a call killed at its limit still leaves it
        if args.out:
            emit({**doc, "partial": True, "seconds": round(time.monotonic() - t0, 1)}, args, echo=False)

    doc["training"] = training(dev, args.quick, budget, save)
    save()
    doc["supernet"] = supernet(dev, args.quick, budget)
    save()
    doc["epochs"] = epochs(dev, args.quick, doc["training"].get("best"), doc["supernet"], budget)
    if dev.type == "cuda":
        doc["peak_memory_mb"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
    e = doc["epochs"]
    doc["verdict"] = {
        "train_images_per_s_met": (doc["training"].get("best") or {}).get("images_per_s", 0) >= TARGETS["train_images_per_s"],
        "retrain_600_epochs_met": (e.get("train") or {}).get("projected_600_epochs_min", 1e9) <= TARGETS["retrain_600_epochs_min"],
        "search_50_epochs_met": (e.get("search") or {}).get("projected_50_epochs_min", 1e9) <= TARGETS["search_50_epochs_min"],
        "note": None if dev.type == "cuda" else "a CPU smoke run: not the GPU's figures"}
    doc["seconds"] = round(time.monotonic() - t0, 1)
    return emit(doc, args)


if __name__ == "__main__":
    cli_run(main, get_args_parser())
