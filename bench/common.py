"""What the benchmarks share: provenance for every results file, idempotent runs of a toolkit
command, results CSV rows. Statistics come from :mod:`nas.runtime.stats`.

Every results file a bench writes records what produced it (:func:`provenance`): the fernas
version, the git commit and whether the tree was dirty, every SynthFER renderer's revision,
torch's version, the device, the CPU and GPU model, the thread count, the date and every flag.
A JSON document carries it under ``"provenance"``, a JSONL line the same, a CSV row as the
:data:`PROVENANCE_COLUMNS` (``flags`` as compact JSON). ``tests/test_provenance.py`` checks
every committed ``bench/results-*`` file for these fields.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import functools
import json
import math
import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = ["cpu_model", "gpu_model", "git_state", "provenance", "provenance_columns", "PROVENANCE_FIELDS",
           "PROVENANCE_COLUMNS", "with_provenance", "check_protocol", "run_app", "run_or_resume", "num", "read_rows"]

ROOT = Path(__file__).resolve().parent.parent

#: The fields of a provenance record (a JSON document's ``provenance``, a JSONL line's).
PROVENANCE_FIELDS = ("fernas_version", "git_commit", "git_dirty", "synthfer_revisions", "torch", "device",
                     "cpu_model", "gpu_model", "threads", "python", "date", "flags")
#: The same as CSV columns (``synthfer_revisions`` and ``flags`` as compact JSON).
PROVENANCE_COLUMNS = PROVENANCE_FIELDS


def cpu_model(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The CPU's model name (Linux's /proc/cpuinfo; else what :mod:`platform` knows). Speed
    figures go with it: this project's 2-core machine has been an AMD EPYC on some days and an
    Intel Xeon on others, and the same code ran about twice as fast on some days as on others."""
    try:
        with open(cpuinfo, encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_model(device: str | None = None) -> str | None:
    """The CUDA device's name when ``device`` is a CUDA device (or any is present and ``device``
    is None), else None."""
    import torch

    if device is not None and not str(device).startswith("cuda"):
        return None
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(torch.device(device) if device else None)


@functools.lru_cache(maxsize=None)
def git_state(root: Path = ROOT) -> tuple[str, bool | None]:
    """``(commit, dirty)`` of the checkout holding the benches: the HEAD commit and whether a
    tracked file differs from it (untracked files, such as run folders, do not count);
    ``("unknown", None)`` outside a git checkout. Read once per process, when this module is
    imported (below): a bench that runs for an hour records the code it loaded, not a commit
    made while it ran."""
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=30, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown", None
    return commit, bool(status.strip())


git_state()  # the code this process loaded: see git_state


def _flags(flags: argparse.Namespace | Mapping[str, Any] | None) -> dict[str, Any]:
    from nas.runtime.checkpoint import json_safe, plain

    d = vars(flags) if isinstance(flags, argparse.Namespace) else dict(flags or {})
    return json_safe(plain(d))


def provenance(flags: argparse.Namespace | Mapping[str, Any] | None, device: str | None = None) -> dict[str, Any]:
    """What produced a result: see the module docstring. ``flags``: the bench's parsed flags
    (or any mapping of its settings); ``device``: where it ran (default: ``flags.device``, else cpu)."""
    import torch

    from nas import __version__
    from nas.data.synthfer import RENDER_VERSION, RENDERERS

    f = _flags(flags)
    device = str(device or f.get("device") or "cpu")
    commit, dirty = git_state()
    revisions = {name: (RENDER_VERSION if name == "v1" else name + mod.REVISION) for name, mod in RENDERERS.items()}
    return {"fernas_version": __version__, "git_commit": commit, "git_dirty": dirty, "synthfer_revisions": revisions,
            "torch": torch.__version__, "device": device, "cpu_model": cpu_model(), "gpu_model": gpu_model(device),
            "threads": torch.get_num_threads(), "python": platform.python_version(),
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "flags": f}


def provenance_columns(prov: Mapping[str, Any]) -> dict[str, Any]:
    """A provenance record as CSV cells (nested values as compact JSON)."""
    return {k: json.dumps(prov[k], sort_keys=True, separators=(",", ":")) if isinstance(prov[k], (dict, list))
            else ("" if prov[k] is None else prov[k]) for k in PROVENANCE_COLUMNS}


def with_provenance(doc: Mapping[str, Any], flags: argparse.Namespace | Mapping[str, Any] | None,
                    device: str | None = None) -> dict[str, Any]:
    """``doc`` with its ``provenance`` (a results JSON document)."""
    return {**doc, "provenance": provenance(flags, device)}


def check_protocol(out: Path, protocol: Mapping[str, Any], name: str = "protocol.json") -> None:
    """A resumable bench's folder holds one protocol: refuse ``out`` when its ``name`` file
    records other settings (one line naming the ones that differ), else write it."""
    from nas.runtime.checkpoint import atomic_write_text, json_safe
    from nas.runtime.errors import FerNasError

    path = Path(out) / name
    new = json_safe(dict(protocol))
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = None
        if not isinstance(old, dict):
            raise FerNasError(f"{path}: not a protocol file; choose another --out")
        if old != new:
            changed = sorted(k for k in set(new) | set(old) if old.get(k) != new.get(k))
            raise FerNasError(f"{out}: holds runs of another protocol (differs in {', '.join(changed)}); "
                              f"rerun with its flags or choose another --out")
        return
    atomic_write_text(json.dumps(new, indent=2) + "\n", path)


def run_app(app: Any, argv: Sequence[Any]) -> dict[str, Any]:
    """A command of ``nas.apps`` in this process (its parser, then ``main``)."""
    return app.main(app.get_args_parser().parse_args([str(a) for a in argv]))


def run_or_resume(app: Any, folder: Path, argv: Sequence[Any], done: str = "results.json") -> dict[str, Any]:
    """One idempotent unit of work in its run folder: a finished run (``done`` written) is read
    back, an interrupted one resumed from its ``last.pt``, else ``argv`` starts it there."""
    folder = Path(folder)
    if (folder / done).exists():
        return json.loads((folder / done).read_text())
    if (folder / "last.pt").exists():
        return run_app(app, ["--resume", folder, "--progress", "False"])
    return run_app(app, [*argv, "--save", folder, "--force", "--progress", "False", "--plots", "False"])


def num(v: object) -> float | None:
    """A CSV cell as a float; None for empty, non-numeric or NaN."""
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a results CSV, or none when it does not exist yet."""
    from nas.runtime.checkpoint import read_csv_rows

    return read_csv_rows(path) if Path(path).exists() else []


def finished_cells(rows: Sequence[Mapping[str, str]],
                   seeds: int | None = None) -> tuple[list[Mapping[str, str]], list[str]]:
    """The rows of a nas_eval CSV whose genotype has a PrivateTest (``test_acc``) for each of its
    training seeds 0 … ``seeds``−1 (None: as many as the most-trained genotype has), and the
    sorted names of the others. A run read mid-way (the pool spans sessions) would otherwise
    compare a one-seed mean with the two-seed means beside it."""
    by: dict[str, set[int]] = {}
    for r in rows:
        if num(r.get("test_acc")) is not None and num(r.get("train_seed")) is not None:
            by.setdefault(r["genotype"], set()).add(int(float(r["train_seed"])))
    if seeds is None:
        seeds = max((len(s) for s in by.values()), default=0)
    done = {g for g, s in by.items() if set(range(seeds)) <= s}
    return ([r for r in rows if r["genotype"] in done],
            sorted({r["genotype"] for r in rows} - done))


def seed_rank_agreement(rows: Sequence[Mapping[str, str]], kind: str = "random", seed: int = 0) -> dict[str, Any]:
    """How well one training of each cell ranks the cells as the other does: Kendall τ, with a
    95 % bootstrap interval, between the PrivateTest (``test_acc``) of training seeds 0 and 1 of
    a nas_eval CSV's cells of ``kind``. When the cells differ by less than the seeds do, this is
    near 0, and no proxy can rank them much better than that (the ranking it is judged by is
    mostly training noise)."""
    from nas.runtime.stats import bootstrap_ci, kendall_tau

    by: dict[str, dict[int, float]] = {}
    for r in rows:
        if r.get("kind") == kind and num(r.get("test_acc")) is not None and num(r.get("train_seed")) is not None:
            by.setdefault(r["genotype"], {})[int(float(r["train_seed"]))] = float(r["test_acc"])
    both = sorted(g for g, s in by.items() if 0 in s and 1 in s)
    tau, lo, hi = bootstrap_ci([by[g][0] for g in both], [by[g][1] for g in both], kendall_tau, seed=seed)
    return {"cells": len(both), "kendall_tau": tau, "tau_low": lo, "tau_high": hi}


def add_out_arg(parser: argparse.ArgumentParser) -> None:
    """``--out FILE``: also write the result there (``.jsonl``: append one line; else a JSON document)."""
    parser.add_argument("--out", default=None,
                        help="also write the result here, with its provenance (FILE.jsonl: append one line)")


def emit(doc: Mapping[str, Any], args: argparse.Namespace, *, device: str | None = None, indent: int | None = 1,
         echo: bool = True) -> dict[str, Any]:
    """A bench's result with its provenance: printed as JSON, and written to ``args.out`` when
    given (a ``.jsonl`` file gets the document appended as one line; any other name is written
    whole, atomically). Returns the document with its provenance."""
    from nas.runtime.checkpoint import atomic_write_text, json_safe

    full = json_safe(with_provenance(doc, args, device))
    if echo:
        print(json.dumps(full, indent=indent))
    out = getattr(args, "out", None)
    if out:
        path = Path(out)
        if path.suffix == ".jsonl":
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(full) + "\n")
        else:
            atomic_write_text(json.dumps(full, indent=1) + "\n", path)
    return full


def _die_with_parent() -> None:
    """In a pool worker: be killed when the bench process that started it dies (Linux), so a
    stopped bench never leaves workers writing into its folder."""
    import signal

    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the pool's own shutdown is all there is
        return
    if os.getppid() == 1:  # the parent died before the request took effect
        os._exit(1)


def process_pool(workers: int) -> Any:
    """A spawn process pool whose workers die with the bench process (see :func:`_die_with_parent`)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_die_with_parent)


class FolderLock:
    """An exclusive lock on a bench's output folder (``OUT/.lock``, ``flock``): a second run of a
    bench in the same folder is refused in one line instead of writing rows beside the first.
    The lock goes with the process, so a killed run never leaves it held."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._fh: Any = None

    def __enter__(self) -> "FolderLock":
        import fcntl

        from nas.runtime.errors import FerNasError

        self.folder.mkdir(parents=True, exist_ok=True)
        fh = open(self.folder / ".lock", "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "?"
            fh.close()
            raise FerNasError(f"{self.folder}: another bench run is using this folder (pid {holder}); wait for it "
                              "to finish or stop it") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
