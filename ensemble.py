"""Ensemble trained checkpoints; weights and member selection on PublicTest, scored on PrivateTest.

    python ensemble.py --model_names runs/a,runs/b/best.pt,runs/c --data fer2013.csv
    python ensemble.py --model_names runs/a,runs/b,runs/c --method class_weighted --greedy --tta tencrop
    python ensemble.py runs/a runs/b --dataset synthfer                 # members as positional arguments

Each name is a checkpoint file or a run directory (its best.pt, else last.pt). Checkpoints
describe themselves, so members may differ in genotype, layers, input size, normalisation,
or be baselines; ``--layers`` is accepted for compatibility with the reference scripts and
checked against every checkpoint that has cells. Writes ensemble.csv (each member's and the
ensemble's PublicTest/PrivateTest accuracy), methods.csv (all four combiners),
confusion.csv/.png and per_class.csv (the ensemble on PrivateTest), predictions.pt (every
member's cached logits and probabilities), results.json, config.yaml and log.txt into
``--save`` (default runs/ensemble-<timestamp>).
"""
from __future__ import annotations

import argparse
import time

from nas.cli import ArgumentParser, run


def get_args_parser() -> argparse.ArgumentParser:
    from nas.cli import str2bool
    from nas.data import add_data_args
    from nas.ensemble import METHODS
    from nas.evaluate import TTA_MODES

    p = ArgumentParser(prog="ensemble.py", description="Combine trained fer-nas checkpoints: averaged logits or "
                       "probabilities, accuracy- or per-class-weighted, optional greedy selection on PublicTest.")
    p.add_argument("--config", default=None, help="YAML file of flag values (command-line flags override it)")
    p.add_argument("models", nargs="*", default=[], help="member checkpoints or run directories")
    p.add_argument("--model_names", default=None, help="comma-separated member checkpoints or run directories")
    p.add_argument("--layers", type=int, default=None,
                   help="accepted for compatibility: checked against each checkpoint's recorded layers")
    p.add_argument("--method", default="softmax", choices=METHODS,
                   help="logits/softmax: plain average; accuracy_weighted: by PublicTest accuracy; "
                        "class_weighted: per class by smoothed PublicTest precision")
    p.add_argument("--greedy", action="store_true", help="forward selection of members on PublicTest")
    p.add_argument("--greedy_replacement", type=str2bool, default=True,
                   help="let greedy selection add a member again (raising its weight); default True")
    p.add_argument("--greedy_steps", type=int, default=25, help="most members greedy selection adds")
    p.add_argument("--tta", default="center", choices=TTA_MODES, help="test-time views for every member")
    p.add_argument("--batch_size", type=int, default=256, help="evaluation batch size")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--save", default=None, help="output folder (default runs/ensemble-<timestamp>)")
    p.add_argument("--force", action="store_true", help="overwrite an output folder that holds a run")
    add_data_args(p)
    return p


def main(args: argparse.Namespace) -> dict:
    from nas.checkpoint import RunDir
    from nas.data import open_data_from_args
    from nas.ensemble import load_member, parse_member_names, run_ensemble
    from nas.utils import resolve_device

    names = parse_member_names(args.models, args.model_names)
    device = resolve_device(args.device)
    members = [load_member(n, device, args.layers) for n in names]  # bad checkpoints fail before any data work
    data = open_data_from_args(args)
    save = args.save or f"runs/ensemble-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = RunDir(save, force=args.force)
    run_dir.write_config(args)
    results = run_ensemble(names, data, run_dir, method=args.method, greedy=args.greedy,
                           replacement=args.greedy_replacement, greedy_steps=args.greedy_steps, tta=args.tta,
                           device=device, batch_size=args.batch_size, members=members)
    run_dir.log(f"wrote {run_dir.path}/ensemble.csv, methods.csv, confusion.csv/.png, predictions.pt, results.json")
    return results


if __name__ == "__main__":
    run(main, get_args_parser())
