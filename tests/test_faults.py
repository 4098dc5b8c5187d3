"""Environment and numerical faults: each ends as one clear line (or a notice), never a traceback,
and never loses the last good checkpoint.

* save directory unwritable (a file in the way, EACCES, EROFS) or the disk full: detected before
  training starts; a disk that fills during the run: one line, the previous checkpoint intact;
* matplotlib / graphviz missing: a notice, the run completes;
* ``--device cuda`` without a GPU (and nonsense devices): one line, nothing written;
* NaN/Inf loss: ``--nan_policy stop`` names the epoch and step and keeps the last good
  checkpoint; ``skip_batch`` drops that update and goes on;
* CUDA out of memory: one line suggesting a smaller ``--batch_size`` / ``--partial_channels``.

The scripts run in this process through their own ``nas.runtime.cli.run`` entry (same code path as the
command line), which lets a fault be injected with monkeypatch.
"""
from __future__ import annotations

import errno
import os
import shutil
import sys
from collections import namedtuple
from pathlib import Path

import pytest
import torch

from nas.runtime.checkpoint import RunDir, atomic_save, read_csv_rows, safe_load
from nas.runtime.errors import FerNasError
from tests.cli_util import CHECKPOINT_READERS, assert_one_line_error, run_inprocess
from tests.fer_files import small_fer2013, write_fer2013_csv



@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_fer2013_csv(tmp_path_factory.mktemp("faults") / "fer2013.csv", *small_fer2013((28, 7, 7), seed=4))


def train_args(data: Path, save: Path, *extra: object) -> list[object]:
    return ["--data", data, "--arch", "FER_V1", "--init_channels", "4", "--layers", "3", "--epochs", "3",
            "--batch_size", "10", "--device", "cpu", "--log_interval", "1", "--save", save, *extra]


def search_args(data: Path, save: Path, *extra: object) -> list[object]:
    return ["--data", data, "--strategy", "darts", "--epochs", "2", "--search_space",
            "conv_1x1,skip_connect,max_pool_3x3", "--init_channels", "2", "--layers", "3", "--batch_size", "14",
            "--crop", "12", "--device", "cpu", "--save", save, *extra]


ARGS = {"train_searched.py": train_args, "search.py": search_args}


# ======================================================================= unwritable / full save directory
def test_rundir_unwritable_when_a_file_is_in_the_way(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(FerNasError, match="save directory is not writable") as e:
        RunDir(tmp_path / "file" / "run")
    assert "\n" not in str(e.value) and str(tmp_path / "file" / "run") in str(e.value)


@pytest.mark.parametrize("err", [errno.EACCES, errno.EROFS, errno.EDQUOT])
def test_rundir_unwritable_permission_readonly_quota(tmp_path, monkeypatch, err):
    """The write probe fails as it would on a read-only mount, a folder without write
    permission (simulated: the tests may run as root) or an exhausted quota."""
    import nas.runtime.checkpoint as ck

    def refuse(path, *a, **k):
        raise OSError(err, os.strerror(err), str(path))

    monkeypatch.setattr(ck, "open", refuse, raising=False)
    with pytest.raises(FerNasError) as e:
        RunDir(tmp_path / "run")
    assert "not writable" in str(e.value) and os.strerror(err) in str(e.value)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores folder permissions")
def test_rundir_unwritable_real_permissions(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(FerNasError, match="not writable"):
            RunDir(ro / "run")
    finally:
        ro.chmod(0o700)


DiskUsage = namedtuple("DiskUsage", "total used free")


def test_rundir_full_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda p: DiskUsage(10 * 2**30, 10 * 2**30 - 5 * 2**20, 5 * 2**20))
    with pytest.raises(FerNasError, match=r"only 5 MB free, need at least 50 MB"):
        RunDir(tmp_path / "run")


@pytest.mark.parametrize("script", sorted(ARGS))
def test_scripts_detect_unwritable_save_dir_before_training(tmp_path, data, script):
    (tmp_path / "file").write_text("x")
    save = tmp_path / "file" / "run"
    proc = run_inprocess(script, ARGS[script](data, save))
    assert_one_line_error(proc, str(save), "not writable")
    assert "epoch" not in proc.stdout  # no training happened


@pytest.mark.parametrize("script", sorted(ARGS))
def test_scripts_detect_full_disk_before_training(tmp_path, data, script, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda p: DiskUsage(10 * 2**30, 10 * 2**30 - 2**20, 2**20))
    proc = run_inprocess(script, ARGS[script](data, tmp_path / "run"))
    assert_one_line_error(proc, "only 1 MB free")
    assert "epoch" not in proc.stdout and not (tmp_path / "run" / "last.pt").exists()


class _FullDiskFile:
    """A file object whose writes fail with ENOSPC once ``budget`` bytes are written."""

    def __init__(self, f, budget: int) -> None:
        self.f, self.budget = f, budget

    def write(self, b) -> int:
        if len(b) > self.budget:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.budget -= len(b)
        return self.f.write(b)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def _fill_disk_after(monkeypatch, n_ok_writes: int) -> None:
    """Let ``n_ok_writes`` atomic writes through, then every write hits a full disk."""
    import nas.runtime.checkpoint as ck

    real_fdopen = os.fdopen
    count = {"n": 0}

    def fdopen(fd, *a, **k):
        count["n"] += 1
        f = real_fdopen(fd, *a, **k)
        return f if count["n"] <= n_ok_writes else _FullDiskFile(f, budget=100)

    monkeypatch.setattr(ck.os, "fdopen", fdopen)


def test_atomic_save_on_full_disk_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_save({"w": torch.ones(3), "epoch": 1}, path)
    _fill_disk_after(monkeypatch, 0)
    with pytest.raises(FerNasError) as e:
        atomic_save({"w": torch.zeros(1000), "epoch": 2}, path)
    assert "cannot write checkpoint" in str(e.value) and "No space left" in str(e.value)
    monkeypatch.undo()
    old = safe_load(path)
    assert old["epoch"] == 1 and torch.equal(old["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # the temp file is gone


def test_disk_filling_during_training(tmp_path, data, monkeypatch):
    """The disk fills after a few files were written: one line, exit 2, and the last.pt on disk
    is a whole checkpoint of an earlier epoch."""
    run = tmp_path / "run"
    _fill_disk_after(monkeypatch, 4)
    proc = run_inprocess("train_searched.py", train_args(data, run))
    monkeypatch.undo()
    assert_one_line_error(proc, "No space left on device")
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    if (run / "last.pt").exists():
        state = safe_load(run / "last.pt")
        assert 1 <= state["epoch"] < 3


# ======================================================================= optional dependencies missing
@pytest.fixture()
def no_plotting(monkeypatch):
    """matplotlib and graphviz fail to import, as if not installed (even if loaded already)."""
    import nas.engine.report

    for name in ("matplotlib", "matplotlib.pyplot", "graphviz"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setattr(nas.engine.report, "_NOTICE_SHOWN", False)


def test_report_functions_degrade_without_matplotlib(tmp_path, no_plotting, capsys):
    from nas.models.genotypes import load_genotype
    from nas.engine.report import have_matplotlib, plot_cells, plot_curves

    assert have_matplotlib() is False
    assert not plot_cells(load_genotype("FER_V1"), tmp_path)
    plot_curves([{"epoch": 1, "train_acc": 1.0}], tmp_path / "c.png")
    err = capsys.readouterr().err
    assert err.count("notice: matplotlib is not installed") == 1  # once, not per plot
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("script", sorted(ARGS))
def test_scripts_complete_without_matplotlib_and_graphviz(tmp_path, data, script, no_plotting):
    run = tmp_path / "run"
    proc = run_inprocess(script, ARGS[script](data, run))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    notices = (proc.stderr + (run / "log.txt").read_text()).lower()
    assert "notice:" in notices and ("matplotlib" in notices or "plots skipped" in notices)
    assert not list(run.glob("*.png"))
    assert (run / "last.pt").exists()
    assert (run / ("genotype.json" if script == "search.py" else "best.pt")).exists()


# ======================================================================= devices
@pytest.mark.parametrize("name,fragment", [("cuda", "CUDA is not available"), ("cuda:1", "CUDA is not available"),
                                           ("tpu", "unknown device"), ("banana", "unknown device"), ("meta", "unsupported device type"),
                                           ("mps", "unsupported device type")])
def test_resolve_device_errors(monkeypatch, name, fragment):
    from nas.runtime.device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(FerNasError, match=fragment) as e:
        resolve_device(name)
    assert "\n" not in str(e.value)
    assert resolve_device("auto").type == "cpu" and resolve_device("cpu").type == "cpu"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, data) -> Path:
    """A real one-epoch checkpoint, for the scripts that read one."""
    run = tmp_path_factory.mktemp("ckpt") / "run"
    args = train_args(data, run)
    args[args.index("--epochs") + 1] = "1"
    proc = run_inprocess("train_searched.py", args)
    assert proc.returncode == 0, proc.stderr
    return run / "best.pt"


ALL_SCRIPTS = sorted(set(ARGS) | set(CHECKPOINT_READERS))


def script_argv(script: str, data: Path, save: Path, request) -> list[object]:
    """A small valid command line for any script (the checkpoint readers get a real checkpoint)."""
    if script in ARGS:
        return ARGS[script](data, save)
    ckpt = request.getfixturevalue("checkpoint")
    argv: list[object] = [a.format(ckpt=ckpt, run=ckpt.parent) for a in CHECKPOINT_READERS[script]]
    argv += ["--save", save]
    if script in ("relabel_training.py", "ensemble.py"):
        argv += ["--data", data]
    if script == "relabel_training.py":
        argv += ["--epochs", "1"]
    return argv


@pytest.mark.parametrize("script", ALL_SCRIPTS)
def test_every_script_detects_unwritable_save_dir(tmp_path, data, script, request):
    (tmp_path / "file").write_text("x")
    save = tmp_path / "file" / "run"
    proc = run_inprocess(script, script_argv(script, data, save, request))
    assert_one_line_error(proc, str(save), "not writable")


@pytest.mark.parametrize("script", ALL_SCRIPTS)
def test_device_cuda_without_gpu_is_one_line(tmp_path, data, script, monkeypatch, request):
    """Every script: --device cuda on a machine without CUDA (simulated, so this also runs on a
    GPU machine) is one line naming the flag; no run directory is left behind."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    save = tmp_path / "run"
    argv = script_argv(script, data, save, request)
    argv[argv.index("--device") + 1] = "cuda"
    proc = run_inprocess(script, argv)
    assert_one_line_error(proc, "--device cuda", "CUDA is not available")
    assert not save.exists()


# ======================================================================= NaN / Inf
def _poison_inputs(monkeypatch, cls, method: str, when, value: float = float("nan")) -> dict:
    """Make the input batch of one training step non-finite (``when(self)`` picks the step):
    the loss and then the gradients become NaN/Inf, as with a diverging run."""
    real = getattr(cls, method)
    hits = {"n": 0}

    def wrapped(self, *args, **kwargs):
        if not when(self, *args):
            return real(self, *args, **kwargs)
        hits["n"] += 1
        aug = self.augment

        def bad_augment(*a, **k):
            return aug(*a, **k) * value

        self.augment = bad_augment
        try:
            return real(self, *args, **kwargs)
        finally:
            self.augment = aug

    monkeypatch.setattr(cls, method, wrapped)
    return hits


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_loss_stops_naming_epoch_and_step_and_keeps_last_good(tmp_path, data, monkeypatch, value):
    import nas.engine.trainer

    run = tmp_path / "run"
    hits = _poison_inputs(monkeypatch, nas.engine.trainer.Classification, "step",
                          lambda self, epoch, step, *rest: (epoch, step) == (1, 1), value)
    proc = run_inprocess("train_searched.py", train_args(data, run, "--nan_policy", "stop"))
    assert hits["n"] == 1
    assert_one_line_error(proc, "non-finite loss at epoch 2 step 2", str(run / "last.pt"), "--nan_policy skip_batch")
    state = safe_load(run / "last.pt")
    assert (state["epoch"], state["step"]) == (1, 0)  # the end of epoch 1: the last good state
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    assert [r["epoch"] for r in read_csv_rows(run / "metrics.csv")] == ["1"]
    assert safe_load(run / "best.pt")["epoch"] == 1


def test_nan_in_first_epoch_says_no_checkpoint_yet(tmp_path, data, monkeypatch):
    import nas.engine.trainer

    run = tmp_path / "run"
    _poison_inputs(monkeypatch, nas.engine.trainer.Classification, "step",
                   lambda self, epoch, step, *rest: (epoch, step) == (0, 0))
    proc = run_inprocess("train_searched.py", train_args(data, run))
    assert_one_line_error(proc, "non-finite loss at epoch 1 step 1", "no checkpoint yet")
    assert not (run / "last.pt").exists()
    # the run took a step: its folder and log stay (only bad input met before the first step is
    # taken back, tests/test_check_then_write.py)
    assert (run / "config.yaml").exists() and (run / "log.txt").exists()


def _poison_loss(monkeypatch, epoch_step: tuple[int, int], value: float = float("nan")) -> dict:
    """Make only the loss of one training step non-finite (the forward pass itself stays clean)."""
    import nas.engine.trainer

    real_step, real_ce = nas.engine.trainer.Classification.step, nas.engine.trainer.F.cross_entropy
    state = {"on": False, "n": 0}

    def ce(*a, **k):
        out = real_ce(*a, **k)
        return out * value if state["on"] else out

    def step(self, epoch, step_, batch, ctx):
        state["on"] = (epoch, step_) == epoch_step
        state["n"] += state["on"]
        try:
            return real_step(self, epoch, step_, batch, ctx)
        finally:
            state["on"] = False

    monkeypatch.setattr(nas.engine.trainer.F, "cross_entropy", ce)
    monkeypatch.setattr(nas.engine.trainer.Classification, "step", step)
    return state


def test_nan_policy_skip_batch_skips_a_bad_loss(tmp_path, data, monkeypatch):
    """skip_batch: the step whose loss is NaN makes no update; the run goes on to the end."""
    run = tmp_path / "run"
    hits = _poison_loss(monkeypatch, (1, 1))
    proc = run_inprocess("train_searched.py", train_args(data, run, "--nan_policy", "skip_batch"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert hits["n"] == 1
    rows = read_csv_rows(run / "metrics.csv")
    assert [int(r["skipped_batches"]) for r in rows] == [0, 1, 0]
    assert "skipped 1 non-finite batch" in proc.stdout
    state = safe_load(run / "last.pt")
    assert state["epoch"] == 3
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


def test_nan_policy_skip_batch_continues_after_nan_activations(tmp_path, data, monkeypatch):
    """skip_batch when the activations themselves go non-finite (a diverging forward pass): the
    BatchNorm running statistics that the bad forward pass updated are restored as well."""
    import nas.engine.trainer

    run = tmp_path / "run"
    hits = _poison_inputs(monkeypatch, nas.engine.trainer.Classification, "step",
                          lambda self, epoch, step, *rest: (epoch, step) == (1, 1))
    proc = run_inprocess("train_searched.py", train_args(data, run, "--nan_policy", "skip_batch"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert hits["n"] == 1
    rows = read_csv_rows(run / "metrics.csv")
    assert [int(r["skipped_batches"]) for r in rows] == [0, 1, 0]
    assert "skipped 1 non-finite batch" in proc.stdout
    state = safe_load(run / "last.pt")
    assert state["epoch"] == 3
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


def test_nan_in_search_stops_naming_epoch_and_step(tmp_path, data, monkeypatch):
    """A diverging search must not go on to derive a genotype from NaN architecture weights."""
    import nas.search.searcher

    run = tmp_path / "run"
    hits = _poison_inputs(monkeypatch, nas.search.searcher.BilevelSearch, "step",
                          lambda self, epoch, step, *rest: (epoch, step) == (1, 0))  # epoch 2, step 1
    proc = run_inprocess("search.py", search_args(data, run))
    assert_one_line_error(proc, "non-finite", "epoch 2", "step 1")
    assert hits["n"] == 1
    state = safe_load(run / "last.pt")
    assert state["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


# ======================================================================= CUDA out of memory
def _oom(*args, **kwargs):
    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.7 GiB total "
                                      "capacity; 13.1 GiB already allocated)\nsee the memory docs")


@pytest.mark.parametrize("script,target", [("train_searched.py", "nas.engine.trainer.Classification.step"),
                                           ("search.py", "nas.search.searcher.BilevelSearch.step")])
def test_cuda_oom_is_one_line(tmp_path, data, monkeypatch, script, target):
    import importlib

    mod, cls, meth = target.rsplit(".", 2)
    monkeypatch.setattr(getattr(importlib.import_module(mod), cls), meth, _oom)
    proc = run_inprocess(script, ARGS[script](data, tmp_path / "run"))
    line = assert_one_line_error(proc, "out of GPU memory", "--batch_size", "--partial_channels", code=3)
    assert "Tried to allocate 2.00 GiB" in line
