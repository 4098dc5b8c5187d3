"""Two gloo ranks on CPU for the DDP tests: a free port, and a spawn that survives gloo's
teardown abort.

gloo can abort a rank *after* its work is done: "terminate called without an active
exception" (SIGABRT) while the process exits, about one run in 15-20 on a loaded 2-core
machine (seen in CI twice, never reproduced on demand; a barrier before
``destroy_process_group`` did not remove it). The workers' results are files, so
:func:`spawn_ranks` ends each rank with ``os._exit(0)`` once its function has returned
(no C++ destructors at interpreter exit), and runs the whole attempt once more, from a
cleaned folder and on a new port, if a rank still dies by a signal. Any exception raised by
a worker, a non-zero exit, or a second signal fails the test as before.
"""
from __future__ import annotations

import os
import shutil
import socket
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessExitedException


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_then_exit(rank: int, fn: Callable[..., None], world: int, port: int, args: tuple[Any, ...]) -> None:
    fn(rank, world, port, *args)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # the results are on disk; skip the interpreter's teardown, where gloo can abort


def spawn_ranks(fn: Callable[..., None], args: tuple[Any, ...], out: Path, world: int = 2) -> None:
    """Run ``fn(rank, world, port, *args)`` on ``world`` spawned processes (``fn`` must be a
    module-level function). A rank killed by a signal reruns the attempt once: what the
    first attempt created in ``out`` is removed first, so the rerun starts as the first did."""
    before = set(os.listdir(out))
    for attempt in (1, 2):
        try:
            mp.spawn(_run_then_exit, args=(fn, world, free_port(), args), nprocs=world, join=True)
            return
        except ProcessExitedException as e:
            if attempt == 2 or not e.signal_name:
                raise
            warnings.warn(f"rank {e.error_index} died by {e.signal_name} (gloo teardown); running the ranks again")
            for name in set(os.listdir(out)) - before:
                p = Path(out) / name
                shutil.rmtree(p) if p.is_dir() else p.unlink()
