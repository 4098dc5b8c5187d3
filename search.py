"""Search a cell on FER data (SGAS over the Auto-FERNet space by default, or DARTS).

    python search.py --dataset synthfer --synth_size 2000 --batch_size 24 --export MY_CELL
    torchrun --nproc_per_node 2 search.py ...   # DDP: per-rank --batch_size, rank 0 writes the files

See README "Architecture search (search.py)" for flags and outputs; the work lives in nas/search.py.
"""
from __future__ import annotations

import argparse
import os

from nas.cli import run
from nas.search import get_args_parser, run_search


def main(args: argparse.Namespace) -> None:
    result = run_search(args)
    if os.environ.get("RANK", "0") == "0":  # torchrun: one line, from rank 0
        print(f"genotype: {result['run_dir']}/genotype.json" + (f" (exported as {result['exported']})"
                                                                if result["exported"] else ""))


if __name__ == "__main__":
    run(main, get_args_parser())
