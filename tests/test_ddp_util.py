"""The DDP tests' spawn: a rank killed by a signal reruns the attempt once, from a cleaned
folder; a second signal, or an exception in a worker, still fails."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from torch.multiprocessing.spawn import ProcessExitedException, ProcessRaisedException

from tests.ddp_util import spawn_ranks

pytestmark = pytest.mark.slow  # spawned processes


def _abort_first(rank: int, world: int, port: int, out: str, state: str, times: int) -> None:
    (Path(out) / f"rank{rank}-{os.getpid()}.txt").write_text(str(port))
    aborted = len(list(Path(state).iterdir()))
    if rank == 1 and aborted < times:
        (Path(state) / f"abort{aborted}").touch()
        os.abort()


def _raise(rank: int, world: int, port: int) -> None:
    raise ValueError(f"rank {rank} failed")


def test_a_rank_killed_by_a_signal_reruns_once_from_a_cleaned_folder(tmp_path):
    out, state = tmp_path / "out", tmp_path / "state"
    out.mkdir(), state.mkdir()
    (out / "input.txt").write_text("kept")
    with pytest.warns(UserWarning, match="SIGABRT"):
        spawn_ranks(_abort_first, (str(out), str(state), 1), out)
    assert len(list(state.iterdir())) == 1
    names = sorted(p.name for p in out.iterdir())
    # the first attempt's files are gone, the input stays, the second attempt wrote one file per rank
    assert names[0] == "input.txt" and len(names) == 3 and [n[:5] for n in names[1:]] == ["rank0", "rank1"]


def test_a_second_signal_or_an_exception_fails(tmp_path):
    out, state = tmp_path / "out", tmp_path / "state"
    out.mkdir(), state.mkdir()
    with pytest.warns(UserWarning), pytest.raises(ProcessExitedException):
        spawn_ranks(_abort_first, (str(out), str(state), 2), out)
    assert len(list(state.iterdir())) == 2
    with pytest.raises(ProcessRaisedException, match="failed"):
        spawn_ranks(_raise, (), out)
