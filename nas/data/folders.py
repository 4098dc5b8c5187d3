"""Image-folder readers: the FER2013 ``train/``+``test/`` re-packaging and any ``root/<class>/*``.

FER2013 folders: one subfolder per emotion name under ``train/`` and ``test/``.
When every file is named ``Training_*``, ``PublicTest_*`` or ``PrivateTest_*`` the
original splits are recovered from the names; otherwise ``test/`` is PrivateTest
and a seeded stratified ``val_fraction`` of ``train/`` is PublicTest.
"""
from __future__ import annotations

from pathlib import Path

import torch

from nas.data.dataset import FER_CLASSES, SPLITS, FERData
from nas.data.files import SIDECARS, is_hidden, list_images, read_clean_labels, read_images, rel, require_path, warn
from nas.data.loader import stratified_split
from nas.runtime.errors import FerNasError

__all__ = ["scan_class_folders", "read_fer2013_folders", "read_folder", "is_fer2013_folders"]


def scan_class_folders(root: Path, class_names: list[str] | tuple[str, ...],
                       aliases: dict[str, int] | None = None) -> tuple[list[Path], list[int], int]:
    """Image files under ``root/<class>/`` with their label indices, and how many entries
    were skipped (non-image files, stray files, hidden folders). A class folder whose name
    is not in ``class_names`` (or ``aliases``, matched case-insensitively) is an error."""
    lookup = dict(aliases) if aliases is not None else {c.lower(): i for i, c in enumerate(class_names)}
    paths: list[Path] = []
    labels: list[int] = []
    skipped = 0
    for sub in sorted(root.iterdir()):
        if sub.name in SIDECARS:
            continue
        if is_hidden(sub) or not sub.is_dir():
            warn(f"{sub}: skipping {'folder' if sub.is_dir() else 'file'} (expected one folder per class)")
            skipped += 1
            continue
        label = lookup.get(sub.name.lower())
        if label is None:
            raise FerNasError(f"{sub}: unknown class folder {sub.name!r} (expected {', '.join(sorted(lookup))})")
        files, n_skip = list_images(sub)
        skipped += n_skip
        paths += files
        labels += [label] * len(files)
    return paths, labels, skipped


def is_fer2013_folders(path: Path) -> bool:
    """``train/`` and ``test/``, or one of them holding FER2013 emotion folders (the reader
    then names what is missing)."""
    parts = [path / p for p in ("train", "test") if (path / p).is_dir()]
    if len(parts) == 2:
        return True
    return any(d.is_dir() and d.name.lower() in FER_CLASSES for p in parts for d in p.iterdir())


def read_fer2013_folders(path: str | Path, *, skip_bad_rows: bool = False, seed: int = 0,
                         val_fraction: float = 0.1) -> FERData:
    """Read the Kaggle image-folder re-packaging of FER2013 (48×48, FER2013 classes)."""
    root = require_path(path)
    parts = {}
    skipped = 0
    for part in ("train", "test"):
        d = root / part
        if not d.is_dir():
            raise FerNasError(f"{d}: missing folder (expected train/ and test/ with one subfolder per emotion)")
        files, labels, n_skip = scan_class_folders(d, FER_CLASSES)
        if not files:
            raise FerNasError(f"{d}: no images; every split needs samples")
        parts[part] = (files, labels)
        skipped += n_skip
    files = parts["train"][0] + parts["test"][0]
    labels = torch.tensor(parts["train"][1] + parts["test"][1], dtype=torch.int64)
    images, kept = read_images(files, skip_bad=skip_bad_rows)
    skipped += len(files) - len(kept)
    in_test = torch.arange(len(files)) >= len(parts["train"][0])
    files = [files[i] for i in kept]
    labels, in_test = labels[kept], in_test[kept]
    prefixes = [f.name.split("_", 1)[0] for f in files]
    meta: dict = {}
    if all(pfx in SPLITS for pfx in prefixes):
        split = torch.tensor([SPLITS.index(pfx) for pfx in prefixes], dtype=torch.int64)
        meta["split_from"] = "file names (Training_/PublicTest_/PrivateTest_)"
    else:
        split = torch.where(in_test, SPLITS.index("PrivateTest"), SPLITS.index("Training"))
        train_pos = (~in_test).nonzero().flatten()
        _, val = stratified_split(labels[train_pos], val_fraction, seed)
        split[train_pos[val]] = SPLITS.index("PublicTest")
        meta["split_from"] = f"test/ is PrivateTest; PublicTest is a stratified {val_fraction:g} of train/ (seed {seed})"
    for code, name in enumerate(SPLITS):
        if not (split == code).any():
            raise FerNasError(f"{root}: no {name} images; every split needs samples")
    keys = [rel(f, root) for f in files]
    meta["files"] = keys
    return FERData(images=images, labels=labels, split=split, classes=list(FER_CLASSES), format="fer2013_folders",
                   source=str(root), clean_labels=read_clean_labels(root, keys, len(FER_CLASSES)),
                   skipped=skipped, meta=meta)


def read_folder(path: str | Path, *, classes: list[str] | None = None, skip_bad_rows: bool = False) -> FERData:
    """Read any ``root/<class>/*`` image folder; classes are the sorted folder names, or
    ``classes`` in the given order (then a folder not in the list is an error). All
    samples are in the Training split."""
    root = require_path(path)
    if not root.is_dir():
        raise FerNasError(f"{root}: not a folder (expected root/<class>/ image folders)")
    if classes is None:
        names = sorted(d.name for d in root.iterdir() if d.is_dir() and not is_hidden(d))
        aliases = {n.lower(): i for i, n in enumerate(names)}
    else:
        names = list(classes)
        aliases = {n.lower(): i for i, n in enumerate(names)}
        if len(aliases) != len(names):
            raise FerNasError(f"--classes {','.join(names)}: repeated class name")
    files, labels, skipped = scan_class_folders(root, names, aliases)
    if not files:
        raise FerNasError(f"{root}: no images in class folders (expected root/<class>/*.png)")
    images, kept = read_images(files, skip_bad=skip_bad_rows)
    skipped += len(files) - len(kept)
    files = [files[i] for i in kept]
    keys = [rel(f, root) for f in files]
    return FERData(images=images, labels=torch.tensor(labels, dtype=torch.int64)[kept],
                   split=torch.zeros(len(kept), dtype=torch.int64), classes=names, format="folder",
                   source=str(root), clean_labels=read_clean_labels(root, keys, len(names)), skipped=skipped,
                   meta={"files": keys})
