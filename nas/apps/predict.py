"""``fernas predict`` (``python -m nas predict``): expressions on photos, folders, video and
a webcam, from a checkpoint or an exported ONNX model.

    fernas predict photo.jpg --checkpoint runs/train/best.pt
    fernas predict photos/ --checkpoint best.pt --format csv --out faces.csv --annotate annotated/
    fernas predict clip.mp4 --every 10 --onnx model.onnx --format jsonl
    fernas predict crops/ --no_detect --checkpoint best.pt          # already-cropped 48x48 faces

Pictures that cannot be read get one line each on stderr and are skipped; the exit status
is then 1 (0 when every picture was read). A picture without a face is reported in the
output, not an error.
"""
from __future__ import annotations

import argparse
import io
import sys
from typing import Any, Iterator, Sequence

from nas.runtime.cli import ArgumentParser, run, str2bool
from nas.runtime.errors import FerNasError

__all__ = ["get_args_parser", "main", "cli"]


def get_args_parser(prog: str = "fernas predict") -> ArgumentParser:
    """This stage's flags (`--help` prints them)."""
    from nas.engine.evaluate import TTA_MODES
    from nas.predict.faces import CROP_SCALE, CROP_SHIFT
    from nas.predict.pipeline import OUTPUT_FORMATS
    from nas.predict.sources import DEFAULT_MAX_PIXELS

    p = ArgumentParser(prog=prog, description="Find faces in images, folders (recursively) or videos and "
                                              "classify their expressions.")
    p.add_argument("paths", nargs="*", metavar="PATH", help="image files, folders of images, video files")
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="a fer-nas checkpoint (.pt) or a run folder (uses best.pt)")
    model.add_argument("--onnx", help="a model written by fernas export --format onnx (run on ONNX Runtime)")
    p.add_argument("--camera", type=int, default=None, metavar="N", help="also read the webcam N (OpenCV)")
    p.add_argument("--every", type=int, default=1, metavar="N", help="every N-th frame of a video or the webcam")
    p.add_argument("--max_frames", type=int, default=None,
                   help="at most this many frames per video or webcam (default: all; the webcam until Ctrl-C)")
    p.add_argument("--no_detect", action="store_true", help="each image is an already-cropped face")
    p.add_argument("--boxes", default=None, metavar="FILE",
                   help="face boxes from your own detector: CSV file,x,y,w,h (file as listed in the output "
                        "or relative to the folder given)")
    p.add_argument("--crop_scale", type=float, default=CROP_SCALE,
                   help="crop side / detector box side (FER2013-like framing)")
    p.add_argument("--crop_shift", type=float, default=CROP_SHIFT, help="crop centre below the box centre, in box sides")
    p.add_argument("--min_face", type=int, default=24, help="smallest face the detector looks for (pixels)")
    p.add_argument("--tta", default="center", choices=TTA_MODES, help="test-time views")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (checkpoints; ONNX runs on the CPU)")
    p.add_argument("--batch_size", type=int, default=64, help="faces per forward pass")
    p.add_argument("--format", default="table", choices=OUTPUT_FORMATS, help="output format")
    p.add_argument("--out", default=None, help="write the output to this file instead of stdout")
    p.add_argument("--annotate", default=None, metavar="DIR",
                   help="write each picture with boxes and labels to DIR/<name>.png")
    p.add_argument("--max_pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="refuse images with more pixels than this (decompression bombs)")
    p.add_argument("--progress", type=str2bool, default=None, help="progress bar over files (default: when a terminal)")
    return p


def _check(args: argparse.Namespace) -> None:
    if not args.paths and args.camera is None:
        raise FerNasError("give at least one PATH (image, folder or video) or --camera N")
    if args.no_detect and args.boxes:
        raise FerNasError("--no_detect and --boxes exclude each other")
    for name in ("every", "batch_size", "max_pixels", "min_face"):
        if getattr(args, name) < 1:
            raise FerNasError(f"--{name} {getattr(args, name)}: must be at least 1")
    if args.max_frames is not None and args.max_frames < 1:
        raise FerNasError(f"--max_frames {args.max_frames}: must be at least 1")
    if not args.crop_scale > 0:
        raise FerNasError(f"--crop_scale {args.crop_scale}: must be positive")


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run the pipeline; returns ``{"frames", "faces", "no_face", "failed", "annotated"}``."""
    from tqdm import tqdm

    from nas.predict.faces import FaceDetector, read_boxes_csv
    from nas.predict.pipeline import OnnxClassifier, TorchClassifier, annotate, run_predict, write_results
    from nas.predict.sources import camera_frames, frames_of, list_inputs
    from nas.runtime.checkpoint import atomic_write_text
    from nas.runtime.device import resolve_device

    _check(args)
    inputs = list_inputs(args.paths)
    if args.onnx:
        classifier = OnnxClassifier(args.onnx, batch_size=args.batch_size)
    else:
        classifier = TorchClassifier(args.checkpoint, resolve_device(args.device), batch_size=args.batch_size)
    boxes = read_boxes_csv(args.boxes) if args.boxes else None
    detector = None if (args.no_detect or boxes is not None) else FaceDetector(min_size=args.min_face)
    keep_rgb = bool(args.annotate)
    show = sys.stderr.isatty() if args.progress is None else args.progress
    bar = tqdm(total=len(inputs), unit="file", disable=not show, file=sys.stderr)

    def frames() -> Iterator[Any]:
        for path, key in inputs:
            yield from frames_of(path, key, every=args.every, max_frames=args.max_frames,
                                 max_pixels=args.max_pixels, keep_rgb=keep_rgb)
            bar.update(1)
        if args.camera is not None:
            yield from camera_frames(args.camera, every=args.every, max_frames=args.max_frames, keep_rgb=keep_rgb)

    stats = {"frames": 0, "faces": 0, "no_face": 0, "failed": 0, "annotated": 0}
    written: set[str] = set()  # annotated names of this run: never two pictures under one name

    def tally() -> Iterator[Any]:
        for r in run_predict(frames(), classifier, detector=detector, boxes=boxes, tta=args.tta,
                             batch_size=args.batch_size, crop_scale=args.crop_scale, crop_shift=args.crop_shift):
            stats["frames"] += 1
            stats["faces"] += len(r.faces)
            if r.frame.error:
                stats["failed"] += 1
                bar.write(f"skipped: {r.frame.error}", file=sys.stderr)
            elif not r.faces:
                stats["no_face"] += 1
            if args.annotate and annotate(r, classifier.classes, args.annotate, written) is not None:
                stats["annotated"] += 1
            yield r

    try:
        if args.out:
            buf = io.StringIO()
            write_results(tally(), classifier.classes, args.format, buf)
            atomic_write_text(buf.getvalue(), args.out)
        else:
            write_results(tally(), classifier.classes, args.format, sys.stdout)
            sys.stdout.flush()
    finally:
        bar.close()
    print(f"{stats['frames']} picture(s), {stats['faces']} face(s), {stats['no_face']} without a face, "
          f"{stats['failed']} unreadable" + (f"; annotated pictures in {args.annotate}" if args.annotate else "")
          + (f"; wrote {args.out}" if args.out else ""), file=sys.stderr)
    return stats


def cli(argv: Sequence[str] | None = None, prog: str = "fernas predict") -> None:
    """Parse argv and run :func:`main`; bad input ends in one line and exit status 2."""
    def main_with_status(args: argparse.Namespace) -> None:
        if main(args)["failed"]:
            sys.exit(1)

    run(main_with_status, get_args_parser(prog), argv)
