"""Expressions on pictures: faces found (or given), cropped, batched through a classifier.

``run_predict`` takes a stream of :class:`~nas.predict.sources.Frame` and yields one
:class:`ImageResult` per frame, in order. Faces of several frames are gathered until a
batch is full and go through the model together (``TorchClassifier``: a checkpoint on
``--device`` with its own normalisation and test-time views; ``OnnxClassifier``: an
exported model on ONNX Runtime, the same views). Writers print the results as a table,
JSON lines or CSV, and :func:`annotate` draws them on the picture.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Protocol, Sequence, TextIO

import numpy as np
import torch

from nas.predict.faces import CROP_SCALE, CROP_SHIFT, FaceDetector, crop_faces
from nas.predict.sources import Frame
from nas.runtime.errors import FerNasError

__all__ = ["Classifier", "TorchClassifier", "OnnxClassifier", "FaceResult", "ImageResult", "run_predict",
           "OUTPUT_FORMATS", "write_results", "annotate"]

OUTPUT_FORMATS = ("table", "jsonl", "csv")


class Classifier(Protocol):
    """Faces (uint8 K×1×48×48) -> class probabilities (float32 K×C, CPU)."""
    classes: list[str]
    image_size: int

    def __call__(self, faces: torch.Tensor, tta: str) -> torch.Tensor: ...


class TorchClassifier:
    """A fer-nas checkpoint rebuilt by itself, on ``device``."""

    def __init__(self, checkpoint: str | Path, device: torch.device | str = "cpu", batch_size: int = 256) -> None:
        from nas.data.dataset import FER_CLASSES
        from nas.engine.evaluate import checkpoint_image_size, checkpoint_norm, load_model_from_checkpoint

        self.model, ckpt = load_model_from_checkpoint(checkpoint, device)
        self.mean, self.std, self.crop = checkpoint_norm(ckpt)
        self.classes = list(ckpt.get("classes") or FER_CLASSES)
        self.image_size = checkpoint_image_size(ckpt)
        self.batch_size = int(batch_size)

    def __call__(self, faces: torch.Tensor, tta: str = "center") -> torch.Tensor:
        from nas.engine.evaluate import predict

        return predict(self.model, faces, mean=self.mean, std=self.std, crop=self.crop, tta=tta,
                       batch_size=self.batch_size).cpu()


class OnnxClassifier:
    """A model written by ``fernas export --format onnx``, on ONNX Runtime's CPU provider."""

    def __init__(self, path: str | Path, batch_size: int = 256, threads: int | None = None) -> None:
        from nas.predict.export import _onnx, onnx_metadata

        _, ort = _onnx()
        meta = onnx_metadata(path)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = options.inter_op_num_threads = int(threads)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0]
        fixed = self.input.shape[0]
        self.batch_size = int(fixed) if isinstance(fixed, int) else int(batch_size)
        self.fixed_batch = isinstance(fixed, int)
        self.classes, self.crop, self.image_size = meta["classes"], meta["input_size"], meta["image_size"]

    def __call__(self, faces: torch.Tensor, tta: str = "center") -> torch.Tensor:
        from nas.data.augment import eval_views

        views = eval_views(faces, tta, self.crop, 0.0, 1.0)  # pixels / 255: the model normalises
        v, b = views.shape[:2]
        flat = views.reshape(v * b, *views.shape[2:]).numpy()
        out = []
        for start in range(0, len(flat), self.batch_size):
            x = flat[start:start + self.batch_size]
            n = len(x)
            if self.fixed_batch and n < self.batch_size:  # a fixed-batch model takes full batches only
                x = np.concatenate([x, np.zeros((self.batch_size - n, *x.shape[1:]), x.dtype)])
            out.append(self.session.run(None, {self.input.name: x})[0][:n])
        logits = torch.from_numpy(np.concatenate(out)) if out else torch.zeros(0, len(self.classes))
        return logits.float().softmax(1).view(v, b, -1).mean(0)


@dataclass
class FaceResult:
    """One face: its box ``(x, y, w, h)`` in the picture and the class probabilities."""
    box: tuple[int, int, int, int]
    probs: np.ndarray

    def label(self, classes: Sequence[str]) -> str:
        """The face's most probable class name."""
        return classes[int(self.probs.argmax())]


@dataclass
class ImageResult:
    """What was found in one frame; ``error`` when it could not be read."""
    frame: Frame
    faces: list[FaceResult] = field(default_factory=list)

    @property
    def status(self) -> str:
        """'error' when the frame could not be read, 'no_face' when no face was found, else 'ok'."""
        return "error" if self.frame.error else ("ok" if self.faces else "no_face")


def _boxes_for(frame: Frame, boxes: dict[str, np.ndarray] | None, detector: FaceDetector | None) -> np.ndarray:
    if boxes is not None:
        for key in (frame.key, frame.source, Path(frame.key).name):
            if key in boxes:
                return boxes[key]
        return np.zeros((0, 4), np.int64)
    if detector is None:  # --no_detect: the picture is the face
        h, w = frame.gray.shape
        return np.array([[0, 0, w, h]], np.int64)
    return detector.detect(frame.gray)


def run_predict(frames: Iterable[Frame], classifier: Classifier, *, detector: FaceDetector | None = None,
                boxes: dict[str, np.ndarray] | None = None, tta: str = "center", batch_size: int = 64,
                crop_scale: float = CROP_SCALE, crop_shift: float = CROP_SHIFT) -> Iterator[ImageResult]:
    """Results for ``frames`` in order. Faces come from ``boxes`` (by the frame's key), else
    from ``detector``, else the whole picture is one face (``--no_detect``)."""
    pending: list[tuple[Frame, np.ndarray, torch.Tensor]] = []
    n_faces = 0

    def flush() -> Iterator[ImageResult]:
        crops = [c for _, _, c in pending if len(c)]
        probs = classifier(torch.cat(crops), tta).numpy() if crops else np.zeros((0, len(classifier.classes)))
        i = 0
        for frame, bx, c in pending:
            faces = [FaceResult(tuple(int(v) for v in bx[k]), probs[i + k]) for k in range(len(c))]
            i += len(c)
            yield ImageResult(frame, faces)

    for frame in frames:
        if frame.error:
            pending.append((frame, np.zeros((0, 4), np.int64), torch.zeros(0, 1, classifier.image_size, classifier.image_size,
                                                                            dtype=torch.uint8)))
        else:
            bx = _boxes_for(frame, boxes, detector)
            whole = detector is None and boxes is None
            crops = crop_faces(frame.gray, bx, size=classifier.image_size, scale=1.0 if whole else crop_scale,
                               shift=0.0 if whole else crop_shift)
            pending.append((frame, bx, crops))
            n_faces += len(crops)
        if n_faces >= batch_size:
            yield from flush()
            pending, n_faces = [], 0
    if pending:
        yield from flush()


# ----------------------------------------------------------------------------- output
def _rows(result: ImageResult, classes: Sequence[str]) -> list[dict[str, object]]:
    base = {"source": result.frame.source, "status": result.status}
    if not result.faces:
        return [{**base, "face": "", "x": "", "y": "", "w": "", "h": "", "label": "", "probability": "",
                 **{c: "" for c in classes}}]
    return [{**base, "face": k, "x": f.box[0], "y": f.box[1], "w": f.box[2], "h": f.box[3],
             "label": f.label(classes), "probability": round(float(f.probs.max()), 4),
             **{c: round(float(p), 4) for c, p in zip(classes, f.probs)}} for k, f in enumerate(result.faces)]


def write_results(results: Iterable[ImageResult], classes: Sequence[str], fmt: str, out: TextIO) -> None:
    """Write ``results`` as ``table`` (aligned text), ``jsonl`` (an object per frame) or
    ``csv`` (a row per face; frames without a face or unreadable get one row with their status)."""
    if fmt not in OUTPUT_FORMATS:
        raise FerNasError(f"--format {fmt!r}: choose from {', '.join(OUTPUT_FORMATS)}")
    if fmt == "jsonl":
        for r in results:
            faces = [{"box": list(f.box), "label": f.label(classes), "probability": round(float(f.probs.max()), 4),
                      "probs": {c: round(float(p), 4) for c, p in zip(classes, f.probs)}} for f in r.faces]
            out.write(json.dumps({"source": r.frame.source, "status": r.status, "faces": faces,
                                  "error": r.frame.error}) + "\n")
        return
    if fmt == "csv":
        writer = None
        for r in results:
            for row in _rows(r, classes):
                if writer is None:
                    writer = csv.DictWriter(out, fieldnames=list(row))
                    writer.writeheader()
                writer.writerow(row)
        return
    out.write(f"{'source':<40} {'face':>4}  {'box (x,y,w,h)':<20} {'expression':<10} {'p':>6}  second\n")
    for r in results:
        if not r.faces:
            what = "unreadable (see the error above)" if r.frame.error else "no face found"
            out.write(f"{_short(r.frame.source):<40} {'-':>4}  {what}\n")
        for k, f in enumerate(r.faces):
            order = np.argsort(-f.probs)
            second = f"{classes[order[1]]} {f.probs[order[1]]:.3f}" if len(order) > 1 else ""
            box = ",".join(str(v) for v in f.box)
            out.write(f"{_short(r.frame.source):<40} {k:>4}  {box:<20} {classes[order[0]]:<10} "
                      f"{f.probs[order[0]]:>6.3f}  {second}\n")


def _short(s: str, width: int = 40) -> str:
    return s if len(s) <= width else "…" + s[-(width - 1):]


def annotate(result: ImageResult, classes: Sequence[str], out_dir: str | Path,
             used: set[str] | None = None) -> Path | None:
    """Draw each face's box and ``label p`` on the picture; write ``OUT/<name>.png``. The name keeps
    the picture's folder and extension (``a/p.jpg`` -> ``a/p.jpg.png``, so ``x.jpg`` and ``x.png``
    stay apart; a video frame: ``clip_frame000012.png``); ``used`` holds the names written so far
    in this run, and a name seen again (two files called ``p.jpg`` given from different folders)
    gets ``-2``, ``-3`` ... instead of overwriting."""
    from PIL import Image, ImageDraw, ImageFont

    frame = result.frame
    if frame.gray is None:
        return None
    img = Image.fromarray(frame.rgb if frame.rgb is not None else frame.gray).convert("RGB")
    draw = ImageDraw.Draw(img)
    line = max(2, round(max(img.size) / 300))
    font = ImageFont.load_default(size=max(12, round(max(img.size) / 40)))
    for f in result.faces:
        x, y, w, h = f.box
        k = int(f.probs.argmax())
        colour = _COLOURS[k % len(_COLOURS)]
        draw.rectangle([x, y, x + w - 1, y + h - 1], outline=colour, width=line)
        text = f"{classes[k]} {f.probs[k]:.2f}"
        tb = draw.textbbox((0, 0), text, font=font)
        ty = y - (tb[3] - tb[1]) - 2 * line if y - (tb[3] - tb[1]) - 2 * line >= 0 else y + h + line
        draw.rectangle([x, ty, x + tb[2] - tb[0] + 2 * line, ty + tb[3] - tb[1] + 2 * line], fill=colour)
        draw.text((x + line - tb[0], ty + line - tb[1]), text, fill=(0, 0, 0), font=font)
    if not result.faces:
        draw.text((4, 4), "no face found", fill=(255, 64, 64), font=font)
    is_video_frame = "#frame=" in frame.key
    base = frame.stem if is_video_frame and frame.stem else Path(frame.key.split("#", 1)[0]).as_posix()
    name, k = f"{base}.png", 1
    while used is not None and name in used:
        k += 1
        name = f"{base}-{k}.png"
    if used is not None:
        used.add(name)
    path = Path(out_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    from nas.runtime.checkpoint import atomic_write_bytes

    atomic_write_bytes(buf.getvalue(), path)
    return path


# one colour per class, light enough for black text
_COLOURS = [(255, 99, 71), (154, 205, 50), (186, 85, 211), (255, 215, 0), (100, 149, 237), (255, 165, 0),
            (200, 200, 200), (64, 224, 208)]
