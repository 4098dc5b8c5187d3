"""``fernas synthfer`` (``python -m nas.data.synthfer``): export SynthFER in a real file format."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Sequence

from nas.runtime.cli import ArgumentParser, run

__all__ = ["get_args_parser", "main", "cli"]


def get_args_parser(prog: str = "python -m nas.data.synthfer") -> ArgumentParser:
    """This stage's flags (`--help` prints them)."""
    from nas.data.synthfer import DEFAULT_RENDERER, FORMATS, NOISE_MODES, NOISE_SPLITS, RENDERERS

    p = ArgumentParser(prog=prog, description="Export SynthFER, the synthetic facial-expression benchmark, in a "
                                              "real file format.")
    p.add_argument("--out", required=True, help="output folder (created; must be new or empty unless --force)")
    p.add_argument("--format", required=True, choices=FORMATS,
                   help="fer2013: fer2013.csv; folder: train/ test/ image folders; ck48: CK+48 folders; jaffe: JAFFE tiffs; "
                        "rafdb: RAF-DB basic (list file, aligned colour JPEGs); affectnet: AffectNet lists with face boxes")
    p.add_argument("--size", type=int, default=None,
                   help="number of images (default: 35887 for fer2013/folder/rafdb/affectnet, 981 for ck48, 213 for jaffe)")
    p.add_argument("--train_size", type=int, default=None,
                   help="Training rows instead of their share of --size (fer2013/folder/rafdb/affectnet)")
    p.add_argument("--public_size", type=int, default=None,
                   help="PublicTest rows instead of their share of --size (each split has its own people: "
                        "the Training faces do not depend on the test sizes)")
    p.add_argument("--private_size", type=int, default=None, help="PrivateTest rows instead of their share of --size")
    p.add_argument("--noise", type=float, default=0.1, help="fraction of Training labels flipped along FES (fer2013/folder/rafdb/affectnet)")
    p.add_argument("--noise_mode", default="uniform", choices=NOISE_MODES,
                   help="which labels are flipped: uniform (at random), ambiguous (weak expressions more often, "
                        "following FER+ single-tagger disagreement) or ferplus (the real FER2013 -> FER+ transition: "
                        "disgust and fear flipped most, towards the classes FER+ taggers name instead)")
    p.add_argument("--noise_splits", default="train", choices=NOISE_SPLITS,
                   help="splits whose labels are flipped: train, or train+val (PublicTest too, as on FER2013); "
                        "PrivateTest stays clean")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--difficulty", type=float, default=1.0, help="0 clean prototypes, 1 default, 2 hard")
    p.add_argument("--renderer", default=DEFAULT_RENDERER, choices=tuple(RENDERERS),
                   help="v2: shaded faces; v1: the flat drawings earlier figures were measured on (unchanged)")
    p.add_argument("--preview", action="store_true",
                   help="write only OUT/preview.png, a labelled grid with a row per class, instead of the data")
    p.add_argument("--force", action="store_true", help="replace an earlier SynthFER export in --out")
    return p


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Export (or preview) a SynthFER dataset; returns the export's summary, also printed as JSON."""
    from nas.data import synthfer

    t0 = time.perf_counter()
    splits = {"train_size": args.train_size, "public_size": args.public_size, "private_size": args.private_size,
              "noise_splits": args.noise_splits}
    if args.preview:
        synthfer.check_export(args.format, args.size, args.noise, args.difficulty, args.noise_mode, args.renderer,
                              **splits)
        style = {"ck48": "ck", "jaffe": "jaffe"}.get(args.format, "fer")
        path = synthfer.preview(Path(args.out) / "preview.png", style=style, difficulty=args.difficulty, seed=args.seed,
                                renderer=args.renderer)
        info: dict[str, Any] = {"preview": str(path), "style": style}
    else:
        info = synthfer.export(args.format, args.out, size=args.size, seed=args.seed, noise=args.noise,
                               difficulty=args.difficulty, force=args.force, noise_mode=args.noise_mode,
                               renderer=args.renderer, **splits)
        info["out"] = str(args.out)
    info["seconds"] = round(time.perf_counter() - t0, 2)
    print(json.dumps(info))
    return info


def cli(argv: Sequence[str] | None = None, prog: str = "python -m nas.data.synthfer") -> None:
    """Parse argv and run :func:`main`; bad input ends in one line and exit status 2."""
    run(main, get_args_parser(prog), argv)
