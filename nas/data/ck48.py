"""CK+48 reader: ``anger/ contempt/ disgust/ fear/ happy/ sadness/ surprise/`` folders of
48×48 images named ``S<subject>_<sequence>_<frame>.png``.

CK+ has contempt and no neutral, so its class list is FER2013's with neutral
replaced by contempt at index 6: the six shared expressions keep their FER2013
indices and a FER-trained model transfers head-first. All samples are Training;
the subject ids drive subject-independent folds.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from nas.data.dataset import FERData
from nas.data.files import read_clean_labels, read_images, rel, require_path
from nas.data.folders import scan_class_folders
from nas.runtime.errors import FerNasError

__all__ = ["CK48_CLASSES", "CK48_FOLDERS", "read_ck48", "is_ck48"]

CK48_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "contempt")
#: CK+48 folder name -> label index in CK48_CLASSES.
CK48_FOLDERS = {"anger": 0, "disgust": 1, "fear": 2, "happy": 3, "sadness": 4, "surprise": 5, "contempt": 6}
# fullmatch + ASCII: "$" would also match before a trailing newline, and \d any Unicode digit.
_NAME = re.compile(r"(S\d+)_(\d+)_(\d+)", re.ASCII)


def is_ck48(path: Path) -> bool:
    """Class folders with at least one CK+-only name (anger, sadness, contempt); the reader
    rejects any folder that is not a CK+48 class rather than guessing its index."""
    subs = {d.name.lower() for d in path.iterdir() if d.is_dir() and not d.name.startswith(".")}
    return bool(subs & {"anger", "sadness", "contempt"})


def read_ck48(path: str | Path, *, skip_bad_rows: bool = False) -> FERData:
    """Read a CK+48 folder; subject ids (``S010``) come from the file names."""
    root = require_path(path)
    if not root.is_dir():
        raise FerNasError(f"{root}: not a folder (expected CK+48 class folders anger, contempt, ...)")
    files, labels, skipped = scan_class_folders(root, CK48_CLASSES, CK48_FOLDERS)
    subjects = []
    for f in files:
        m = _NAME.fullmatch(f.stem)
        if m is None:
            raise FerNasError(f"{f}: CK+ file name does not parse (expected S<subject>_<sequence>_<frame>, "
                              "e.g. S010_004_00000017.png)")
        subjects.append(m.group(1))
    if not files:
        raise FerNasError(f"{root}: no images in the CK+48 class folders")
    images, kept = read_images(files, skip_bad=skip_bad_rows)
    skipped += len(files) - len(kept)
    keys = [rel(files[i], root) for i in kept]
    return FERData(images=images, labels=torch.tensor(labels, dtype=torch.int64)[kept],
                   split=torch.zeros(len(kept), dtype=torch.int64), classes=list(CK48_CLASSES), format="ck48",
                   source=str(root), subjects=[subjects[i] for i in kept],
                   clean_labels=read_clean_labels(root, keys, len(CK48_CLASSES)), skipped=skipped,
                   meta={"files": keys})
