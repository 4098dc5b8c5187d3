"""``fernas ensemble`` (``python ensemble.py``): combine trained checkpoints; weights and member
selection on PublicTest, scored on PrivateTest."""
from __future__ import annotations

import argparse
from typing import Any, Sequence

from nas.runtime.cli import ArgumentParser, run

__all__ = ["get_args_parser", "main", "cli"]


def get_args_parser(prog: str = "ensemble.py") -> ArgumentParser:
    """This stage's flags (`--help` prints them)."""
    from nas.data import add_data_args
    from nas.engine.evaluate import TTA_MODES
    from nas.ensemble import METHODS
    from nas.runtime.cli import str2bool

    p = ArgumentParser(prog=prog, description="Combine trained fer-nas checkpoints: averaged logits or "
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


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run the stage with parsed flags; returns what it writes to results.json."""
    from nas.data import open_data_from_args
    from nas.engine.session import open_session
    from nas.ensemble import load_member, parse_member_names, run_ensemble
    from nas.runtime.device import resolve_device
    from nas.runtime.errors import FerNasError

    names = parse_member_names(args.models, args.model_names)
    device = resolve_device(args.device)
    members = [load_member(n, device, args.layers) for n in names]  # bad checkpoints fail before any data work
    read = {}

    def check(a: argparse.Namespace) -> None:  # the flags and the data, before the run folder exists
        for name in ("batch_size", "greedy_steps"):
            if getattr(a, name, 1) is not None and getattr(a, name, 1) < 1:
                raise FerNasError(f"--{name} {getattr(a, name)}: must be at least 1")
        read["data"] = open_data_from_args(a)

    with open_session(args, get_args_parser(), stage="ensemble", check=check) as s:
        data = read["data"]
        results = run_ensemble(names, data, s.run, method=args.method, greedy=args.greedy,
                               replacement=args.greedy_replacement, greedy_steps=args.greedy_steps, tta=args.tta,
                               device=s.device, batch_size=args.batch_size, members=members)
        s.run.log(f"wrote {s.run.path}/ensemble.csv, methods.csv, confusion.csv/.png, predictions.pt, results.json")
        return results


def cli(argv: Sequence[str] | None = None, prog: str = "ensemble.py") -> None:
    """Parse argv and run :func:`main`; bad input ends in one line and exit status 2."""
    run(main, get_args_parser(prog), argv)
