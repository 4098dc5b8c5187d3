"""``fernas jaffe`` (``python test_jaffe.py``): a checkpoint on JAFFE, as a direct test or with
leave-one-subject-out fine-tuning."""
from __future__ import annotations

import argparse
from typing import Any, Sequence

from nas.apps._crossval import parser_for, run_kind
from nas.runtime.cli import ArgumentParser, run

__all__ = ["get_args_parser", "main", "cli"]

DESCRIPTION = "Test a checkpoint on JAFFE: direct test, or leave-one-subject-out fine-tuning (--finetune loso)."


def get_args_parser(prog: str = "test_jaffe.py") -> ArgumentParser:
    """This stage's flags (`--help` prints them)."""
    return parser_for("jaffe", prog, DESCRIPTION)


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run the stage with parsed flags; returns what it writes to results.json."""
    return run_kind(args, "jaffe", get_args_parser())


def cli(argv: Sequence[str] | None = None, prog: str = "test_jaffe.py") -> None:
    """Parse argv and run :func:`main`; bad input ends in one line and exit status 2."""
    run(main, get_args_parser(prog), argv)
