"""Training-step throughput: the toolkit's step against a naive reference-style step.

    python bench/train_step.py [--device cpu|cuda] [--arch FER_V1] [--quick]

Both run in the same process on the same model, batch and data:

* fast — ``nas.engine.trainer.Classification.step`` as the trainer runs it: uint8 data resident on
  the device, batched on-device augmentation, bf16 autocast and channels_last on CUDA,
  fused optimizer, non-finite check on the device, no host sync per step.
* naive — the reference implementation's habits: the dataset as float32 on the host,
  each batch copied to the device, fp32 contiguous tensors, unfused SGD, and
  ``loss.item()`` plus an accuracy ``.item()`` after every step.

On CPU the fast path also tries thread counts and channels_last and reports each.
Prints one JSON document; ``ratio`` = fast images/s / naive images/s.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

if __package__ in (None, ""):
    from common import add_out_arg, emit
else:
    from bench.common import add_out_arg, emit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _synthetic_data(n: int, device: str, seed: int = 0):
    """A FERData of random 48×48 uint8 images (throughput does not depend on content)."""
    from nas.data.dataset import FERData

    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 48, 48), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 7, (n,), generator=g)
    split = torch.zeros(n, dtype=torch.int64)
    split[-16:] = 1
    return FERData(images=images, labels=labels, split=split, classes=list("0123456"), format="synthetic",
                   source="bench")


def _model(arch: str, init_channels: int, layers: int):
    from nas.models import build_model

    torch.manual_seed(0)
    return build_model(arch, num_classes=7, init_channels=init_channels, layers=layers, auxiliary=True,
                       drop_path_prob=0.2)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mb(device: torch.device) -> float | None:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return None


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def make_fast(arch: str, device: torch.device, batch_size: int, *, init_channels: int, layers: int,
              channels_last: bool | None = None, amp: bool | None = None, compile: bool = False,
              compile_mode: str = "default", compile_backend: str = "inductor"):
    """The trainer's own step (the loop's ``run_step`` of the classification objective) as a
    closure ``step(i)`` plus its settings."""
    from nas.runtime.checkpoint import RunDir
    from nas.engine.trainer import TrainConfig, Trainer

    data = _synthetic_data(batch_size * 4 + 16, "cpu")
    cfg = TrainConfig(epochs=1, batch_size=batch_size, cutout=True, channels_last=channels_last, amp=amp,
                      compile=compile, compile_mode=compile_mode, compile_backend=compile_backend, progress=False)
    trainer = Trainer(_model(arch, init_channels, layers), data, cfg, RunDir("unused", enabled=False), device=device)
    batches = trainer.objective.epoch_batches(0, torch.Generator().manual_seed(0))[:4]
    trainer.model.drop_path_prob = 0.1

    def step(i: int) -> None:
        trainer.loop.run_step(0, i, batches[i % len(batches)])

    return step, {"amp": trainer.amp, "channels_last": trainer.channels_last, "compile": compile,
                  "compile_mode": compile_mode if compile else None}


def make_naive(arch: str, device: torch.device, batch_size: int, *, init_channels: int, layers: int):
    """A reference-style step: host float32 batches copied to the device, fp32 contiguous,
    unfused SGD, ``.item()`` for loss and accuracy after every step."""
    from nas.data.augment import BatchAugment

    data = _synthetic_data(batch_size * 4 + 16, "cpu")
    model = _model(arch, init_channels, layers).to(device).train()
    model.drop_path_prob = 0.1
    opt = torch.optim.SGD(model.parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4, foreach=False)
    aug = BatchAugment(crop=model.default_input_size, cutout=16)
    g = torch.Generator().manual_seed(0)
    host_batches = []
    for i in range(4):  # augmented on the host ahead of time, as a DataLoader would hand them over
        idx = torch.arange(i * batch_size, (i + 1) * batch_size)
        host_batches.append((aug(data.images[idx], g).float().contiguous(), data.labels[idx]))
    meter = {"loss": 0.0, "correct": 0, "n": 0}

    def step(i: int) -> None:
        x, y = host_batches[i % len(host_batches)]
        x, y = x.to(device), y.to(device)
        out = model(x)
        logits, aux = out if isinstance(out, tuple) else (out, None)
        loss = F.cross_entropy(logits, y)
        if aux is not None:
            loss = loss + 0.4 * F.cross_entropy(aux, y)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0, foreach=False)
        opt.step()
        meter["loss"] += loss.item() * y.numel()
        meter["correct"] += (logits.argmax(1) == y).sum().item()
        meter["n"] += y.numel()

    return step, {"amp": False, "channels_last": False, "compile": False}


def measure(variants: dict[str, tuple], device: torch.device, batch_size: int, steps: int, warmup: int,
            rounds: int) -> dict[str, dict[str, Any]]:
    """Time every variant in turns (ABCABC...) and keep each one's best round, so a
    busy shared machine penalises all of them alike."""
    best: dict[str, dict[str, Any]] = {}
    for name, (step, settings, threads) in variants.items():
        torch.set_num_threads(threads)
        for i in range(warmup):
            step(i)
    _sync(device)
    names = list(variants)
    for k in range(rounds):
        for name in (names if k % 2 == 0 else names[::-1]):  # ABBA: no variant always goes first
            step, settings, threads = variants[name]
            torch.set_num_threads(threads)
            _reset_peak(device)
            t0, c0 = time.perf_counter(), time.process_time()
            for i in range(steps):
                step(i)
            _sync(device)
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            ips = steps * batch_size / dt
            r = best.setdefault(name, {"images_per_s": 0.0, "rounds": [], "cpu_s": [], **settings,
                                       "threads": threads, "peak_mem_mb": None})
            r["rounds"].append(round(ips, 2))
            r["cpu_s"].append(round(dc, 4))
            if ips > r["images_per_s"]:
                r.update(images_per_s=round(ips, 2), step_ms=round(1000 * dt / steps, 1))
            peak = _peak_mb(device)
            if peak is not None:
                r["peak_mem_mb"] = max(peak, r["peak_mem_mb"] or 0.0)
    return best


def run(device: str = "cpu", quick: bool = False, arch: str = "FER_V1", batch_size: int = 64,
        init_channels: int = 36, layers: int = 12, steps: int | None = None, compile: bool = False,
        rounds: int | None = None, thread_variants: bool = True) -> dict[str, Any]:
    """Measure the trainer's step and the naive step (and, on CPU, layout variants and,
    with ``thread_variants``, half the threads too); return JSON-ready figures.
    ``ratio`` = fast (the trainer's defaults) / naive."""
    from nas.runtime.device import resolve_device

    dev = resolve_device(device)
    if steps is None:
        steps = (2 if quick else 5) if dev.type == "cpu" else (20 if quick else 100)
    rounds = rounds or (2 if quick else 3)
    warmup = 1 if dev.type == "cpu" else 5
    kw = dict(init_channels=init_channels, layers=layers)
    out: dict[str, Any] = {"bench": "train_step", "device": str(dev), "torch": torch.__version__, "arch": arch,
                           "init_channels": init_channels, "layers": layers, "batch_size": batch_size,
                           "steps_per_round": steps, "rounds": rounds, "warmup": warmup}
    if dev.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(dev)
    threads0 = torch.get_num_threads()
    variants: dict[str, tuple] = {"naive": (*make_naive(arch, dev, batch_size, **kw), threads0)}
    if dev.type == "cpu":
        from nas.engine.trainer import TrainConfig

        default_cl = TrainConfig().channels_last in (None, True)  # the trainer's CPU default
        for threads in sorted({threads0, max(1, threads0 // 2) if thread_variants else threads0}, reverse=True):
            for cl in (False, True):
                variants[f"fast_t{threads}_{'cl' if cl else 'contig'}"] = (
                    *make_fast(arch, dev, batch_size, channels_last=cl, **kw), threads)
        default = f"fast_t{threads0}_{'cl' if default_cl else 'contig'}"
    else:
        variants["fast"] = (*make_fast(arch, dev, batch_size, **kw), threads0)
        variants["fast_fp32_contig"] = (*make_fast(arch, dev, batch_size, amp=False, channels_last=False, **kw),
                                        threads0)
        if compile:
            variants["fast_compiled"] = (*make_fast(arch, dev, batch_size, compile=True, **kw), threads0)
        default = "fast"
    res = measure(variants, dev, batch_size, steps, warmup, rounds)
    torch.set_num_threads(threads0)
    naive = res.pop("naive")
    fastest = max(res, key=lambda k: res[k]["images_per_s"])
    def cpu_ratio(fast: dict[str, Any]) -> float:
        # median over rounds of the within-round ratio of this process's CPU time: with
        # one thread, the work of a step whatever other jobs take of the cores
        rs = sorted(n / f for f, n in zip(fast["cpu_s"], naive["cpu_s"]))
        return rs[len(rs) // 2] if len(rs) % 2 else 0.5 * (rs[len(rs) // 2 - 1] + rs[len(rs) // 2])

    out.update(fast=res[default], fast_variant=default, naive=naive, variants=res, fastest_variant=fastest,
               ratio=round(res[default]["images_per_s"] / naive["images_per_s"], 3),
               ratio_cpu_time=round(cpu_ratio(res[default]), 3),
               ratio_fastest=round(res[fastest]["images_per_s"] / naive["images_per_s"], 3),
               peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))
    if dev.type == "cpu":
        out["note"] = "CPU: per-variant peak memory is not tracked; peak_rss_mb is the whole process"
    return out


def get_args_parser() -> argparse.ArgumentParser:
    from nas.runtime.cli import ArgumentParser

    p = ArgumentParser(prog="bench/train_step.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--arch", default="FER_V1")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--init_channels", type=int, default=36)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--rounds", type=int, default=None, help="timed rounds per variant, taken in turns")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (CUDA)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    add_out_arg(p)
    return p


def main(a: argparse.Namespace) -> dict:
    if a.threads:
        torch.set_num_threads(a.threads)
    return emit(run(a.device, a.quick, a.arch, a.batch_size, a.init_channels, a.layers, a.steps, a.compile,
                    a.rounds), a, indent=2)


if __name__ == "__main__":
    from nas.runtime.cli import run as cli_run

    cli_run(main, get_args_parser())
