"""Does the supernet learn before SGAS decides? The architecture weights' entropy per epoch.

    python bench/sgas_warmup.py [--arch_lrs 3e-4,3e-3,1e-2] [--seeds 0] [--epochs 10] [--workers 1]
                                [--runs runs/sgas_warmup] [--out bench/results-cpu-sgas-warmup.json]
                                [--png docs/img/sgas_warmup.png]

SGAS's warm-up, before its first decision, is a plain DARTS search: the supernet's weights and
its architecture weights α learn together and nothing is decided yet. This bench runs exactly
that (``--strategy darts``) at ``bench/nas_eval.py``'s documented search size (its ``FULL``
recipe: the DARTS space, C8 L5, batch 32, 32-pixel crops, SynthFER v2 Training only) for
``--epochs`` epochs, once per architecture learning rate and seed, and reads from each run's
``metrics.csv`` the normalised entropy of softmax(α) over the undecided edges (1 = uniform, the
state in which SGAS's first decision is a draw), the supernet's accuracy on the architecture
half of Training (``--post_val``) and the epoch's wall time. A warm-up is long enough where the
entropy has fallen measurably from 1; what it costs is the epochs up to there. Each run is a
resumable search folder under ``--runs``; a finished one is read back. One JSON document with
provenance; a PNG of the entropy and the supernet accuracy against the epoch.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from nas.runtime.cli import ArgumentParser, run as cli_run

if __package__ in (None, ""):
    from common import add_out_arg, emit, process_pool, run_or_resume
    from nas_eval import FULL, QUICK, _data_flags, plot_search_curves
else:
    from bench.common import add_out_arg, emit, process_pool, run_or_resume
    from bench.nas_eval import FULL, QUICK, _data_flags, plot_search_curves

#: the entropy drop (from 1 = uniform) that counts as "the supernet has learned something"
MEASURABLE = 0.01


def warmup_run(folder: str, arch_lr: float, seed: int, epochs: int, recipe: Mapping[str, Any],
               threads: int | None) -> dict[str, Any]:
    """One warm-up search (idempotent): its per-epoch entropy, supernet accuracy and wall time."""
    import torch

    from nas.apps import search as search_app
    from nas.runtime.checkpoint import atomic_write_text, read_csv_rows

    if threads:
        torch.set_num_threads(threads)
    s = recipe["search"]
    argv = ["--strategy", "darts", "--search_space", recipe["space"], "--init_channels", s["init_channels"],
            "--layers", s["layers"], "--batch_size", s["batch_size"], "--crop", s["crop"], "--seed", seed,
            "--train_portion", s["train_portion"], "--arch_learning_rate", arch_lr, "--epochs", epochs,
            "--post_val", "--device", "cpu", *_data_flags(recipe)]
    run_or_resume(search_app, Path(folder), argv, done="done.json")  # the search writes genotype.json each epoch
    atomic_write_text('{"finished": true}\n', Path(folder) / "done.json")
    rows = read_csv_rows(Path(folder) / "metrics.csv")
    return {"arch_lr": arch_lr, "seed": seed,
            "alpha_entropy": [float(r["alpha_entropy"]) for r in rows],
            "supernet_acc": [round(float(r["valid_acc"]), 2) for r in rows],
            "train_acc": [round(float(r["train_acc"]), 2) for r in rows],
            "epoch_seconds": [round(float(r["time_s"]), 1) for r in rows],
            "param_free_share": [float(r["param_free_share"]) for r in rows]}


def first_measurable(entropy: Sequence[float], drop: float = MEASURABLE) -> int | None:
    """The first epoch (1-based) whose entropy is at least ``drop`` below uniform; None if none is."""
    return next((k + 1 for k, h in enumerate(entropy) if h <= 1.0 - drop), None)


def plot(doc: Mapping[str, Any], path: Path) -> Path | None:
    """nas_eval's two panels (entropy, supernet accuracy), a colour per architecture learning rate."""
    from nas.engine.report import have_matplotlib

    if not have_matplotlib():
        return None
    import matplotlib.pyplot as plt

    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    lrs = sorted({r["arch_lr"] for r in doc["runs"]})
    curves = {f"arch lr {r['arch_lr']:g}, seed {r['seed']}":
              {"epochs": len(r["alpha_entropy"]), "alpha_entropy": r["alpha_entropy"],
               "supernet_acc": r["supernet_acc"], "color": colours[lrs.index(r["arch_lr"]) % len(colours)]}
              for r in doc["runs"]}
    return plot_search_curves(
        curves, path, hline=1.0 - MEASURABLE, xlabel="epoch of the warm-up (a DARTS search: nothing decided)",
        title=f"Does the supernet learn before SGAS's first decision? C{doc['search']['init_channels']} "
              f"L{doc['search']['layers']} supernet, {round(0.8 * doc['size']):,} SynthFER Training faces "
              f"(half for the weights, half for α)")


def get_args_parser() -> ArgumentParser:
    from nas.runtime.cli import float_list, int_list

    p = ArgumentParser(prog="bench/sgas_warmup.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--arch_lrs", type=float_list, default=[3e-4, 3e-3, 1e-2],
                   help="architecture learning rates, comma-separated (3e-4: the DARTS/SGAS default)")
    p.add_argument("--seeds", type=int_list, default=[0], help="search seeds, comma-separated")
    p.add_argument("--epochs", type=int, default=10, help="warm-up epochs of every run")
    p.add_argument("--quick", action="store_true", help="nas_eval's --quick sizes (a smoke run, not a measurement)")
    p.add_argument("--workers", type=int, default=1, help="runs at once (one torch thread each when > 1)")
    p.add_argument("--runs", default="runs/sgas_warmup", help="folder of the search runs")
    p.add_argument("--png", default=None, help="also draw the curves here")
    add_out_arg(p)
    return p


def main(args: argparse.Namespace) -> dict[str, Any]:
    from nas.runtime.errors import FerNasError

    if args.epochs < 1 or not args.seeds or not args.arch_lrs or min(args.arch_lrs) <= 0 or args.workers < 1:
        raise FerNasError(f"--epochs {args.epochs} --seeds {args.seeds} --arch_lrs {args.arch_lrs} --workers "
                          f"{args.workers}: need at least one epoch, seed and positive rate, and one worker")
    recipe = QUICK if args.quick else FULL
    jobs = [(str(Path(args.runs) / f"lr{lr:g}-s{s}"), lr, s, args.epochs, recipe, 1 if args.workers > 1 else None)
            for lr in args.arch_lrs for s in args.seeds]
    if args.workers > 1:
        with process_pool(args.workers) as pool:
            runs = list(pool.map(warmup_run, *zip(*jobs)))
    else:
        runs = [warmup_run(*j) for j in jobs]
    for r in runs:
        r["first_measurable_epoch"] = first_measurable(r["alpha_entropy"])
        r["warmup_seconds"] = (round(sum(r["epoch_seconds"][:r["first_measurable_epoch"]]), 1)
                               if r["first_measurable_epoch"] else None)
    used = ("init_channels", "layers", "batch_size", "crop", "train_portion")  # the rest is nas_eval's own
    doc = {"bench": "sgas_warmup", "epochs": args.epochs, "measurable_drop": MEASURABLE,
           "search": {k: recipe["search"][k] for k in used}, "space": recipe["space"], "size": recipe["size"],
           "runs": runs}
    if args.png:
        plot(doc, Path(args.png))
    return emit(doc, args, device="cpu", indent=None)


if __name__ == "__main__":
    cli_run(main, get_args_parser())
