"""``fernas inspect PATH`` (``python -m nas.data inspect PATH``): what the readers make of a
file or folder, as one JSON object."""
from __future__ import annotations

import argparse
import json
from typing import Any, Sequence

from nas.runtime.cli import ArgumentParser, run

__all__ = ["get_args_parser", "main", "cli"]


def get_args_parser(prog: str = "fernas inspect") -> ArgumentParser:
    """This stage's flags (`--help` prints them)."""
    from nas.data.fer2013 import LABEL_MODES
    from nas.data.readers import FORMATS
    from nas.data.source import crop_box, name_list

    p = ArgumentParser(prog=prog, description="Inspect FER data: detected format, sizes, counts per split and class.")
    p.add_argument("path", help="file or folder (fer2013.csv, train/+test/, the FER+ folders, RAF-DB, AffectNet, "
                                "ExpW, CK+48, JAFFE, root/<class>/)")
    p.add_argument("--format", default="auto", choices=("auto",) + FORMATS)
    p.add_argument("--skip_bad_rows", action="store_true", help="skip and count malformed rows/images")
    p.add_argument("--ferplus", default=None, help="FER+ fer2013new.csv to join with a FER2013 CSV")
    p.add_argument("--labels", default="fer", choices=LABEL_MODES)
    p.add_argument("--classes", default=None, type=name_list,
                   help="class order of a generic class folder; AffectNet: 7 or 8")
    p.add_argument("--image_size", default=48, type=int, help="RAF-DB/AffectNet/ExpW: side of the resized faces")
    p.add_argument("--cache_dir", default=None,
                   help="RAF-DB/AffectNet/ExpW: decoded-face cache folder (default: PATH/.fernas_cache; off: none)")
    p.add_argument("--min_confidence", default=None, type=float, help="ExpW: drop faces of lower detector confidence")
    p.add_argument("--jaffe_crop", default=None, type=crop_box, help="top,left,height,width")
    p.add_argument("--val_fraction", default=0.1, type=float)
    p.add_argument("--seed", default=0, type=int)
    return p


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Read a dataset as a stage would; returns its summary, also printed as JSON."""
    from nas.data import load_dataset

    d = load_dataset(args.path, args.format, skip_bad_rows=args.skip_bad_rows, seed=args.seed,
                     val_fraction=args.val_fraction, ferplus=args.ferplus, labels=args.labels,
                     classes=args.classes, jaffe_crop=args.jaffe_crop, image_size=args.image_size,
                     cache_dir=args.cache_dir, min_confidence=args.min_confidence)
    out = d.summary()
    print(json.dumps(out))
    return out


def cli(argv: Sequence[str] | None = None, prog: str = "fernas inspect") -> None:
    """Parse argv and run :func:`main`; bad input ends in one line and exit status 2."""
    run(main, get_args_parser(prog), argv)
