"""One non-editable install of fer-nas and one quick demo run from it, shared by
tests/test_install.py and tests/test_demo.py (each costs a minute or more on 2 CPU cores;
running them once keeps CI short).

``pip install .`` (not editable) into a fresh virtual environment that sees this one's packages
(torch and the rest) through a ``.pth`` line placed after its own site-packages, so the fer-nas it
imports is the one it installed, not this checkout (tests/test_install.py checks that). The demo
runs as ``fernas demo --quick --out EMPTY/demo`` from that empty folder."""
from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Installed:
    py: Path            # the new environment's python
    fernas: str         # its console script
    purelib: str        # its site-packages
    env: dict           # the environment its commands run with
    empty: Path         # an empty folder the commands run in

    def run(self, *argv: str, timeout: int = 600) -> subprocess.CompletedProcess:
        """``fernas ARGV`` from the empty folder."""
        return subprocess.run([self.fernas, *argv], cwd=self.empty, capture_output=True, text=True, env=self.env,
                              timeout=timeout)


def install(tmp: Path) -> Installed:
    venv = tmp / "venv"
    # without its own pip and setuptools: those come from this environment too (setuptools with bdist_wheel)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True,
                   timeout=300)
    py = venv / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    (Path(purelib) / "_outer_env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(FERNAS_CACHE=str(tmp / "cache"), MPLBACKEND="Agg", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    # a wheel is built from a copy of the checkout and installed (no network: the build uses this
    # environment's setuptools)
    build = tmp / "src"
    shutil.copytree(ROOT, build, ignore=shutil.ignore_patterns(".git", ".venv", "venv", "runs", "build", "dist",
                                                               "*.egg-info", "__pycache__", ".pytest_cache"))
    pip = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--no-index", str(build)], capture_output=True, text=True, env=env, timeout=600)
    assert pip.returncode == 0, pip.stderr[-3000:]
    empty = tmp / "empty"
    empty.mkdir()
    return Installed(py=py, fernas=str(venv / "bin" / "fernas"), purelib=purelib, env=env, empty=empty)
