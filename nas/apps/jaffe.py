"""``fernas jaffe`` (``python test_jaffe.py``): a checkpoint on JAFFE, as a direct test or with
leave-one-subject-out fine-tuning."""
from __future__ import annotations

import argparse
from typing import Any, Sequence

from nas.runtime.cli import ArgumentParser, run

__all__ = ["get_args_parser", "main", "cli"]

KIND = "jaffe"


def get_args_parser(prog: str = "test_jaffe.py") -> ArgumentParser:
    from nas.crossdata import add_crossdata_args

    p = ArgumentParser(prog=prog, description="Test a checkpoint on JAFFE: direct test, or leave-one-subject-out fine-tuning (--finetune loso).")
    return add_crossdata_args(p, kind=KIND)


def main(args: argparse.Namespace) -> dict[str, Any]:
    from nas.crossdata import checked_checkpoint, run_crossdata
    from nas.engine.session import open_session

    ckpt = checked_checkpoint(args, KIND)  # a bad checkpoint fails in one line before any folder or data work
    with open_session(args, get_args_parser(), stage=KIND) as s:
        return run_crossdata(s, KIND, ckpt)


def cli(argv: Sequence[str] | None = None, prog: str = "test_jaffe.py") -> None:
    run(main, get_args_parser(prog), argv)
