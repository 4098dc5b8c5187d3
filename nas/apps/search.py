"""``fernas search`` (``python search.py``): search a cell on FER data and export its genotype."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any, Sequence

from nas.runtime.cli import ArgumentParser, run

if TYPE_CHECKING:  # the names of the contracts, without importing torch at import time
    from nas.data.dataset import FERData
    from nas.engine.loop import StopRequest

__all__ = ["get_args_parser", "main", "cli"]


def get_args_parser(prog: str = "search.py") -> ArgumentParser:
    """This stage's flags (`--help` prints them)."""
    from nas.data import add_data_args
    from nas.engine.session import add_session_args
    from nas.search.searcher import add_search_args

    p = ArgumentParser(prog=prog, description="Search a cell (SGAS or DARTS) on FER data; writes a run directory "
                                              "and the genotype.")
    p.add_argument("--config", default=None, help="YAML file of flag values (command-line flags win)")
    add_data_args(p, dataset="auto")
    add_search_args(p)
    add_session_args(p)
    return p


def main(args: argparse.Namespace, data: FERData | None = None, stop: StopRequest | None = None) -> dict[str, Any]:
    """Search with parsed flags (``data``: a FERData instead of reading ``--data``; ``stop``:
    anything with ``requested``); under ``torchrun`` the ranks join one process group and rank 0
    prints. Returns the search's summary (genotype, run folder, export)."""
    from nas.engine.session import open_session
    from nas.search.searcher import check_args, run_search

    read = {"data": data}

    def check(a: argparse.Namespace) -> None:  # flags, then the data: both before the run folder exists
        from nas.data import open_data_from_args

        check_args(a)
        if read["data"] is None:
            read["data"] = open_data_from_args(a)

    with open_session(args, get_args_parser(), stage="search", check=check) as s:
        result = run_search(s, read["data"], stop=stop)
        if s.dist.is_main:
            print(f"genotype: {result['run_dir']}/genotype.json" + (f" (exported as {result['exported']})"
                                                                    if result["exported"] else ""))
    return result


def cli(argv: Sequence[str] | None = None, prog: str = "search.py") -> None:
    """Parse argv and run :func:`main`; bad input ends in one line and exit status 2."""
    run(main, get_args_parser(prog), argv)
