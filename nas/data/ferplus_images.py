"""FER+ as image folders: ``FER2013Train/``, ``FER2013Valid/`` and ``FER2013Test/`` of PNGs,
each with its ``label.csv`` of votes (the layout FER+'s own ``generate_training_data.py``
writes, also under ``data/``).

A ``label.csv`` row is one image: its file name first and the ten vote counts last
(neutral, happiness, surprise, sadness, anger, disgust, fear, contempt, unknown, NF, as in
``fer2013new.csv``); fields between them (FER+'s face box, or a Usage column) are not
read. A header row is allowed. The folder gives the split: Train is Training, Valid
PublicTest, Test PrivateTest.

Labels follow the same rules as the ``fer2013.csv`` + ``fer2013new.csv`` join
(:mod:`nas.data.ferplus`): ``ferplus_majority`` (also what ``fer`` means here, since these
folders carry no FER2013 label) keeps the images with a FER+ majority among the seven
classes; ``ferplus_soft`` keeps those with a vote for one of them and trains on the vote
distribution. Dropped images are counted per split.
"""
from __future__ import annotations

import csv
from pathlib import Path

import torch

from nas.data import ferplus as fp
from nas.data.dataset import FER_CLASSES, SPLITS, FERData
from nas.data.files import read_images, require_path, warn
from nas.runtime.errors import FerNasError

__all__ = ["FOLDERS", "ferplus_images_root", "read_label_csv", "read_ferplus_images"]

#: Folder -> split.
FOLDERS = {"FER2013Train": "Training", "FER2013Valid": "PublicTest", "FER2013Test": "PrivateTest"}
_VOTES = len(fp.FERPLUS_COLUMNS)


def ferplus_images_root(root: Path) -> Path | None:
    """The folder holding the three FER+ folders (``root`` or ``root/data``), or None."""
    for base in (root, root / "data"):
        if all((base / d / "label.csv").is_file() for d in FOLDERS):
            return base
    return None


def read_label_csv(path: Path, skip_bad_rows: bool = False) -> tuple[list[str], torch.Tensor, list[int], int]:
    """``(image names, votes int64 N x 10, line numbers, rows skipped)`` of one ``label.csv``."""
    names, votes, lines, skipped = [], [], [], 0
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            rows = list(csv.reader(f))
    except (UnicodeDecodeError, csv.Error) as e:
        raise FerNasError(f"{path}: not a text CSV file ({e})") from None
    for line_no, row in enumerate(rows, start=1):
        if not any(v.strip() for v in row):
            continue
        counts = [v.strip() for v in row[-_VOTES:]]
        if line_no == 1 and not all(c.isdecimal() for c in counts):
            lower = [c.lower() for c in counts]
            if lower != [c.lower() for c in fp.FERPLUS_COLUMNS]:
                raise FerNasError(f"{path}: line 1: not a FER+ label file (expected an image name and the ten vote "
                                  f"counts {','.join(fp.FERPLUS_COLUMNS)}, found {','.join(row)!r})")
            continue  # a header
        fault = None
        if len(row) < _VOTES + 1:
            fault = f"expected an image name and {_VOTES} vote counts, found {len(row)} fields"
        elif not all(c.isdecimal() for c in counts):
            bad = next(c for c in counts if not c.isdecimal())
            fault = f"{bad!r} is not a non-negative integer vote count"
        elif not row[0].strip():
            fault = "empty image name"
        if fault:
            if not skip_bad_rows:
                raise FerNasError(f"{path}: line {line_no}: {fault}")
            warn(f"skipping {path}: line {line_no}: {fault}")
            skipped += 1
            continue
        names.append(row[0].strip())
        votes.append([int(c) for c in counts])
        lines.append(line_no)
    return names, torch.tensor(votes, dtype=torch.int64).reshape(-1, _VOTES), lines, skipped


def read_ferplus_images(path: str | Path, *, labels: str = "ferplus_majority", skip_bad_rows: bool = False) -> FERData:
    """Read the FER+ image folders (see the module docstring)."""
    root = require_path(path)
    base = ferplus_images_root(root)
    if base is None:
        expected = ", ".join(d + "/label.csv" for d in FOLDERS)
        raise FerNasError(f"{root}: not the FER+ image folders (expected {expected})")
    mode = "ferplus_majority" if labels == "fer" else labels
    if mode not in ("ferplus_majority", "ferplus_soft"):
        raise FerNasError(f"--labels {labels!r}: the FER+ folders take ferplus_majority or ferplus_soft")
    files, all_votes, split, skipped = [], [], [], 0
    for folder, split_name in FOLDERS.items():
        label_csv = base / folder / "label.csv"
        names, votes, lines, n_skip = read_label_csv(label_csv, skip_bad_rows)
        skipped += n_skip
        for name, v, line in zip(names, votes, lines):
            p = base / folder / name
            if not p.is_file():
                msg = f"{label_csv}: line {line}: {name}: missing image"
                if not skip_bad_rows:
                    raise FerNasError(msg)
                warn(f"skipping {msg}")
                skipped += 1
                continue
            files.append(p)
            all_votes.append(v)
            split.append(SPLITS.index(split_name))
    if not files:
        raise FerNasError(f"{base}: no images listed in the label files")
    votes = torch.stack(all_votes)
    split_t = torch.tensor(split, dtype=torch.int64)
    soft, has = fp.soft_labels(votes)
    if mode == "ferplus_majority":
        y = fp.majority_labels(votes)
        keep = y >= 0
    else:
        keep = has
        y = soft.argmax(dim=1)
    dropped = {s: int(((split_t == k) & ~keep).sum()) for k, s in enumerate(SPLITS)}
    pos = keep.nonzero().flatten().tolist()
    images, kept = read_images([files[i] for i in pos], size=(48, 48), skip_bad=skip_bad_rows)
    skipped += len(pos) - len(kept)
    pos = [pos[k] for k in kept]
    idx = torch.tensor(pos, dtype=torch.int64)
    for code, name in enumerate(SPLITS):
        if not (split_t[idx] == code).any():
            raise FerNasError(f"{base}: no {name} images with a FER+ label; every split needs samples")
    meta = {"layout": "FER2013Train/ FER2013Valid/ FER2013Test/ with label.csv votes",
            "files": [files[i].relative_to(base).as_posix() for i in pos],
            "ferplus": {"labels": mode, "dropped": dropped,
                        "rule": "majority of the votes > 1 among the seven classes" if mode == "ferplus_majority"
                        else "vote distribution over the seven classes"},
            "split_from": "the folders (Train, Valid = PublicTest, Test = PrivateTest)"}
    return FERData(images=images, labels=y[idx], split=split_t[idx], classes=list(FER_CLASSES),
                   format="ferplus_images", source=str(base), soft_labels=soft[idx], skipped=skipped, meta=meta)
