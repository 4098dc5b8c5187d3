"""Writers of small files in the real FER formats, for the reader tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from nas.data.fer2013 import write_fer2013_csv  # the tests write with the toolkit's writer

__all__ = ["FERPLUS_HEADER", "random_images", "pixel_text", "write_fer2013_csv", "small_fer2013", "save_png",
           "write_ck48", "write_jaffe"]

FERPLUS_HEADER = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"


def random_images(n: int, seed: int = 0, size: int = 48) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size), dtype=np.uint8)


def pixel_text(img: np.ndarray) -> str:
    return " ".join(map(str, img.reshape(-1).tolist()))


def small_fer2013(n_per_split=(14, 7, 7), seed: int = 0):
    """Labels, usages and images of a small FER2013 table (every class in Training)."""
    n = sum(n_per_split)
    usages = sum(([u] * k for u, k in zip(("Training", "PublicTest", "PrivateTest"), n_per_split)), [])
    labels = [i % 7 for i in range(n)]
    return labels, usages, random_images(n, seed)


def save_png(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)


def write_ck48(root: Path, per_class: dict[str, list[str]], seed: int = 0) -> dict[str, np.ndarray]:
    """CK+48 folders: ``per_class`` maps folder name -> file names; returns name -> image."""
    out = {}
    imgs = random_images(sum(len(v) for v in per_class.values()), seed)
    k = 0
    for cls, names in per_class.items():
        for name in names:
            save_png(root / cls / name, imgs[k])
            out[f"{cls}/{name}"] = imgs[k]
            k += 1
    return out


def write_jaffe(root: Path, names: list[str], size: int = 256, seed: int = 0) -> None:
    """JAFFE tiffs: the face box (rows/cols 48..208 of 256) holds one grey level per file
    (10 * file number + 5), the rest is noise, so a correct crop gives a flat 48×48 image."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(names):
        img = rng.integers(0, 256, (size, size), dtype=np.uint8)
        a, b = 48 * size // 256, 208 * size // 256
        img[a:b, a:b] = 10 * k + 5
        Image.fromarray(img).save(root / name, format="TIFF")
