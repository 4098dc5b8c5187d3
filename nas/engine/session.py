"""The prologue every stage shares: resume → device → DDP → run folder → config → seed.

    read = {}
    def check(a):                                       # flags and inputs, before the run folder
        check_args(a)
        read["data"] = open_data_from_args(a)
    with open_session(args, parser, stage="train", default_name="train-FER_V1", check=check) as s:
        ...                                             # the stage's own work: s.args, s.dist,
                                                        # s.device, s.run, s.state, read["data"]

Bad input met inside the block (after the folder exists) takes back a new run that has done no
work (:meth:`~nas.runtime.checkpoint.RunDir.discard`), so the corrected command may use the folder.

One resume rule for every stage: ``--resume RUN_DIR`` takes the run's flags back from
``RUN_DIR/last.pt``; only the flags in :data:`RESUMABLE_FLAGS` may change, and only when
they are given on the command line (``--data`` among them: the data may have moved).
The checkpoint must have been written by the same stage.
"""
from __future__ import annotations

import argparse
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch

from nas.runtime.checkpoint import RunDir, safe_load
from nas.runtime.device import resolve_device
from nas.runtime.distributed import DistInfo, broadcast_object, cleanup, init_distributed, is_initialized
from nas.runtime.errors import FerNasError
from nas.runtime.seeds import seed_everything

__all__ = ["RESUMABLE_FLAGS", "Session", "open_session", "start_session", "add_session_args", "resumed_args", "safe_name"]

#: Flags a resumed run may take from the command line (when given there); every other flag
#: comes back from the run's checkpoint.
RESUMABLE_FLAGS = ("resume", "device", "progress", "force", "log_interval", "plots", "data", "export", "verbose")


@dataclass
class Session:
    """What a stage runs with: the effective flags (``args``; on resume those of the run),
    where this process sits (``dist``, ``device``), the run folder, and the checkpoint
    being resumed (``state``, None for a new run)."""

    args: argparse.Namespace
    dist: DistInfo
    device: torch.device
    run: RunDir
    state: dict[str, Any] | None


def add_session_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The run flags every training stage shares (one argument group)."""
    from nas.engine.loop import NAN_POLICIES
    from nas.runtime.cli import str2bool

    g = parser.add_argument_group("run")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    g.add_argument("--amp", type=str2bool, nargs="?", const=True, default=None,
                   help="bf16 autocast (default: on for CUDA, off on CPU; True on CPU uses CPU bf16)")
    g.add_argument("--channels_last", type=str2bool, default=None,
                   help="NHWC memory layout (default: the stage's choice, see docs/training.md)")
    g.add_argument("--nan_policy", default="stop", choices=NAN_POLICIES,
                   help="non-finite loss: stop (keep the last good checkpoint) or skip_batch (drop that update)")
    g.add_argument("--log_interval", "--report_every", type=int, default=50, dest="log_interval",
                   help="steps between progress updates (the only host syncs in the loop)")
    g.add_argument("--progress", type=str2bool, default=None, help="tqdm bar per epoch (default: when a terminal)")
    g.add_argument("--save", default=None, help="run directory (default runs/<stage>-<timestamp>)")
    g.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue the run in RUN_DIR exactly")
    g.add_argument("--force", action="store_true", default=False, help="overwrite a run directory that holds a run")
    return parser


def safe_name(name: str | os.PathLike) -> str:
    """A folder-name-safe version of an architecture name or path."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(str(name)).stem) or "run"


def resumed_args(args: argparse.Namespace, parser: argparse.ArgumentParser,
                 stage: str) -> tuple[argparse.Namespace, dict[str, Any]]:
    """For ``--resume RUN_DIR``: the run's flags (from its last.pt) with the
    :data:`RESUMABLE_FLAGS` given on the command line, and the checkpoint."""
    p = Path(args.resume)
    if p.is_file():
        p = p.parent
    if not (p / "last.pt").is_file():
        raise FerNasError(f"{p}: nothing to resume (no last.pt)")
    state = safe_load(p / "last.pt")
    saved = state.get("args")
    if not isinstance(saved, Mapping) or not saved:
        raise FerNasError(f"{state['path']}: checkpoint holds no flags to resume with")
    if state.get("stage") != stage:
        raise FerNasError(f"{state['path']}: written by the {state.get('stage') or 'unknown'} stage, not {stage}; "
                          f"resume it with that stage's command")
    merged = {**vars(args), **{k: v for k, v in saved.items() if k in vars(args)}}
    for k in RESUMABLE_FLAGS:
        if hasattr(args, k) and getattr(args, k) != parser.get_default(k):
            merged[k] = getattr(args, k)
    merged["resume"], merged["save"] = str(p), str(p)
    return argparse.Namespace(**merged), state


def check_common_args(args: argparse.Namespace) -> None:
    """The checks of the flags every stage shares (data, run), one-line errors."""
    from nas.data.source import check_data_args

    if hasattr(args, "dataset"):
        check_data_args(args)
    if int(getattr(args, "log_interval", 1)) < 1:
        raise FerNasError(f"--log_interval {args.log_interval}: must be at least 1")


def start_session(args: argparse.Namespace, parser: argparse.ArgumentParser, *, stage: str,
                  default_name: str | None = None, check: Callable[[argparse.Namespace], Any] | None = None) -> Session:
    """Resume rule, flag checks, device, process group (under torchrun), run folder (one name
    on every rank; rank 0 writes), ``config.yaml`` of a new run (the parser's real flags only,
    so it works as ``--config``), and the global seed (the ``init`` stream).

    Check, then write: the shared flags (:func:`check_common_args`) and the stage's own
    (``check``, called with the effective flags) are checked before the run folder exists, so a
    refused command leaves nothing behind and the corrected one runs in the same folder."""
    state = None
    if getattr(args, "resume", None):
        args, state = resumed_args(args, parser, stage)
    check_common_args(args)
    if check is not None:
        check(args)
    dist = init_distributed(resolve_device(getattr(args, "device", "auto")))
    if not args.save:
        stamp = broadcast_object(time.strftime("%Y%m%d-%H%M%S"))
        args.save = str(Path("runs") / f"{default_name or stage}-{stamp}")
    run = RunDir(args.save, resume=state is not None, force=bool(getattr(args, "force", False)) and state is None,
                 enabled=dist.is_main)
    if state is None:
        flags = {a.dest for a in parser._actions} - {"help", "config"}
        run.write_config({k: v for k, v in vars(args).items() if k in flags})
    seed_everything(int(getattr(args, "seed", 0)))
    return Session(args=args, dist=dist, device=dist.device, run=run, state=state)


@contextmanager
def open_session(args: argparse.Namespace, parser: argparse.ArgumentParser, *, stage: str,
                 default_name: str | None = None,
                 check: Callable[[argparse.Namespace], Any] | None = None) -> Iterator[Session]:
    """:func:`start_session` for the duration of a ``with`` block; a process group it
    joined is left at the end."""
    joined = not is_initialized()
    ok = False
    try:
        s = start_session(args, parser, stage=stage, default_name=default_name, check=check)
        try:
            yield s
        except FerNasError:
            # bad input found once the stage began (a data file, a checkpoint's contents): a new
            # run that did no work leaves no folder behind, so the corrected command can use it
            if s.state is None:
                s.run.discard()
            raise
        ok = True
    finally:
        if joined:
            cleanup(barrier=ok)
