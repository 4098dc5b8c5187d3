"""Decoding RAF-DB/AffectNet-style image folders: the first read (decode + write the cache)
and a cached read (memory-mapped), on this machine's CPUs.

    python bench/decode.py [--size 100000] [--format rafdb] [--folder DIR] [--out FILE]

The folder is a SynthFER export in the dataset's real layout (100x100 colour JPEGs for
RAF-DB; photos with face boxes for AffectNet), made once under ``--folder`` (default a
temporary folder) and reused. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nas.runtime.cli import ArgumentParser, run as cli_run

if __package__ in (None, ""):
    from common import add_out_arg, emit
else:
    from bench.common import add_out_arg, emit


def run(size: int, fmt: str, folder: str | None) -> dict[str, Any]:
    from nas.data import load_dataset
    from nas.data.synthfer import export

    root = Path(folder) if folder else Path(tempfile.mkdtemp(prefix="fernas-decode-")) / fmt
    try:
        t = time.perf_counter()
        if not root.exists():
            export(fmt, root, size=size, seed=0)
        t_export = time.perf_counter() - t
        shutil.rmtree(root / ".fernas_cache", ignore_errors=True)
        t = time.perf_counter()
        first = load_dataset(root)
        t_first = time.perf_counter() - t
        t = time.perf_counter()
        second = load_dataset(root)
        t_cached = time.perf_counter() - t
        assert second.meta["cache"].startswith("cached") and len(first) == len(second)
        return {"bench": "decode", "format": fmt, "images": len(first), "cpus": os.cpu_count(),
                "export_s": round(t_export, 1), "first_read_s": round(t_first, 1),
                "cached_read_s": round(t_cached, 2), "images_per_s_first": round(len(first) / t_first),
                "cache_bytes": sum(f.stat().st_size for f in (root / ".fernas_cache").iterdir())}
    finally:
        if not folder:
            shutil.rmtree(root.parent, ignore_errors=True)


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="bench/decode.py", description="first and cached read of a RAF-DB/AffectNet-style folder")
    p.add_argument("--size", type=int, default=100_000)
    p.add_argument("--format", default="rafdb", choices=("rafdb", "affectnet"))
    p.add_argument("--folder", default=None, help="keep the export here (made once, reused)")
    add_out_arg(p)
    return p


def main(args: argparse.Namespace) -> dict[str, Any]:
    res = run(args.size, args.format, args.folder)
    return emit(res, args, device="cpu", indent=None)


if __name__ == "__main__":
    cli_run(main, get_args_parser())
