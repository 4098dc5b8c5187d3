"""Installable anywhere: ``pip install .`` (not editable) into a fresh virtual environment, then,
from an empty folder, ``fernas --help``, ``fernas train --arch FER_V1`` (the published genotype
comes from the installed package) and ``fernas demo --quick``.

The new environment sees this one's packages (torch and the rest) through a ``.pth`` line
placed after its own site-packages, so the fer-nas it imports is the one it installed, not
this checkout; a check below makes sure of that."""
from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_non_editable_install_runs_from_an_empty_folder(tmp_path):
    venv = tmp_path / "venv"
    # without its own pip and setuptools: those come from this environment too (setuptools with bdist_wheel)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True,
                   timeout=300)
    py = venv / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    (Path(purelib) / "_outer_env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(FERNAS_CACHE=str(tmp_path / "cache"), MPLBACKEND="Agg", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    # a wheel is built from a copy of the checkout and installed (no network: the build uses this
    # environment's setuptools)
    build = tmp_path / "src"
    shutil.copytree(ROOT, build, ignore=shutil.ignore_patterns(".git", ".venv", "venv", "runs", "build", "dist",
                                                               "*.egg-info", "__pycache__", ".pytest_cache"))
    pip = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--no-index", str(build)], capture_output=True, text=True, env=env, timeout=600)
    assert pip.returncode == 0, pip.stderr[-3000:]
    empty = tmp_path / "empty"
    empty.mkdir()
    fernas = str(venv / "bin" / "fernas")

    def run(*argv: str, timeout: int = 600) -> subprocess.CompletedProcess:
        return subprocess.run([fernas, *argv], cwd=empty, capture_output=True, text=True, env=env, timeout=timeout)

    where = subprocess.run([str(py), "-c", "import nas, nas.models.genotypes as g; print(nas.__file__); "
                                           "print(g.PUBLISHED_DIR)"], cwd=empty, capture_output=True, text=True,
                           env=env, check=True).stdout.split()
    assert all(w.startswith(purelib) for w in where), where  # the installed copy, not the checkout
    h = run("--help")
    assert h.returncode == 0 and "search" in h.stdout and "demo" in h.stdout
    t = run("train", "--arch", "FER_V1", "--init_channels", "4", "--layers", "3", "--dataset", "synthfer",
            "--synth_size", "140", "--epochs", "1", "--batch_size", "32", "--save", "t", "--plots", "False",
            "--progress", "False")
    assert t.returncode == 0, t.stderr[-3000:]
    assert json.loads((empty / "t" / "results.json").read_text())["params"] > 0
    d = run("demo", "--quick", "--out", "demo")
    assert d.returncode == 0, d.stderr[-3000:]
    assert "report: demo/REPORT.md" in d.stdout and (empty / "demo" / "REPORT.md").is_file()
    assert sorted(p.name for p in empty.iterdir()) == ["demo", "t"]  # nothing written beside the runs
