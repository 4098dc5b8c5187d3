"""The command line: one module per command, each ``get_args_parser()`` + ``main(args)``
(torchvision's shape; nothing runs at import time), and the ``fernas`` dispatcher.

    fernas <command> [flags]        (also: python -m nas <command> [flags])

The six scripts at the repository root (``search.py``, ``train_searched.py``,
``relabel_training.py``, ``ensemble.py``, ``test_ck48.py``, ``test_jaffe.py``) are the
same commands under the reference's names.
"""
from __future__ import annotations

import sys
from typing import Sequence

from nas.apps import (ck48, crosstest, demo, ensemble, evaluate, export, fes, inspect, jaffe, predict, relabel, search,
                      synthfer, train)

__all__ = ["COMMANDS", "main"]

#: command -> (app module, one line of help)
COMMANDS = {
    "search": (search, "search a cell on FER data (SGAS or DARTS) and export its genotype   [search.py]"),
    "train": (train, "retrain a genotype or baseline; PublicTest selects, PrivateTest scores [train_searched.py]"),
    "relabel": (relabel, "continue training from a snapshot while relabelling               [relabel_training.py]"),
    "ensemble": (ensemble, "combine checkpoints; weights and selection on PublicTest          [ensemble.py]"),
    "ck48": (ck48, "10-fold cross-dataset test on CK+48                               [test_ck48.py]"),
    "jaffe": (jaffe, "cross-dataset test on JAFFE (direct or leave-one-subject-out)     [test_jaffe.py]"),
    "crosstest": (crosstest, "any checkpoint on any supported dataset: direct, k-fold or leave-one-subject-out"),
    "evaluate": (evaluate, "score a checkpoint on a split with every test-time view"),
    "predict": (predict, "expressions of the faces in photos, folders, video or a webcam"),
    "export": (export, "a checkpoint as ONNX or TorchScript, checked against PyTorch"),
    "inspect": (inspect, "what the readers make of a file or folder (one JSON object)"),
    "synthfer": (synthfer, "export SynthFER, the built-in benchmark, in a real file format"),
    "fes": (fes, "the FES matrix (or tagger disagreement) of a FER+ votes file"),
    "demo": (demo, "the whole pipeline on SynthFER in minutes; writes REPORT.md"),
}


def _usage(prog: str) -> str:
    width = max(map(len, COMMANDS))
    lines = [f"usage: {prog} <command> [flags]   ({prog} <command> --help for its flags)", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, prog: str = "fernas") -> None:
    """``fernas <command> [flags]``: run the command's app (exit status 2 for a bad command)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage(prog))
        sys.exit(0 if argv else 2)
    if argv[0] in ("-V", "--version"):
        from nas import __version__

        print(f"fer-nas {__version__}")
        return
    if argv[0] not in COMMANDS:
        print(_usage(prog), file=sys.stderr)
        print(f"{prog}: error: unknown command {argv[0]!r}", file=sys.stderr)
        sys.exit(2)
    COMMANDS[argv[0]][0].cli(argv[1:], prog=f"{prog} {argv[0]}")
