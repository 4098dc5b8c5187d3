"""``fernas evaluate``: score a checkpoint on a split of any dataset, with every test-time view."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from nas.runtime.cli import ArgumentParser, run

__all__ = ["get_args_parser", "main", "cli"]


def get_args_parser(prog: str = "fernas evaluate") -> ArgumentParser:
    """This stage's flags (`--help` prints them)."""
    from nas.data import add_data_args
    from nas.engine.evaluate import TTA_MODES

    p = ArgumentParser(prog=prog, description="Score a fer-nas checkpoint: accuracy per test-time view, per-class "
                                              "precision/recall/F1, confusion matrix, top-2, bootstrap 95% CI.")
    p.add_argument("--checkpoint", required=True, help="a .pt file, or a run folder (uses best.pt)")
    add_data_args(p)
    p.add_argument("--split", default="PrivateTest", choices=["Training", "PublicTest", "PrivateTest", "all"])
    p.add_argument("--tta", default="all", choices=[*TTA_MODES, "all"], help="test-time view(s) to score")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% CI (0: off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="folder for confusion/per-class CSVs and evaluation.json")
    return p


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run the stage with parsed flags; returns what it writes to results.json."""
    from nas.data import open_data_from_args
    from nas.engine.evaluate import TTA_MODES, evaluate_checkpoint, write_csvs
    from nas.runtime.checkpoint import atomic_write_text, json_safe
    from nas.runtime.device import resolve_device

    device = resolve_device(args.device)
    _labels_like_training(args)
    data = open_data_from_args(args)
    views = list(TTA_MODES) if args.tta == "all" else [args.tta]
    result = evaluate_checkpoint(args.checkpoint, data, split=args.split, tta=views, device=device,
                                 batch_size=args.batch_size, n_boot=args.bootstrap, seed=args.seed)
    text = json.dumps(json_safe(result), indent=2, default=str)
    print(text)
    if args.out:
        write_csvs(result, args.out)
        atomic_write_text(text + "\n", Path(args.out) / "evaluation.json")
    return result


def _labels_like_training(args: argparse.Namespace) -> None:
    """A model trained on FER+ labels is scored against the FER+ majority label: when the
    user gave no --labels/--ferplus, take the votes file the run used."""
    from nas.runtime.checkpoint import safe_load

    trained = safe_load(args.checkpoint).get("args") or {}
    if trained.get("labels", "fer") != "fer" and args.labels == "fer" and not args.ferplus and trained.get("ferplus"):
        args.ferplus, args.labels = trained["ferplus"], "ferplus_majority"
        print(f"notice: the model was trained on --labels {trained['labels']}; scoring against the FER+ majority "
              f"label ({args.ferplus})", file=sys.stderr)


def cli(argv: Sequence[str] | None = None, prog: str = "fernas evaluate") -> None:
    """Parse argv and run :func:`main`; bad input ends in one line and exit status 2."""
    run(main, get_args_parser(prog), argv)
