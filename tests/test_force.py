"""``--force`` never deletes what a run did not write (issue 36): a run folder carries a marker
from its creation; --force clears only a marked folder that holds nothing but run files, never
follows a symlink, and refuses the current folder, a home folder and a repository."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from nas.runtime.checkpoint import RUN_MARK, RunDir
from nas.runtime.errors import FerNasError


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _run(path: Path) -> RunDir:
    run = RunDir(path, quiet=True)
    run.write_config({"epochs": 1})
    run.log("hello", echo=False)
    run.append_metrics({"epoch": 1, "train_loss": 0.5})
    run.save("last.pt", {"x": 1})
    return run


def test_a_new_run_marks_its_folder_and_force_clears_only_that(tmp_path):
    _run(tmp_path / "r")
    assert (tmp_path / "r" / RUN_MARK).is_file()
    (tmp_path / "r" / "fold_0").mkdir()
    _run(tmp_path / "r" / "fold_0")  # a fold's own run folder inside
    with pytest.raises(FerNasError, match="already holds a run"):
        RunDir(tmp_path / "r")
    RunDir(tmp_path / "r", force=True)
    assert _tree(tmp_path / "r") == {RUN_MARK}


@pytest.mark.parametrize("intruder", ["notes.md", "data.npz", "sub/thing.txt"])
def test_force_refuses_a_run_folder_holding_other_files(tmp_path, intruder):
    _run(tmp_path / "r")
    f = tmp_path / "r" / intruder
    f.parent.mkdir(exist_ok=True)
    f.write_text("mine")
    before = _tree(tmp_path / "r")
    with pytest.raises(FerNasError, match="did not write|no .fernas-run marker"):
        RunDir(tmp_path / "r", force=True)
    assert _tree(tmp_path / "r") == before and f.read_text() == "mine"


def test_force_refuses_an_unmarked_folder_even_with_run_files(tmp_path):
    old = tmp_path / "old_run"  # made before markers existed, or by hand
    old.mkdir()
    (old / "config.yaml").write_text("epochs: 1\n")
    (old / "metrics.csv").write_text("epoch\n1\n")
    with pytest.raises(FerNasError, match="has no .fernas-run marker"):
        RunDir(old, force=True)
    assert _tree(old) == {"config.yaml", "metrics.csv"}


def test_force_never_follows_a_symlink(tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.pt").write_bytes(b"years of work")
    _run(tmp_path / "r")
    os.symlink(precious, tmp_path / "r" / "link")
    with pytest.raises(FerNasError, match="symlink"):
        RunDir(tmp_path / "r", force=True)
    os.unlink(tmp_path / "r" / "link")
    os.symlink(tmp_path / "r", tmp_path / "alias")  # the run folder named through a link
    with pytest.raises(FerNasError, match="is a symlink"):
        RunDir(tmp_path / "alias", force=True)
    assert (precious / "thesis.pt").read_bytes() == b"years of work" and (tmp_path / "r" / "last.pt").exists()


def test_force_refuses_the_current_folder_home_and_a_repository(tmp_path, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    (project / "config.yaml").write_text("mine: 1\n")
    (project / "train.py").write_text("print('mine')\n")
    monkeypatch.chdir(project)
    for where in (".", str(project), str(project / "sub" / "..")):
        with pytest.raises(FerNasError, match="current folder"):
            RunDir(where, force=True)
    (project / "runs").mkdir()
    monkeypatch.chdir(project / "runs")
    with pytest.raises(FerNasError, match="current folder, one of its parents"):
        RunDir("..", force=True)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "x.pt").write_bytes(b"1")
    with pytest.raises(FerNasError, match="home folder"):
        RunDir(tmp_path / "home", force=True)
    repo = tmp_path / "repo"
    _run(repo)
    (repo / ".git").mkdir()
    with pytest.raises(FerNasError, match=r"holds \.git"):
        RunDir(repo, force=True)
    assert _tree(project) >= {"config.yaml", "train.py"} and (repo / "last.pt").exists()


def test_a_new_run_refuses_a_folder_of_other_files(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "results.json").write_text("{}")
    with pytest.raises(FerNasError, match="holds files that are not a run"):
        RunDir(mine)
    assert _tree(mine) == {"results.json"}
    RunDir(tmp_path / "empty_ok")  # new or empty folders are fine


def test_train_save_dot_force_in_a_project_deletes_nothing(tmp_path, monkeypatch, capsys):
    """The issue's case: ``--save . --force`` in a project whose root has a config.yaml."""
    from nas.apps import train

    project = tmp_path / "project"
    project.mkdir()
    for name, text in (("config.yaml", "mine: 1\n"), ("notes.txt", "ideas\n"), ("model.pt", "weights")):
        (project / name).write_text(text)
    monkeypatch.chdir(project)
    with pytest.raises(SystemExit) as e:
        train.cli(["--arch", "cnn_shallow", "--dataset", "synthfer", "--synth_size", "60", "--epochs", "1",
                   "--save", ".", "--force", "--device", "cpu"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "current folder" in err[0]
    assert _tree(project) == {"config.yaml", "notes.txt", "model.pt"}
