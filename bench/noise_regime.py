"""The noisy-label regime: does the plain run memorise the flipped labels, and what does that cost?

    python bench/noise_regime.py [--noise 0.3] [--mode uniform] [--seeds 0] [--epochs 40]
                                 [--out bench/results-cpu-noise-regime.json] [--png docs/img/noise_regime.png]

Trains the regime's network (``cnn_gap``, Adam 0.002 without weight decay, crop-and-flip
augmentation, batch 64; SynthFER v2 with 1,200 Training, 2,000 PublicTest and 3,000 PrivateTest
faces, PublicTest as noisy as Training) on clean labels and on ``--noise`` flipped ones, one run
each per seed, and records per epoch the training accuracy on the labels it was given, PublicTest
and the clean PrivateTest. The regime holds when the noisy run's training accuracy ends at 90 %
or more (it memorises the flips) and its last-epoch PrivateTest is 8 points or more below the
clean run's. One JSON document with provenance; the memorisation curves as a PNG.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nas.runtime.cli import ArgumentParser, run as cli_run

if __package__ in (None, ""):
    from common import add_out_arg, emit
else:
    from bench.common import add_out_arg, emit

#: the regime's recipe (the noisy-label grid trains the same way)
RECIPE = ["--arch", "cnn_gap", "--optimizer", "adam", "--learning_rate", "0.002", "--weight_decay", "0",
          "--augment", "light", "--batch_size", "64", "--synth_size", "1500", "--synth_public_size", "2000",
          "--synth_private_size", "3000", "--synth_noise_splits", "train+val"]


def curve(noise: float, mode: str, seed: int, epochs: int, folder: Path) -> dict[str, Any]:
    """One run's per-epoch figures and its results."""
    from nas.apps import train
    from nas.runtime.checkpoint import read_csv_rows

    res = train.main(train.get_args_parser().parse_args(
        [*RECIPE, "--synth_noise", str(noise), "--synth_noise_mode", mode, "--data_seed", str(seed), "--seed",
         str(seed), "--epochs", str(epochs), "--device", "cpu", "--save", str(folder), "--plots", "False",
         "--progress", "False", "--snapshot_at", ""]))
    rows = read_csv_rows(folder / "metrics.csv")
    return {"train_acc": [round(float(r["train_acc"]), 2) for r in rows],
            "val_acc": [round(float(r["val_acc"]), 2) for r in rows],
            "test_acc": [round(float(r["test_acc"]), 2) for r in rows],
            "selected_epoch": res["selected_epoch"], "test_acc_selected": res["test_acc"],
            "test_acc_last": res["last_test_acc"], "final_train_acc": res["final_train_acc"]}


def plot(doc: dict[str, Any], path: Path) -> Path | None:
    from nas.engine.report import have_matplotlib, save_figure

    if not have_matplotlib():
        return None
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for key, colour in (("clean", "tab:green"), ("noisy", "tab:red")):
        for s, run in doc["runs"][key].items():
            x = range(1, len(run["train_acc"]) + 1)
            lab = "" if s != str(doc["seeds"][0]) else key
            ax.plot(x, run["train_acc"], color=colour, ls="--", lw=1, label=f"{lab}: training accuracy on its labels" if lab else None)
            ax.plot(x, run["test_acc"], color=colour, lw=1.5, label=f"{lab}: clean PrivateTest" if lab else None)
    ax.axhline(100 * (1 - doc["noise"]), color="0.5", lw=0.8, ls=":", label="share of correct training labels")
    ax.set_xlabel("epoch")
    ax.set_ylabel("%")
    ax.set_title(f"cnn_gap on 1,200 SynthFER faces, {round(100 * doc['noise'])} % {doc['mode']} noise vs clean")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return save_figure(fig, path)


def get_args_parser() -> ArgumentParser:
    from nas.runtime.cli import int_list

    p = ArgumentParser(prog="bench/noise_regime.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--noise", type=float, default=0.3, help="share of flipped labels in the noisy runs")
    p.add_argument("--mode", default="uniform", choices=("uniform", "ambiguous", "ferplus"), help="noise mode")
    p.add_argument("--seeds", type=int_list, default=[0], help="seeds, comma-separated")
    p.add_argument("--epochs", type=int, default=40, help="epochs of every run")
    p.add_argument("--runs", default="runs/noise_regime", help="folder of the training runs")
    p.add_argument("--png", default=None, help="also draw the curves here")
    add_out_arg(p)
    return p


def main(args: argparse.Namespace) -> dict[str, Any]:
    from nas.runtime.errors import FerNasError

    if not 0.0 < args.noise < 1.0 or args.epochs < 1 or not args.seeds:
        raise FerNasError(f"--noise {args.noise} --epochs {args.epochs} --seeds {args.seeds}: a share in (0, 1), "
                          "at least one epoch and one seed")
    runs: dict[str, dict[str, Any]] = {"clean": {}, "noisy": {}}
    for s in args.seeds:
        runs["clean"][str(s)] = curve(0.0, "uniform", s, args.epochs, Path(args.runs) / f"clean-s{s}")
        runs["noisy"][str(s)] = curve(args.noise, args.mode, s, args.epochs,
                                      Path(args.runs) / f"{args.mode}-n{round(100 * args.noise)}-s{s}")
    gaps = [runs["clean"][str(s)]["test_acc_last"] - runs["noisy"][str(s)]["test_acc_last"] for s in args.seeds]
    memorised = [runs["noisy"][str(s)]["final_train_acc"] for s in args.seeds]
    doc = {"bench": "noise_regime", "noise": args.noise, "mode": args.mode, "seeds": args.seeds,
           "epochs": args.epochs, "recipe": RECIPE, "runs": runs,
           "last_epoch_gap_points": [round(g, 2) for g in gaps], "noisy_final_train_acc": memorised,
           "regime_holds": all(g >= 8 for g in gaps) and all(m >= 90 for m in memorised)}
    if args.png:
        plot(doc, Path(args.png))
    return emit(doc, args, device="cpu", indent=None)


if __name__ == "__main__":
    cli_run(main, get_args_parser())
