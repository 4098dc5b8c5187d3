"""File-level helpers shared by the readers: listing and decoding images,
one-line warnings, and the SynthFER clean-label sidecar."""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import torch

from nas.runtime.errors import FerNasError

__all__ = ["IMAGE_EXTS", "SIDECARS", "warn", "require_path", "list_images", "read_images", "read_clean_labels", "rel", "is_hidden",
           "decode_image"]

#: File name endings treated as images; anything else in an image folder is skipped with a warning.
IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".pgm", ".ppm", ".webp"})


#: Files a dataset folder may hold beside its images, read by the readers themselves.
SIDECARS = frozenset({"clean_labels.csv"})


def warn(message: str) -> None:
    """One line on stderr (data problems that are skipped rather than fatal)."""
    print("warning: " + " ".join(message.split()), file=sys.stderr)


def require_path(path: str | Path) -> Path:
    """``path`` as a Path, or a one-line error when it does not exist."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FerNasError(f"{p}: no such file or folder")
    return p


def rel(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` in POSIX form (keys of the clean-label sidecar)."""
    return path.relative_to(root).as_posix()


def list_images(folder: Path) -> tuple[list[Path], int]:
    """Image files directly inside ``folder``, sorted by name, and the number of
    other entries skipped (each with a one-line warning: ``.DS_Store``, ``Thumbs.db``,
    notes, nested folders)."""
    files: list[Path] = []
    skipped = 0
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_EXTS and not p.name.startswith("."):
            files.append(p)
        else:
            what = "folder" if p.is_dir() else "non-image file"
            warn(f"{p}: skipping {what} (not one of {', '.join(sorted(IMAGE_EXTS))})")
            skipped += 1
    return files, skipped


def decode_image(path: Path) -> np.ndarray:
    """One image as a uint8 H×W grayscale array; a file that fails to decode is an error."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise FerNasError(f"{path}: cannot decode image ({e.__class__.__name__}: {e})") from None


def read_images(paths: list[Path], size: tuple[int, int] | None = None,
                skip_bad: bool = False) -> tuple[torch.Tensor, list[int]]:
    """Decode ``paths`` into one uint8 N×1×H×W tensor and the positions kept. All images
    must share one size (``size`` when given, else the first image's). An image that fails
    to decode or has another size is an error naming it, or with ``skip_bad`` a warning
    (the caller counts ``len(paths) - len(kept)``)."""
    arrays, kept = [], []
    for i, p in enumerate(paths):
        try:
            a = decode_image(p)
            if size is None:
                size = (int(a.shape[0]), int(a.shape[1]))
            if a.shape != size:
                raise FerNasError(f"{p}: image is {a.shape[1]}x{a.shape[0]}, expected {size[1]}x{size[0]} "
                                  "like the others")
        except FerNasError as e:
            if not skip_bad:
                raise
            warn(f"skipping {e}")
            continue
        arrays.append(a)
        kept.append(i)
    if not arrays:
        return torch.zeros(0, 1, *(size or (48, 48)), dtype=torch.uint8), kept
    return torch.from_numpy(np.stack(arrays)).unsqueeze(1), kept


def is_hidden(p: Path) -> bool:
    """Folders and files a reader passes over: dot-names and macOS zip debris."""
    return p.name.startswith(".") or p.name == "__MACOSX"


def read_clean_labels(root: Path, keys: list[str], num_classes: int) -> torch.Tensor | None:
    """The SynthFER sidecar ``root/clean_labels.csv`` (header ``file,clean_label``) as an
    int64 tensor aligned with ``keys`` (row indices as text for CSV exports, relative paths
    for folder exports); -1 where a sample has no entry. None when there is no sidecar."""
    path = root / "clean_labels.csv"
    if not path.is_file():
        return None
    table: dict[str, int] = {}
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        if header != ["file", "clean_label"]:
            raise FerNasError(f"{path}: line 1: wrong header {','.join(header)!r} (expected file,clean_label)")
        for line, row in enumerate(reader, start=2):
            if len(row) != 2:
                raise FerNasError(f"{path}: line {line}: expected 2 fields, found {len(row)}")
            try:
                value = int(row[1])
            except ValueError:
                raise FerNasError(f"{path}: line {line}: clean_label {row[1]!r} is not an integer") from None
            if not 0 <= value < num_classes:
                raise FerNasError(f"{path}: line {line}: clean_label {value} outside 0-{num_classes - 1}")
            table[row[0].strip()] = value
    return torch.tensor([table.get(k, -1) for k in keys], dtype=torch.int64)
