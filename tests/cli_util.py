"""Helpers for the fault tests: run a script in a subprocess or in-process, and check that a
fault ends as the documented one line on stderr with exit status 2 (never a traceback)."""
from __future__ import annotations

import contextlib
import importlib
import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]

#: Every script at the repository root that reads a checkpoint, with the flags that make it read one
#: (``{ckpt}`` is a checkpoint file, ``{run}`` its run directory).
CHECKPOINT_READERS: dict[str, list[str]] = {
    "search.py": ["--resume", "{run}", "--device", "cpu"],
    "train_searched.py": ["--resume", "{run}", "--device", "cpu"],
    "relabel_training.py": ["--checkpoint", "{ckpt}", "--device", "cpu"],
    "ensemble.py": ["{ckpt}", "{ckpt}", "--device", "cpu"],
    "test_ck48.py": ["--checkpoint", "{ckpt}", "--device", "cpu"],
    "test_jaffe.py": ["--checkpoint", "{ckpt}", "--device", "cpu"],
}


def child_env(**extra: str) -> dict[str, str]:
    """Environment for a child run: headless plots, unbuffered output, no user site noise,
    one intra-op thread (the tests share two cores), and the repository importable."""
    env = dict(os.environ)
    env.update(MPLBACKEND="Agg", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""), PYTHONWARNINGS="ignore")
    env.update(extra)
    return env


def run_script(script: str, *args: object, timeout: float = 120, cwd: Path | None = None,
               env: dict[str, str] | None = None, python_args: Sequence[str] = ()) -> subprocess.CompletedProcess:
    """``python [python_args] SCRIPT ARGS`` (``-m module`` when ``script`` starts with ``-m``)."""
    target = script.split() if script.startswith("-m ") else [str(ROOT / script)]
    return subprocess.run([sys.executable, *python_args, *target, *map(str, args)], cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=timeout, env=env or child_env())


def run_inprocess(script: str, argv: Sequence[object]) -> subprocess.CompletedProcess:
    """The script's own entry (``nas.runtime.cli.run(main, get_args_parser(), argv)``) in this process:
    the same code path as the command line without paying a torch import per case. ``script``
    is a file at the repository root (``search.py``) or a module with ``main``/``get_args_parser``
    (``nas.apps.inspect``)."""
    mod = importlib.import_module(Path(script).stem if script.endswith(".py") else script)
    from nas.runtime.cli import run

    out, err = io.StringIO(), io.StringIO()
    code: object = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            run(mod.main, mod.get_args_parser(), [str(a) for a in argv])
        except SystemExit as e:
            code = e.code
    return subprocess.CompletedProcess([script, *map(str, argv)], code, out.getvalue(), err.getvalue())


def error_lines(stderr: str) -> list[str]:
    """stderr without warnings/notices that precede the error (those are allowed lines)."""
    return [ln for ln in stderr.strip().splitlines()
            if ln.strip() and not ln.startswith(("warning:", "notice:")) and "Warning" not in ln]


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str, code: int = 2) -> str:
    """Exit status ``code``, exactly one error line on stderr, no traceback; returns that line."""
    assert proc.returncode == code, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = error_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr[-2000:]
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])
    return lines[0]
