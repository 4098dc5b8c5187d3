"""FER2013 CSV reader: Kaggle's ``fer2013.csv`` and torchvision's variants.

* ``fer2013.csv`` (``emotion,pixels,Usage``) and ``icml_face_data.csv``
  (``emotion, Usage, pixels``): splits from the Usage column.
* ``train.csv`` (``emotion,pixels``) + ``test.csv`` (``pixels`` or ``emotion,pixels``):
  train is Training; a labelled test.csv is PublicTest (first half) then PrivateTest
  (second half), Kaggle's order. An unlabelled test.csv cannot be scored, so it is
  skipped with a warning and a seeded stratified part of Training becomes PublicTest.

A path may be one of these files or a folder holding them (also torchvision's
``root/fer2013/`` layout). With ``ferplus=`` the FER+ votes are joined row by row.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from nas.data import ferplus as fp
from nas.data.csvrows import CsvRows, parse_rows, read_header
from nas.data.dataset import FER_CLASSES, SPLITS, FERData
from nas.data.files import read_clean_labels, require_path, warn
from nas.data.loader import stratified_split
from nas.runtime.errors import FerNasError

__all__ = ["locate_csv", "read_fer2013_csv", "write_fer2013_csv", "LABEL_MODES"]

LABEL_MODES = ("fer", "ferplus_majority", "ferplus_soft")
_SINGLE = ("fer2013.csv", "icml_face_data.csv")


def locate_csv(path: str | Path) -> dict[str, Path | None] | None:
    """The CSV file(s) at ``path``: ``{"main": file}`` or ``{"train": file, "test": file|None}``;
    None when ``path`` holds no FER2013 CSV. torchvision's precedence: fer2013.csv,
    icml_face_data.csv, then train.csv/test.csv."""
    p = Path(path)
    if p.is_file():
        if p.name in ("train.csv", "test.csv"):
            return locate_csv(p.parent)
        return {"main": p} if p.suffix.lower() == ".csv" else None
    if not p.is_dir():
        return None
    for folder in (p, p / "fer2013"):
        for name in _SINGLE:
            if (folder / name).is_file():
                return {"main": folder / name}
        if (folder / "train.csv").is_file():
            test = folder / "test.csv"
            return {"train": folder / "train.csv", "test": test if test.is_file() else None}
    return None


def read_fer2013_csv(path: str | Path, *, skip_bad_rows: bool = False, seed: int = 0, val_fraction: float = 0.1,
                     ferplus: str | Path | None = None, labels: str = "fer") -> FERData:
    """Read any FER2013 CSV variant at ``path`` into a :class:`FERData` (48×48, FER2013 classes)."""
    p = require_path(path)
    files = locate_csv(p)
    if files is None:
        raise FerNasError(f"{p}: no fer2013.csv, icml_face_data.csv or train.csv here")
    meta: dict = {}
    if "main" in files:
        main = files["main"]
        assert main is not None
        tab = _checked(parse_rows(main, read_header(main)), skip_bad_rows)
        if tab.labels is None:
            raise FerNasError(f"{main}: line 1: no emotion column, nothing to learn from (expected emotion,pixels,Usage)")
        if tab.usage is None:  # emotion,pixels only: Training with a held-out PublicTest, like train.csv alone
            tab.usage = np.zeros(len(tab.row), dtype=np.int64)
            tab.usage_all = np.zeros(tab.num_rows, dtype=np.int64)
            meta["holdout"] = f"no Usage column: PublicTest is a seeded stratified part of {main.name}"
        parts, source, variant = [tab], main, main.name
    else:
        parts, source, variant = _train_test(files, skip_bad_rows, meta), files["train"], "train.csv+test.csv"
    assert source is not None
    offsets = np.cumsum([0] + [t.num_rows for t in parts])
    row = np.concatenate([t.row + off for t, off in zip(parts, offsets)])
    images = torch.from_numpy(np.concatenate([t.pixels for t in parts])).view(-1, 1, 48, 48)
    y = torch.from_numpy(np.concatenate([t.labels for t in parts]))  # type: ignore[misc]
    split = torch.from_numpy(np.concatenate([t.usage for t in parts]))  # type: ignore[misc]
    skipped = sum(len(t.bad) for t in parts)
    clean = read_clean_labels(source.parent, [str(r) for r in row.tolist()], len(FER_CLASSES))
    soft = None
    if ferplus is not None:
        usage_all = np.concatenate([t.usage_all for t in parts])  # type: ignore[misc]
        keep, y, soft = _join_ferplus(Path(ferplus), source, usage_all, row, y, labels, meta)
        images, split = images[keep], split[keep]
        clean = clean[keep] if clean is not None else None
    elif labels != "fer":
        raise FerNasError(f"--labels {labels} needs --ferplus PATH (the FER+ fer2013new.csv), or the FER+ image "
                          "folders as --data")
    if "holdout" in meta:  # unlabelled test.csv: a seeded stratified part of Training becomes PublicTest
        _, val = stratified_split(y, val_fraction, seed)
        split[val] = SPLITS.index("PublicTest")
    present = set(torch.unique(split).tolist())
    for code, name in enumerate(SPLITS):
        if code not in present and not (name == "PrivateTest" and "holdout" in meta):
            raise FerNasError(f"{source}: no {name} rows (Usage column); every split needs samples")
    meta["variant"] = variant
    return FERData(images=images, labels=y, split=split, classes=list(FER_CLASSES), format="fer2013_csv",
                   source=str(p), soft_labels=soft, clean_labels=clean, skipped=skipped, meta=meta)


def _checked(tab: CsvRows, skip_bad_rows: bool) -> CsvRows:
    """Raise on the first bad row unless skipping (then each is counted in ``bad``)."""
    if tab.bad and not skip_bad_rows:
        line, fault = next(iter(tab.bad.items()))
        more = f" ({len(tab.bad)} bad rows in all; --skip_bad_rows skips them)" if len(tab.bad) > 1 else \
            " (--skip_bad_rows skips it)"
        raise FerNasError(f"{tab.path}: line {line}: {fault}{more}")
    return tab


def _train_test(files: dict[str, Path | None], skip_bad_rows: bool, meta: dict) -> list[CsvRows]:
    train_path, test_path = files["train"], files["test"]
    assert train_path is not None
    cols = read_header(train_path)
    if "emotion" not in cols:
        raise FerNasError(f"{train_path}: line 1: no emotion column (expected emotion,pixels)")
    train = _checked(parse_rows(train_path, cols), skip_bad_rows)
    train.usage = np.zeros(len(train.row), dtype=np.int64)
    train.usage_all = np.zeros(train.num_rows, dtype=np.int64)
    test_cols = read_header(test_path) if test_path is not None else {}
    if "emotion" not in test_cols:
        why = "has no emotion column" if test_path is not None else "is missing"
        warn(f"{test_path or train_path.parent / 'test.csv'} {why}, so it cannot be evaluated: skipping it; "
             "PublicTest is a stratified part of train.csv and there is no PrivateTest")
        meta["holdout"] = "PublicTest is a seeded stratified part of train.csv; test.csv is unlabelled"
        return [train]
    assert test_path is not None
    test = _checked(parse_rows(test_path, test_cols), skip_bad_rows)
    if test.usage is None:  # Kaggle order: first half PublicTest, second half PrivateTest
        half = test.num_rows // 2
        test.usage_all = np.where(np.arange(test.num_rows) < half, 1, 2)
        test.usage = test.usage_all[test.row]
    return [train, test]


def _join_ferplus(path: Path, source: Path, usage_all: np.ndarray, row: np.ndarray, y: torch.Tensor,
                  labels: str, meta: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Check FER+ against the FER2013 rows, then pick labels; returns (kept positions, labels, soft)."""
    if labels not in LABEL_MODES:
        raise FerNasError(f"--labels {labels!r}: unknown (choose from {', '.join(LABEL_MODES)})")
    if "holdout" in meta:
        raise FerNasError(f"{path}: the FER+ join needs every FER2013 row with its split (fer2013.csv, "
                          "icml_face_data.csv, or train.csv with a labelled test.csv)")
    usage, votes = fp.read_ferplus(path)
    if len(usage) != len(usage_all):
        raise FerNasError(f"{path}: {len(usage)} rows but {source} has {len(usage_all)}; FER+ must match row by row")
    ua = torch.from_numpy(usage_all)
    differ = ((ua >= 0) & (ua != usage)).nonzero().flatten()
    if len(differ):
        i = int(differ[0])
        raise FerNasError(f"{path}: line {i + 2}: Usage {SPLITS[int(usage[i])]} but {source} row {i + 1} is "
                          f"{SPLITS[int(ua[i])]}; FER+ must match row by row")
    r = torch.from_numpy(row)
    soft, has = fp.soft_labels(votes[r])
    if labels == "fer":
        keep = torch.ones(len(r), dtype=torch.bool)
        onehot = torch.nn.functional.one_hot(y, len(FER_CLASSES)).float()
        soft = torch.where(has[:, None], soft, onehot)  # no FER-class votes: fall back to the FER label
        meta["ferplus_soft_fallback"] = int((~has).sum())
    elif labels == "ferplus_majority":
        y = fp.majority_labels(votes[r])
        keep = y >= 0
    else:
        keep = has
        y = soft.argmax(dim=1)
    meta["ferplus"] = {"file": str(path), "labels": labels, "dropped": int((~keep).sum())}
    return keep.nonzero().flatten(), y[keep], soft[keep]


def write_fer2013_csv(path: str | Path, labels, usages, images, header: str = "emotion,pixels,Usage") -> Path:
    """Write a ``fer2013.csv``: one row per image (uint8, 48x48 or any size, flattened row by row)
    with its class index and Usage (``Training``, ``PublicTest`` or ``PrivateTest``). ``header``
    names and orders the columns, as written: ``emotion, Usage, pixels`` gives icml_face_data.csv,
    ``emotion,pixels`` torchvision's train.csv and ``pixels`` its unlabelled test.csv."""
    cols = [h.strip() for h in header.split(",")]
    if "pixels" not in cols or len(set(cols)) != len(cols) or not set(cols) <= {"emotion", "pixels", "Usage"}:
        raise ValueError(f"header {header!r}: pixels and, once each, emotion and Usage are the columns")
    flat = np.asarray(images, dtype=np.uint8).reshape(len(images), -1)
    lut = [str(i) for i in range(256)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        f.write(header + "\n")
        for y, usage, px in zip(labels, usages, flat.tolist()):
            values = {"emotion": str(int(y)), "pixels": " ".join(map(lut.__getitem__, px)), "Usage": str(usage)}
            f.write(",".join(values[c] for c in cols) + "\n")
    return path
