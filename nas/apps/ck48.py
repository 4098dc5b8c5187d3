"""``fernas ck48`` (``python test_ck48.py``): 10-fold cross-validation of a checkpoint on CK+48,
subject-independent by default (the code the three cross-dataset apps share is in
:mod:`nas.apps._crossval`)."""
from __future__ import annotations

import argparse
from typing import Any, Sequence

from nas.apps._crossval import parser_for, run_kind
from nas.runtime.cli import ArgumentParser, run

__all__ = ["get_args_parser", "main", "cli"]

DESCRIPTION = ("10-fold cross-validation of a checkpoint on CK+48 (fine-tuning per fold, or a direct test); "
               "subject-independent folds by default.")


def get_args_parser(prog: str = "test_ck48.py") -> ArgumentParser:
    """This stage's flags (`--help` prints them)."""
    return parser_for("ck48", prog, DESCRIPTION)


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run the stage with parsed flags; returns what it writes to results.json."""
    return run_kind(args, "ck48", get_args_parser())


def cli(argv: Sequence[str] | None = None, prog: str = "test_ck48.py") -> None:
    """Parse argv and run :func:`main`; bad input ends in one line and exit status 2."""
    run(main, get_args_parser(prog), argv)
