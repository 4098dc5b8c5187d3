"""Format detection and the one reading entry point, :func:`load_dataset`."""
from __future__ import annotations

from pathlib import Path

from nas.data.affectnet import affectnet_lists, is_affectnet_folders, read_affectnet
from nas.data.ck48 import is_ck48, read_ck48
from nas.data.dataset import FERData
from nas.data.expw import expw_label_file, read_expw
from nas.data.fer2013 import LABEL_MODES, locate_csv, read_fer2013_csv
from nas.data.ferplus_images import ferplus_images_root, read_ferplus_images
from nas.data.files import is_hidden, require_path
from nas.data.folders import is_fer2013_folders, read_fer2013_folders, read_folder
from nas.data.jaffe import is_jaffe, read_jaffe
from nas.data.rafdb import is_rafdb_folders, rafdb_label_file, read_rafdb
from nas.runtime.errors import FerNasError

__all__ = ["FORMATS", "detect_format", "load_dataset"]

FORMATS = ("fer2013_csv", "fer2013_folders", "ferplus_images", "rafdb", "affectnet", "expw", "ck48", "jaffe", "folder")
#: Formats whose faces are cropped/resized on reading (``--image_size``, the decoded-face cache).
WILD_FORMATS = ("rafdb", "affectnet", "expw")


def detect_format(path: str | Path) -> str:
    """The format of ``path``: ``fer2013_csv`` (a CSV file, or a folder holding fer2013.csv,
    icml_face_data.csv or train.csv, also under ``fer2013/``), ``rafdb`` (EmoLabel/list_patition_label.txt,
    or train/ and test/ holding folders 1-7), ``affectnet`` (training.csv + validation.csv, or
    train/ and val/ class folders), ``expw`` (label/label.lst), ``ferplus_images``
    (FER2013Train/, FER2013Valid/, FER2013Test/ with label.csv), ``fer2013_folders``
    (train/ and test/), ``jaffe`` (tiffs),
    ``ck48`` (CK+ class folder names) or ``folder`` (other class folders)."""
    p = require_path(path)
    if p.is_file():
        if p.suffix.lower() == ".csv":
            return "fer2013_csv"
        raise FerNasError(f"{p}: unknown format (expected a FER2013 .csv file or a data folder)")
    if locate_csv(p) is not None:
        return "fer2013_csv"
    if ferplus_images_root(p) is not None:
        return "ferplus_images"
    if expw_label_file(p) is not None:
        return "expw"
    if rafdb_label_file(p) is not None or is_rafdb_folders(p):
        return "rafdb"
    if affectnet_lists(p) is not None or is_affectnet_folders(p):
        return "affectnet"
    if is_fer2013_folders(p):
        return "fer2013_folders"
    if is_jaffe(p):
        return "jaffe"
    if is_ck48(p):
        return "ck48"
    if any(d.is_dir() and not is_hidden(d) for d in p.iterdir()):
        return "folder"
    raise FerNasError(f"{p}: unknown format (no fer2013.csv, FER+ folders, RAF-DB, AffectNet or ExpW lists, "
                      "train/+test/ folders, "
                      "JAFFE tiffs or class folders)")


def load_dataset(path: str | Path, format: str = "auto", *, skip_bad_rows: bool = False, seed: int = 0,
                 val_fraction: float = 0.1, ferplus: str | Path | None = None, labels: str = "fer",
                 classes: list[str] | None = None,
                 jaffe_crop: tuple[int, int, int, int] | None = None, image_size: int = 48,
                 cache_dir: str | Path | None = None, min_confidence: float | None = None) -> FERData:
    """Read a dataset in any supported format into a :class:`FERData`.

    ``seed``/``val_fraction`` set the held-out PublicTest part where a format has none;
    ``ferplus``/``labels`` join FER+ votes to a FER2013 CSV; ``classes`` orders a generic
    folder's classes (for AffectNet ``["7"]`` or ``["8"]``: contempt folded out or kept);
    ``jaffe_crop`` = (top, left, height, width) is JAFFE's face box; ``image_size`` is the
    side RAF-DB and AffectNet faces are resized to, and ``cache_dir`` where their decoded
    faces are cached (default: ``PATH/.fernas_cache``; ``"off"``: no cache); ``min_confidence``
    drops ExpW faces of lower detector confidence.
    Bad input raises :class:`FerNasError` with one line naming the file and the fault.
    """
    if format == "auto":
        format = detect_format(path)
    if format not in FORMATS:
        raise FerNasError(f"--format {format!r}: unknown format (choose from auto, {', '.join(FORMATS)})")
    if labels not in LABEL_MODES:
        raise FerNasError(f"--labels {labels!r}: unknown (choose from {', '.join(LABEL_MODES)})")
    if ferplus is not None and format != "fer2013_csv":
        raise FerNasError(f"{path}: --ferplus joins FER+ votes to a FER2013 CSV only, not {format}")
    if labels != "fer" and format not in ("fer2013_csv", "ferplus_images"):
        raise FerNasError(f"{path}: --labels {labels} needs FER+ votes (a FER2013 CSV with --ferplus, or the FER+ "
                          f"image folders), not {format}")
    if min_confidence is not None and format != "expw":
        raise FerNasError(f"--min_confidence applies to ExpW only, not {format}")
    affectnet_classes = 7
    if classes is not None and format == "affectnet":
        if classes not in (["7"], ["8"]):
            raise FerNasError(f"--classes {','.join(classes)}: AffectNet takes --classes 7 (contempt folded out) "
                              "or 8 (contempt kept)")
        affectnet_classes = int(classes[0])
    elif classes is not None and format != "folder":
        raise FerNasError(f"--classes applies to generic class folders and AffectNet only, not {format}")
    if image_size != 48 and format not in WILD_FORMATS:
        raise FerNasError(f"--image_size applies to RAF-DB, AffectNet and ExpW (resized on reading), not {format}")
    if not 8 <= image_size <= 512:
        raise FerNasError(f"--image_size {image_size}: must be between 8 and 512")
    if jaffe_crop is not None and format != "jaffe":
        raise FerNasError(f"--jaffe_crop applies to JAFFE only, not {format}")
    if format == "fer2013_csv":
        return read_fer2013_csv(path, skip_bad_rows=skip_bad_rows, seed=seed, val_fraction=val_fraction,
                                ferplus=ferplus, labels=labels)
    if format == "fer2013_folders":
        return read_fer2013_folders(path, skip_bad_rows=skip_bad_rows, seed=seed, val_fraction=val_fraction)
    if format == "ferplus_images":
        return read_ferplus_images(path, labels=labels, skip_bad_rows=skip_bad_rows)
    if format == "expw":
        return read_expw(path, image_size=image_size, min_confidence=min_confidence, skip_bad_rows=skip_bad_rows,
                         seed=seed, val_fraction=val_fraction, cache_dir=cache_dir)
    if format == "rafdb":
        return read_rafdb(path, image_size=image_size, skip_bad_rows=skip_bad_rows, seed=seed,
                          val_fraction=val_fraction, cache_dir=cache_dir)
    if format == "affectnet":
        return read_affectnet(path, classes=affectnet_classes, image_size=image_size, skip_bad_rows=skip_bad_rows,
                              seed=seed, val_fraction=val_fraction, cache_dir=cache_dir)
    if format == "ck48":
        return read_ck48(path, skip_bad_rows=skip_bad_rows)
    if format == "jaffe":
        return read_jaffe(path, jaffe_crop=jaffe_crop, skip_bad_rows=skip_bad_rows)
    return read_folder(path, classes=classes, skip_bad_rows=skip_bad_rows)
