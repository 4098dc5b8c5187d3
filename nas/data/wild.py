"""What the in-the-wild readers (RAF-DB, AffectNet) share: a list of samples (image, face
box, native label, official part) turned into one :class:`FERData`.

Native labels are mapped by name (:mod:`nas.data.labelmap`); samples of a class the
toolkit's classes lack are dropped and counted. The dataset's own test part is
PrivateTest, and a seeded stratified ``val_fraction`` of its training part is PublicTest
(model selection never sees the official test part).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from nas.data.crops import Box, cached_faces, preprocess_record
from nas.data.dataset import SPLITS, FERData
from nas.data.files import is_hidden, list_images, read_clean_labels, warn
from nas.data.labelmap import NATIVE, native_lookup
from nas.data.loader import stratified_split
from nas.runtime.errors import FerNasError

__all__ = ["Samples", "scan_part_folders", "build_wild"]


@dataclass
class Samples:
    """Samples as a reader listed them, before decoding."""

    paths: list[Path] = field(default_factory=list)
    boxes: list[Box | None] = field(default_factory=list)
    native: list[int] = field(default_factory=list)
    test: list[bool] = field(default_factory=list)
    where: list[str] = field(default_factory=list)
    extra: dict[str, list[float]] = field(default_factory=dict)

    def add(self, path: Path, native: int, test: bool, where: str, box: Box | None = None, **extra: float) -> None:
        """Record one image: its path, native label, split, where it came from (for messages), box and extra columns."""
        self.paths.append(path)
        self.boxes.append(box)
        self.native.append(native)
        self.test.append(test)
        self.where.append(where)
        for k, v in extra.items():
            self.extra.setdefault(k, []).append(v)


def scan_part_folders(root: Path, train: str, test: str, native_of: Callable[[str], int | None],
                      expected: str) -> tuple[Samples, int]:
    """Samples of the ``root/<train|test>/<class>/`` re-packagings; ``native_of`` turns a
    folder name into the dataset's native index (None: an unknown folder, an error)."""
    s, skipped = Samples(), 0
    for part in (train, test):
        for sub in sorted((root / part).iterdir()):
            if is_hidden(sub) or not sub.is_dir():
                warn(f"{sub}: skipping (expected one folder per class)")
                skipped += 1
                continue
            native = native_of(sub.name)
            if native is None:
                raise FerNasError(f"{sub}: unknown class folder {sub.name!r} (expected {expected})")
            files, n_skip = list_images(sub)
            skipped += n_skip
            for p in files:
                s.add(p, native, part == test, str(p))
    return s, skipped


def build_wild(samples: Samples, *, dataset: str, fmt: str, root: Path, classes: list[str], image_size: int,
               seed: int, val_fraction: float, skip_bad_rows: bool, skipped: int = 0,
               meta: dict | None = None, cache_dir: str | Path | None = None) -> FERData:
    """Map, decode and split ``samples`` (see the module docstring). Decoded faces are cached
    in ``cache_dir`` (default ``root/.fernas_cache``; ``"off"``: never)."""
    lookup = native_lookup(dataset, classes)
    keep = [i for i, n in enumerate(samples.native) if n in lookup]
    dropped = len(samples.native) - len(keep)
    cache = None if str(cache_dir) == "off" else Path(cache_dir) if cache_dir is not None else root / ".fernas_cache"
    images, kept, how = cached_faces([samples.paths[i] for i in keep], [samples.boxes[i] for i in keep], image_size,
                                     cache, where=[samples.where[i] for i in keep], skip_bad=skip_bad_rows)
    skipped += len(keep) - len(kept)
    pos = [keep[k] for k in kept]
    if not pos:
        raise FerNasError(f"{root}: no readable images")
    native = torch.tensor([samples.native[i] for i in pos], dtype=torch.int64)
    labels = torch.tensor([lookup[samples.native[i]] for i in pos], dtype=torch.int64)
    test = torch.tensor([samples.test[i] for i in pos], dtype=torch.bool)
    split = torch.where(test, SPLITS.index("PrivateTest"), SPLITS.index("Training"))
    train_pos = (~test).nonzero().flatten()
    _, val = stratified_split(labels[train_pos], val_fraction, seed)
    split[train_pos[val]] = SPLITS.index("PublicTest")
    for code, name in enumerate(SPLITS):
        if not (split == code).any():
            raise FerNasError(f"{root}: no {name} images; every split needs samples")
    info = dict(meta or {})
    info.update({
        "files": [Path(samples.paths[i]).relative_to(root).as_posix() if Path(samples.paths[i]).is_relative_to(root)
                  else str(samples.paths[i]) for i in pos],
        "native_labels": native.tolist(),
        "label_map": {"dataset": dataset, "native": {str(k): v for k, v in NATIVE[dataset].items()},
                      "to_toolkit": {str(k): classes[v] for k, v in sorted(lookup.items())}},
        "dropped_classes": dropped,
        "cache": how if cache is None or how == "uncached" else f"{how} ({cache})",
        "split_from": info.get("split_from") or f"the official test part is PrivateTest; PublicTest is a "
                                                f"stratified {val_fraction:g} of the training part (seed {seed})",
        "preprocess": preprocess_record(image_size, "the dataset's face box" if any(
            samples.boxes[i] is not None for i in pos) else None),
    })
    for k, values in samples.extra.items():
        info[k] = [values[i] for i in pos]
    return FERData(images=images, labels=labels, split=split, classes=list(classes), format=fmt, source=str(root),
                   clean_labels=read_clean_labels(root, info["files"], len(classes)), skipped=skipped, meta=info)
