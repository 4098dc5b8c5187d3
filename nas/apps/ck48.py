"""``fernas ck48`` (``python test_ck48.py``): 10-fold cross-validation of a checkpoint on CK+48,
subject-independent by default. :func:`parser_for` and :func:`run_kind` serve ``fernas jaffe``
too."""
from __future__ import annotations

import argparse
from typing import Any, Sequence

from nas.runtime.cli import ArgumentParser, run

__all__ = ["get_args_parser", "main", "cli", "parser_for", "run_kind"]

DESCRIPTION = ("10-fold cross-validation of a checkpoint on CK+48 (fine-tuning per fold, or a direct test); "
               "subject-independent folds by default.")


def parser_for(kind: str, prog: str, description: str) -> ArgumentParser:
    """The parser of a cross-dataset command (``kind``: ``ck48`` or ``jaffe``)."""
    from nas.crossdata import add_crossdata_args

    return add_crossdata_args(ArgumentParser(prog=prog, description=description), kind=kind)


def run_kind(args: argparse.Namespace, kind: str, parser: argparse.ArgumentParser,
             stage: str | None = None) -> dict[str, Any]:
    """A cross-dataset run: the checkpoint checked first, then the session and the folds
    (``kind``: ``ck48``, ``jaffe`` or ``any``; ``stage`` names the run folder, default ``kind``)."""
    from nas.crossdata import checked_checkpoint, plan_crossdata, run_crossdata
    from nas.engine.session import open_session

    ckpt = checked_checkpoint(args, kind)  # a bad checkpoint fails in one line before any folder or data work
    plan = {}

    def check(a: argparse.Namespace) -> None:  # flags and data, before the run folder exists
        plan["plan"] = plan_crossdata(a, kind)

    with open_session(args, parser, stage=stage or kind, check=check) as s:
        return run_crossdata(s, kind, ckpt, plan["plan"])


def get_args_parser(prog: str = "test_ck48.py") -> ArgumentParser:
    """This stage's flags (`--help` prints them)."""
    return parser_for("ck48", prog, DESCRIPTION)


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run the stage with parsed flags; returns what it writes to results.json."""
    return run_kind(args, "ck48", get_args_parser())


def cli(argv: Sequence[str] | None = None, prog: str = "test_ck48.py") -> None:
    """Parse argv and run :func:`main`; bad input ends in one line and exit status 2."""
    run(main, get_args_parser(prog), argv)
