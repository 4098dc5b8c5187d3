"""What ``fernas predict`` reads: image files, folders of them (recursively), video files
(every N-th frame) and a webcam, as a stream of :class:`Frame`.

Images are decoded with Pillow (EXIF orientation applied) and refused above a pixel limit
before their pixels are decoded (a decompression bomb is a small file that claims a huge
image). A file that cannot be read becomes a frame with an ``error`` and the stream goes
on. Video and the webcam go through OpenCV (the ``predict`` extra).
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from nas.runtime.errors import FerNasError

__all__ = ["Frame", "IMAGE_EXTS", "VIDEO_EXTS", "DEFAULT_MAX_PIXELS", "list_inputs", "read_image", "frames_of", "camera_frames",
           "iter_frames"]

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
#: Largest image decoded (pixels): 40 MP, above any camera a FER user would point at a face.
DEFAULT_MAX_PIXELS = 40_000_000


@dataclass
class Frame:
    """One picture to look for faces in. ``source`` names it (a file, or ``video#frame=N``);
    ``key`` is how ``--boxes`` refers to it; ``gray`` is uint8 H×W (None when unreadable,
    with ``error`` saying why); ``rgb`` the colour picture when one is kept for drawing."""
    source: str
    key: str
    gray: np.ndarray | None = None
    rgb: np.ndarray | None = field(default=None, repr=False)
    error: str | None = None
    stem: str = ""


def list_inputs(paths: Sequence[str | Path]) -> list[tuple[Path, str]]:
    """The files behind ``paths``: ``(path, key)`` pairs, a folder expanded recursively
    (sorted, images and videos only), ``key`` the path relative to the folder given (a
    single file's key is its name). A path that does not exist is an error."""
    out: list[tuple[Path, str]] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTS + VIDEO_EXTS)
            out += [(f, f.relative_to(p).as_posix()) for f in files]
        elif p.is_file():
            out.append((p, p.name))
        else:
            raise FerNasError(f"{p}: no such file or folder")
    return out


@contextlib.contextmanager
def _pillow_limit_off() -> Iterator[None]:
    from PIL import Image

    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def read_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS,
               keep_rgb: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """``(grey uint8 H×W, RGB uint8 H×W×3 or None)`` of an image file; one-line
    :class:`FerNasError` for a file that is empty, truncated, not an image, or above
    ``max_pixels``."""
    from PIL import Image, ImageOps

    p = Path(path)
    try:
        if p.stat().st_size == 0:
            raise FerNasError(f"{p}: empty file (0 bytes)")
        with warnings.catch_warnings(), _pillow_limit_off():
            # the pixel limit below is ours, checked on the header; Pillow's would only repeat it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(p) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise FerNasError(f"{p}: image of {w}x{h} = {w * h:,} pixels is above the limit of "
                                      f"{max_pixels:,} (--max_pixels); refused without decoding")
                im = ImageOps.exif_transpose(im)
                im.load()
                gray = np.asarray(im.convert("L"), dtype=np.uint8)
                rgb = np.asarray(im.convert("RGB"), dtype=np.uint8) if keep_rgb else None
    except FerNasError:
        raise
    except Image.UnidentifiedImageError:
        raise FerNasError(f"{p}: not an image Pillow can decode") from None
    except (OSError, ValueError, SyntaxError) as e:  # truncated or corrupt data
        raise FerNasError(f"{p}: cannot decode image ({' '.join(str(e).split())[:100]})") from None
    return gray, rgb


def _video_frames(path: Path, key: str, every: int, keep_rgb: bool, max_frames: int | None,
                  camera: int | None = None) -> Iterator[Frame]:
    from nas.predict.faces import opencv

    cv2 = opencv()
    name = f"camera {camera}" if camera is not None else str(path)
    cap = cv2.VideoCapture(camera if camera is not None else str(path))
    if not cap.isOpened():
        cap.release()
        what = "could not be opened (no camera there?)" if camera is not None else "cannot be opened as a video"
        yield Frame(source=name, key=key, error=f"{name}: {what}")
        return
    try:
        index = kept = 0
        while max_frames is None or kept < max_frames:
            ok, bgr = cap.read()
            if not ok:
                if index == 0:
                    yield Frame(source=name, key=key, error=f"{name}: no frame could be decoded")
                break
            if index % every == 0:
                gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if keep_rgb else None
                stem = f"{Path(key).with_suffix('').as_posix()}_frame{index:06d}" if camera is None else \
                    f"camera{camera}_frame{index:06d}"
                yield Frame(source=f"{name}#frame={index}", key=f"{key}#frame={index}", gray=gray, rgb=rgb, stem=stem)
                kept += 1
            index += 1
    finally:
        cap.release()


def frames_of(path: Path, key: str, *, every: int = 1, max_frames: int | None = None,
              max_pixels: int = DEFAULT_MAX_PIXELS, keep_rgb: bool = False) -> Iterator[Frame]:
    """The pictures of one input file: the image, or every ``every``-th frame of a video."""
    if path.suffix.lower() in VIDEO_EXTS:
        yield from _video_frames(path, key, every, keep_rgb, max_frames)
        return
    try:
        gray, rgb = read_image(path, max_pixels=max_pixels, keep_rgb=keep_rgb)
    except FerNasError as e:
        yield Frame(source=str(path), key=key, error=str(e))
        return
    yield Frame(source=str(path), key=key, gray=gray, rgb=rgb, stem=Path(key).with_suffix("").as_posix())


def camera_frames(camera: int, *, every: int = 1, max_frames: int | None = None,
                  keep_rgb: bool = False) -> Iterator[Frame]:
    """Frames of the webcam ``camera`` (until ``max_frames`` or the stream ends)."""
    yield from _video_frames(Path(f"camera{camera}"), f"camera{camera}", every, keep_rgb, max_frames, camera=camera)


def iter_frames(paths: Sequence[str | Path], *, every: int = 1, camera: int | None = None,
                max_frames: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                keep_rgb: bool = False) -> Iterator[Frame]:
    """Every picture behind ``paths`` (and the webcam ``camera``), in order. Video files give
    every ``every``-th frame (at most ``max_frames`` per video or camera)."""
    if every < 1:
        raise FerNasError(f"--every {every}: must be at least 1")
    for path, key in list_inputs(paths):
        yield from frames_of(path, key, every=every, max_frames=max_frames, max_pixels=max_pixels, keep_rgb=keep_rgb)
    if camera is not None:
        yield from camera_frames(camera, every=every, max_frames=max_frames, keep_rgb=keep_rgb)
