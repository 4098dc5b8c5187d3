"""Colour photographs of any size -> the toolkit's uint8 grey faces (RAF-DB, AffectNet).

Each image is decoded by Pillow, cropped to its face box when the dataset gives one,
converted to grey with the ITU-R 601-2 luma weights (``L = 0.299 R + 0.587 G + 0.114 B``,
Pillow's ``convert("L")``) and resized to ``size`` x ``size`` with Pillow's bilinear
filter, which widens its support when shrinking (antialiased, like torchvision's
``Resize(antialias=True)``). :data:`PREPROCESS` records exactly that in a dataset's
metadata, and the trainer copies it into every checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from nas.data.files import warn
from nas.runtime.errors import FerNasError

__all__ = ["Box", "PREPROCESS", "CACHE_MIN", "preprocess_record", "decode_face", "decode_faces", "cached_faces"]

#: ``(x, y, width, height)`` in the image's pixels.
Box = tuple[int, int, int, int]

PREPROCESS = {"grey": "ITU-R 601-2 luma, L = 0.299 R + 0.587 G + 0.114 B (Pillow convert('L'))",
              "resize": "Pillow bilinear, antialiased when shrinking"}

#: Datasets with fewer faces than this are decoded every time (a cache would not pay).
CACHE_MIN = 1000
#: Faces per task of a decoding worker, and the size from which workers are started.
_CHUNK, _PARALLEL_MIN = 1024, 4096
_CACHE_VERSION = 1

#: A face box may run off the image by this share of its area (it is clipped); more is bad input.
MAX_OFF_IMAGE = 0.5


def preprocess_record(size: int, cropped: str | None = None) -> dict[str, object]:
    """What a reader did to its images, for ``FERData.meta['preprocess']`` and checkpoints."""
    rec: dict[str, object] = {"image_size": int(size), **PREPROCESS}
    if cropped:
        rec["crop"] = cropped
    return rec


def _clip(box: Box, width: int, height: int) -> tuple[int, int, int, int] | str:
    x, y, w, h = box
    if w <= 0 or h <= 0:
        return f"face box {x},{y},{w},{h} is empty"
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
    inside = max(x1 - x0, 0) * max(y1 - y0, 0)
    if inside < (1 - MAX_OFF_IMAGE) * w * h:
        return f"face box {x},{y},{w},{h} lies outside the {width}x{height} image"
    return x0, y0, x1, y1


def decode_face(path: Path, box: Box | None, size: int) -> np.ndarray | str:
    """One face as a uint8 ``size`` x ``size`` array, or the reason it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
        with Image.open(path) as im:
            im.load()
            if box is not None:
                region = _clip(box, im.width, im.height)
                if isinstance(region, str):
                    return region
                im = im.crop(region)
            grey = im.convert("L")
            if grey.size != (size, size):
                grey = grey.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(grey, dtype=np.uint8)
    except FileNotFoundError:
        return "missing image"
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        return f"cannot decode image ({e.__class__.__name__}: {' '.join(str(e).split())})"


def _decode_chunk(job: tuple[list[Path], list[Box | None], int]) -> tuple[np.ndarray, dict[int, str]]:
    """A worker's task: faces (K x size x size; zeros where bad) and the bad ones' reasons."""
    paths, boxes, size = job
    out = np.zeros((len(paths), size, size), dtype=np.uint8)
    bad: dict[int, str] = {}
    for k, (p, b) in enumerate(zip(paths, boxes)):
        face = decode_face(p, b, size)
        if isinstance(face, str):
            bad[k] = face
        else:
            out[k] = face
    return out, bad


def decode_faces(paths: Sequence[Path], boxes: Sequence[Box | None] | None, size: int, *,
                 where: Sequence[str] | None = None, skip_bad: bool = False, progress: bool | None = None,
                 workers: int | None = None) -> tuple[torch.Tensor, list[int]]:
    """Decode every face into one uint8 N x 1 x size x size tensor, and the positions kept.

    ``where[i]`` names sample ``i`` in messages (``labels.txt: line 12: img.jpg``). A face
    that cannot be read is a one-line error, or with ``skip_bad`` a warning and left out.
    From 4,096 faces on, ``workers`` processes (default: one per CPU) decode chunks of 1,024."""
    out, bad = _decode_all(paths, boxes, size, progress, workers)
    faces, kept, _ = _keep_good(out, bad, paths, where, skip_bad)
    return faces, kept


def _decode_all(paths: Sequence[Path], boxes: Sequence[Box | None] | None, size: int, progress: bool | None,
                workers: int | None) -> tuple[np.ndarray, dict[int, str]]:
    n = len(paths)
    boxes = list(boxes) if boxes is not None else [None] * n
    jobs = [(list(paths[a:a + _CHUNK]), boxes[a:a + _CHUNK], size) for a in range(0, n, _CHUNK)]
    workers = workers or os.cpu_count() or 1
    show = sys.stderr.isatty() if progress is None else progress
    bar = None
    if show and n > 500:
        from tqdm import tqdm

        bar = tqdm(total=n, desc="decoding faces", unit="img", leave=False)
    out = np.zeros((n, size, size), dtype=np.uint8)
    bad: dict[int, str] = {}
    if n >= _PARALLEL_MIN and workers > 1:
        # spawn, not fork: the parent may hold torch's thread pools
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=get_context("spawn")) as pool:
            results = pool.map(_decode_chunk, jobs)
            for j, (faces, errs) in enumerate(results):
                out[j * _CHUNK:j * _CHUNK + len(faces)] = faces
                bad.update({j * _CHUNK + k: v for k, v in errs.items()})
                if bar is not None:
                    bar.update(len(faces))
    else:
        for j, job in enumerate(jobs):
            faces, errs = _decode_chunk(job)
            out[j * _CHUNK:j * _CHUNK + len(faces)] = faces
            bad.update({j * _CHUNK + k: v for k, v in errs.items()})
            if bar is not None:
                bar.update(len(faces))
    if bar is not None:
        bar.close()
    return out, bad


def _keep_good(out: np.ndarray, bad: dict[int, str], paths: Sequence[Path], where: Sequence[str] | None,
               skip_bad: bool) -> tuple[torch.Tensor, list[int], list[str]]:
    """The good faces as a tensor, their positions, and the warnings given for the bad ones."""
    messages = []
    for i in sorted(bad):
        msg = f"{where[i] if where is not None else paths[i]}: {bad[i]}"
        if not skip_bad:
            raise FerNasError(msg)
        messages.append(f"skipping {msg}")
        warn(messages[-1])
    kept = [i for i in range(len(out)) if i not in bad]
    return torch.from_numpy(out[kept] if bad else out).unsqueeze(1), kept, messages


def _cache_key(paths: Sequence[Path], boxes: Sequence[Box | None], size: int, skip_bad: bool) -> str:
    h = hashlib.sha256(json.dumps([_CACHE_VERSION, size, skip_bad, PREPROCESS]).encode())
    for p, b in zip(paths, boxes):
        try:
            st = os.stat(p)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        h.update(f"{p}\0{stamp}\0{b}\n".encode())
    return h.hexdigest()[:24]


def cached_faces(paths: Sequence[Path], boxes: Sequence[Box | None], size: int, cache_dir: Path | None, *,
                 where: Sequence[str] | None = None, skip_bad: bool = False) -> tuple[torch.Tensor, list[int], str]:
    """:func:`decode_faces` through a cache: the first run writes the faces as one raw uint8
    file (and a JSON of the positions kept) in ``cache_dir``; later runs memory-map it. The
    key covers every file's path, size and mtime, the boxes, the size and the conversion, so
    a changed image decodes again. Returns (faces, kept, how: decoded|cached|uncached)."""
    if cache_dir is None or len(paths) < CACHE_MIN:
        return (*decode_faces(paths, boxes, size, where=where, skip_bad=skip_bad), "uncached")
    key = _cache_key(paths, boxes, size, skip_bad)
    raw, info_path = cache_dir / f"faces-{size}px-{key}.u8", cache_dir / f"faces-{size}px-{key}.json"
    try:
        info = json.loads(info_path.read_text())
        n = len(info["kept"])
        if raw.stat().st_size == n * size * size:
            for msg in info.get("warnings", []):
                warn(msg)
            faces = torch.from_file(str(raw), shared=False, size=n * size * size, dtype=torch.uint8)
            return faces.view(n, 1, size, size), list(info["kept"]), "cached"
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no cache yet, or a damaged one: decode again
    out, bad = _decode_all(paths, boxes, size, None, None)
    faces, kept, warnings = _keep_good(out, bad, paths, where, skip_bad)
    try:
        from nas.runtime.checkpoint import atomic_write_bytes, atomic_write_text

        cache_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(faces.numpy().tobytes(), raw)
        atomic_write_text(json.dumps({"kept": kept, "warnings": warnings, "size": size}), info_path)
    except (OSError, FerNasError) as e:
        warn(f"{cache_dir}: cannot write the decoded-face cache ({e}); decoding every run "
             "(--cache_dir DIR puts it elsewhere)")
    return faces, kept, "decoded"
