"""Finding faces and cropping them as FER2013 frames its faces.

The detector is OpenCV's frontal-face Haar cascade, whose model file ships inside the
``opencv-python-headless`` wheel (``cv2/data/``; nothing is downloaded). OpenCV 5.x
wheels have no ``CascadeClassifier``, so the ``predict`` extra pins ``<5``. Users with
their own detector give boxes in a CSV instead (:func:`read_boxes_csv`).

Crops are square: ``crop_scale`` times the detector's box side, centred ``crop_shift``
box sides below the box's centre. The defaults (1.125, 0.03) are what maps the cascade's
boxes back to the frames of SynthFER v2 faces pasted into photographs (median over 143
detected faces of 200), and SynthFER v2 follows FER2013's framing (the face fills the
frame, eyes at about 40 % of its height). All faces of an image are cropped and resized
in one batched ``roi_align``.
"""
from __future__ import annotations

import contextlib
import csv
import os
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from nas.runtime.errors import FerNasError

__all__ = ["CROP_SCALE", "CROP_SHIFT", "opencv", "FaceDetector", "read_boxes_csv", "crop_faces", "face_frames"]

#: Crop side / detector box side, and the crop centre's shift below the box centre (box sides).
CROP_SCALE = 1.125
CROP_SHIFT = 0.03

MISSING = ('face detection needs OpenCV with its cascades: pip install "fer-nas[predict]" '
           '(opencv-python-headless<5); or pass --boxes FILE or --no_detect')


def opencv() -> types.ModuleType:
    """The cv2 module, with a one-line error when it is missing or has no cascades. OpenCV's
    and FFmpeg's own warnings are silenced: a file or camera that fails gets our one line."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # FFmpeg's "quiet"
    try:
        import cv2
    except ImportError:
        raise FerNasError(MISSING) from None
    if not hasattr(cv2, "CascadeClassifier"):
        raise FerNasError(f"OpenCV {cv2.__version__} has no CascadeClassifier (5.x dropped it); {MISSING}")
    with contextlib.suppress(AttributeError):
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    return cv2


class FaceDetector:
    """OpenCV's frontal-face Haar cascade on grey images: ``detect(image) -> K×4`` int boxes
    ``(x, y, w, h)``, largest first."""

    def __init__(self, cascade: str = "haarcascade_frontalface_default.xml", *, scale_factor: float = 1.1,
                 min_neighbors: int = 5, min_size: int = 24) -> None:
        cv2 = opencv()
        path = Path(cv2.data.haarcascades) / cascade
        if not path.is_file():
            raise FerNasError(f"{path}: cascade file not in the installed OpenCV wheel; {MISSING}")
        self._cascade = cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise FerNasError(f"{path}: OpenCV could not read the cascade")
        self.scale_factor, self.min_neighbors, self.min_size = float(scale_factor), int(min_neighbors), int(min_size)

    def detect(self, image: np.ndarray) -> np.ndarray:
        """Faces in a grey uint8 H×W image, as a K×4 int64 array of ``(x, y, w, h)``."""
        boxes = self._cascade.detectMultiScale(np.ascontiguousarray(image), scaleFactor=self.scale_factor,
                                               minNeighbors=self.min_neighbors,
                                               minSize=(self.min_size, self.min_size))
        boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
        return boxes[np.argsort(-(boxes[:, 2] * boxes[:, 3]), kind="stable")]


def read_boxes_csv(path: str | Path) -> dict[str, np.ndarray]:
    """Boxes from a CSV with the header ``file,x,y,w,h`` (several rows per file for several
    faces): ``{file: K×4 int64}``. Faults name the file and row."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise FerNasError(f"{p}: boxes file not found") from None
    except (UnicodeDecodeError, OSError) as e:
        raise FerNasError(f"{p}: not a readable CSV ({type(e).__name__})") from None
    rows = csv.reader(text.splitlines())
    header = [h.strip().lower() for h in next(rows, [])]
    if header != ["file", "x", "y", "w", "h"]:
        raise FerNasError(f"{p}: header must be file,x,y,w,h (got {','.join(header) or 'nothing'})")
    out: dict[str, list[list[int]]] = {}
    for i, row in enumerate(rows, start=2):
        if not row or not "".join(row).strip():
            continue
        if len(row) != 5:
            raise FerNasError(f"{p}: row {i}: expected 5 fields file,x,y,w,h, got {len(row)}")
        try:
            x, y, w, h = (int(float(v)) for v in row[1:])
        except ValueError:
            raise FerNasError(f"{p}: row {i}: x, y, w, h must be numbers") from None
        if w <= 0 or h <= 0:
            raise FerNasError(f"{p}: row {i}: w and h must be positive (got {w}, {h})")
        out.setdefault(row[0].strip(), []).append([x, y, w, h])
    return {k: np.asarray(v, dtype=np.int64) for k, v in out.items()}


def face_frames(boxes: np.ndarray, *, scale: float = CROP_SCALE, shift: float = CROP_SHIFT) -> np.ndarray:
    """The square crop of each detector box, K×4 float ``(x0, y0, x1, y1)``."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    side = np.maximum(b[:, 2], b[:, 3]) * scale
    cx = b[:, 0] + b[:, 2] / 2.0
    cy = b[:, 1] + b[:, 3] / 2.0 + shift * np.maximum(b[:, 2], b[:, 3])
    return np.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], axis=1)


def crop_faces(image: np.ndarray, boxes: np.ndarray, *, size: int = 48, scale: float = CROP_SCALE,
               shift: float = CROP_SHIFT) -> torch.Tensor:
    """Crops of the faces in ``boxes`` from a grey uint8 H×W ``image``, resized to
    ``size``: uint8 K×1×size×size. A crop that runs off the image repeats its edge pixels."""
    from torchvision.ops import roi_align

    frames = face_frames(boxes, scale=scale, shift=shift)
    if len(frames) == 0:
        return torch.zeros(0, 1, size, size, dtype=torch.uint8)
    img = torch.from_numpy(np.array(image, dtype=np.float32))[None, None]  # a copy: PIL arrays are read-only
    h, w = img.shape[-2:]
    # pad by the farthest any crop reaches outside, with the edge pixels (roi_align pads zeros)
    reach = max(0.0, float(-frames[:, :2].min()), float(frames[:, 2].max() - w), float(frames[:, 3].max() - h))
    pad = int(np.ceil(reach)) + 1
    if pad > 0:
        img = F.pad(img, (pad, pad, pad, pad), mode="replicate")
    rois = torch.from_numpy(frames + pad).float()
    rois = torch.cat([torch.zeros(len(rois), 1), rois], dim=1)
    # sampling points per output pixel grow with the downscale, so a large face is averaged, not aliased
    ratio = max(1, int(np.ceil((frames[:, 2] - frames[:, 0]).max() / size)))
    out = roi_align(img, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=ratio, aligned=True)
    return out.round_().clamp_(0, 255).to(torch.uint8)
