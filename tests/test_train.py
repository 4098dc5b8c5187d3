"""The training engine: gradients reach every parameter, a short run writes every file,
resume after interruption is bitwise exact, the NaN policies, honest selection."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from nas.models.genotypes import PUBLISHED_DIR
import torch

from nas.runtime.checkpoint import RunDir, read_csv_rows, safe_load
from nas.data.dataset import FER_CLASSES, FERData
from nas.runtime.errors import FerNasError, RunInterrupted
from nas.models import build_model
from nas.engine.loop import Loop
from nas.engine.trainer import TrainConfig, Trainer, config_from_args
from nas.runtime.seeds import seed_everything

ROOT = Path(__file__).resolve().parents[1]
# Subprocesses get one thread: on a shared 2-core machine, oversubscribed OpenMP threads
# spin against each other and tiny convolutions run 10-50x slower.
ENV1 = {**os.environ, "OMP_NUM_THREADS": "1"}



def make_data(n_train: int = 96, n_val: int = 32, n_test: int = 32, seed: int = 0) -> FERData:
    """Learnable toy faces: each class brightens a horizontal band at its own height."""
    n = n_train + n_val + n_test
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 7
    labels = labels[torch.randperm(n, generator=g)]
    img = torch.randint(0, 70, (n, 1, 48, 48), generator=g)
    for c in range(7):
        img[labels == c, :, 4 + 6 * c: 9 + 6 * c, 6:42] += 150
    split = torch.zeros(n, dtype=torch.int64)
    split[n_train:n_train + n_val] = 1
    split[n_train + n_val:] = 2
    return FERData(images=img.clamp(0, 255).to(torch.uint8), labels=labels, split=split, classes=list(FER_CLASSES),
                   format="fer2013_csv", source="toy")


def write_fer_csv(path: Path, data: FERData) -> Path:
    usage = ("Training", "PublicTest", "PrivateTest")
    lines = ["emotion,pixels,Usage"]
    for i in range(len(data)):
        px = " ".join(map(str, data.images[i, 0].flatten().tolist()))
        lines.append(f"{int(data.labels[i])},{px},{usage[int(data.split[i])]}")
    path.write_text("\n".join(lines) + "\n")
    return path


def tiny_model(arch: str = "FER_V1", **kw):
    seed_everything(0)
    kw = {"init_channels": 4, "layers": 3, "auxiliary": True, "drop_path_prob": 0.2, **kw}
    return build_model(arch, **kw)


def cfg(**kw) -> TrainConfig:
    base = dict(epochs=2, batch_size=16, cutout=True, progress=False, log_interval=2, snapshot_at=[], seed=0)
    base.update(kw)
    return TrainConfig(**base)


class StopAt:
    """A stop flag and a target hook that raises it after a chosen (epoch, step)."""

    def __init__(self, epoch: int, step: int):
        self.at = (epoch, step)
        self.signum = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __call__(self, epoch, step, idx, logits, targets):
        if (epoch, step) == self.at:
            self.signum = signal.SIGTERM
        return targets


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return safe_load(path)["model"]


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("arch,kw", [("FER_V1", {"init_channels": 8, "layers": 5}), ("vgg_fer", {}),
                                     ("resnet_fer", {}), ("cnn_shallow", {}), ("cnn_deep", {})])
def test_every_parameter_gets_a_gradient_and_moves(arch, kw):
    data = make_data(24, 8, 8)
    model = tiny_model(arch, drop_path_prob=0.0, **kw)
    tr = Trainer(model, data, cfg(batch_size=4), RunDir("unused", enabled=False))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    idx = tr.train_idx[:4]
    tr.loop.run_step(0, 0, idx)
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing
    zero = [n for n, p in model.named_parameters() if float(p.grad.abs().sum()) == 0.0]
    assert not zero, zero
    if arch == "FER_V1":
        assert any(n.startswith("auxiliary_head") for n in before)
    moved = [n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())]
    assert len(moved) == len(before)
    assert int(tr.loop.sums[2]) == 4 and float(tr.loop.sums[3]) == 0.0


# ----------------------------------------------------------------------------- a full run
@pytest.mark.slow  # a whole run plus an evaluate subprocess
def test_two_epoch_cli_run_writes_everything_and_evaluate_agrees(tmp_path):
    """train_searched.py end to end on a tiny fer2013.csv (the real reader), then the
    checkpoint alone through ``python -m nas evaluate`` gives the run's accuracy."""
    csv = write_fer_csv(tmp_path / "fer2013.csv", make_data(64, 24, 24))
    run_dir = tmp_path / "run"
    args = ["--data", str(csv), "--arch", "FER_V1", "--init_channels", "4", "--layers", "3", "--epochs", "2",
            "--batch_size", "16", "--cutout", "--snapshot_at", "1,101", "--save", str(run_dir), "--progress", "False"]
    import train_searched

    res = train_searched.main(train_searched.get_args_parser().parse_args(args))
    for name in ("config.yaml", "log.txt", "metrics.csv", "best.pt", "last.pt", "results.json", "snapshot_train1.pt",
                 "curves.png", "confusion.png", "saliency.png", "misclassified.png", "cell_normal.png",
                 "cell_reduce.png"):
        assert (run_dir / name).is_file(), name
    assert not (run_dir / "snapshot_train101.pt").exists()
    rows = read_csv_rows(run_dir / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["selected_epoch"] == res["selected_epoch"]
    sel = rows[saved["selected_epoch"] - 1]
    assert float(sel["val_acc"]) == pytest.approx(max(float(r["val_acc"]) for r in rows), abs=1e-3)
    assert saved["test_acc"] == pytest.approx(float(sel["test_acc"]), abs=1e-3)
    assert saved["best_test_acc_for_reference_only"] == pytest.approx(max(float(r["test_acc"]) for r in rows), abs=1e-3)
    assert saved["params"] == 4525  # FER_V1 C4 L3 without the auxiliary head

    best = safe_load(run_dir / "best.pt")
    assert best["epoch"] == saved["selected_epoch"] and best["step"] == 0
    for key in ("model", "model_spec", "classes", "normalization", "input_size", "optimizer", "scheduler", "loop",
                "callbacks", "args", "stage", "toolkit_version"):
        assert key in best, key
    assert best["stage"] == "train" and best["callbacks"]["selection"]["best"]["epoch"] == best["epoch"]
    assert {"rng", "augment"} <= set(best["loop"]["ranks"][0])
    assert best["classes"] == list(FER_CLASSES) and best["input_size"] == 44

    out = subprocess.run([sys.executable, "-m", "nas", "evaluate", "--checkpoint", str(run_dir / "best.pt"), "--data",
                          str(csv), "--tta", "center", "--bootstrap", "200", "--device", "cpu",
                          "--out", str(tmp_path / "eval")], capture_output=True, text=True, cwd=ROOT, timeout=120, env=ENV1)
    assert out.returncode == 0, out.stderr
    ev = json.loads(out.stdout)
    assert ev["views"]["center"]["accuracy"] == pytest.approx(saved["test_acc"], abs=1e-6)
    assert (tmp_path / "eval" / "confusion_center.csv").is_file()

    # config.yaml is a valid --config: it reproduces every flag of the run
    from nas.runtime.cli import parse_args

    again = parse_args(train_searched.get_args_parser(), ["--config", str(run_dir / "config.yaml")])
    first = train_searched.get_args_parser().parse_args(args)
    assert vars(again) == {**vars(first), "config": str(run_dir / "config.yaml")}

    # the folder now holds a run: refused without --resume/--force, one line, exit 2
    out = subprocess.run([sys.executable, "train_searched.py", *args], capture_output=True, text=True, cwd=ROOT,
                         timeout=120, env=ENV1)
    assert out.returncode == 2 and "already holds a run" in out.stderr and len(out.stderr.strip().splitlines()) == 1


@pytest.mark.slow  # real processes killed and resumed
def test_sigkill_at_random_moments_then_resume_matches_uninterrupted(tmp_path):
    """SIGKILL (no chance to save) at random moments after the first epoch's last.pt:
    --resume continues from the last atomic checkpoint and ends where an uninterrupted
    run ends (weights bitwise, metrics.csv rows)."""
    import random
    import time

    csv = write_fer_csv(tmp_path / "fer2013.csv", make_data(48, 16, 16))
    common = ["--data", str(csv), "--init_channels", "4", "--layers", "3", "--epochs", "3", "--batch_size", "16",
              "--cutout", "--progress", "False", "--plots", "False", "--snapshot_at", ""]
    cmd = [sys.executable, "train_searched.py", *common]
    # the reference and two victims run side by side; each victim is killed at its own random moment
    procs = {name: subprocess.Popen([*cmd, "--save", str(tmp_path / name)], cwd=ROOT, env=ENV1,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for name in ("ref", "killed0", "killed1")}
    rng = random.Random(0)
    for name in ("killed0", "killed1"):
        p = procs[name]
        t0 = time.time()
        while not (tmp_path / name / "last.pt").exists() and p.poll() is None and time.time() - t0 < 120:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.5))
        p.kill()
        p.wait()
        assert (tmp_path / name / "last.pt").exists()
    assert procs["ref"].wait(timeout=180) == 0, procs["ref"].stderr.read()
    resumed = {name: subprocess.Popen([sys.executable, "train_searched.py", "--resume", str(tmp_path / name),
                                       "--plots", "False"], cwd=ROOT, env=ENV1, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True) for name in ("killed0", "killed1")}
    ref_w = _weights(tmp_path / "ref" / "last.pt")
    ref_rows = _strip_times(read_csv_rows(tmp_path / "ref" / "metrics.csv"))
    assert len(ref_rows) == 3
    for name, p in resumed.items():
        assert p.wait(timeout=180) == 0, p.stderr.read()
        w = _weights(tmp_path / name / "last.pt")
        assert all(torch.equal(w[n], ref_w[n]) for n in ref_w), name
        assert _strip_times(read_csv_rows(tmp_path / name / "metrics.csv")) == ref_rows


@pytest.mark.parametrize("extra,message", [
    (["--device", "cuda"], "CUDA is not available"),
    (["--labels", "ferplus_soft"], "needs FER+ votes: --ferplus PATH"),
    (["--save", "__FILE__/run"], "not writable"),
    (["--epochs", "0"], "--epochs must be at least 1"),
])
def test_environment_and_flag_faults_are_one_line(tmp_path, capsys, extra, message):
    import train_searched
    from nas.runtime.cli import run

    if "cuda" in extra and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    extra = [str(blocker) + "/run" if e == "__FILE__/run" else e for e in extra]
    csv = write_fer_csv(tmp_path / "fer2013.csv", make_data(16, 8, 8))
    argv = ["--data", str(csv), "--init_channels", "4", "--layers", "3", "--save", str(tmp_path / "r"), *extra]
    with pytest.raises(SystemExit) as e:
        run(train_searched.main, train_searched.get_args_parser(), argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and message in err and len(err.splitlines()) == 1, err


def test_reference_flags_and_defaults():
    import train_searched

    a = train_searched.get_args_parser().parse_args([])
    ref = dict(batch_size=64, learning_rate=0.025, momentum=0.9, weight_decay=3e-4, epochs=600, init_channels=36,
               layers=12, auxiliary=True, auxiliary_weight=0.4, cutout=False, cutout_length=16, drop_path_prob=0.2,
               seed=0, arch="FER_V1", grad_clip=5.0, save=None, snapshot_at=[85.0, 90.0], optimizer="sgd",
               scheduler="cosine", labels="fer", nan_policy="stop", learning_rate_min=0.0, tta="center")
    assert {k: getattr(a, k) for k in ref} == ref
    b = train_searched.get_args_parser().parse_args(["--no_auxiliary", "--cutout", "--report_every", "7"])
    assert b.auxiliary is False and b.cutout is True and b.log_interval == 7
    assert config_from_args(b).auxiliary_weight == 0.0
    # --nan_policy is checked where its value is used, once: the parser's choices for flags and
    # --config files, the loop for code
    with pytest.raises(SystemExit):
        train_searched.get_args_parser().parse_args(["--nan_policy", "ignore"])
    with pytest.raises(FerNasError, match="--nan_policy 'ignore'"):
        Loop(object(), epochs=1, run=None, dist=None, seed=0, nan_policy="ignore")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- resume
def _run(tmp_path: Path, name: str, data: FERData, stop: StopAt | None = None, resume: bool = False):
    run = RunDir(tmp_path / name, resume=resume)
    tr = Trainer(tiny_model(), data, cfg(), run, target_hook=stop, stop=stop, args={"arch": "FER_V1"})
    if resume:
        tr.resume(tmp_path / name)
    return tr, tr.fit()


def _strip_times(rows):
    return [{k: v for k, v in r.items() if k not in ("time_s", "images_per_s")} for r in rows]


def test_interrupted_and_resumed_runs_end_bitwise_identical(tmp_path):
    data = make_data(64, 16, 16)  # 4 steps per epoch, 2 epochs
    ref, ref_res = _run(tmp_path, "ref", data)
    ref_w = _weights(tmp_path / "ref" / "last.pt")
    ref_rows = _strip_times(read_csv_rows(tmp_path / "ref" / "metrics.csv"))

    for name, at in (("boundary", (0, 3)), ("mid", (1, 1))):
        with pytest.raises(RunInterrupted) as e:
            _run(tmp_path, name, data, stop=StopAt(*at))
        assert e.value.signum == signal.SIGTERM and "--resume" in str(e.value)
        ck = safe_load(tmp_path / name / "last.pt")
        assert (ck["epoch"], ck["step"]) == ((1, 0) if name == "boundary" else (1, 2))
        _, res = _run(tmp_path, name, data, resume=True)
        w = _weights(tmp_path / name / "last.pt")
        assert w.keys() == ref_w.keys()
        diff = [k for k in w if not torch.equal(w[k], ref_w[k])]
        assert not diff, f"{name}: {diff[:5]}"
        assert _strip_times(read_csv_rows(tmp_path / name / "metrics.csv")) == ref_rows
        assert {k: res[k] for k in ("selected_epoch", "val_acc", "test_acc")} == \
            {k: ref_res[k] for k in ("selected_epoch", "val_acc", "test_acc")}
        opt, ref_opt = safe_load(tmp_path / name / "last.pt")["optimizer"], safe_load(tmp_path / "ref" / "last.pt")["optimizer"]
        assert all(torch.equal(opt["state"][i]["momentum_buffer"], ref_opt["state"][i]["momentum_buffer"])
                   for i in ref_opt["state"])


def test_real_sigterm_saves_last_pt_mid_epoch(tmp_path):
    """The real signal path: GracefulStop turns SIGTERM into a save at the next step boundary."""
    data = make_data(64, 16, 16)

    def hook(epoch, step, idx, logits, targets):
        if (epoch, step) == (0, 1):
            os.kill(os.getpid(), signal.SIGTERM)
        return targets

    before = signal.getsignal(signal.SIGTERM)
    tr = Trainer(tiny_model(), data, cfg(), RunDir(tmp_path / "r"), target_hook=hook, args={"arch": "FER_V1"})
    with pytest.raises(RunInterrupted) as e:
        tr.fit()
    assert e.value.signum == signal.SIGTERM
    ck = safe_load(tmp_path / "r" / "last.pt")
    assert (ck["epoch"], ck["step"]) == (0, 2)
    assert signal.getsignal(signal.SIGTERM) == before  # handlers restored


# ----------------------------------------------------------------------------- non-finite losses
class NaNAt:
    """Turns one batch's targets into NaN probabilities (a non-finite loss)."""

    def __init__(self, epoch: int, step: int):
        self.at = (epoch, step)

    def __call__(self, epoch, step, idx, logits, targets):
        if (epoch, step) == self.at:
            return torch.full((targets.numel(), logits.shape[1]), float("nan"))
        return targets


def test_nan_stop_names_epoch_and_step_and_keeps_last_good_checkpoint(tmp_path):
    data = make_data(64, 16, 16)
    tr = Trainer(tiny_model(), data, cfg(log_interval=100), RunDir(tmp_path / "r"), target_hook=NaNAt(1, 2),
                 args={"arch": "FER_V1"})
    with pytest.raises(FerNasError, match=r"non-finite loss at epoch 2 step 3.*last good checkpoint") as e:
        tr.fit()
    assert "\n" not in str(e.value)
    ck = safe_load(tmp_path / "r" / "last.pt")
    assert (ck["epoch"], ck["step"]) == (1, 0)
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    assert [r["epoch"] for r in read_csv_rows(tmp_path / "r" / "metrics.csv")] == ["1"]


def test_nan_skip_batch_drops_only_that_update(tmp_path):
    data = make_data(64, 16, 16)
    tr = Trainer(tiny_model(), data, cfg(nan_policy="skip_batch", epochs=2), RunDir(tmp_path / "r"),
                 target_hook=NaNAt(1, 2), args={"arch": "FER_V1"})
    tr.fit()
    rows = read_csv_rows(tmp_path / "r" / "metrics.csv")
    assert [int(r["skipped_batches"]) for r in rows] == [0, 1]
    assert json.loads((tmp_path / "r" / "results.json").read_text())["skipped_batches"] == 1
    assert float(rows[1]["train_loss"]) == pytest.approx(float(rows[1]["train_loss"]))  # finite, not NaN

    # the skipped step leaves parameters and optimizer state exactly as they were
    tr2 = Trainer(tiny_model(), data, cfg(nan_policy="skip_batch"), RunDir("unused", enabled=False),
                  target_hook=NaNAt(0, 1))
    idx = tr2.train_idx[:16]
    tr2.loop.run_step(0, 0, idx)
    params = {n: p.detach().clone() for n, p in tr2.model.named_parameters()}
    bufs = {i: s["momentum_buffer"].clone() for i, s in enumerate(tr2.optimizer.state.values())}
    tr2.loop.run_step(0, 1, idx)
    assert all(torch.equal(params[n], p) for n, p in tr2.model.named_parameters())
    assert all(torch.equal(bufs[i], s["momentum_buffer"]) for i, s in enumerate(tr2.optimizer.state.values()))
    assert float(tr2.loop.sums[3]) == 1.0 and int(tr2.loop.sums[2]) == 16  # one skipped; the skipped batch is not counted


# ----------------------------------------------------------------------------- schedule and selection
def test_drop_path_schedule_and_offset():
    data = make_data(24, 8, 8)
    tr = Trainer(tiny_model(), data, cfg(epochs=10, drop_path_prob=0.2), RunDir("unused", enabled=False))
    assert [round(tr.objective.drop_path_at(e), 6) for e in (0, 5, 9)] == [0.0, 0.1, 0.18]
    tr = Trainer(tiny_model(), data, cfg(epochs=10, drop_path_prob=0.2), RunDir("unused", enabled=False),
                 drop_path_offset=300, drop_path_total=600)
    assert tr.objective.drop_path_at(0) == pytest.approx(0.1) and tr.objective.drop_path_at(10) == pytest.approx(0.2 * 310 / 600)


def test_soft_targets_train_against_vote_distributions(tmp_path):
    data = make_data(48, 16, 16)
    soft = torch.full((len(data), 7), 0.02)
    soft[torch.arange(len(data)), data.labels] = 0.88
    data.soft_labels = soft
    tr = Trainer(tiny_model(), data, cfg(epochs=1, soft_targets=True), RunDir("unused", enabled=False))
    assert tr.targets.dtype == torch.float32 and tr.targets.shape == (len(data), 7)
    tr.fit()
    data.soft_labels = None
    with pytest.raises(FerNasError, match="ferplus"):
        Trainer(tiny_model(), data, cfg(soft_targets=True), RunDir("unused", enabled=False))


@pytest.mark.slow  # a training subprocess with two threads
def test_cpu_channels_last_guard_for_narrow_strided_1x1_convs(tmp_path):
    """torch 2.14.1's multi-threaded CPU backward of a stride-2 1x1 conv with < 16 input
    channels in channels_last corrupts the heap at odd batch sizes. A cell with skip_connect
    on a reduction cell's input at C=4 has one (factorized reduce of 8 channels), as the
    demo's searched cells can; the trainer keeps it contiguous with 2 threads and the run
    finishes. Run in a child process: the bug kills the process rather than raising."""
    from nas.runtime.device import cpu_channels_last_unsafe

    fer_v1 = json.loads((PUBLISHED_DIR / "FER_V1.json").read_text())
    fer_v1["reduce"][0] = ["skip_connect", 0]
    cell = tmp_path / "skip_reduce.json"
    cell.write_text(json.dumps(fer_v1))
    assert cpu_channels_last_unsafe(build_model(str(cell), init_channels=4, layers=5))
    assert not cpu_channels_last_unsafe(build_model(str(cell), init_channels=16, layers=5))
    assert not cpu_channels_last_unsafe(build_model("FER_V1", init_channels=36, layers=12))
    assert not cpu_channels_last_unsafe(build_model("cnn_shallow"))
    csv = write_fer_csv(tmp_path / "fer2013.csv", make_data(63, 21, 21))
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "train_searched.py", "--data", str(csv), "--arch", str(cell),
                          "--init_channels", "4", "--layers", "5", "--epochs", "1", "--batch_size", "21",
                          "--save", str(tmp_path / "run"), "--plots", "False", "--progress", "False"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "channels_last False (off: narrow stride-2 1x1 convs" in log


@pytest.mark.parametrize("patience", [0, 2])
def test_without_the_test_curve_the_results_are_the_same(tmp_path, patience):
    """--test_curve False scores PrivateTest only at a new best PublicTest epoch and at the
    epoch that ends the run: the selected and last figures equal those of a run that scored it
    every epoch (same seed), and the epochs in between have no PrivateTest figure."""
    data = make_data(64, 16, 16)
    res, rows = {}, {}
    for curve in (True, False):
        name = f"curve{curve}"
        tr = Trainer(tiny_model(), data, cfg(epochs=6, patience=patience, test_curve=curve),
                     RunDir(tmp_path / name), args={"arch": "FER_V1"})
        res[curve] = tr.fit()
        rows[curve] = read_csv_rows(tmp_path / name / "metrics.csv")
    for k in ("selected_epoch", "val_acc", "test_acc", "last_epoch", "last_test_acc", "epochs_trained"):
        assert res[False][k] == res[True][k], k
    assert res[False]["best_test_acc_for_reference_only"] is None
    assert [r["val_acc"] for r in rows[False]] == [r["val_acc"] for r in rows[True]]
    best, scored = -1.0, []
    for r in rows[True]:
        if float(r["val_acc"]) > best:
            best = float(r["val_acc"])
            scored.append(r["epoch"])
    scored.append(rows[True][-1]["epoch"])
    assert [r["epoch"] for r in rows[False] if r["test_acc"] != ""] == sorted(set(scored), key=int)
    assert all(r["test_acc"] == rows[True][k]["test_acc"] for k, r in enumerate(rows[False]) if r["test_acc"] != "")
