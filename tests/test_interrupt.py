"""Nothing is lost on interruption.

* SIGKILL at random moments (seeded) of training, search and relabelling (the consensus
  rule, whose per-sample average is state), then ``--resume`` (or a fresh start with ``--force`` when
  the kill came before the first checkpoint), repeated until the run completes: the end state
  equals an uninterrupted run's bit for bit on CPU (weights, architecture parameters, optimizer
  and RNG states, genotype, metrics.csv without its timing columns).
* SIGINT / SIGTERM: last.pt saved at a step boundary, exit status 130 / 143 with one line
  on stderr; resuming from that mid-epoch checkpoint again ends equal to the uninterrupted run.
* A run directory that holds a run is not overwritten without ``--resume`` or ``--force``.

The scripts run as real processes forked from a pre-imported interpreter (tests/zygote.py),
so that the kills land in the work rather than in ``import torch``; matplotlib/graphviz are
blocked in those processes (PNG reports are not part of the state, and it keeps runs short).
"""
from __future__ import annotations

import csv
import hashlib
import json
import random
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from nas.runtime.checkpoint import safe_load
from tests.cli_util import assert_one_line_error, child_env, run_inprocess
from tests.fer_files import small_fer2013, write_fer2013_csv
from tests.zygote import Run, Zygote

pytestmark = pytest.mark.slow  # real processes killed and resumed many times

SEEDS = (0, 1, 2)

#: Keys that may differ between an interrupted and an uninterrupted run: where the run lives,
#: how long it took, and the flags that say how it was started.
#: ``log_interval`` too: it only sets how often progress is read (a resumed run takes it from
#: the command line, like ``--device``), never the numbers.
VOLATILE = {"path", "epoch_time", "time_s", "images_per_s", "save", "resume", "force", "log_interval"}


def train_args(data: Path) -> list[str]:
    # EAC: its erasing draws from the augmentation stream, which a checkpoint holds
    return ["--data", data, "--arch", "FER_V1", "--init_channels", "4", "--layers", "3", "--epochs", "6",
            "--batch_size", "7", "--device", "cpu", "--log_interval", "1", "--seed", "3", "--robust", "eac"]


def search_args(data: Path) -> list[str]:
    # a four-op search space keeps the supernet small; SGAS still makes 8 decisions over 9 epochs
    return ["--data", data, "--strategy", "sgas", "--search_space", "conv_1x1,skip_connect,max_pool_3x3,sep_conv_3x3",
            "--warmup_dec_epoch", "0", "--decision_freq", "1",
            "--epochs_after_last_decision", "1", "--init_channels", "2", "--layers", "3", "--batch_size", "14",
            "--batch_increase", "0", "--crop", "12", "--device", "cpu", "--seed", "5"]


def relabel_args(data: Path) -> list[str]:
    # the consensus rule: its per-sample running average, streaks and labels are state too;
    # it starts from the train_searched.py reference run (made first by the fixture)
    ckpt = data.parent.parent / "ref-train_searched.py" / "best.pt"
    # with small-loss selection on top (a rule and a --robust method together); the EAC reference
    # checkpoint's network takes it
    return ["--data", data, "--checkpoint", ckpt, "--rule", "consensus", "--relabel_threshold", "0.05",
            "--consensus_epochs", "1", "--relabel_warmup", "0", "--fes", "False", "--epochs", "12",
            "--batch_size", "7", "--device", "cpu", "--log_interval", "1", "--seed", "3", "--robust", "smallloss",
            "--robust_ramp", "3"]


SCRIPTS = {"train_searched.py": train_args, "search.py": search_args, "relabel_training.py": relabel_args}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The zygote, a small fer2013.csv, and each script's uninterrupted reference run."""
    tmp = tmp_path_factory.mktemp("interrupt")
    data = write_fer2013_csv(tmp / "data" / "fer2013.csv", *small_fer2013((28, 7, 7), seed=4))
    with Zygote(tmp / "zygote", child_env(), block=("matplotlib", "graphviz")) as z:
        refs = {}
        for script, args in SCRIPTS.items():
            run = tmp / f"ref-{script}"
            t0 = time.time()
            r = z.start(script, *args(data), "--save", run)
            wait_for_log(run, t0)
            t1 = time.monotonic()
            r.wait()
            assert r.returncode == 0, r.stderr[-2000:]
            # matplotlib and graphviz are blocked in these processes: a notice, no PNG, no crash
            assert "notice: matplotlib is not installed" in r.stderr and not list(run.glob("*.png"))
            refs[script] = (run, time.monotonic() - t1)  # how long the work after the first log line takes
        yield {"tmp": tmp, "data": data, "z": z, "refs": refs}


# ------------------------------------------------------------------------------- comparing runs
def assert_same(a: Any, b: Any, where: str = "") -> None:
    """Bitwise equality of nested checkpoint contents (tensors: same dtype, shape and bits)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        if a.is_floating_point():  # exact equality, NaN where NaN
            assert torch.equal(a.isnan(), b.isnan()), f"differs: {where}"
            a, b = a.nan_to_num(0.0), b.nan_to_num(0.0)
        assert torch.equal(a, b), f"differs: {where} (max abs diff {(a.double() - b.double()).abs().max():.3g})"
    elif isinstance(a, dict):
        keys = {k for k in a if k not in VOLATILE} | {k for k in b if k not in VOLATILE}
        for k in sorted(keys, key=str):
            assert k in a and k in b, f"key {k!r} missing at {where}"
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b or (a != a and b != b), f"{where}: {a!r} != {b!r}"


def metrics_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if k not in VOLATILE} for r in csv.DictReader(f)]


def assert_same_run(ref: Path, run: Path, script: str) -> None:
    assert_same(safe_load(ref / "last.pt"), safe_load(run / "last.pt"), "last.pt")
    assert metrics_rows(ref / "metrics.csv") == metrics_rows(run / "metrics.csv")
    if script in ("train_searched.py", "relabel_training.py"):
        assert_same(safe_load(ref / "best.pt"), safe_load(run / "best.pt"), "best.pt")
        res = [json.loads((d / "results.json").read_text()) for d in (ref, run)]
        assert res[0] == res[1]
        if script == "relabel_training.py":  # the per-epoch label changes, class pair by class pair
            assert metrics_rows(ref / "relabel_transitions.csv") == metrics_rows(run / "relabel_transitions.csv")
            assert int(safe_load(run / "last.pt")["callbacks"]["relabel"]["seen"].sum()) == 28  # every Training face
    else:
        assert (ref / "genotype.json").read_text() == (run / "genotype.json").read_text()
        assert metrics_rows(ref / "alphas.csv") == metrics_rows(run / "alphas.csv")
    leftovers = [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    # a SIGKILL between writing a temp file and renaming it leaves the temp file; never the target
    assert all(p.startswith(".") for p in leftovers), leftovers


def wait_for_log(run: Path, since: float, timeout: float = 120) -> None:
    """Until the run's log.txt was written after ``since`` (its first line: the start of the
    work, or the resume): kills are timed from there, not from process start."""
    deadline = time.monotonic() + timeout
    log = run / "log.txt"
    while time.monotonic() < deadline:
        try:
            if log.stat().st_mtime >= since:
                return
        except FileNotFoundError:
            pass
        time.sleep(0.02)
    raise TimeoutError(f"{log} was not written")


def resume_or_restart(z: Zygote, script: str, args: list, run: Path):
    """What a user does after a crash: --resume when last.pt exists, else start again (--force,
    since the folder may already hold the run's config)."""
    if (run / "last.pt").exists():
        return z.start(script, "--resume", run, "--device", "cpu")
    return z.start(script, *args, "--save", run, "--force")


# ------------------------------------------------------------------------------------ SIGKILL
def kill_chain(z: Zygote, script: str, args: list, run: Path, rng: random.Random,
               window: float) -> tuple[Run, int, int, list]:
    """Start or resume the run until it ends, SIGKILLing it at seeded random moments: twice
    within the first 75 % of ``window`` after its log is written, and, should neither kill have
    come after the first checkpoint, once more within 30 % of it after last.pt appears. Returns
    the last process, the kills, the resumes, and (start|resume, exit status, saved epoch.step)
    per process."""
    kills, resumed, log = 0, 0, []
    for _ in range(6):
        resuming = (run / "last.pt").exists()
        t0 = time.time()
        r = resume_or_restart(z, script, args, run)
        resumed += resuming
        if kills < 2 or (kills == 2 and not resumed):
            if kills < 2:
                wait_for_log(run, t0)
            else:
                while not (run / "last.pt").exists() and r.returncode is None:
                    time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.75 if kills < 2 else 0.3) * window)
            r.kill(signal.SIGKILL)
        r.wait()
        # whatever is on disk after a kill is a whole checkpoint (safe_load would refuse half of one)
        saved = safe_load(run / "last.pt") if (run / "last.pt").exists() else None
        log.append(("resume" if resuming else "start", r.returncode,
                    None if saved is None else f"{saved['epoch']}.{saved['step']}"))
        if r.returncode == 0:
            break
        assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
        kills += 1
    return r, kills, resumed, log


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_sigkill_at_random_moments_then_resume_equals_uninterrupted(env, script, seed):
    """Two SIGKILLs at seeded random moments of the work (uniform over the reference run's
    duration), then a run to the end. Should both kills land before the first checkpoint, a
    third lands at a random moment after it, so every chain resumes at least once.

    The moments are drawn from the reference run's duration, which a busy machine can stretch:
    when a run ends before it was killed and resumed, the chain starts again from an empty folder
    with the window halved (the test is about resuming, not about how long a run takes)."""
    z, (ref, work_time) = env["z"], env["refs"][script]
    rng = random.Random(f"{script}-{seed}")
    run = env["tmp"] / f"kill-{script}-{seed}"
    args = SCRIPTS[script](env["data"])
    window, history = work_time, []
    for _ in range(5):
        r, kills, resumed, log = kill_chain(z, script, args, run, rng, window)
        history.append(log)
        if r.returncode != 0 or (kills >= 1 and resumed >= 1):
            break
        shutil.rmtree(run)  # it ended before a kill landed: again, from nothing, in half the window
        window /= 2
    print(f"{script} seed {seed}: {history}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert kills >= 1 and resumed >= 1, history
    assert_same_run(ref, run, script)


# ----------------------------------------------------------------------------- SIGINT / SIGTERM
def _wait_for(path: Path, text: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.05)
    raise TimeoutError(f"{text!r} never appeared in {path}")


@pytest.mark.parametrize("script,sig", [("train_searched.py", signal.SIGINT), ("search.py", signal.SIGTERM)])
def test_signal_saves_last_pt_and_exits_cleanly(env, script, sig):
    """SIGINT/SIGTERM mid-run: status 128+signal, one stderr line naming last.pt and how to
    resume; last.pt is whole; resuming ends equal to the uninterrupted run."""
    z, (ref, _) = env["z"], env["refs"][script]
    run = env["tmp"] / f"sig-{script}"
    r = z.start(script, *SCRIPTS[script](env["data"]), "--save", run)
    _wait_for(run / "log.txt", "epoch 1/")  # past the first epoch: inside the loop
    time.sleep(0.3)
    r.kill(sig)
    r.wait()
    if r.returncode == 0:  # pragma: no cover - the machine was so fast the run had ended
        pytest.skip("run finished before the signal arrived")
    line = assert_one_line_error(r, "interrupted", "last.pt", "--resume", code=128 + sig)
    assert str(run) in line
    state = safe_load(run / "last.pt")
    assert state["epoch"] >= 1
    r2 = z.run(script, "--resume", run, "--device", "cpu")
    assert r2.returncode == 0, r2.stderr[-2000:]
    assert_same_run(ref, run, script)


# ------------------------------------------------------------------------- no silent overwrite
def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_run_directory_not_overwritten_without_resume_or_force(env, script):
    ref, _ = env["refs"][script]
    before = _digest(ref)
    proc = run_inprocess(script, [*SCRIPTS[script](env["data"]), "--save", ref])
    assert_one_line_error(proc, str(ref), "already holds a run", "--resume", "--force")
    assert _digest(ref) == before
