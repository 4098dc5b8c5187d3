"""FER+ votes (``fer2013new.csv``): the one reader, the majority rule, soft labels, and the
facial-expression similarity (FES) matrix and tagger-disagreement figures computed from them.

FER+ gives ten crowd votes per FER2013 image, one row per row of ``fer2013.csv`` in the
same order. Its columns are ordered differently from FER2013's labels; everything here
returns FER2013 order (angry, disgust, fear, happy, sad, surprise, neutral). Contempt
has no FER2013 class, so it is folded out: a contempt majority drops the row, and
contempt votes do not count in soft labels or in the FES matrix.

FES, as Auto-FERNet defines it: for two expressions ``i != j`` and an image whose ten
taggers gave ``v_i`` and ``v_j`` votes, the image contributes ``min(v_i, v_j) /
max(v_i, v_j)`` when both got votes and nothing otherwise; FES(i, j) is the sum over
images divided by the number of rows in the file (every row, including those voted "not
a face"). The diagonal is 1; the matrix is symmetric. Relabelling uses it as a gate, and
SynthFER flips labels along its rows.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from nas.data.dataset import FER_CLASSES, SPLITS
from nas.runtime.errors import FerNasError

__all__ = ["FERPLUS_COLUMNS", "FERPLUS_TO_FER", "FES_CLASSES", "DEFAULT_FES", "FERPLUS_DISAGREEMENT_DECILES",
           "read_ferplus", "fer_votes", "majority_labels", "soft_labels", "fes_from_votes", "fes_from_ferplus",
           "disagreement_from_votes", "format_fes", "format_disagreement", "fes_to_json", "load_fes", "fes_for_classes", "fes_offlabel", "fes_smoothing"]

#: Vote columns of fer2013new.csv, in the published file's order.
FERPLUS_COLUMNS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt",
                   "unknown", "NF")
#: For each FER2013 class (angry..neutral), its column in FERPLUS_COLUMNS.
FERPLUS_TO_FER = (4, 5, 6, 1, 3, 2, 0)
#: The FES matrix's class order (FER2013's).
FES_CLASSES = FER_CLASSES

# fes_from_ferplus on the published fer2013new.csv (35,887 rows); tests/test_fes.py
# recomputes it from the file when the file is present.
DEFAULT_FES = np.array([
    [1.0, 0.027189268254, 0.021883582108, 0.020030233789, 0.048782432600, 0.032233562934, 0.058377010997],
    [0.027189268254, 1.0, 0.009517628305, 0.011473679950, 0.027751316854, 0.013817545019, 0.032062058994],
    [0.021883582108, 0.009517628305, 1.0, 0.015245517124, 0.027923650117, 0.046197002407, 0.033839430293],
    [0.020030233789, 0.011473679950, 0.015245517124, 1.0, 0.025750791395, 0.034526573933, 0.055803987472],
    [0.048782432600, 0.027751316854, 0.027923650117, 0.025750791395, 1.0, 0.034722813806, 0.138388962090],
    [0.032233562934, 0.013817545019, 0.046197002407, 0.034526573933, 0.034722813806, 1.0, 0.052981957034],
    [0.058377010997, 0.032062058994, 0.033839430293, 0.055803987472, 0.138388962090, 0.052981957034, 1.0],
])
DEFAULT_FES.setflags(write=False)

# disagreement_from_votes(votes, bins=10)["bins"][k]["disagreement"] on the published
# fer2013new.csv: the expected rate at which one tagger disagrees with the majority,
# in tenths of the images from the most ambiguous (lowest majority share) to the
# least; tests/test_fes.py recomputes it from the file. SynthFER's "ambiguous" label
# noise follows this curve.
FERPLUS_DISAGREEMENT_DECILES = np.array([
    0.569722366684, 0.458719935281, 0.375651078129, 0.300549399261, 0.214420174865,
    0.148276793215, 0.100205357976, 0.022906748810, 0.000000000000, 0.000000000000,
])
FERPLUS_DISAGREEMENT_DECILES.setflags(write=False)

# transition_from_votes on the published fer2013new.csv (31,264 images with a FER+ majority in
# the seven classes): row i is the vote distribution of the images whose FER+ majority is class
# i, which is the chance that a single tagger (FER2013's one label per image) names each class
# when the truth is i. Its off-diagonal mass, weighted by the class counts, is the real
# single-tagger disagreement, 17.7 %; tests/test_fes.py recomputes both from the file.
FERPLUS_TRANSITION = np.array([
    [0.742320687318, 0.036536430873, 0.026230159108, 0.027832378940, 0.033438656647, 0.061171680173, 0.072470015439],
    [0.134356208840, 0.621534566331, 0.013489598906, 0.020459923407, 0.092844820309, 0.021495120079, 0.095819778231],
    [0.032959368383, 0.015292138676, 0.652961837224, 0.014512555572, 0.072637805679, 0.166573471562, 0.045062836155],
    [0.004214070803, 0.002311985079, 0.001762440026, 0.925341763656, 0.004630814250, 0.020864548899, 0.040874376611],
    [0.024682667074, 0.013091321879, 0.017548806953, 0.014517522343, 0.754635527360, 0.010261043302, 0.165263120652],
    [0.014799683579, 0.003392656774, 0.086645023246, 0.034746874146, 0.010552349026, 0.792247977002, 0.057615440999],
    [0.027881092611, 0.008475926795, 0.005170333733, 0.030824346521, 0.103576799618, 0.017806008432, 0.806265498887],
])
FERPLUS_TRANSITION.setflags(write=False)
#: Images per FER+ majority class behind :data:`FERPLUS_TRANSITION` (FER2013 order).
FERPLUS_MAJORITY_COUNTS = (2660, 161, 677, 9045, 3749, 3960, 11012)


# ----------------------------------------------------------------------------- the reader
def read_ferplus(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Read ``fer2013new.csv``: (split codes int64 N into SPLITS, votes int64 N×10 in
    :data:`FERPLUS_COLUMNS` order). Columns are found by name (any order, any case); every
    vote column is checked, so a damaged file is caught wherever the damage is. A
    malformed file is a one-line error naming the file and line."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FerNasError(f"{p}: FER+ votes file not found")
    try:
        with p.open("r", encoding="utf-8-sig", newline="") as f:
            rows = [r for r in csv.reader(f)]
    except UnicodeDecodeError:
        raise FerNasError(f"{p}: not a text CSV file") from None
    except csv.Error as e:
        raise FerNasError(f"{p}: not a CSV file ({e})") from None
    except OSError as e:
        raise FerNasError(f"{p}: cannot read ({e.strerror or e})") from None
    while rows and not any(c.strip() for c in rows[-1]):
        rows.pop()
    expected = ("Usage", "Image name", *FERPLUS_COLUMNS)
    if not rows:
        raise FerNasError(f"{p}: empty file (expected the FER+ header {','.join(expected)})")
    header = [h.strip() for h in rows[0]]
    lower = [h.lower() for h in header]
    missing = [c for c in ("Usage", *FERPLUS_COLUMNS) if c.lower() not in lower]
    if missing:
        raise FerNasError(f"{p}: line 1: not a FER+ votes header, missing column(s) {', '.join(missing)} "
                          f"(wrong header {','.join(header)!r}; expected {','.join(expected)})")
    body = rows[1:]
    if not body:
        raise FerNasError(f"{p}: no data rows after the header")
    width = len(header)
    lengths = np.fromiter((len(r) for r in body), dtype=np.int64, count=len(body))
    bad = np.flatnonzero(lengths != width)
    if bad.size:
        i = int(bad[0])
        raise FerNasError(f"{p}: line {i + 2}: expected {width} fields, found {lengths[i]}")
    table = np.array(body, dtype=object)
    usage_text = np.char.strip(table[:, lower.index("usage")].astype(str))
    codes = np.full(len(body), -1, dtype=np.int64)
    for code, name in enumerate(SPLITS):
        codes[usage_text == name] = code
    if (codes < 0).any():
        i = int(np.flatnonzero(codes < 0)[0])
        raise FerNasError(f"{p}: line {i + 2}: unknown Usage {usage_text[i]!r} (expected {', '.join(SPLITS)})")
    cols = [lower.index(c.lower()) for c in FERPLUS_COLUMNS]
    text = table[:, cols].astype(str)
    stripped = np.char.strip(text)
    ok = np.char.isdecimal(stripped)
    if not ok.all():
        i, j = (int(k) for k in np.argwhere(~ok)[0])
        raise FerNasError(f"{p}: line {i + 2}: column {header[cols[j]]!r}: {str(text[i, j])!r} is not a "
                          "non-negative integer vote count")
    return torch.from_numpy(codes), torch.from_numpy(stripped.astype(np.int64))


def fer_votes(path: str | os.PathLike) -> np.ndarray:
    """The ``N x 7`` vote counts of a FER+ file in FER2013 class order (contempt, unknown
    and NF left out)."""
    _, votes = read_ferplus(path)
    return votes[:, list(FERPLUS_TO_FER)].numpy()


# ----------------------------------------------------------------------------- labels
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


# ----------------------------------------------------------------------------- FES
def fes_from_votes(votes: np.ndarray) -> np.ndarray:
    """FES matrix from an ``N x 7`` array of vote counts in FER2013 class order."""
    v = np.asarray(votes, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] != len(FES_CLASSES):
        raise ValueError(f"votes must be N x {len(FES_CLASSES)}, got shape {v.shape}")
    if v.shape[0] == 0:
        raise ValueError("no rows of votes")
    lo = np.minimum(v[:, :, None], v[:, None, :])
    hi = np.maximum(v[:, :, None], v[:, None, :])
    # lo > 0 exactly when both classes got votes; elsewhere the image adds nothing.
    ratio = np.divide(lo, hi, out=np.zeros_like(lo), where=lo > 0)
    fes = ratio.sum(axis=0) / v.shape[0]
    np.fill_diagonal(fes, 1.0)
    return fes


def fes_from_ferplus(path: str | os.PathLike) -> np.ndarray:
    """7x7 FES matrix (float64, FER2013 order) from a FER+ ``fer2013new.csv`` file.
    A malformed file is a :class:`FerNasError` naming the file and line."""
    return fes_from_votes(fer_votes(path))


def disagreement_from_votes(votes: np.ndarray, bins: int = 5) -> dict:
    """How often a single tagger would disagree with the majority, overall and by ambiguity.

    ``votes``: ``N x 7`` counts in FER2013 order (contempt, unknown and NF already left
    out; rows with no vote for the seven classes are dropped). Per image the majority
    share is ``s = max vote / total``; a tagger drawn from that image's vote
    distribution (FER2013's single label) picks another class with probability
    ``1 - s``. Images are sorted by ``s`` (most ambiguous first) and cut into ``bins``
    equal-count groups; tied shares straddling a cut do not change a group's mean.

    Returns ``{"images", "mean_share", "disagreement", "bins": [{"n", "share_min",
    "share_max", "mean_share", "disagreement"}, ...]}`` (rates as fractions).
    """
    v = np.asarray(votes, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] != len(FES_CLASSES):
        raise ValueError(f"votes must be N x {len(FES_CLASSES)}, got shape {v.shape}")
    if int(bins) < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    total = v.sum(axis=1)
    v, total = v[total > 0], total[total > 0]
    if len(v) < int(bins):
        raise ValueError(f"{len(v)} images with votes: fewer than bins={bins}")
    share = v.max(axis=1) / total
    order = np.argsort(share, kind="stable")
    groups = [{"n": int(len(g)), "share_min": float(share[g].min()), "share_max": float(share[g].max()),
               "mean_share": float(share[g].mean()), "disagreement": float(1.0 - share[g].mean())}
              for g in np.array_split(order, int(bins))]
    return {"images": int(len(v)), "mean_share": float(share.mean()),
            "disagreement": float(1.0 - share.mean()), "bins": groups}


def transition_from_votes(votes: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The real FER2013 → FER+ label transition: for the images whose FER+ majority
    (:func:`majority_labels`) is class i, the mean of their vote distributions over the seven
    classes (:func:`soft_labels`, every vote counted), i.e. how often a single tagger names each
    class when the majority says i. ``votes``: N×10 counts as :func:`read_ferplus` gives them.
    Returns ``(7×7 matrix, images per majority class)``."""
    truth = majority_labels(votes)
    dist, has = soft_labels(votes)
    ok = (truth >= 0) & has
    k = len(FES_CLASSES)
    counts = np.bincount(truth[ok].numpy(), minlength=k)
    matrix = np.zeros((k, k))
    for i in range(k):
        rows = ok & (truth == i)
        if rows.any():
            matrix[i] = dist[rows].double().mean(0).numpy()
    return matrix, counts


def format_disagreement(d: dict) -> str:
    """The result of :func:`disagreement_from_votes` as a text table (percentages)."""
    lines = [f"{d['images']} images; mean majority share {100 * d['mean_share']:.1f} %, "
             f"expected single-tagger disagreement {100 * d['disagreement']:.1f} %",
             f"{'group (most ambiguous first)':<30}{'images':>8}{'share range':>16}{'mean share':>12}{'disagree':>10}"]
    for k, b in enumerate(d["bins"]):
        rng = f"{100 * b['share_min']:.0f}-{100 * b['share_max']:.0f} %"
        lines.append(f"{k + 1:>2} of {len(d['bins']):<25}{b['n']:>8}{rng:>16}"
                     f"{100 * b['mean_share']:>10.1f} %{100 * b['disagreement']:>8.1f} %")
    return "\n".join(lines)


def format_fes(fes: np.ndarray, digits: int = 4) -> str:
    """The matrix as an aligned text table with class names."""
    w = max(len(c) for c in FES_CLASSES)
    cell = max(digits + 3, w + 1)
    lines = [" " * w + "".join(f"{c:>{cell}}" for c in FES_CLASSES)]
    for name, row in zip(FES_CLASSES, np.asarray(fes)):
        lines.append(f"{name:<{w}}" + "".join(f"{x:>{cell}.{digits}f}" for x in row))
    return "\n".join(lines)


def fes_to_json(fes: np.ndarray, source: str | None = None) -> str:
    """JSON text ``{"classes": [...], "matrix": [[...]], "source": ...}`` (what
    :func:`load_fes` reads)."""
    rows = ",\n  ".join(json.dumps([float(x) for x in r]) for r in np.asarray(fes))
    text = '{\n "classes": ' + json.dumps(list(FES_CLASSES)) + ',\n "matrix": [\n  ' + rows + "\n ]"
    if source is not None:
        text += ',\n "source": ' + json.dumps(source)
    return text + "\n}\n"


def load_fes(path: str | os.PathLike) -> np.ndarray:
    """A FES matrix from a JSON file (as ``fernas fes --out`` writes, or a bare 7x7 list of
    lists) or from a FER+ votes CSV (computed). Checked: 7x7, finite, non-negative."""
    p = Path(path)
    if p.suffix.lower() == ".csv":
        return fes_from_ferplus(p)
    if not p.is_file():
        raise FerNasError(f"{p}: FES matrix file not found")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise FerNasError(f"{p}: not a JSON FES matrix (file is not UTF-8 text)") from None
    except json.JSONDecodeError as e:
        raise FerNasError(f"{p}: line {e.lineno}: not valid JSON ({e.msg})") from None
    if isinstance(data, dict):
        classes = data.get("classes")
        if classes is not None and list(classes) != list(FES_CLASSES):
            raise FerNasError(f"{p}: classes {classes!r} are not in FER2013 order ({', '.join(FES_CLASSES)})")
        data = data.get("matrix")
    try:
        m = np.array(data, dtype=np.float64)
    except (TypeError, ValueError):
        raise FerNasError(f"{p}: 'matrix' must be a 7x7 list of numbers") from None
    if m.shape != (7, 7):
        raise FerNasError(f"{p}: FES matrix must be 7x7, found shape {m.shape}")
    if not np.isfinite(m).all() or (m < 0).any():
        raise FerNasError(f"{p}: FES matrix entries must be finite and non-negative")
    return m


def fes_for_classes(path: str | os.PathLike | None, classes: Sequence[str]) -> np.ndarray:
    """The FES matrix for data with ``classes``: ``path`` (:func:`load_fes`) or, without one,
    :data:`DEFAULT_FES`, which is in FER2013 order and so refused for other class lists."""
    if path:
        m = load_fes(path)
    else:
        if list(classes) != list(FES_CLASSES):
            raise FerNasError(f"the default FES matrix is in FER2013 class order; these data's classes are "
                              f"{', '.join(classes)}: pass --fes_matrix FILE")
        m = np.array(DEFAULT_FES)
    if m.shape != (len(classes), len(classes)):
        raise FerNasError(f"{path}: FES matrix is {m.shape[0]}x{m.shape[1]} but the data has {len(classes)} classes")
    return m


def fes_offlabel(fes: torch.Tensor) -> torch.Tensor:
    """Each FES row without its diagonal, normalised to sum 1: where the mass that leaves a
    label goes under the FES prior (K x K, float)."""
    off = fes.clone().float()
    off.fill_diagonal_(0.0)
    return off / off.sum(dim=1, keepdim=True).clamp_min(1e-12)


def fes_smoothing(targets: torch.Tensor, eps: float, fes_off: torch.Tensor) -> torch.Tensor:
    """Label smoothing along the FES rows: ``(1 - eps) * y + eps * (y @ fes_off)``, with ``y``
    the one-hot of hard ``targets`` (or soft targets as given) and ``fes_off`` from
    :func:`fes_offlabel`. For a hard label ``t`` the off-label mass ``eps`` is spread as
    ``FES[t]`` without its diagonal instead of uniformly."""
    if targets.is_floating_point():
        y = targets.float()
    else:  # scatter, not F.one_hot, which reads the labels' range back from the device (a host sync)
        y = torch.zeros(targets.shape[0], fes_off.shape[0], device=targets.device).scatter_(
            1, targets.long()[:, None], 1.0)
    return (1.0 - eps) * y + eps * (y @ fes_off.to(y.device))
