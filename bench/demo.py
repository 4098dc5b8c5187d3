"""The demo's figures as a results file, for docs/demo.md and README.

    python bench/demo.py [--quick] [--run_dir runs/demo-bench] [--out bench/results-cpu-demo.json]

Runs ``python -m nas demo`` from scratch in ``--run_dir`` (refused if that folder holds anything:
pass an empty or new one), then writes one JSON document: the demo's settings, each stage's
figures, what ran and wall time (as ``demo.json`` holds them), the total, and the provenance (commit,
SynthFER revisions, torch, machine, flags) that ``demo.json`` itself does not record.
"""
from __future__ import annotations

import argparse
import sys
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


def get_args_parser() -> ArgumentParser:
    p = ArgumentParser(prog="bench/demo.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the quick demo (about a minute)")
    p.add_argument("--run_dir", default="runs/demo-bench", help="where the demo runs (new or empty)")
    p.add_argument("--seed", type=int, default=0, help="the demo's seed (default 0)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch (the demo's default, 1)")
    add_out_arg(p)
    return p


def main(args: argparse.Namespace) -> dict[str, Any]:
    from nas.apps.demo import run_demo
    from nas.runtime.errors import FerNasError

    run_dir = Path(args.run_dir)
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise FerNasError(f"--run_dir {run_dir}: not an empty folder; the bench runs a demo from scratch, so pass a new one")
    if args.threads < 1:
        raise FerNasError(f"--threads {args.threads}: must be at least 1")
    t0 = time.perf_counter()
    state = run_demo(run_dir, quick=args.quick, seed=args.seed, device="cpu", progress=False, threads=args.threads)
    doc = {"bench": "demo", "quick": bool(args.quick), "wall_s": round(time.perf_counter() - t0, 1),
           "config": state["config"], "stages": state["stages"], "commands": state.get("commands")}
    return emit(doc, args, device="cpu", echo=False)


if __name__ == "__main__":
    cli_run(main, get_args_parser())
