"""Check, then write (issue 36): every stage refuses bad flags and inputs with one line and exit
status 2 before its run folder exists, so the corrected command then runs in the same folder.
Each row gives a stage bad values: zero or negative rates and sizes, unknown choices, missing
files, contradictory flags."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from nas.data.dataset import FER_CLASSES

CKPT = "{ckpt}"

CASES = [
    # (command module, argv, words the one line must hold)
    ("train", ["--learning_rate", "0"], "--learning_rate must be positive"),
    ("train", ["--learning_rate", "-0.1"], "--learning_rate must be positive"),
    ("train", ["--epochs", "0"], "--epochs must be at least 1"),
    ("train", ["--batch_size", "0"], "--batch_size must be at least 1"),
    ("train", ["--weight_decay", "-1"], "--weight_decay must be >= 0"),
    ("train", ["--momentum", "-1"], "--momentum must be in [0, 1)"),
    ("train", ["--grad_clip", "-1"], "--grad_clip must be >= 0"),
    ("train", ["--cutout", "--cutout_length", "0"], "--cutout_length must be >= 1"),
    ("train", ["--label_smoothing", "1.5"], "--label_smoothing and --fes_smoothing must be in [0, 1)"),
    ("train", ["--label_smoothing", "0.1", "--fes_smoothing", "0.1"], "both smooth the targets"),
    ("train", ["--patience", "-1"], "--patience must be >= 0"),
    ("train", ["--arch", "nope"], "unknown architecture 'nope'"),
    ("train", ["--init_channels", "0"], "--init_channels must be an integer >= 1"),
    ("train", ["--optimizer", "rmsprop"], "invalid choice: 'rmsprop'"),
    ("train", ["--data", "/nonexistent/fer2013.csv"], "--data /nonexistent/fer2013.csv: no such file or folder"),
    ("train", ["--synth_noise", "1.5"], "--synth_noise 1.5: must be a fraction between 0 and 1"),
    ("train", ["--synth_private_size", "0"], "--synth_private_size 0: must be a positive number"),
    ("train", ["--val_fraction", "1"], "--val_fraction 1.0: must be between 0 and 1"),
    ("train", ["--labels", "ferplus_soft"], "--labels ferplus_soft needs FER+ votes"),
    ("train", ["--log_interval", "0"], "--log_interval 0: must be at least 1"),
    ("relabel", ["--checkpoint", CKPT, "--relabel_threshold", "2"], "--relabel_threshold must be in [0, 1]"),
    ("relabel", ["--checkpoint", CKPT, "--learning_rate", "0"], "--learning_rate must be positive"),
    ("relabel", ["--checkpoint", CKPT, "--epochs", "0"], "--epochs must be at least 1"),
    ("relabel", ["--checkpoint", "/nonexistent.pt"], "checkpoint not found"),
    ("relabel", ["--checkpoint", CKPT, "--rule", "consensus", "--relabel_mode", "persistent"],
     "--relabel_mode persistent is for the autofernet and confident rules"),
    ("relabel", ["--checkpoint", CKPT, "--synth_noise_splits", "val"], "invalid choice: 'val'"),
    ("search", ["--batch_size", "0"], "--batch_size 0: must be >= 1"),
    ("search", ["--learning_rate", "0"], "--learning_rate must be positive"),
    ("search", ["--arch_learning_rate", "-1"], "--arch_learning_rate must be positive"),
    ("search", ["--train_portion", "1"], "--train_portion 1.0: must be between 0 and 1"),
    ("search", ["--strategy", "darts", "--epochs", "0"], "--epochs 0: must be >= 1"),
    ("search", ["--strategy", "sgas", "--epochs", "3"], "--epochs applies to --strategy darts"),
    ("search", ["--synth_size", "5"], "--synth_size 5: need at least 10 rows"),
    ("search", ["--crop", "4"], "--crop 4: must be at least 8"),
    ("search", ["--partial_channels", "0"], "--partial_channels 0: must be >= 1"),
    ("search", ["--strategy", "zero_cost", "--zc_samples", "1"], "--zc_samples 1: sample at least 2 cells"),
    ("relabel", ["--checkpoint", CKPT, "--ema_momentum", "1"], "--ema_momentum must be in [0, 1), got 1.0"),
    ("ck48", ["--checkpoint", CKPT, "--folds", "1"], "--folds 1: need at least 2"),
    ("ck48", ["--checkpoint", CKPT, "--only_folds", "0"], "--only_folds 0: folds are numbered from 1"),
    ("ck48", ["--checkpoint", CKPT, "--only_folds", "99", "--synth_size", "150"], "--only_folds 99: folds are numbered 1..10"),
    ("ck48", ["--checkpoint", CKPT, "--learning_rate", "0"], "--learning_rate must be positive"),
    ("ck48", ["--checkpoint", CKPT, "--eval_every", "0"], "--eval_every 0: must be at least 1"),
    ("ck48", ["--checkpoint", CKPT, "--synth_private_size", "10"], "--synth_private_size: only the FER2013-style"),
    ("jaffe", ["--checkpoint", CKPT, "--finetune", "loso", "--epochs", "0"], "--epochs must be at least 1"),
    ("crosstest", ["--checkpoint", CKPT, "--finetune", "folds", "--folds", "0"], "--folds 0: need at least 2"),
    ("ensemble", ["--model_names", f"{CKPT},/nonexistent.pt"], "checkpoint not found"),
    ("ensemble", ["--model_names", CKPT, "--batch_size", "0"], "--batch_size 0: must be at least 1"),
]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from nas.models import build_model
    from nas.models.factory import model_spec
    from nas.runtime.checkpoint import atomic_save

    path = tmp_path_factory.mktemp("ckpt") / "m.pt"
    m = build_model("cnn_shallow")
    atomic_save({"model": m.state_dict(), "model_spec": model_spec(m), "classes": list(FER_CLASSES),
                 "normalization": {"mean": 0.5, "std": 0.25}, "input_size": 44}, path)
    return str(path)


@pytest.mark.parametrize("command,argv,msg", CASES, ids=[f"{c}:{' '.join(a)}" for c, a, _ in CASES])
def test_a_bad_flag_is_one_line_exit_2_and_no_folder(command, argv, msg, ckpt, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FERNAS_CACHE", str(tmp_path / "cache"))
    app = importlib.import_module(f"nas.apps.{command}")
    save = tmp_path / "run"
    argv = [a.replace(CKPT, ckpt) for a in argv]
    with pytest.raises(SystemExit) as e:
        app.cli([*argv, "--save", str(save), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and msg in err[0], err
    assert not save.exists(), f"{save} was written before the flags were checked"


def test_the_corrected_command_runs_in_the_same_folder(tmp_path, monkeypatch, capsys):
    """The issue's example: a refused --learning_rate 0 leaves nothing, so the fixed command is not
    refused as 'already holds a run'."""
    from nas.apps import train

    monkeypatch.setenv("FERNAS_CACHE", str(tmp_path / "cache"))
    base = ["--arch", "cnn_shallow", "--synth_size", "60", "--epochs", "1", "--batch_size", "16",
            "--save", str(tmp_path / "x"), "--device", "cpu", "--plots", "False", "--progress", "False"]
    with pytest.raises(SystemExit):
        train.cli([*base, "--learning_rate", "0"])
    assert not (tmp_path / "x").exists()
    res = train.main(train.get_args_parser().parse_args([*base, "--learning_rate", "0.01"]))
    assert res["epochs_trained"] == 1 and (tmp_path / "x" / "results.json").exists()


def _bad_fer2013(tmp_path: Path) -> Path:
    """A fer2013.csv whose fifth data row has a pixel that is not a number."""
    from tests.fer_files import small_fer2013, write_fer2013_csv

    f = write_fer2013_csv(tmp_path / "bad" / "fer2013.csv", *small_fer2013())
    lines = f.read_text().splitlines()
    y, pixels, usage = lines[5].split(",")
    lines[5] = ",".join([y, "x " + pixels.split(" ", 1)[1], usage])
    f.write_text("\n".join(lines) + "\n")
    return f


@pytest.mark.parametrize("command", ["train", "relabel", "search"])
def test_a_malformed_data_file_is_refused_before_the_run_folder(command, ckpt, tmp_path, monkeypatch, capsys):
    """The data is input too: a bad row is found before the folder exists, so nothing is written and
    the command with the mended file runs in the same --save."""
    monkeypatch.setenv("FERNAS_CACHE", str(tmp_path / "cache"))
    app = importlib.import_module(f"nas.apps.{command}")
    save = tmp_path / "runs" / "run"
    argv = ["--data", str(_bad_fer2013(tmp_path)), "--save", str(save), "--device", "cpu"]
    if command == "relabel":
        argv += ["--checkpoint", ckpt]
    with pytest.raises(SystemExit) as e:
        app.cli(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "fer2013.csv" in err[0] and "row" in err[0], err
    assert not (tmp_path / "runs").exists(), "a folder was made before the data was read"


def test_force_over_a_run_with_a_malformed_data_file_keeps_the_run(tmp_path, monkeypatch, capsys):
    """--force clears a run only for a command that can start: a bad data file leaves the old run whole."""
    from nas.apps import train

    monkeypatch.setenv("FERNAS_CACHE", str(tmp_path / "cache"))
    save = tmp_path / "x"
    base = ["--arch", "cnn_shallow", "--epochs", "1", "--batch_size", "16", "--save", str(save), "--device", "cpu",
            "--plots", "False", "--progress", "False"]
    train.main(train.get_args_parser().parse_args([*base, "--synth_size", "60"]))
    before = {p.name: p.read_bytes() for p in save.iterdir() if p.is_file()}
    assert "last.pt" in before
    with pytest.raises(SystemExit) as e:
        train.cli([*base, "--data", str(_bad_fer2013(tmp_path)), "--force"])
    assert e.value.code == 2 and "fer2013.csv" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in save.iterdir() if p.is_file()} == before


def _session_args(save: Path):
    from nas.apps import train

    parser = train.get_args_parser()
    return parser, parser.parse_args(["--arch", "cnn_shallow", "--save", str(save), "--device", "cpu"])


def test_a_new_run_that_fails_before_any_work_is_taken_back(tmp_path):
    """Bad input found inside the stage (after the folder exists): the marker, config.yaml and the
    log go, with the folders the run made, so the corrected command is not refused."""
    from nas.engine.session import open_session
    from nas.runtime.errors import FerNasError

    save = tmp_path / "runs" / "deep" / "run"
    parser, args = _session_args(save)
    with pytest.raises(FerNasError, match="found late"):
        with open_session(args, parser, stage="train") as s:
            s.run.log("a first line", echo=False)
            assert (save / "config.yaml").exists() and (save / ".fernas-run").exists()
            raise FerNasError("x.csv: row 3: found late")
    assert not (tmp_path / "runs").exists()
    parser, args = _session_args(save)
    with open_session(args, parser, stage="train") as s:  # the same --save is free again
        assert s.run.path == save


@pytest.mark.parametrize("extra", ["metrics.csv", "last.pt", "notes.txt"])
def test_a_run_that_did_work_or_holds_other_files_is_not_taken_back(extra, tmp_path):
    """Only a run that wrote nothing but its first files is removed: a metrics row, a checkpoint or a
    file the run did not write keeps the folder as it is; the parent that existed stays."""
    from nas.engine.session import open_session
    from nas.runtime.errors import FerNasError

    save = tmp_path / "run"
    parser, args = _session_args(save)
    with pytest.raises(FerNasError):
        with open_session(args, parser, stage="train"):
            (save / extra).write_text("x\n")
            raise FerNasError("late")
    assert sorted(p.name for p in save.iterdir()) == sorted([".fernas-run", "config.yaml", extra])

