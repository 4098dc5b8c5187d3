"""Atomic checkpoint writes, safe loads, and run directories.

A checkpoint is a dict of tensors and plain Python values only, so that
``torch.load(..., weights_only=True)`` can read it and nothing in it can run
code. Writes go to a temporary file in the same folder, are flushed to disk
and renamed over the target: a crash leaves either the old or the new file,
never half of one.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Union

import torch

from nas import __version__
from nas.runtime.errors import FerNasError

#: a value ``json.dumps`` writes as standard JSON
JSONValue = Union[None, bool, int, float, str, list["JSONValue"], dict[str, "JSONValue"]]

__all__ = ["atomic_save", "atomic_write_text", "atomic_write_bytes", "safe_load", "RunDir", "RUN_MARKERS", "RUN_MARK",
           "read_csv_rows", "write_csv", "plain", "json_safe", "check_clearable"]

# Files whose presence means "a run lives here" (guards against silent overwrite).
RUN_MARKERS = ("config.yaml", "last.pt", "metrics.csv")
#: The file a run folder carries from its creation: only a folder holding it is ever cleared by
#: ``--force``.
RUN_MARK = ".fernas-run"
#: What a run writes: these names and suffixes (checkpoints, tables, pictures, the flags and the
#: log), hidden temporary files of atomic writes, and sub-folders that are runs themselves
#: (cross-dataset folds). Anything else in a folder means it holds more than a run.
RUN_FILE_NAMES = (RUN_MARK, "config.yaml", "log.txt", ".write_probe")
RUN_FILE_SUFFIXES = (".pt", ".csv", ".png", ".json", ".jsonl", ".gv", ".svg")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write_bytes(data: bytes, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def atomic_save(obj: Mapping[str, Any], path: str | os.PathLike) -> None:
    """``torch.save`` to a temp file, fsync, rename over ``path``.

    Serialising into memory first means a failure while pickling never touches disk.
    Adds ``toolkit_version`` when absent."""
    if "toolkit_version" not in obj:
        obj = {**obj, "toolkit_version": __version__}
    buf = io.BytesIO()
    torch.save(dict(obj), buf)
    try:
        _atomic_write_bytes(buf.getvalue(), Path(path))
    except OSError as e:
        raise FerNasError(f"{path}: cannot write checkpoint ({e.strerror or e})") from None


def json_safe(v: object) -> JSONValue:
    """``v`` with tensors as lists, paths as strings and non-finite floats as ``None``,
    so that ``json.dumps`` writes standard JSON (no ``NaN``/``Infinity`` tokens)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, Mapping):
        return {str(k): json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    if isinstance(v, torch.Tensor):
        return json_safe(v.tolist())
    if isinstance(v, Path):
        return str(v)
    return v


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    """Write a small text file atomically (configs, genotypes, CSV summaries)."""
    atomic_write_bytes(text.encode("utf-8"), path)


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> None:
    """Write a file atomically (a temp file, fsync, rename), with a one-line error."""
    try:
        _atomic_write_bytes(data, Path(path))
    except OSError as e:
        raise FerNasError(f"{path}: cannot write ({e.strerror or e})") from None


def safe_load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; anything that would need to run
    code to unpickle (a crafted payload, a pickled module) is refused with one line."""
    p = Path(path)
    if p.is_dir():
        for name in ("best.pt", "last.pt"):
            if (p / name).is_file():
                p = p / name
                break
        else:
            raise FerNasError(f"{path}: folder holds no best.pt or last.pt")
    if not p.is_file():
        raise FerNasError(f"{p}: checkpoint not found")
    try:
        obj = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - every failure mode becomes one line
        msg = " ".join(str(e).split())
        if "weights_only" in msg or "Unsupported global" in msg or "Unpickl" in type(e).__name__:
            raise FerNasError(f"{p}: refused to load: the file holds objects other than tensors and "
                              "plain values (possible code payload); only weights_only checkpoints are accepted") from None
        raise FerNasError(f"{p}: not a readable checkpoint ({type(e).__name__}: {msg[:160]})") from None
    if not isinstance(obj, dict):
        raise FerNasError(f"{p}: checkpoint must be a dict, found {type(obj).__name__}")
    obj.setdefault("path", str(p))
    return obj


class RunDir:
    """One run directory: ``config.yaml``, ``log.txt``, ``metrics.csv``, checkpoints, plots.

    A new run needs a new or empty folder, and marks it with :data:`RUN_MARK`. A folder that
    already holds a run is refused unless ``resume`` or ``force``; ``force`` clears it only when
    :func:`check_clearable` allows (a marked run folder holding nothing but what runs write).
    Checks before any work that the folder is writable and has ``min_free_mb`` free.
    With ``enabled=False`` (non-zero ranks under DDP) every write is a no-op."""

    def __init__(self, path: str | os.PathLike, *, resume: bool = False, force: bool = False,
                 enabled: bool = True, min_free_mb: float = 50.0, quiet: bool = False) -> None:
        # "a/b/.." is "a" even where b does not exist (else the checks below look at a missing path)
        self.path = Path(os.path.normpath(path))
        self.enabled = enabled
        self.quiet = quiet
        #: set by the loop before its first step: from then on the run has done work to keep
        self.worked = False
        if not enabled:
            return
        holds_run = self.path.is_dir() and any((self.path / m).exists() for m in (*RUN_MARKERS, RUN_MARK))
        if holds_run and not (resume or force):
            raise FerNasError(f"{self.path}: folder already holds a run; pass --resume {self.path} "
                              "to continue it or --force to overwrite it")
        if resume and not (self.path / "last.pt").is_file():
            raise FerNasError(f"{self.path}: nothing to resume (no last.pt)")
        if force and not resume and self.path.exists():
            check_clearable(self.path)
            _clear_run(self.path)
        elif not resume and not holds_run and self.path.is_dir() and any(self.path.iterdir()):
            # a run's files would mix with (and overwrite) files of something else
            raise FerNasError(f"{self.path}: folder exists and holds files that are not a run; a new run needs a "
                              "new or empty folder (choose another --save)")
        # the folders this run makes (innermost first), which discard() may take back
        self.made = [q for q in (self.path, *self.path.parents) if not q.exists()] if not resume else []
        self.resume = resume
        self.check_writable(self.path, min_free_mb)
        if not resume:
            atomic_write_text(json.dumps({"fernas": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
                              + "\n", self.path / RUN_MARK)

    def discard(self) -> bool:
        """Take back a new run that failed before any work (before the loop's first step: bad
        input found late): when the folder holds only what :meth:`__init__` and the first log
        lines write (:data:`RUN_FILE_NAMES`: the marker, ``config.yaml``, ``log.txt``), remove
        those files and the folders this run made, so the corrected command runs in the same
        folder. A run that took a step (a non-finite first epoch keeps its log), or a folder with
        anything more (a checkpoint, metrics, a file someone else put there), is not touched.
        Returns whether it took the run back."""
        if not self.enabled or self.resume or self.worked or not self.path.is_dir():
            return False
        with os.scandir(self.path) as it:
            entries = list(it)
        if any(e.is_symlink() or not e.is_file(follow_symlinks=False) or e.name not in RUN_FILE_NAMES
               for e in entries):
            return False
        for e in entries:
            os.unlink(e.path)
        for q in self.made:  # innermost first; stop at the first that is not empty
            try:
                q.rmdir()
            except OSError:
                break
        return True

    @staticmethod
    def check_writable(path: Path, min_free_mb: float) -> None:
        """Fail before training starts if ``path`` cannot hold the run."""
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe = path / ".write_probe"
            with open(probe, "wb") as f:
                f.write(b"x" * 4096)
                f.flush()
                os.fsync(f.fileno())
            probe.unlink()
        except OSError as e:
            raise FerNasError(f"{path}: save directory is not writable ({e.strerror or e})") from None
        free_mb = shutil.disk_usage(path).free / 2**20
        if free_mb < min_free_mb:
            raise FerNasError(f"{path}: only {free_mb:.0f} MB free, need at least {min_free_mb:.0f} MB for this run")

    def file(self, name: str) -> Path:
        """The path of ``name`` inside the run folder."""
        return self.path / name

    # -- config and log -------------------------------------------------------------
    def write_config(self, config: argparse.Namespace | Mapping[str, Any]) -> None:
        """All flags as YAML (plain values only, so ``--config`` can read it back)."""
        if not self.enabled:
            return
        import yaml

        d = vars(config) if isinstance(config, argparse.Namespace) else dict(config)
        clean = plain(d)
        atomic_write_text(yaml.safe_dump(clean, sort_keys=True), self.path / "config.yaml")

    def log(self, message: str, echo: bool = True) -> None:
        """Append a timestamped line to log.txt and print it (through tqdm, so it
        does not tear progress bars)."""
        if not self.enabled:
            return
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        with open(self.path / "log.txt", "a", encoding="utf-8") as f:
            f.write(line + "\n")
        if echo and not self.quiet:
            try:
                from tqdm import tqdm

                tqdm.write(message, file=sys.stdout)
            except ImportError:  # pragma: no cover
                print(message)

    # -- metrics ----------------------------------------------------------------------
    def append_metrics(self, row: Mapping[str, Any], name: str = "metrics.csv") -> None:
        """Append one row; the header comes from the first row written. New keys in a
        later row rewrite the file with the wider header."""
        if not self.enabled:
            return
        p = self.path / name
        rows = read_csv_rows(p) if p.exists() else []
        header = list(rows[0].keys()) if rows else []
        new_keys = [k for k in row if k not in header]
        if p.exists() and not new_keys:
            with open(p, "a", newline="", encoding="utf-8") as f:
                csv.DictWriter(f, fieldnames=header).writerow({k: _fmt(row.get(k, "")) for k in header})
            return
        header += new_keys
        rows.append({k: _fmt(v) for k, v in row.items()})
        write_csv(p, rows, header)

    def truncate_metrics(self, key: str, keep_upto: int, name: str = "metrics.csv") -> None:
        """On resume: drop rows with ``key`` > ``keep_upto`` (written after the
        checkpoint we resume from), so the CSV equals an uninterrupted run's."""
        if not self.enabled:
            return
        p = self.path / name
        if not p.exists():
            return
        rows = read_csv_rows(p)
        header = list(rows[0].keys()) if rows else []
        kept = [r for r in rows if r.get(key, "") != "" and int(float(r[key])) <= keep_upto]
        write_csv(p, kept, header)

    def save(self, name: str, state: Mapping[str, Any]) -> Path:
        """Atomically write a checkpoint into the run directory."""
        p = self.path / name
        if self.enabled:
            atomic_save(state, p)
        return p


def _is_run_file(entry: os.DirEntry) -> bool:
    name = entry.name
    if entry.is_symlink():
        return False
    if entry.is_dir(follow_symlinks=False):
        return False
    return name in RUN_FILE_NAMES or name.endswith(RUN_FILE_SUFFIXES) or (name.startswith(".") and name.endswith(".tmp"))


def check_clearable(path: str | os.PathLike) -> None:
    """Refuse (one line) to clear ``path`` for ``--force`` unless it is a run folder and nothing
    else: it must carry :data:`RUN_MARK`, hold only what runs write (sub-folders only when they
    are runs themselves), and be none of the current folder, one of its parents, a home folder or
    the root; it must not be, or hold, a symlink or a ``.git``."""
    p = Path(os.path.normpath(path))  # "runs/x/.." is "runs", whether or not x exists
    if p.is_symlink():
        raise FerNasError(f"{p}: is a symlink; --force never clears through one (pass the real folder)")
    real, cwd = p.resolve(), Path.cwd().resolve()
    home = Path.home().resolve()
    if real == cwd or real in cwd.parents or real == home or real == Path(real.anchor):
        raise FerNasError(f"{p}: is the current folder, one of its parents, a home folder or the root; "
                          "--force clears only run folders (choose --save runs/NAME)")
    if not p.exists():
        return
    if not p.is_dir():
        raise FerNasError(f"{p}: exists and is not a folder; --force clears only run folders")
    if not any(p.iterdir()):
        return  # an empty folder: nothing to clear
    if (p / ".git").exists():
        raise FerNasError(f"{p}: holds .git; --force never clears a repository")
    if not (p / RUN_MARK).is_file():
        raise FerNasError(f"{p}: has no {RUN_MARK} marker, so it was not made as a run folder by this toolkit "
                          "(or by a version before 0.4); --force clears only run folders: remove it yourself or "
                          "choose another --save")
    with os.scandir(p) as it:
        for e in it:
            if e.is_symlink():
                raise FerNasError(f"{p}: holds a symlink ({e.name}); --force never clears through one")
            if e.is_dir(follow_symlinks=False):
                check_clearable(Path(e.path))  # a fold's run folder, else refused
                if any(Path(e.path).iterdir()) and not (Path(e.path) / RUN_MARK).is_file():
                    raise FerNasError(f"{p}: holds a folder a run did not write ({e.name}); nothing deleted")
            elif not _is_run_file(e):
                raise FerNasError(f"{p}: holds a file a run did not write ({e.name}); --force clears only run "
                                  "folders, nothing deleted")


def _clear_run(path: Path) -> None:
    """Remove what :func:`check_clearable` allowed: run files, and run sub-folders (recursively);
    symlinks were refused, so nothing outside ``path`` is touched."""
    with os.scandir(path) as it:
        entries = list(it)
    for e in entries:
        if e.is_dir(follow_symlinks=False):
            _clear_run(Path(e.path))
            os.rmdir(e.path)
        else:
            os.unlink(e.path)


def read_csv_rows(path: str | os.PathLike) -> list[dict[str, str]]:
    """A CSV file's rows as dicts of strings (the header gives the keys)."""
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def write_csv(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]], header: list[str]) -> None:
    """Write rows atomically with the given header."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=header, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: _fmt(r.get(k, "")) for k in header})
    atomic_write_text(buf.getvalue(), path)


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return _fmt(v.item())
    return v


def plain(v: object) -> JSONValue:
    """``v`` as plain values (str, int, float, bool, None, lists, dicts with str keys), safe for
    weights-only checkpoints, YAML and JSON: one-element tensors become numbers, paths strings,
    anything else its ``str``; mapping keys starting with ``_`` (private attributes) are left out."""
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, Mapping):
        return {str(k): plain(x) for k, x in v.items() if not str(k).startswith("_")}
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return v.item()
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    return str(v)
