"""AffectNet: the manually annotated lists and the common folder re-packaging.

Lists: ``training.csv`` and ``validation.csv`` (also under ``Manually_Annotated_file_lists/``)
with the columns ``subDirectory_filePath, face_x, face_y, face_width, face_height,
facial_landmarks, expression, valence, arousal``; expression 0-7 = neutral, happy, sad,
surprise, fear, disgust, anger, contempt, and 8-10 (none, uncertain, no face) are dropped
and counted. Images are looked up under ``Manually_Annotated_Images/`` (or the list's
folder) and cropped by the given face box. Re-packaged: ``train/<class>/`` and
``val/<class>/`` folders, named by class (any common spelling) or by AffectNet's index.

``classes=7`` folds contempt out (its samples are dropped and counted), ``classes=8`` keeps
it as index 7. The official validation set is PrivateTest; a seeded stratified part of
training is PublicTest. Valence and arousal stay in the metadata.
"""
from __future__ import annotations

import csv
from pathlib import Path

from nas.data.dataset import FER_CLASSES, FERData
from nas.data.files import require_path, warn
from nas.data.labelmap import CANONICAL, NATIVE, canonical
from nas.data.wild import Samples, build_wild, scan_part_folders
from nas.runtime.errors import FerNasError

__all__ = ["COLUMNS", "NON_EXPRESSIONS", "affectnet_lists", "is_affectnet_folders", "read_affectnet"]

COLUMNS = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks",
           "expression", "valence", "arousal")
#: Expression codes that are not expressions: dropped and counted.
NON_EXPRESSIONS = {8: "none", 9: "uncertain", 10: "no face"}
_LIST_DIRS = ("", "Manually_Annotated_file_lists")
_IMAGE_DIRS = ("Manually_Annotated_Images", "Manually_Annotated/Manually_Annotated_Images", "")


def affectnet_lists(root: Path) -> tuple[Path, Path] | None:
    """``(training.csv, validation.csv)`` of an AffectNet folder, or None."""
    for d in _LIST_DIRS:
        train, val = root / d / "training.csv", root / d / "validation.csv"
        if train.is_file() and val.is_file():
            return train, val
    return None


def is_affectnet_folders(root: Path) -> bool:
    """``train/`` and ``val/`` (no ``test/``) of class folders."""
    return (root / "train").is_dir() and (root / "val").is_dir() and not (root / "test").exists()


def _native_of_folder(name: str) -> int | None:
    if name.isdecimal():
        return int(name) if int(name) in NATIVE["affectnet"] else None
    c = canonical(name)
    return next((k for k, v in NATIVE["affectnet"].items() if canonical(v) == c), None)


def _read_lists(root: Path, lists: tuple[Path, Path], skip_bad_rows: bool) -> tuple[Samples, int, dict[str, int]]:
    image_root = next((root / d for d in _IMAGE_DIRS if d and (root / d).is_dir()), lists[0].parent)
    s, skipped = Samples(), 0
    non_expr = {v: 0 for v in NON_EXPRESSIONS.values()}
    for list_path, is_test in ((lists[0], False), (lists[1], True)):
        with list_path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            missing = [c for c in COLUMNS if c not in header]
            if missing:
                raise FerNasError(f"{list_path}: line 1: not an AffectNet list, missing column(s) {', '.join(missing)}")
            col = {c: header.index(c) for c in COLUMNS}
            for line_no, row in enumerate(reader, start=2):
                if not any(v.strip() for v in row):
                    continue
                where = f"{list_path}: line {line_no}"
                try:
                    if len(row) != len(header):
                        raise ValueError(f"expected {len(header)} fields, found {len(row)}")
                    box = tuple(int(float(row[col[c]])) for c in ("face_x", "face_y", "face_width", "face_height"))
                    expr = int(row[col["expression"]])
                    if not 0 <= expr <= 10:
                        raise ValueError(f"expression {expr} is not one of AffectNet's 0-10")
                    valence, arousal = float(row[col["valence"]]), float(row[col["arousal"]])
                except ValueError as e:
                    msg = str(e) if "expected" in str(e) or "AffectNet" in str(e) else f"bad number ({e})"
                    if not skip_bad_rows:
                        raise FerNasError(f"{where}: {msg}") from None
                    warn(f"skipping {where}: {msg}")
                    skipped += 1
                    continue
                if expr in NON_EXPRESSIONS:
                    non_expr[NON_EXPRESSIONS[expr]] += 1
                    continue
                rel = row[col["subDirectory_filePath"]].strip()
                s.add(image_root / rel, expr, is_test, f"{where}: {rel}", box=box,  # type: ignore[arg-type]
                      valence=valence, arousal=arousal)
    return s, skipped, non_expr


def read_affectnet(path: str | Path, *, classes: int = 7, image_size: int = 48, skip_bad_rows: bool = False,
                   seed: int = 0, val_fraction: float = 0.1, cache_dir: str | Path | None = None) -> FERData:
    """Read AffectNet in either layout (see the module docstring)."""
    if classes not in (7, 8):
        raise FerNasError(f"--classes {classes}: AffectNet takes 7 (contempt folded out) or 8 (contempt kept)")
    root = require_path(path)
    lists = affectnet_lists(root)
    meta: dict = {}
    if lists is not None:
        samples, skipped, non_expr = _read_lists(root, lists, skip_bad_rows)
        meta.update(layout="training.csv + validation.csv (face boxes)", non_expressions=non_expr)
    elif is_affectnet_folders(root):
        samples, skipped = scan_part_folders(root, "train", "val", _native_of_folder,
                                             "an AffectNet class name or index 0-7")
        meta["layout"] = "train/<class>/ and val/<class>/ folders"
    else:
        raise FerNasError(f"{root}: not AffectNet (no training.csv + validation.csv and no train/ + val/ folders)")
    names = list(FER_CLASSES) if classes == 7 else list(CANONICAL)
    return build_wild(samples, dataset="affectnet", fmt="affectnet", root=root, classes=names,
                      image_size=image_size, seed=seed, val_fraction=val_fraction, skip_bad_rows=skip_bad_rows,
                      skipped=skipped, meta=meta, cache_dir=cache_dir)
