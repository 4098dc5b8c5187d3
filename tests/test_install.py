"""Installable anywhere: ``pip install .`` (not editable) into a fresh virtual environment, then,
from an empty folder, ``fernas --help``, ``fernas train --arch FER_V1`` (the published genotype
comes from the installed package) and ``fernas demo --quick`` (the install and the demo are the
shared fixtures of tests/installed.py).

The new environment sees this one's packages (torch and the rest) through a ``.pth`` line
placed after its own site-packages, so the fer-nas it imports is the one it installed, not
this checkout; a check below makes sure of that."""
from __future__ import annotations

import json
import subprocess

import pytest



@pytest.mark.slow
@pytest.mark.xdist_group("installed")  # the worker that runs the demo tests: one install and demo
def test_non_editable_install_runs_from_an_empty_folder(installed, quick_demo):
    """The install and the demo run are the shared fixtures of tests/installed.py (the demo's
    files are checked in tests/test_demo.py)."""
    where = subprocess.run([str(installed.py), "-c", "import nas, nas.models.genotypes as g; print(nas.__file__); "
                                                     "print(g.PUBLISHED_DIR)"], cwd=installed.empty,
                           capture_output=True, text=True, env=installed.env, check=True).stdout.split()
    assert all(w.startswith(installed.purelib) for w in where), where  # the installed copy, not the checkout
    h = installed.run("--help")
    assert h.returncode == 0 and "search" in h.stdout and "demo" in h.stdout
    t = installed.run("train", "--arch", "FER_V1", "--init_channels", "4", "--layers", "3", "--dataset", "synthfer",
                      "--synth_size", "140", "--epochs", "1", "--batch_size", "32", "--save", "t", "--plots",
                      "False", "--progress", "False")
    assert t.returncode == 0, t.stderr[-3000:]
    assert json.loads((installed.empty / "t" / "results.json").read_text())["params"] > 0
    out, d = quick_demo
    assert f"report: {out}/REPORT.md" in d.stdout and (out / "REPORT.md").is_file()
    assert sorted(p.name for p in installed.empty.iterdir()) == ["demo", "t"]  # nothing written beside the runs
