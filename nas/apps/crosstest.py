"""``fernas crosstest``: any checkpoint on any dataset the readers know (FER2013, FER+, RAF-DB,
AffectNet, ExpW, CK+48, JAFFE, class folders), as a direct test with classes matched by name,
or fine-tuned in k folds (subject-independent where the data has subject ids) or leaving one
subject out. ``test_ck48.py`` and ``test_jaffe.py`` keep their own protocols."""
from __future__ import annotations

import argparse
from typing import Any, Sequence

from nas.apps._crossval import parser_for, run_kind
from nas.runtime.cli import ArgumentParser, run

__all__ = ["get_args_parser", "main", "cli"]

DESCRIPTION = ("Test a checkpoint on any supported dataset: direct (classes matched by name; classes one side lacks "
               "are left out and counted), k-fold fine-tuning (--finetune folds) or leave-one-subject-out "
               "(--finetune loso).")


def get_args_parser(prog: str = "fernas crosstest") -> ArgumentParser:
    """This stage's flags (`--help` prints them)."""
    return parser_for("any", prog, DESCRIPTION)


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run the stage with parsed flags; returns what it writes to results.json."""
    return run_kind(args, "any", get_args_parser(), stage="crosstest")


def cli(argv: Sequence[str] | None = None, prog: str = "fernas crosstest") -> None:
    """Parse argv and run :func:`main`; bad input ends in one line and exit status 2."""
    run(main, get_args_parser(prog), argv)
