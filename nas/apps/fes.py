"""``fernas fes`` (``python -m nas.fes``): the FES matrix of a FER+ votes file, or the
single-tagger disagreement figures (``--disagreement``)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from nas.runtime.cli import ArgumentParser, run
from nas.runtime.errors import FerNasError

if TYPE_CHECKING:
    import numpy as np

__all__ = ["get_args_parser", "main", "cli"]


def get_args_parser(prog: str = "fernas fes") -> ArgumentParser:
    """This stage's flags (`--help` prints them)."""
    p = ArgumentParser(prog=prog, description="Facial-expression similarity (FES) matrix from FER+ votes.")
    p.add_argument("--ferplus", required=True, help="FER+ votes file (fer2013new.csv)")
    p.add_argument("--out", default=None, help="also write the matrix as JSON to this file")
    p.add_argument("--digits", type=int, default=4, help="decimals to print (default 4)")
    p.add_argument("--disagreement", action="store_true",
                   help="print the expected single-tagger disagreement with the majority, by ambiguity, "
                        "instead of the matrix (--out then writes it as JSON)")
    p.add_argument("--bins", type=int, default=5, help="equal-count ambiguity groups for --disagreement")
    return p


def main(args: argparse.Namespace) -> dict[str, Any] | np.ndarray:
    """Print the FES matrix (or the disagreement table) and write it to --out; returns it."""
    from nas.data import ferplus
    from nas.runtime.checkpoint import atomic_write_text

    if args.disagreement:
        if args.bins < 1:
            raise FerNasError(f"--bins {args.bins}: must be >= 1")
        votes = ferplus.fer_votes(Path(args.ferplus))
        if len(votes) < args.bins:
            raise FerNasError(f"--bins {args.bins}: more groups than the file's {len(votes)} rows")
        d = ferplus.disagreement_from_votes(votes, args.bins)
        print(ferplus.format_disagreement(d))
        if args.out:
            atomic_write_text(json.dumps(dict(d, source=str(args.ferplus)), indent=1) + "\n", args.out)
            print(f"wrote {args.out}")
        return d
    fes = ferplus.fes_from_ferplus(args.ferplus)
    print(ferplus.format_fes(fes, args.digits))
    if args.out:
        atomic_write_text(ferplus.fes_to_json(fes, source=str(args.ferplus)), args.out)
        print(f"wrote {args.out}")
    return fes


def cli(argv: Sequence[str] | None = None, prog: str = "fernas fes") -> None:
    """Parse argv and run :func:`main`; bad input ends in one line and exit status 2."""
    run(main, get_args_parser(prog), argv)
