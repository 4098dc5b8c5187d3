"""The one place scripts get their data: ``--dataset``/``--data`` flags and :func:`open_data`."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from nas.data.dataset import FERData
from nas.data.fer2013 import LABEL_MODES
from nas.data.readers import detect_format, load_dataset
from nas.runtime.errors import FerNasError

__all__ = ["DATASETS", "SYNTH_FORMATS", "open_data", "add_data_args", "open_data_from_args", "check_label_source",
           "check_data_args"]

DATASETS = ("auto", "synthfer", "fer2013", "ferplus", "rafdb", "affectnet", "expw", "ck48", "jaffe", "folder")
#: SynthFER export format -> the reader format that reads it back.
SYNTH_FORMATS = {"fer2013": "fer2013_csv", "folder": "fer2013_folders", "ck48": "ck48", "jaffe": "jaffe",
                 "rafdb": "rafdb", "affectnet": "affectnet"}


def open_data(dataset: str = "auto", data: str | Path | None = None, *, size: int | None = None, seed: int = 0,
              noise: float = 0.1, difficulty: float = 1.0, synth_format: str = "fer2013",
              noise_mode: str = "uniform", renderer: str | None = None, train_size: int | None = None,
              public_size: int | None = None, private_size: int | None = None, noise_splits: str = "train",
              **reader_opts: Any) -> FERData:
    """Open a dataset by kind. ``auto`` reads ``data`` in its detected format, or SynthFER
    when there is no ``data``; ``synthfer`` without ``data`` exports SynthFER
    (``size``, ``seed``, ``noise``, ``noise_mode``, ``difficulty``, ``renderer``, ``train_size``,
    ``public_size``, ``private_size``, ``noise_splits``) in ``synth_format`` to a cached folder and
    reads it back with the real reader; ``fer2013`` accepts either FER2013 format;
    ``ferplus`` the FER+ image folders; ``ck48``/``jaffe``/``folder`` and the others read that format. ``reader_opts`` go to :func:`load_dataset`
    (``skip_bad_rows``, ``ferplus``, ``labels``, ``classes``, ``jaffe_crop``, ``val_fraction``,
    ``image_size``, ``cache_dir``, ``min_confidence``)."""
    if dataset not in DATASETS:
        raise FerNasError(f"--dataset {dataset!r}: unknown (choose from {', '.join(DATASETS)})")
    reader_opts.setdefault("seed", seed)
    if dataset == "synthfer" or (dataset == "auto" and data is None):
        if data is not None:  # a SynthFER export made earlier: read it like any other data
            return load_dataset(data, **reader_opts)
        if synth_format not in SYNTH_FORMATS:
            raise FerNasError(f"SynthFER format {synth_format!r}: unknown (choose from {', '.join(SYNTH_FORMATS)})")
        from nas.data import synthfer  # lazy: only SynthFER users pay for the renderer

        folder = synthfer.export_cached(synth_format, size=size, seed=seed, noise=noise, difficulty=difficulty,
                                        noise_mode=noise_mode, renderer=renderer or synthfer.DEFAULT_RENDERER,
                                        train_size=train_size, public_size=public_size, private_size=private_size,
                                        noise_splits=noise_splits)
        return load_dataset(folder, SYNTH_FORMATS[synth_format], **reader_opts)
    if data is None:
        raise FerNasError(f"--dataset {dataset} needs --data PATH")
    if dataset == "fer2013":
        fmt = detect_format(data)
        if fmt not in ("fer2013_csv", "fer2013_folders"):
            raise FerNasError(f"{data}: --dataset fer2013 expects fer2013.csv or train/+test/ folders, found {fmt}")
    else:
        fmt = {"auto": "auto", "ferplus": "ferplus_images"}.get(dataset, dataset)
    return load_dataset(data, fmt, **reader_opts)


def crop_box(value: str) -> tuple[int, int, int, int]:
    """argparse type of a crop box flag: 'top,left,height,width' as four integers."""
    try:
        box = tuple(int(v) for v in value.split(","))
    except ValueError:
        box = ()
    if len(box) != 4:
        raise argparse.ArgumentTypeError(f"expected top,left,height,width, got {value!r}")
    return box  # type: ignore[return-value]


def name_list(value: str) -> list[str]:
    """``"angry, happy"`` -> ``["angry", "happy"]``."""
    return [c.strip() for c in value.split(",") if c.strip()]


def add_data_args(parser: argparse.ArgumentParser, *, dataset: str = "auto", synth_format: str = "fer2013") -> None:
    """The data flags every script shares (one argument group). ``synth_format`` is the
    SynthFER export this script reads (e.g. ``ck48`` for the CK+ script)."""
    g = parser.add_argument_group("data")
    g.add_argument("--dataset", default=dataset, choices=DATASETS,
                   help="kind of data; auto: detect the format of --data, or SynthFER without --data")
    g.add_argument("--data", default=None, help="file or folder to read (see fernas inspect)")
    g.add_argument("--skip_bad_rows", action="store_true", help="skip and count malformed rows/images")
    g.add_argument("--ferplus", default=None, help="FER+ fer2013new.csv to join with fer2013.csv")
    g.add_argument("--labels", default="fer", choices=LABEL_MODES, help="FER labels or FER+ majority/soft labels")
    g.add_argument("--classes", default=None, type=name_list,
                   help="class order for a generic root/<class>/ folder, comma-separated; AffectNet: 7 "
                        "(contempt folded out, the default) or 8 (contempt kept as class 7)")
    g.add_argument("--image_size", default=48, type=int,
                   help="RAF-DB/AffectNet/ExpW: side the grey faces are resized to (antialiased)")
    g.add_argument("--cache_dir", default=None,
                   help="RAF-DB/AffectNet/ExpW: folder of the decoded-face cache (default: PATH/.fernas_cache; off: none)")
    g.add_argument("--min_confidence", default=None, type=float,
                   help="ExpW: drop faces whose detector confidence is below this (counted)")
    g.add_argument("--jaffe_crop", default=None, type=crop_box, help="JAFFE face box top,left,height,width")
    g.add_argument("--val_fraction", default=0.1, type=float,
                   help="held-out PublicTest fraction of Training where a format has no PublicTest")
    g.add_argument("--data_seed", default=0, type=int, help="seed of SynthFER and of held-out splits")
    g.add_argument("--synth_size", default=None, type=int,
                   help="SynthFER size (default: the exporter's); FER2013-style splits take 80/10/10 %% of it")
    g.add_argument("--synth_train_size", default=None, type=int, help="SynthFER Training rows instead of their share")
    g.add_argument("--synth_public_size", default=None, type=int,
                   help="SynthFER PublicTest rows instead of their share (the Training faces stay the same)")
    g.add_argument("--synth_private_size", default=None, type=int,
                   help="SynthFER PrivateTest rows instead of their share (the Training faces stay the same)")
    g.add_argument("--synth_noise", default=0.1, type=float, help="SynthFER fraction of flipped training labels")
    g.add_argument("--synth_noise_mode", default="uniform", choices=("uniform", "ambiguous", "ferplus"),
                   help="which SynthFER labels are flipped: uniform (at random), ambiguous (weak expressions "
                        "more often, following FER+ single-tagger disagreement) or ferplus (classes flipped as often "
                        "and towards what the real FER2013 -> FER+ transition says)")
    g.add_argument("--synth_noise_splits", default="train", choices=("train", "train+val"),
                   help="SynthFER splits whose labels are flipped: train, or train+val (PublicTest too, so model "
                        "selection sees noisy labels as on FER2013); PrivateTest stays clean")
    g.add_argument("--synth_difficulty", default=1.0, type=float, help="SynthFER nuisance strength")
    g.add_argument("--synth_renderer", default=None, choices=("v1", "v2"),
                   help="SynthFER renderer: v2 shaded faces, v1 the flat drawings of earlier figures (default: v2)")
    parser.set_defaults(synth_format=synth_format)


def check_label_source(args: argparse.Namespace) -> None:
    """``--labels ferplus_*`` needs FER+ votes: ``--ferplus`` beside a FER2013 CSV, or the FER+
    image folders as ``--data``. Checked before a run folder is made."""
    from nas.data.ferplus_images import ferplus_images_root

    if args.labels == "fer" or args.ferplus:
        return
    if args.data and (args.dataset == "ferplus" or ferplus_images_root(Path(args.data).expanduser()) is not None):
        return
    raise FerNasError(f"--labels {args.labels} needs FER+ votes: --ferplus PATH (fer2013new.csv beside a FER2013 CSV) "
                      "or the FER+ image folders as --data")


def check_data_args(args: argparse.Namespace) -> None:
    """One-line errors for the data flags of :func:`add_data_args` that cannot work, before a run
    folder is made or any data is read: a missing ``--data`` or ``--ferplus``, a held-out share
    outside (0, 1), SynthFER options that no export takes (sizes, noise, splits, renderer)."""
    if args.data is not None and not Path(args.data).expanduser().exists():
        raise FerNasError(f"--data {args.data}: no such file or folder")
    if getattr(args, "ferplus", None) and not Path(args.ferplus).expanduser().is_file():
        raise FerNasError(f"--ferplus {args.ferplus}: no such file")
    if not 0.0 < float(args.val_fraction) < 1.0:
        raise FerNasError(f"--val_fraction {args.val_fraction}: must be between 0 and 1")
    if int(getattr(args, "image_size", 48)) < 8:
        raise FerNasError(f"--image_size {args.image_size}: must be at least 8")
    if args.dataset == "synthfer" or (args.dataset == "auto" and args.data is None):
        from nas.data import synthfer

        synthfer.ExportSpec(getattr(args, "synth_format", "fer2013"), args.synth_size, args.data_seed,
                            args.synth_noise, args.synth_difficulty, getattr(args, "synth_noise_mode", "uniform"),
                            getattr(args, "synth_renderer", None) or synthfer.DEFAULT_RENDERER,
                            getattr(args, "synth_train_size", None), getattr(args, "synth_public_size", None),
                            getattr(args, "synth_private_size", None),
                            getattr(args, "synth_noise_splits", "train")).check(prefix="synth_")
    check_label_source(args)


def open_data_from_args(args: argparse.Namespace) -> FERData:
    """:func:`open_data` with the flags of :func:`add_data_args`."""
    return open_data(args.dataset, args.data, size=args.synth_size, seed=args.data_seed, noise=args.synth_noise,
                     difficulty=args.synth_difficulty, synth_format=getattr(args, "synth_format", "fer2013"),
                     noise_mode=getattr(args, "synth_noise_mode", "uniform"),
                     renderer=getattr(args, "synth_renderer", None),
                     train_size=getattr(args, "synth_train_size", None),
                     public_size=getattr(args, "synth_public_size", None),
                     private_size=getattr(args, "synth_private_size", None),
                     noise_splits=getattr(args, "synth_noise_splits", "train"),
                     skip_bad_rows=args.skip_bad_rows, ferplus=args.ferplus, labels=args.labels,
                     classes=args.classes, jaffe_crop=args.jaffe_crop, val_fraction=args.val_fraction,
                     image_size=getattr(args, "image_size", 48), cache_dir=getattr(args, "cache_dir", None),
                     min_confidence=getattr(args, "min_confidence", None))
