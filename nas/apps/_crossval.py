"""What the three cross-dataset apps share (``test_ck48.py``, ``test_jaffe.py``, ``fernas
crosstest``): their parser and their run, which checks the checkpoint, the flags and the folds
before the session makes its run folder, then calls the stage's entry
:func:`nas.crossdata.run_crossdata`."""
from __future__ import annotations

import argparse
from typing import Any

from nas.runtime.cli import ArgumentParser

__all__ = ["parser_for", "run_kind"]


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
