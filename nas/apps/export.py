"""``fernas export`` (``python -m nas export``): a checkpoint as ONNX or TorchScript, checked
against the PyTorch model on a random batch.

    fernas export --checkpoint runs/train/best.pt --format onnx --dynamic_batch --out fer.onnx
    fernas export --checkpoint runs/train --format torchscript
"""
from __future__ import annotations

import argparse
import json
from typing import Any, Sequence

from nas.runtime.cli import ArgumentParser, run
from nas.runtime.errors import FerNasError

__all__ = ["get_args_parser", "main", "cli"]


def get_args_parser(prog: str = "fernas export") -> ArgumentParser:
    """This stage's flags (`--help` prints them)."""
    from nas.predict.export import FORMATS

    p = ArgumentParser(prog=prog, description="Export a fer-nas checkpoint for deployment (auxiliary head dropped, "
                                              "eval mode, normalisation folded in, class names in the metadata).")
    p.add_argument("--checkpoint", required=True, help="a fer-nas checkpoint (.pt) or a run folder (uses best.pt)")
    p.add_argument("--format", default="onnx", choices=FORMATS,
                   help="onnx (ONNX Runtime, any language) or torchscript (libtorch, C++)")
    p.add_argument("--out", default=None, help="output file (default: next to the checkpoint, .onnx or .ts)")
    p.add_argument("--dynamic_batch", action="store_true", help="ONNX: any batch size (default: a fixed batch)")
    p.add_argument("--batch_size", type=int, default=1, help="the fixed batch size of the exported model")
    p.add_argument("--verify_batch", type=int, default=8, help="random batch the export is checked on")
    return p


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Export a checkpoint for deployment and verify it; returns the report, also printed as JSON."""
    from nas.predict.export import export_checkpoint

    for name in ("batch_size", "verify_batch"):
        if getattr(args, name) < 1:
            raise FerNasError(f"--{name} {getattr(args, name)}: must be at least 1")
    report = export_checkpoint(args.checkpoint, args.format, args.out, dynamic_batch=args.dynamic_batch,
                               batch_size=args.batch_size, verify_batch=args.verify_batch)
    runtime = "ONNX Runtime" if args.format == "onnx" else "the saved TorchScript"
    print(f"wrote {report['file']} ({report['format']}, {report['bytes']:,} bytes, {report['arch']}, "
          f"{report['parameters']:,} parameters, input 1x{report['input_size']}x{report['input_size']} pixels/255, "
          f"classes {','.join(report['classes'])})")
    print(f"verified with {runtime}: max |logit difference| vs PyTorch = {report['max_abs_diff']:.3g} "
          f"on a random batch")
    print(json.dumps(report))
    return report


def cli(argv: Sequence[str] | None = None, prog: str = "fernas export") -> None:
    """Parse argv and run :func:`main`; bad input ends in one line and exit status 2."""
    run(main, get_args_parser(prog), argv)
