"""Genotypes: the discrete cell architectures that search produces and training builds.

A genotype is stored as JSON (never Python, never ``eval``)::

    {"normal": [["sep_conv_3x3", 0], ["conv_3x3", 1], ...], "normal_concat": [2, 3, 4, 5],
     "reduce": [...], "reduce_concat": [2, 3, 4, 5]}

Each cell has ``steps`` intermediate nodes; node ``i`` (0-based) sums two operations
applied to earlier states ``0 .. i+1`` (states 0 and 1 are the cell's two inputs), so a
cell lists ``2 * steps`` ``(op, input_index)`` pairs.

Names (``[A-Za-z0-9_]+``) resolve in two folders, in this order:

1. the user's folder, :func:`genotype_dir`: ``$FERNAS_GENOTYPES`` if set, else
   ``genotypes/`` in the current directory; ``search.py --export NAME`` writes here;
2. the published genotypes shipped inside the package (:data:`PUBLISHED_DIR`:
   ``FER_V1``, ``DARTS_V2``), so ``--arch FER_V1`` works after a plain ``pip install``.

A name never resolves outside these folders, and an export never takes a published name.
"""
from __future__ import annotations

import json
import os
import re
from collections import namedtuple
from pathlib import Path
from typing import Any, Mapping

from nas.runtime.errors import FerNasError
from nas.models.ops import OPS

__all__ = [
    "Genotype", "PUBLISHED_DIR", "genotype_dir", "published_genotypes", "load_genotype", "save_genotype", "export_genotype",
    "genotype_to_dict", "genotype_from_dict", "validate_genotype", "list_genotypes", "is_genotype_name",
    "genotype_to_json", "check_export_name",
]

Genotype = namedtuple("Genotype", "normal normal_concat reduce reduce_concat")

#: The published genotypes, shipped as package data.
PUBLISHED_DIR = Path(__file__).resolve().parent / "published"
_NAME_RE = re.compile(r"[A-Za-z0-9_]+")
_KEYS = ("normal", "normal_concat", "reduce", "reduce_concat")
_OPTIONAL_KEYS = ("comment", "source")


def genotype_dir() -> Path:
    """The user's genotype folder (exports go here; names resolve here first):
    ``$FERNAS_GENOTYPES`` if set, else ``genotypes/`` in the current directory."""
    env = os.environ.get("FERNAS_GENOTYPES")
    return Path(env) if env else Path("genotypes")


def is_genotype_name(name: str) -> bool:
    """True when ``name`` is a valid genotype name (``[A-Za-z0-9_]+``)."""
    return bool(_NAME_RE.fullmatch(name))


def _names_in(d: Path) -> list[str]:
    return sorted(p.stem for p in d.glob("*.json") if is_genotype_name(p.stem)) if d.is_dir() else []


def published_genotypes() -> list[str]:
    """Names of the genotypes shipped with the package."""
    return _names_in(PUBLISHED_DIR)


def list_genotypes() -> list[str]:
    """Every name :func:`load_genotype` resolves: the user's folder and the published ones, sorted."""
    return sorted(set(_names_in(genotype_dir())) | set(published_genotypes()))


def _find(name: str) -> Path | None:
    for d in (genotype_dir(), PUBLISHED_DIR):
        p = d / f"{name}.json"
        if p.is_file():
            return p
    return None


def _is_path(s: str) -> bool:
    return "/" in s or os.sep in s or s.endswith(".json")


def _check_cell(cell: Any, concat: Any, key: str, where: str) -> tuple[list[tuple[str, int]], list[int]]:
    if not isinstance(cell, (list, tuple)) or not cell:
        raise FerNasError(f"{where}: {key!r} must be a non-empty list of [op, input] pairs")
    if len(cell) % 2:
        raise FerNasError(f"{where}: {key!r} has {len(cell)} pairs; each node needs exactly two inputs, "
                          "so the count must be even")
    pairs: list[tuple[str, int]] = []
    for j, pair in enumerate(cell):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise FerNasError(f"{where}: {key}[{j}] must be an [op, input_index] pair, found {pair!r}")
        op, idx = pair
        if not isinstance(op, str) or op not in OPS:
            raise FerNasError(f"{where}: {key}[{j}]: unknown op {op!r} (known: {', '.join(o for o in OPS if o != 'none')})")
        if op == "none":
            raise FerNasError(f"{where}: {key}[{j}]: op 'none' cannot be part of a genotype")
        if isinstance(idx, bool) or not isinstance(idx, int):
            raise FerNasError(f"{where}: {key}[{j}]: input index must be an integer, found {idx!r}")
        node = j // 2
        if not 0 <= idx < node + 2:
            raise FerNasError(f"{where}: {key}[{j}]: input index {idx} out of range for node {node} "
                              f"(allowed 0..{node + 1})")
        pairs.append((op, idx))
    ckey = f"{key}_concat"
    steps = len(cell) // 2
    if not isinstance(concat, (list, tuple, range)) or len(concat) == 0:
        raise FerNasError(f"{where}: {ckey!r} must be a non-empty list of node indices")
    out: list[int] = []
    for c in concat:
        if isinstance(c, bool) or not isinstance(c, int) or not 2 <= c < steps + 2:
            raise FerNasError(f"{where}: {ckey} entry {c!r} is not an intermediate node index "
                              f"(allowed 2..{steps + 1})")
        if c in out:
            raise FerNasError(f"{where}: {ckey} lists node {c} twice")
        out.append(c)
    return pairs, out


def validate_genotype(g: Genotype, where: str = "genotype") -> Genotype:
    """Check a genotype (known ops, two inputs per node, indices and concat in range);
    return it normalised to lists of ``(str, int)`` tuples and int lists."""
    normal, normal_concat = _check_cell(g.normal, g.normal_concat, "normal", where)
    reduce, reduce_concat = _check_cell(g.reduce, g.reduce_concat, "reduce", where)
    return Genotype(normal, normal_concat, reduce, reduce_concat)


def genotype_from_dict(d: object, where: str = "genotype") -> Genotype:
    """Build and validate a :class:`Genotype` from its JSON dict form."""
    if isinstance(d, Genotype):
        return validate_genotype(d, where)
    if not isinstance(d, Mapping):
        raise FerNasError(f"{where}: a genotype must be a JSON object with keys {', '.join(_KEYS)}")
    missing = [k for k in _KEYS if k not in d]
    if missing:
        raise FerNasError(f"{where}: missing key(s) {', '.join(missing)}")
    unknown = [k for k in d if k not in _KEYS and k not in _OPTIONAL_KEYS]
    if unknown:
        raise FerNasError(f"{where}: unknown key(s) {', '.join(map(str, unknown))} "
                          f"(allowed: {', '.join(_KEYS + _OPTIONAL_KEYS)})")
    return validate_genotype(Genotype(d["normal"], d["normal_concat"], d["reduce"], d["reduce_concat"]), where)


def genotype_to_dict(g: Genotype) -> dict[str, list]:
    """Plain-JSON form of a genotype (lists only; safe for weights-only checkpoints)."""
    return {
        "normal": [[str(op), int(i)] for op, i in g.normal],
        "normal_concat": [int(c) for c in g.normal_concat],
        "reduce": [[str(op), int(i)] for op, i in g.reduce],
        "reduce_concat": [int(c) for c in g.reduce_concat],
    }


def genotype_to_json(g: Genotype) -> str:
    """Readable JSON text: one key per line, pairs inline."""
    d = genotype_to_dict(g)
    body = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in d.items())
    return "{\n" + body + "\n}\n"


def _read_genotype_file(p: Path) -> Genotype:
    if not p.is_file():
        raise FerNasError(f"{p}: genotype file not found")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise FerNasError(f"{p}: not a JSON genotype (file is not UTF-8 text)") from None
    except OSError as e:
        raise FerNasError(f"{p}: cannot read ({e.strerror or e})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise FerNasError(f"{p}: line {e.lineno}: not valid JSON ({e.msg})") from None
    return genotype_from_dict(data, where=str(p))


def load_genotype(name_or_path: str | os.PathLike | Genotype | Mapping[str, Any]) -> Genotype:
    """A validated genotype from a name in :func:`genotype_dir`, a path to a JSON file
    (anything containing ``/`` or ending in ``.json``), a dict, or a Genotype."""
    if isinstance(name_or_path, Genotype):
        return validate_genotype(name_or_path)
    if isinstance(name_or_path, Mapping):
        return genotype_from_dict(name_or_path)
    s = os.fspath(name_or_path)
    if isinstance(name_or_path, os.PathLike) or _is_path(s):
        return _read_genotype_file(Path(s))
    if not is_genotype_name(s):
        raise FerNasError(f"invalid genotype name {s!r}: names match [A-Za-z0-9_]+ "
                          "(give a path containing '/' or ending in .json to read a file)")
    p = _find(s)
    if p is None:
        known = list_genotypes()
        raise FerNasError(f"unknown genotype {s!r} in {genotype_dir()} or the published ones "
                          f"(known: {', '.join(known) if known else 'none'})")
    return _read_genotype_file(p)


def save_genotype(g: Genotype, path: str | os.PathLike) -> Path:
    """Validate and write ``g`` as JSON to ``path`` (atomically)."""
    from nas.runtime.checkpoint import atomic_write_text

    g = validate_genotype(g)
    p = Path(path)
    atomic_write_text(genotype_to_json(g), p)
    return p


def export_genotype(g: Genotype, name: str, force: bool = False) -> Path:
    """Write ``g`` to ``genotype_dir()/NAME.json`` so it can be used by name; refuses
    to overwrite an existing genotype unless ``force``, and a published name always."""
    check_export_name(name, force)
    return save_genotype(g, genotype_dir() / f"{name}.json")


def check_export_name(name: str, force: bool = False) -> None:
    """The checks of :func:`export_genotype`, for a search to fail before it starts."""
    if not is_genotype_name(name):
        raise FerNasError(f"--export {name!r}: genotype names must match [A-Za-z0-9_]+")
    if name in published_genotypes():
        raise FerNasError(f"--export {name}: {name!r} is a published genotype; choose another name")
    p = genotype_dir() / f"{name}.json"
    if p.exists() and not force:
        raise FerNasError(f"{p}: genotype {name!r} already exists; pass --force to overwrite it")
