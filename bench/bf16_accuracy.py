"""bf16 against fp32 training on SynthFER: same seed, same data, same epochs.

    python bench/bf16_accuracy.py [--device cpu|cuda|auto] [--arch FER_V1] [--init_channels 8] [--layers 5]
                                  [--epochs 8] [--n_train 3000] [--n_test 1000] [--seeds 0,1] [--threads 1]

Trains the same model twice per seed with ``nas.engine.trainer.Trainer`` (the toolkit's loop:
batched augmentation, cosine schedule, auxiliary head), once in fp32 and once under
bf16 autocast (``--amp True``; on a CPU, ``torch.autocast("cpu", torch.bfloat16)``),
and reports PrivateTest accuracy at the epoch chosen on PublicTest, the last epoch's
training accuracy and the wall time of each. SynthFER is rendered in memory (clean
labels, FER2013's class balance; PublicTest and PrivateTest are separate renders).
The issue's criterion: bf16 within 1 point of fp32. Prints one JSON document.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from nas.runtime.cli import ArgumentParser, run as cli_run
from nas.runtime.device import resolve_device

if __package__ in (None, ""):
    from common import add_out_arg, emit
else:
    from bench.common import add_out_arg, emit


def synthfer_data(n_train: int, n_test: int, seed: int = 0):
    """A FERData of SynthFER faces: Training, PublicTest and PrivateTest from three renders."""
    from nas.data.dataset import FER_CLASSES, FERData
    from nas.data.synthfer import render

    parts = [render(n, seed + k * 10_000)[:2] for k, n in enumerate((n_train, n_test, n_test))]
    images = torch.from_numpy(np.concatenate([p[0] for p in parts]))[:, None]
    labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    split = torch.cat([torch.full((len(p[1]),), k, dtype=torch.int64) for k, p in enumerate(parts)])
    return FERData(images=images, labels=labels, split=split, classes=list(FER_CLASSES), format="synthfer",
                   source=f"synthfer-memory-{n_train}-{n_test}-seed{seed}")


def train_once(data: Any, device: torch.device, *, amp: bool, arch: str, init_channels: int, layers: int,
               epochs: int, batch_size: int, seed: int) -> dict[str, Any]:
    from nas.runtime.checkpoint import RunDir
    from nas.models import build_model
    from nas.engine.trainer import TrainConfig, Trainer
    from nas.runtime.seeds import seed_everything

    seed_everything(seed)
    model = build_model(arch, init_channels=init_channels, layers=layers, drop_path_prob=0.1)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, seed=seed, amp=amp, progress=False, snapshot_at=(),
                      cutout=True)
    trainer = Trainer(model, data, cfg, RunDir("unused", enabled=False), device=device, args={"arch": arch})
    t0 = time.perf_counter()
    res = trainer.fit()
    return {"test_acc": round(res["test_acc"], 2), "val_acc": round(res["val_acc"], 2),
            "selected_epoch": res["selected_epoch"], "final_train_acc": round(float(res["final_train_acc"]), 2),
            "amp": trainer.amp, "seconds": round(time.perf_counter() - t0, 1)}


def run(device: str = "cpu", *, arch: str = "FER_V1", init_channels: int = 8, layers: int = 5, epochs: int = 8,
        n_train: int = 3000, n_test: int = 1000, batch_size: int = 64, seeds: tuple[int, ...] = (0, 1)
        ) -> dict[str, Any]:
    """fp32 and bf16 runs per seed; ``diff`` = bf16 - fp32 test accuracy in points."""
    dev = resolve_device(device)
    data = synthfer_data(n_train, n_test)
    runs = []
    kw = dict(arch=arch, init_channels=init_channels, layers=layers, epochs=epochs, batch_size=batch_size)
    for seed in seeds:
        fp32 = train_once(data, dev, amp=False, seed=seed, **kw)
        bf16 = train_once(data, dev, amp=True, seed=seed, **kw)
        runs.append({"seed": seed, "fp32": fp32, "bf16": bf16, "diff": round(bf16["test_acc"] - fp32["test_acc"], 2)})
    mean = lambda xs: round(statistics.fmean(xs), 2)  # noqa: E731
    diffs = [r["diff"] for r in runs]
    return {"bench": "bf16_accuracy", "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "bf16": "torch.autocast('%s', dtype=torch.bfloat16)" % dev.type,
            "settings": {**kw, "n_train": n_train, "n_test": n_test, "seeds": list(seeds), "data": data.source,
                         "selection": "PrivateTest at the best PublicTest epoch"},
            "runs": runs, "fp32_test_acc_mean": mean([r["fp32"]["test_acc"] for r in runs]),
            "bf16_test_acc_mean": mean([r["bf16"]["test_acc"] for r in runs]), "diff_mean": mean(diffs),
            "max_abs_diff": max(abs(d) for d in diffs), "within_1_point": all(abs(d) <= 1.0 for d in diffs)}


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="bench/bf16_accuracy.py", description="bf16 vs fp32 training accuracy on SynthFER.")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--arch", default="FER_V1")
    p.add_argument("--init_channels", type=int, default=8)
    p.add_argument("--layers", type=int, default=5)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--n_train", type=int, default=3000)
    p.add_argument("--n_test", type=int, default=1000, help="images in each of PublicTest and PrivateTest")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--seeds", default="0,1", help="comma-separated training seeds")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    add_out_arg(p)
    return p


def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
    res = run(args.device, arch=args.arch, init_channels=args.init_channels, layers=args.layers,
              epochs=args.epochs, n_train=args.n_train, n_test=args.n_test, batch_size=args.batch_size, seeds=seeds)
    return emit(res, args)


if __name__ == "__main__":
    cli_run(main, get_args_parser())
