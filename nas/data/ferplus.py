"""FER+ votes (``fer2013new.csv``): reading, the FER+ majority rule, soft labels.

FER+ gives ten crowd votes per FER2013 image, one row per row of ``fer2013.csv``
in the same order. Its columns are ordered differently from FER2013's labels;
everything here returns FER2013 order (angry, disgust, fear, happy, sad,
surprise, neutral). Contempt has no FER2013 class, so it is folded out: a
contempt majority drops the row, and contempt votes do not count in soft labels.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from nas.data.dataset import SPLITS
from nas.errors import FerNasError

__all__ = ["FERPLUS_COLUMNS", "FERPLUS_TO_FER", "read_ferplus", "majority_labels", "soft_labels"]

#: Vote columns of fer2013new.csv, in file order.
FERPLUS_COLUMNS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt",
                   "unknown", "NF")
#: For each FER2013 class (angry..neutral), its column in FERPLUS_COLUMNS.
FERPLUS_TO_FER = (4, 5, 6, 1, 3, 2, 0)


def read_ferplus(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Read ``fer2013new.csv``: (split codes int64 N into SPLITS, votes int64 N×10 in file
    column order). Any malformed row is a one-line error naming the line."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FerNasError(f"{p}: FER+ file not found")
    try:
        lines = p.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise FerNasError(f"{p}: not a text CSV file") from None
    expected = ["Usage", "Image name", *FERPLUS_COLUMNS]
    header = [h.strip() for h in lines[0].split(",")] if lines else []
    if header != expected:
        raise FerNasError(f"{p}: line 1: wrong header {','.join(header)!r} (expected {','.join(expected)})")
    while lines and not lines[-1].strip():
        lines.pop()
    usage = np.empty(len(lines) - 1, dtype=np.int64)
    votes = np.empty((len(lines) - 1, len(FERPLUS_COLUMNS)), dtype=np.int64)
    split_code = {s: i for i, s in enumerate(SPLITS)}
    for i, line in enumerate(lines[1:]):
        fields = line.split(",")
        if len(fields) != len(expected):
            raise FerNasError(f"{p}: line {i + 2}: expected {len(expected)} fields, found {len(fields)}")
        code = split_code.get(fields[0].strip())
        if code is None:
            raise FerNasError(f"{p}: line {i + 2}: unknown Usage {fields[0].strip()!r} (expected {', '.join(SPLITS)})")
        usage[i] = code
        try:
            votes[i] = [int(v) for v in fields[2:]]
        except ValueError:
            raise FerNasError(f"{p}: line {i + 2}: vote counts must be integers") from None
        if votes[i].min() < 0:
            raise FerNasError(f"{p}: line {i + 2}: negative vote count")
    return torch.from_numpy(usage), torch.from_numpy(votes)


def majority_labels(votes: torch.Tensor) -> torch.Tensor:
    """FER+ majority rule, as in FER+'s own code: votes of 1 are dropped as outliers; the
    top emotion needs more than half of the remaining votes; rows whose majority is
    unknown or NF (or that have no majority) get -1, and so do contempt majorities,
    since FER2013 has no contempt class. Returns FER2013-order labels, int64 N."""
    v = votes.clone()
    v[v <= 1] = 0
    top, arg = v.max(dim=1)
    ok = (top * 2 > v.sum(dim=1)) & (top > 0)
    to_fer = torch.full((len(FERPLUS_COLUMNS),), -1, dtype=torch.int64)
    to_fer[list(FERPLUS_TO_FER)] = torch.arange(len(FERPLUS_TO_FER))
    return torch.where(ok, to_fer[arg], torch.full_like(arg, -1))


def soft_labels(votes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Vote distributions over the 7 FER2013 classes (float32 N×7; contempt, unknown and
    NF votes left out, the rest renormalised; all votes count, single ones included)
    and a bool mask of rows that have at least one FER-class vote (other rows are 0)."""
    v = votes[:, list(FERPLUS_TO_FER)].double()
    total = v.sum(dim=1, keepdim=True)
    has = total.squeeze(1) > 0
    return (v / total.clamp_min(1)).float(), has
