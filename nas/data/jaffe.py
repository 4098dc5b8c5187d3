"""JAFFE reader: ``<subject>.<EXPR><n>.<id>.tiff`` files (e.g. ``KA.AN1.39.tiff``), 256×256.

The expression code is mapped by name into FER2013 order (never by alphabetical
position); the face is cropped with a fixed box and resized (antialiased) to 48×48.
The default box, rows 48..208 and columns 48..208 of a 256×256 image, frames the
face of the JAFFE photographs (and SynthFER's JAFFE export is drawn to match);
other image sizes scale the box proportionally. All samples are Training.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F

from nas.data.dataset import FER_CLASSES, FERData
from nas.data.files import IMAGE_EXTS, SIDECARS, is_hidden, read_clean_labels, read_images, rel, require_path, warn
from nas.runtime.errors import FerNasError

__all__ = ["JAFFE_CODES", "DEFAULT_CROP", "read_jaffe", "is_jaffe", "crop_resize"]

#: JAFFE expression code -> FER2013 label index.
JAFFE_CODES = {"AN": 0, "DI": 1, "FE": 2, "HA": 3, "SA": 4, "SU": 5, "NE": 6}
#: (top, left, height, width) of the face in a 256×256 JAFFE image.
DEFAULT_CROP = (48, 48, 160, 160)
# fullmatch + ASCII: "$" would also match before a trailing newline, and \d any Unicode digit.
_NAME = re.compile(r"([A-Za-z]{2})\.([A-Za-z]{2})(\d+)\.(\d+)", re.ASCII)


def is_jaffe(path: Path) -> bool:
    """Whether a folder holds JAFFE's .tiff files at its top level."""
    return any(p.suffix.lower() in (".tif", ".tiff") for p in path.iterdir() if p.is_file())


def crop_resize(images: torch.Tensor, box: tuple[int, int, int, int], size: int = 48) -> torch.Tensor:
    """Crop ``box`` = (top, left, height, width) from uint8 N×1×H×W and resize it to
    ``size``×``size`` with antialiased bilinear filtering; uint8 out."""
    top, left, h, w = box
    crop = images[:, :, top:top + h, left:left + w].float()
    out = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8)


def read_jaffe(path: str | Path, *, jaffe_crop: tuple[int, int, int, int] | None = None,
               skip_bad_rows: bool = False) -> FERData:
    """Read a JAFFE folder of tiffs; subjects from the name (``KA``), labels from the code (``AN``)."""
    root = require_path(path)
    if not root.is_dir():
        raise FerNasError(f"{root}: not a folder (expected JAFFE *.tiff files)")
    files, labels, subjects, skipped = [], [], [], 0
    for p in sorted(root.iterdir()):
        if p.name in SIDECARS:
            continue
        if is_hidden(p) or not p.is_file() or p.suffix.lower() not in IMAGE_EXTS:
            warn(f"{p}: skipping {'folder' if p.is_dir() else 'non-image file'} (expected JAFFE *.tiff files)")
            skipped += 1
            continue
        m = _NAME.fullmatch(p.stem)
        code = m.group(2).upper() if m else None
        if m is None or code not in JAFFE_CODES:
            what = f"unknown expression code {code!r} (expected {', '.join(JAFFE_CODES)})" if m else \
                "name does not parse (expected <subject>.<EXPR><n>.<id>.tiff, e.g. KA.AN1.39.tiff)"
            raise FerNasError(f"{p}: JAFFE {what}")
        files.append(p)
        labels.append(JAFFE_CODES[code])
        subjects.append(m.group(1).upper())
    if not files:
        raise FerNasError(f"{root}: no JAFFE images (*.tiff)")
    raw, kept = read_images(files, skip_bad=skip_bad_rows)
    skipped += len(files) - len(kept)
    H, W = raw.shape[-2:]
    box = tuple(jaffe_crop) if jaffe_crop is not None else \
        tuple(round(v * s / 256) for v, s in zip(DEFAULT_CROP, (H, W, H, W)))
    top, left, h, w = box if len(box) == 4 else (-1, -1, 0, 0)
    if min(top, left) < 0 or h < 1 or w < 1 or top + h > H or left + w > W:
        raise FerNasError(f"--jaffe_crop {','.join(map(str, box))}: box (top,left,height,width) must lie "
                          f"inside the {W}x{H} images")
    keys = [rel(files[i], root) for i in kept]
    return FERData(images=crop_resize(raw, box), labels=torch.tensor(labels, dtype=torch.int64)[kept],
                   split=torch.zeros(len(kept), dtype=torch.int64), classes=list(FER_CLASSES), format="jaffe",
                   source=str(root), subjects=[subjects[i] for i in kept],
                   clean_labels=read_clean_labels(root, keys, len(FER_CLASSES)), skipped=skipped,
                   meta={"files": keys, "crop": list(box)})
