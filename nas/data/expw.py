"""ExpW (Expression in-the-Wild): ``label/label.lst`` and the photos in ``image/origin/``.

Each line of ``label.lst`` is one face: ``image_name face_id top left right bottom
confidence expression``, with the face box in pixels of the photo, the face detector's
confidence, and the expression 0-6 in FER2013's order (angry, disgust, fear, happy, sad,
surprise, neutral; mapped by name like every dataset, :mod:`nas.data.labelmap`). Faces are
cropped by their boxes, made grey and resized like RAF-DB's and AffectNet's
(:mod:`nas.data.wild`, the cache included). ``min_confidence`` drops (and counts) faces
the detector was less sure of.

ExpW has no official split. PrivateTest is a seeded ``val_fraction`` of the *photos* (all
faces of a photo on one side, so one person's face in a group picture is never both
trained on and tested), and PublicTest a seeded stratified ``val_fraction`` of the rest.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from nas.data.dataset import FER_CLASSES, FERData
from nas.data.files import require_path, warn
from nas.data.wild import Samples, build_wild
from nas.runtime.errors import FerNasError

__all__ = ["FIELDS", "expw_label_file", "read_expw"]

FIELDS = ("image_name", "face_id", "top", "left", "right", "bottom", "confidence", "expression")
_LABEL_FILES = ("label/label.lst", "label.lst")
_IMAGE_DIRS = ("image/origin", "origin", "image", "images")


def expw_label_file(root: Path) -> Path | None:
    """ExpW's ``label.lst`` under ``root`` (``label/label.lst`` or ``label.lst``), or None."""
    return next((root / f for f in _LABEL_FILES if (root / f).is_file()), None)


def _image_dir(root: Path, label_file: Path) -> Path:
    for base in (root, label_file.parent.parent):
        for d in _IMAGE_DIRS:
            if (base / d).is_dir():
                return base / d
    raise FerNasError(f"{root}: ExpW photos not found (expected image/origin/ beside label/)")


def _parse(line: str) -> tuple[str, tuple[int, int, int, int], float, int]:
    fields = line.split()
    if len(fields) != len(FIELDS):
        raise ValueError(f"expected {len(FIELDS)} fields ({' '.join(FIELDS)}), found {len(fields)}")
    try:
        top, left, right, bottom = (int(float(v)) for v in fields[2:6])
        confidence = float(fields[6])
        expression = int(fields[7])
    except ValueError as e:
        raise ValueError(f"bad number ({e})") from None
    if not 0 <= expression <= 6:
        raise ValueError(f"expression {expression} is not one of ExpW's 0-6")
    if right <= left or bottom <= top:
        raise ValueError(f"empty face box (top {top}, left {left}, right {right}, bottom {bottom})")
    return fields[0], (left, top, right - left, bottom - top), confidence, expression


def _photo_test_split(names: list[str], fraction: float, seed: int) -> np.ndarray:
    """True for the faces of a seeded ``fraction`` of the distinct photos."""
    photos = sorted(set(names))
    rng = np.random.default_rng(seed)
    n_test = max(1, round(fraction * len(photos))) if len(photos) > 1 else 0
    test_photos = {photos[i] for i in rng.permutation(len(photos))[:n_test]}
    return np.array([n in test_photos for n in names], dtype=bool)


def read_expw(path: str | Path, *, image_size: int = 48, min_confidence: float | None = None,
              skip_bad_rows: bool = False, seed: int = 0, val_fraction: float = 0.1,
              cache_dir: str | Path | None = None) -> FERData:
    """Read ExpW (see the module docstring). A line that does not parse, an expression out
    of range, a missing photo or a box outside it is one line naming ``label.lst`` and the
    line, or with ``skip_bad_rows`` a warning and counted."""
    root = require_path(path)
    label_file = expw_label_file(root)
    if label_file is None:
        raise FerNasError(f"{root}: not ExpW (no label/label.lst)")
    images = _image_dir(root, label_file)
    names, boxes, confidences, native, where, skipped, low = [], [], [], [], [], 0, 0
    with label_file.open(encoding="utf-8-sig") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            here = f"{label_file}: line {line_no}"
            try:
                name, box, confidence, expression = _parse(line)
            except ValueError as e:
                if not skip_bad_rows:
                    raise FerNasError(f"{here}: {e}") from None
                warn(f"skipping {here}: {e}")
                skipped += 1
                continue
            if min_confidence is not None and confidence < min_confidence:
                low += 1
                continue
            names.append(name)
            boxes.append(box)
            confidences.append(confidence)
            native.append(expression)
            where.append(f"{here}: {name}")
    if not names:
        raise FerNasError(f"{label_file}: no faces" + (f" at confidence >= {min_confidence}" if low else ""))
    test = _photo_test_split(names, val_fraction, seed)
    samples = Samples()
    for k, name in enumerate(names):
        samples.add(images / name, native[k], bool(test[k]), where[k], box=boxes[k], confidence=confidences[k])
    meta = {"layout": "label/label.lst + image/origin/ (face boxes)", "min_confidence": min_confidence,
            "low_confidence_dropped": low,
            "split_from": f"by photo: PrivateTest is {val_fraction:g} of the photos (seed {seed}), no photo on both "
                          f"sides; PublicTest is a stratified {val_fraction:g} of the rest"}
    return build_wild(samples, dataset="expw", fmt="expw", root=root, classes=list(FER_CLASSES),
                      image_size=image_size, seed=seed, val_fraction=val_fraction, skip_bad_rows=skip_bad_rows,
                      skipped=skipped, meta=meta, cache_dir=cache_dir)
