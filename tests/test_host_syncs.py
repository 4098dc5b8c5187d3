"""No host syncs in any step (issue 35): with the optimizers that skip a non-finite update on the
device (fused, ``--fused True``; the default on CUDA), a training, relabelling or search step
reads nothing back from the device. Counted on CPU with a dispatch mode on the ops that make the
host wait for the device (``.item()``/``bool()``/``float()`` of a tensor, and the ops whose
output size depends on the data), inside each step and over each epoch's steps at two Training
sizes: the per-step count must be zero, and an epoch's step loop must not sync more when it has
more steps. Epoch ends (validation, decisions, metrics) may sync."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from nas.engine.loop import Loop
from tests.fer_files import small_fer2013, write_fer2013_csv

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from host_syncs import SyncCounter  # noqa: E402  (the counter bench/host_syncs.py reports with)


def counted(monkeypatch, counter: SyncCounter) -> None:
    """Tag syncs by where they happen: inside a step, in an epoch's step loop, elsewhere."""
    run_step, train_epoch = Loop.run_step, Loop._train_epoch

    def step(self, *a, **k):
        old, counter.where = counter.where, "step"
        try:
            return run_step(self, *a, **k)
        finally:
            counter.where = old

    def epoch(self, *a, **k):
        counter.where = "epoch loop"
        try:
            return train_epoch(self, *a, **k)
        finally:
            counter.where = "outside"

    monkeypatch.setattr(Loop, "run_step", step)
    monkeypatch.setattr(Loop, "_train_epoch", epoch)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("syncs")
    return {n: write_fer2013_csv(root / f"t{n}" / "fer2013.csv", *small_fer2013((n, 7, 7), seed=1)) for n in (28, 56)}


TRAIN = ["--arch", "FER_V1", "--init_channels", "4", "--layers", "3", "--epochs", "1", "--batch_size", "7",
         "--snapshot_at", ""]
SEARCH = ["--search_space", "conv_1x1,skip_connect,max_pool_3x3,sep_conv_3x3", "--init_channels", "2", "--layers",
          "3", "--batch_size", "7", "--crop", "12"]
CASES = {
    "train": ("train", TRAIN),
    "train eac": ("train", [*TRAIN, "--robust", "eac"]),
    "train smallloss": ("train", [*TRAIN, "--robust", "smallloss", "--robust_ramp", "0"]),
    "train fes smoothing": ("train", [*TRAIN, "--fes_smoothing", "0.1"]),
    "relabel autofernet": ("relabel", ["--rule", "autofernet", "--fes", "True", "--relabel_warmup", "0"]),
    "relabel confident": ("relabel", ["--rule", "confident", "--fes", "False", "--relabel_warmup", "0"]),
    "relabel consensus": ("relabel", ["--rule", "consensus", "--fes", "False", "--relabel_warmup", "0",
                                      "--consensus_epochs", "1"]),
    "relabel soft": ("relabel", ["--rule", "soft", "--fes", "False", "--relabel_warmup", "0"]),
    "search darts first order": ("search", [*SEARCH, "--strategy", "darts", "--epochs", "1"]),
    "search darts second order": ("search", [*SEARCH, "--strategy", "darts", "--epochs", "1", "--unrolled"]),
    "search sgas": ("search", [*SEARCH, "--strategy", "sgas", "--warmup_dec_epoch", "0", "--decision_freq", "1",
                               "--epochs_after_last_decision", "0", "--batch_increase", "0"]),
    "search beta_darts": ("search", [*SEARCH, "--strategy", "beta_darts", "--epochs", "1"]),
    "search darts_minus": ("search", [*SEARCH, "--strategy", "darts_minus", "--epochs", "1"]),
}


def _run(kind: str, argv: list, csv: Path, save: Path, start: Path | None = None) -> None:
    from nas.apps import relabel, search, train

    app = {"train": train, "relabel": relabel, "search": search}[kind]
    base = ["--data", str(csv), "--device", "cpu", "--fused", "True", "--log_interval", "10000", "--save", str(save),
            "--progress", "False", "--plots", "False"]
    if kind == "relabel":
        base += ["--checkpoint", str(start), "--epochs", "1", "--batch_size", "7"]
    app.main(app.get_args_parser().parse_args([*map(str, argv), *base]))


@pytest.mark.parametrize("case", sorted(CASES))
def test_no_host_sync_in_any_step(case, data, tmp_path, monkeypatch):
    kind, argv = CASES[case]
    start = None
    if kind == "relabel":
        _run("train", TRAIN, data[28], tmp_path / "base")
        start = tmp_path / "base" / "best.pt"
    loops = {}
    for n, csv in data.items():
        counter = SyncCounter()
        counted(monkeypatch, counter)
        with counter:
            _run(kind, argv, csv, tmp_path / f"{n}", start)
        monkeypatch.undo()
        in_step = {k[1]: v for k, v in counter.counts.items() if k[0] == "step"}
        assert not in_step, f"{case}: host syncs inside the step: {in_step}"
        loops[n] = sum(v for k, v in counter.counts.items() if k[0] == "epoch loop")
    # the epoch's step loop (batches drawn, steps run) syncs no more with twice the steps
    assert loops[56] == loops[28], f"{case}: syncs in the step loop grow with the steps: {loops}"


def test_without_fused_optimizers_a_cpu_step_reads_the_flag(data, tmp_path, monkeypatch):
    """The default CPU path (unfused, faster there) reads the skip flag on the host every step:
    what the fused path removes, counted the same way (so the counter sees real syncs)."""
    from nas.apps import train

    counter = SyncCounter()
    counted(monkeypatch, counter)
    with counter:
        train.main(train.get_args_parser().parse_args([*TRAIN, "--data", str(data[28]), "--device", "cpu",
                                                       "--save", str(tmp_path / "r"), "--progress", "False",
                                                       "--plots", "False", "--log_interval", "10000"]))
    steps = 28 // 7
    assert counter.counts[("step", "aten._local_scalar_dense.default")] == steps  # UpdateGuard's bool(bad)
    assert counter.counts[("epoch loop", "aten._local_scalar_dense.default")] == steps  # the NaN check
