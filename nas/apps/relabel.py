"""``fernas relabel`` (``python relabel_training.py``): continue training from a snapshot
while relabelling suspicious labels (Auto-FERNet's third stage)."""
from __future__ import annotations

import argparse
from typing import Any, Sequence

from nas.runtime.cli import ArgumentParser, run

__all__ = ["get_args_parser", "main", "cli"]


def get_args_parser(prog: str = "relabel_training.py") -> ArgumentParser:
    """This stage's flags (`--help` prints them)."""
    from nas.data import add_data_args
    from nas.engine.session import add_session_args
    from nas.engine.trainer import add_train_args
    from nas.relabel.stage import REFERENCE_DEFAULTS, add_relabel_args

    p = ArgumentParser(prog=prog, description="Continue training a checkpoint with FES-gated relabelling; select "
                                              "on PublicTest, report PrivateTest.")
    p.add_argument("--config", default=None, help="YAML file of flag values (command-line flags override it)")
    add_relabel_args(p)
    add_data_args(p)
    # drop_path_prob None: the checkpoint's; no snapshots (this run starts from one)
    add_train_args(p, **REFERENCE_DEFAULTS, drop_path_prob=None, snapshot_at=[])
    add_session_args(p)
    return p


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run the stage with parsed flags; returns what it writes to results.json."""
    from nas.engine.evaluate import load_model_from_checkpoint
    from nas.engine.session import open_session, safe_name
    from nas.engine.robust import check_robust
    from nas.relabel.stage import check_relabel_args, open_relabel_data, run_relabel

    start, name, prepared = None, "relabel", None
    if not args.resume:
        # the flags, the checkpoint and the data, in that order, all before any folder is made
        check_relabel_args(args)
        start = load_model_from_checkpoint(args.checkpoint, "cpu")
        check_robust(args.robust, start[0], (start[1].get("model_spec") or {}).get("arch", "the model"))
        prepared = open_relabel_data(args, start[1])
        name = f"relabel-{safe_name((start[1].get('model_spec') or {}).get('arch', 'model'))}"
    with open_session(args, get_args_parser(), stage="relabel", default_name=name,
                      check=None if not args.resume else check_relabel_args) as s:
        return run_relabel(s, start, prepared)


def cli(argv: Sequence[str] | None = None, prog: str = "relabel_training.py") -> None:
    """Parse argv and run :func:`main`; bad input ends in one line and exit status 2."""
    run(main, get_args_parser(prog), argv)
