"""One canonical label map: every dataset's own class names and indices, mapped into the
toolkit's order (FER2013's) by name.

Datasets number their expressions differently (RAF-DB counts from 1 starting at surprise,
AffectNet from 0 starting at neutral), and they spell them differently (anger/angry,
happiness/happy). Readers never map indices to indices by hand: they look a native index
up in :data:`NATIVE` to get its name, and :func:`canonical` turns the name into the
toolkit's. ``contempt`` is not a FER2013 class; it keeps the index after the seven
(7, as CK+ keeps it at the end) where a dataset keeps it.
"""
from __future__ import annotations

from nas.data.ck48 import CK48_FOLDERS
from nas.data.dataset import FER_CLASSES
from nas.runtime.errors import FerNasError

__all__ = ["CANONICAL", "NATIVE", "canonical", "native_lookup", "label_map_rows"]

#: The toolkit's classes, and contempt where a dataset has it.
CANONICAL: tuple[str, ...] = (*FER_CLASSES, "contempt")

_ALIASES = {
    "angry": "angry", "anger": "angry",
    "disgust": "disgust", "disgusted": "disgust",
    "fear": "fear", "fearful": "fear", "afraid": "fear",
    "happy": "happy", "happiness": "happy", "joy": "happy",
    "sad": "sad", "sadness": "sad",
    "surprise": "surprise", "surprised": "surprise",
    "neutral": "neutral",
    "contempt": "contempt",
}

#: Native index -> native name, in each dataset's own numbering.
NATIVE: dict[str, dict[int, str]] = {
    "fer2013": dict(enumerate(FER_CLASSES)),
    "rafdb": {1: "surprise", 2: "fear", 3: "disgust", 4: "happiness", 5: "sadness", 6: "anger", 7: "neutral"},
    "affectnet": {0: "neutral", 1: "happy", 2: "sad", 3: "surprise", 4: "fear", 5: "disgust", 6: "anger",
                  7: "contempt"},
    "expw": dict(enumerate(("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"))),
    # FER+'s vote columns (fer2013new.csv, label.csv) up to contempt; unknown and NF are no class
    "ferplus": {0: "neutral", 1: "happiness", 2: "surprise", 3: "sadness", 4: "anger", 5: "disgust", 6: "fear",
                7: "contempt"},
    "ck48": {i: name for name, i in CK48_FOLDERS.items()},
}


def canonical(name: str) -> str | None:
    """The toolkit's name for a class name in any common spelling (case-insensitive), or None."""
    return _ALIASES.get(name.strip().lower())


def native_lookup(dataset: str, classes: list[str] | tuple[str, ...]) -> dict[int, int]:
    """``{native index: index into classes}`` for ``dataset``; native classes whose
    canonical name is not in ``classes`` are absent (the reader drops and counts them)."""
    if dataset not in NATIVE:
        raise FerNasError(f"no label map for {dataset!r} (known: {', '.join(NATIVE)})")
    out = {}
    for idx, name in NATIVE[dataset].items():
        c = canonical(name)
        if c in classes:
            out[idx] = list(classes).index(c)
    return out


def label_map_rows() -> list[dict[str, str]]:
    """The table of the docs: for each toolkit class, each dataset's native index and name."""
    rows = []
    for i, c in enumerate(CANONICAL):
        row = {"toolkit": f"{i} {c}" if c in FER_CLASSES else f"(7) {c}"}
        for ds, table in NATIVE.items():
            hits = [f"{k} {v}" for k, v in table.items() if canonical(v) == c]
            row[ds] = hits[0] if hits else "—"
        rows.append(row)
    return rows
