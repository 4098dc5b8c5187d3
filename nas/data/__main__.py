"""``python -m nas.data inspect PATH``: what the readers make of a file or folder, as one JSON object."""
from __future__ import annotations

import argparse
import json
from typing import Any

from nas.cli import ArgumentParser, run
from nas.data.dataset import FERData
from nas.data.fer2013 import LABEL_MODES
from nas.data.readers import FORMATS, load_dataset
from nas.data.source import _crop_box


def summary(d: FERData) -> dict[str, Any]:
    """The facts a user checks before training, as plain JSON values."""
    per_class = d.labels[d.labels >= 0].bincount(minlength=len(d.classes)).tolist()
    out: dict[str, Any] = {
        "path": d.source,
        "format": d.format,
        "image_size": list(d.image_size),
        "num_samples": len(d),
        "classes": list(d.classes),
        "counts": d.counts(),
        "per_class": dict(zip(d.classes, per_class)),
        "subjects": len(set(d.subjects)) if d.subjects is not None else None,
        "skipped": d.skipped,
        "soft_labels": d.soft_labels is not None,
        "clean_labels": d.clean_labels is not None,
    }
    for key in ("variant", "split_from", "holdout", "ferplus", "crop"):
        if key in d.meta:
            out[key] = d.meta[key]
    return out


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m nas.data", description="Inspect FER data: detected format, sizes, counts.")
    sub = p.add_subparsers(dest="command", required=True)
    i = sub.add_parser("inspect", help="read PATH and print one JSON object")
    i.error = p.error  # type: ignore[method-assign]  # one-line errors for the subcommand too
    i.add_argument("path", help="file or folder (fer2013.csv, train/+test/, CK+48, JAFFE, root/<class>/)")
    i.add_argument("--format", default="auto", choices=("auto",) + FORMATS)
    i.add_argument("--skip_bad_rows", action="store_true", help="skip and count malformed rows/images")
    i.add_argument("--ferplus", default=None, help="FER+ fer2013new.csv to join with a FER2013 CSV")
    i.add_argument("--labels", default="fer", choices=LABEL_MODES)
    i.add_argument("--classes", default=None, type=lambda s: [c.strip() for c in s.split(",") if c.strip()])
    i.add_argument("--jaffe_crop", default=None, type=_crop_box, help="top,left,height,width")
    i.add_argument("--val_fraction", default=0.1, type=float)
    i.add_argument("--seed", default=0, type=int)
    return p


def main(args: argparse.Namespace) -> None:
    d = load_dataset(args.path, args.format, skip_bad_rows=args.skip_bad_rows, seed=args.seed,
                     val_fraction=args.val_fraction, ferplus=args.ferplus, labels=args.labels,
                     classes=args.classes, jaffe_crop=args.jaffe_crop)
    print(json.dumps(summary(d)))


if __name__ == "__main__":
    run(main, get_args_parser())
