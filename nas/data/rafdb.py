"""RAF-DB (basic): the official layout and the common ``train/1..7`` re-packaging.

Official: ``basic/EmoLabel/list_patition_label.txt`` (lines ``train_00001.jpg 5``; labels
1-7 = surprise, fear, disgust, happiness, sadness, anger, neutral) with the images in
``basic/Image/aligned/`` (``train_00001_aligned.jpg``, 100x100 colour; preferred) or
``basic/Image/original/``. Re-packaged: ``train/<1..7>/`` and ``test/<1..7>/`` folders of
the aligned images. ``train`` is Training (a stratified part PublicTest), ``test`` is
PrivateTest.
"""
from __future__ import annotations

from pathlib import Path

from nas.data.dataset import FER_CLASSES, FERData
from nas.data.files import is_hidden, require_path, warn
from nas.data.labelmap import NATIVE
from nas.data.wild import Samples, build_wild, scan_part_folders
from nas.runtime.errors import FerNasError

__all__ = ["LIST_FILE", "rafdb_label_file", "is_rafdb_folders", "read_rafdb"]

LIST_FILE = Path("EmoLabel") / "list_patition_label.txt"
#: The re-packaging's folder names: RAF-DB's label numbers.
_FOLDERS = frozenset(str(k) for k in NATIVE["rafdb"])


def rafdb_label_file(root: Path) -> Path | None:
    """The label list of a RAF-DB folder (``root`` or ``root/basic``), or None."""
    for base in (root, root / "basic"):
        if (base / LIST_FILE).is_file():
            return base / LIST_FILE
    return None


def is_rafdb_folders(root: Path) -> bool:
    """``train/`` and ``test/`` whose subfolders are RAF-DB's label numbers 1-7."""
    parts = [root / p for p in ("train", "test")]
    if not all(p.is_dir() for p in parts):
        return False
    names = {d.name for p in parts for d in p.iterdir() if d.is_dir() and not is_hidden(d)}
    return bool(names) and names <= _FOLDERS


def _read_list(label_file: Path, skip_bad_rows: bool) -> tuple[Samples, int]:
    base = label_file.parent.parent
    aligned, original = base / "Image" / "aligned", base / "Image" / "original"
    use_aligned = aligned.is_dir()
    if not use_aligned and not original.is_dir():
        raise FerNasError(f"{base / 'Image'}: missing aligned/ or original/ image folder")
    s, skipped = Samples(), 0
    with label_file.open(encoding="utf-8", errors="replace") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{label_file}: line {line_no}"
            fields = line.split()
            problem = None
            if len(fields) != 2:
                problem = f"expected 'image_name label', found {len(fields)} field(s)"
            elif not fields[1].isdecimal() or int(fields[1]) not in NATIVE["rafdb"]:
                problem = f"label {fields[1]!r} is not one of RAF-DB's 1-7"
            elif not fields[0].startswith(("train_", "test_")):
                problem = f"image name {fields[0]!r} does not start with train_ or test_"
            if problem:
                if not skip_bad_rows:
                    raise FerNasError(f"{where}: {problem}")
                warn(f"skipping {where}: {problem}")
                skipped += 1
                continue
            name = fields[0]
            stem, dot, ext = name.rpartition(".")
            path = aligned / f"{stem}_aligned.{ext}" if use_aligned else original / name
            s.add(path, int(fields[1]), name.startswith("test_"), f"{where}: {path.name}")
    if not s.paths:
        raise FerNasError(f"{label_file}: no samples")
    return s, skipped


def read_rafdb(path: str | Path, *, image_size: int = 48, skip_bad_rows: bool = False, seed: int = 0,
               val_fraction: float = 0.1, cache_dir: str | Path | None = None) -> FERData:
    """Read RAF-DB basic in either layout (see the module docstring)."""
    root = require_path(path)
    label_file = rafdb_label_file(root)
    if label_file is not None:
        samples, skipped = _read_list(label_file, skip_bad_rows)
        layout = "official list " + str(LIST_FILE) + (" + aligned images" if (label_file.parent.parent / "Image" /
                                                                               "aligned").is_dir() else " + original images")
    elif is_rafdb_folders(root):
        samples, skipped = scan_part_folders(root, "train", "test",
                                             lambda n: int(n) if n in _FOLDERS else None,
                                             "RAF-DB's labels 1-7")
        layout = "train/<1..7>/ and test/<1..7>/ folders"
    else:
        raise FerNasError(f"{root}: not RAF-DB (no {LIST_FILE} and no train/1..7 + test/1..7 folders)")
    return build_wild(samples, dataset="rafdb", fmt="rafdb", root=root, classes=list(FER_CLASSES),
                      image_size=image_size, seed=seed, val_fraction=val_fraction, skip_bad_rows=skip_bad_rows,
                      skipped=skipped, meta={"layout": layout}, cache_dir=cache_dir)
