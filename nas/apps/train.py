"""``fernas train`` (``python train_searched.py``): retrain a genotype or baseline from scratch,
with honest model selection (PublicTest selects, PrivateTest is the result)."""
from __future__ import annotations

import argparse
from typing import Any, Sequence

from nas.runtime.cli import ArgumentParser, run

__all__ = ["get_args_parser", "main", "cli", "check_args"]


def get_args_parser(prog: str = "train_searched.py") -> ArgumentParser:
    """This stage's flags (`--help` prints them)."""
    from nas.data import add_data_args
    from nas.engine.session import add_session_args
    from nas.engine.trainer import add_train_args

    p = ArgumentParser(prog=prog, description="Train a genotype or baseline network from scratch (auxiliary head, "
                                              "drop-path, cutout); select on PublicTest, report PrivateTest.")
    p.add_argument("--config", default=None, help="YAML file of flag values (command-line flags override it)")
    p.add_argument("--arch", default="FER_V1", help="genotype name, genotype .json file, or baseline name")
    p.add_argument("--init_channels", type=int, default=36, help="channels of the first cells (genotype networks)")
    p.add_argument("--layers", type=int, default=12, help="cells (genotype networks; reductions at L/3 and 2L/3)")
    p.add_argument("--auxiliary", dest="auxiliary", action="store_true", default=True,
                   help="auxiliary head after the second reduction (genotype networks; default on)")
    p.add_argument("--no_auxiliary", dest="auxiliary", action="store_false", help="no auxiliary head")
    add_data_args(p)
    add_train_args(p)
    add_session_args(p)
    return p


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run the stage with parsed flags; returns what it writes to results.json."""
    from nas.engine.session import open_session, safe_name
    from nas.engine.trainer import run_train

    read: dict[str, Any] = {}

    def check(a: argparse.Namespace) -> None:  # flags, then the data: both before the run folder exists
        from nas.data import open_data_from_args

        check_args(a)
        read["data"] = open_data_from_args(a)

    with open_session(args, get_args_parser(), stage="train", default_name=f"train-{safe_name(args.arch)}",
                      check=check) as s:
        return run_train(s, read["data"])


def check_args(args: argparse.Namespace) -> None:
    """Everything this stage can refuse without data, before its run folder exists."""
    from nas.engine.trainer import check_train_args
    from nas.models import build_model
    from nas.models.factory import check_arch

    from nas.engine.robust import check_robust

    genotype_net = check_arch(args.arch, args.init_channels, args.layers)
    check_train_args(args)
    if args.robust == "eac" and not genotype_net:
        check_robust("eac", build_model(args.arch), args.arch)


def cli(argv: Sequence[str] | None = None, prog: str = "train_searched.py") -> None:
    """Parse argv and run :func:`main`; bad input ends in one line and exit status 2."""
    run(main, get_args_parser(prog), argv)
