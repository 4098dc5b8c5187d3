"""SynthFER: a synthetic facial-expression benchmark with known clean labels.

Procedural 48×48 grayscale faces (see :mod:`nas.data.synthfer.render_v1`) whose
expression is set by action-unit-like parameters, with nuisances (identity,
pose, light, noise, blur, occluders, background) drawn independently of the
label. A chosen fraction of Training labels is flipped towards similar
expressions following the FES matrix, and the clean labels are kept in a
sidecar ``clean_labels.csv`` (header ``file,clean_label``), so relabelling can
be scored against the truth.

Exports write the real file layouts, read back by the real readers:

- ``fer2013``: ``DIR/fer2013.csv`` (``emotion,pixels,Usage``), Training /
  PublicTest / PrivateTest rows, FER2013's class balance;
- ``folder``: the Kaggle image-folder re-packaging of the same rows,
  ``DIR/train/<emotion>/Training_<i>.png``, ``DIR/test/<emotion>/PublicTest_<i>.png``
  and ``PrivateTest_<i>.png`` (``i`` = the row index in the CSV export);
- ``ck48``: CK+48-style ``DIR/<class>/S###_###_########.png``, 981 images,
  327 sequences of 3 apex frames, ~120 subjects, frontal and evenly lit,
  contempt instead of neutral;
- ``jaffe``: ``DIR/<SUBJ>.<EXPR><n>.<id>.tiff``, 10 subjects, 213 images of
  256×256 with the face in the box rows/cols 48..208 on a plain background.

Label noise touches Training rows of ``fer2013``/``folder`` exports, and PublicTest rows too with
``noise_splits="train+val"``; PrivateTest, CK+ and JAFFE exports are clean (they are test sets),
their sidecar repeats the labels. Each split is drawn from its own stream of the seed
(:class:`ExportSpec`), so the sizes of the test splits never change the Training faces.
Which rows are flipped: ``noise_mode="uniform"`` (default) picks them at random;
``"ambiguous"`` picks weak expressions more often, following how often a single
FER+ tagger disagrees with the majority on ambiguous images
(:data:`nas.data.ferplus.FERPLUS_DISAGREEMENT_DECILES`).

Command line (``fernas synthfer`` is the same)::

    python -m nas.data.synthfer --out DIR --format fer2013 [--size N] [--train_size N]
        [--public_size N] [--private_size N] [--noise 0.1] [--noise_mode uniform|ambiguous|ferplus]
        [--noise_splits train|train+val] [--seed S] [--difficulty D] [--preview] [--force]
"""
from __future__ import annotations

import csv
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

import numpy as np

from nas.data.dataset import FER_CLASSES, SPLITS
from nas.data.synthfer import render_v1, render_v2
from nas.runtime.errors import FerNasError
from nas.data.ferplus import DEFAULT_FES, FERPLUS_DISAGREEMENT_DECILES, FERPLUS_TRANSITION

__all__ = [
    "RENDERERS", "DEFAULT_RENDERER", "RENDER_VERSION", "FORMATS", "STYLES", "FER_TRAIN_COUNTS", "FER_SPLIT_SIZES", "CK_COUNTS", "CK_CLASSES",
    "JAFFE_COUNTS", "JAFFE_CODES", "JAFFE_SUBJECTS", "fes_matrix", "class_counts",
    "NOISE_MODES", "NOISE_SPLITS", "NOISY_FORMATS", "ExportSpec", "render", "ambiguity_score", "flip_labels", "export", "export_cached", "cache_root", "preview",
    "check_export",
]

#: Bumped whenever the pictures change, so cached exports are rebuilt.
RENDER_VERSION = "1"
#: The renderers by name: ``v1`` (flat shapes, line features; unchanged since the exports
#: earlier figures came from: the same bytes on one CPU, within one grey level across CPUs) and ``v2`` (shaded faces; see :mod:`nas.data.synthfer.render_v2`).
#: Cache names carry the renderer, so the two never mix.
RENDERERS = {"v1": render_v1, "v2": render_v2}
DEFAULT_RENDERER = "v2"


def renderer_module(name: str) -> ModuleType:
    """The renderer module called ``name`` (a one-line error for an unknown one)."""
    if name not in RENDERERS:
        raise FerNasError(f"--renderer {name!r}: choose from {', '.join(RENDERERS)}")
    return RENDERERS[name]


FORMATS: tuple[str, ...] = ("fer2013", "ck48", "jaffe", "folder", "rafdb", "affectnet")
#: Which Training labels get flipped: at random, or weak expressions more often.
NOISE_MODES: tuple[str, ...] = ("uniform", "ambiguous", "ferplus")
#: Which splits carry the label noise: Training only, or Training and PublicTest, as on FER2013,
#: whose PublicTest labels come from the same annotators (model selection then sees noisy labels
#: too). PrivateTest is always clean: it is what a result is measured on.
NOISE_SPLITS: tuple[str, ...] = ("train", "train+val")
#: The formats with Training / PublicTest / PrivateTest rows, and so with label noise.
NOISY_FORMATS: tuple[str, ...] = ("fer2013", "folder", "rafdb", "affectnet")
STYLES: tuple[str, ...] = ("fer", "ck", "jaffe")

#: FER2013 Training class counts (FER order) and split sizes.
FER_TRAIN_COUNTS: tuple[int, ...] = (3995, 436, 4097, 7215, 4830, 3171, 4965)
FER_SPLIT_SIZES: tuple[int, ...] = (28709, 3589, 3589)
#: CK+48 folders and image counts; the label order is FER2013's with contempt at 6.
CK_CLASSES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "contempt")
CK_FOLDERS: tuple[str, ...] = ("anger", "disgust", "fear", "happy", "sadness", "surprise", "contempt")
CK_COUNTS: tuple[int, ...] = (135, 177, 75, 207, 84, 249, 54)   # in CK_CLASSES order; 981 in all
CK_FRAMES = 3                                                   # apex frames kept per sequence
CK_SUBJECTS = 120
#: JAFFE expression codes and image counts, FER2013 order; 213 in all.
JAFFE_CODES: tuple[str, ...] = ("AN", "DI", "FE", "HA", "SA", "SU", "NE")
JAFFE_COUNTS: tuple[int, ...] = (30, 29, 32, 31, 31, 30, 30)
JAFFE_SUBJECTS: tuple[str, ...] = ("KA", "KL", "KM", "KR", "MK", "NA", "NM", "TM", "UY", "YM")
JAFFE_SIZE, JAFFE_BOX = 256, (48, 48, 160)   # the reader's default face crop: rows/cols 48..208

_DEFAULT_FER_TOTAL = sum(FER_SPLIT_SIZES)


# --------------------------------------------------------------------------- labels
def fes_matrix() -> np.ndarray:
    """The 7×7 FES matrix in FER order (:data:`nas.data.ferplus.DEFAULT_FES`, from the published FER+ votes)."""
    return np.array(DEFAULT_FES, dtype=np.float64)


def class_counts(total: int, weights: Sequence[float]) -> np.ndarray:
    """Split ``total`` into integer counts proportional to ``weights`` (largest
    remainder, ties to the lower index), e.g. FER2013's Training balance."""
    w = np.asarray(weights, dtype=np.float64)
    exact = total * w / w.sum()
    counts = np.floor(exact).astype(np.int64)
    short = int(total - counts.sum())
    order = np.lexsort((np.arange(len(w)), -(exact - counts)))
    counts[order[:short]] += 1
    return counts


def ambiguity_score(labels: np.ndarray, intensity: np.ndarray, au: np.ndarray) -> np.ndarray:
    """How ambiguous each rendered face is, comparable within a class (higher = more).

    For the six expressive classes it is the expression's weakness, ``-intensity``
    (the factor scaling the class prototype: a weak smile is close to neutral).
    Neutral's prototype is all zero, so its intensity draws nothing; a neutral face
    is ambiguous by what it shows, the summed action units of its resting face. At
    difficulty 0 resting faces are blank, every neutral score ties, and
    :func:`flip_labels` breaks the ties at random.
    """
    labels = np.asarray(labels, dtype=np.int64)
    score = -np.asarray(intensity, dtype=np.float64)
    neutral = labels == FER_CLASSES.index("neutral")
    return np.where(neutral, np.asarray(au, dtype=np.float64).sum(1), score)


def _inclusion(weights: np.ndarray, k: int) -> np.ndarray:
    """Inclusion probabilities ``min(1, c * w)`` summing to ``k`` (water-filling:
    weights too large to scale are capped at 1 and the rest rescaled)."""
    capped = np.zeros(len(weights), bool)
    while True:
        free = ~capped
        c = (k - capped.sum()) / weights[free].sum()
        new = capped | (c * weights >= 1.0)
        if (new == capped).all():
            break
        capped = new
    return np.where(capped, 1.0, np.minimum(c * weights, 1.0))


def _ambiguous_pick(eligible: np.ndarray, labels: np.ndarray, ambiguity: np.ndarray, n_flip: int,
                    rng: np.random.Generator) -> np.ndarray:
    """``n_flip`` of ``eligible``, each with probability proportional to the FER+
    single-tagger disagreement at its ambiguity quantile within its class."""
    m = len(eligible)
    lab, amb = labels[eligible], ambiguity[eligible]
    tie = rng.random(m)
    # rank within class, most ambiguous first; random tie-breaks
    order = np.lexsort((tie, -amb, lab))
    cls_sorted = lab[order]
    starts = np.searchsorted(cls_sorted, cls_sorted, side="left")
    counts = np.bincount(cls_sorted, minlength=int(labels.max()) + 1)[cls_sorted]
    q = np.empty(m)
    q[order] = (np.arange(m) - starts + 0.5) / counts
    curve = np.asarray(FERPLUS_DISAGREEMENT_DECILES, dtype=np.float64)
    centres = (np.arange(len(curve)) + 0.5) / len(curve)
    # FER+'s unanimous images never disagree; a floor keeps every face possible, so any fraction is reachable
    w = np.maximum(np.interp(q, centres, curve), 1e-3)
    return _systematic_pick(eligible, _inclusion(w, n_flip), n_flip, rng)


def _systematic_pick(eligible: np.ndarray, pi: np.ndarray, n_flip: int, rng: np.random.Generator) -> np.ndarray:
    """Systematic sampling in a random order: exactly ``n_flip`` of ``eligible``, each with
    inclusion probability ``pi`` (summing to ``n_flip``)."""
    perm = rng.permutation(len(eligible))
    cum = np.cumsum(pi[perm])
    cum *= n_flip / cum[-1]
    u = 1.0 - rng.random()  # (0, 1]
    hits = np.diff(np.floor(cum - u), prepend=np.floor(-u)) > 0
    return np.sort(eligible[perm[hits]])


def flip_labels(labels: np.ndarray, fraction: float, rng: np.random.Generator, *,
                fes: np.ndarray | None = None, mask: np.ndarray | None = None, mode: str = "uniform",
                ambiguity: np.ndarray | None = None) -> np.ndarray:
    """Flip ``round(fraction * eligible)`` of the eligible labels (``mask``) to
    another class drawn with probability proportional to the FES row of the true
    class (diagonal excluded). Returns the noisy copy.

    ``mode="uniform"``: the flipped samples are drawn at random. ``"ambiguous"``:
    samples are ranked within their class by ``ambiguity`` (higher = more
    ambiguous, e.g. :func:`ambiguity_score`), and a sample at quantile q is flipped
    with probability proportional to FER+'s single-tagger disagreement at quantile q
    of its images' ambiguity (:data:`nas.data.ferplus.FERPLUS_DISAGREEMENT_DECILES`, ~57 % for
    the most ambiguous tenth down to 0 for unanimous images), scaled so that the
    count is still exactly ``round(fraction * eligible)``. Every class keeps its
    share of the flips. ``"ferplus"``: the real FER2013 → FER+ transition
    (:data:`nas.data.ferplus.FERPLUS_TRANSITION`): a sample of class i is flipped with
    probability proportional to row i's off-diagonal mass (disgust and fear most, happy
    least), scaled to the exact count, and its new class follows row i (``fes`` is not used);
    at ``fraction`` = 0.177, the real single-tagger disagreement, the flips are FER+'s."""
    labels = np.asarray(labels, dtype=np.int64)
    if not 0.0 <= fraction <= 1.0:
        raise FerNasError(f"--noise {fraction}: must be a fraction between 0 and 1")
    if mode not in NOISE_MODES:
        raise FerNasError(f"--noise_mode {mode!r}: choose from {', '.join(NOISE_MODES)}")
    if mode == "ambiguous":
        if ambiguity is None:
            raise FerNasError("noise mode 'ambiguous' needs an ambiguity score per sample")
        ambiguity = np.asarray(ambiguity, dtype=np.float64).reshape(-1)
        if len(ambiguity) != len(labels):
            raise FerNasError(f"ambiguity: expected {len(labels)} values, got {len(ambiguity)}")
    if mode == "ferplus":
        fes = np.asarray(FERPLUS_TRANSITION, dtype=np.float64)  # its off-diagonal rows: where flips go
    fes = fes_matrix() if fes is None else np.asarray(fes, dtype=np.float64)
    k = fes.shape[0]
    probs = fes * (1.0 - np.eye(k))
    probs = probs / probs.sum(1, keepdims=True)
    eligible = np.flatnonzero(np.ones(len(labels), bool) if mask is None else mask)
    n_flip = int(round(fraction * len(eligible)))
    noisy = labels.copy()
    if n_flip == 0:
        return noisy
    if mode == "uniform":
        chosen = rng.choice(eligible, size=n_flip, replace=False)
    elif mode == "ferplus":
        weights = (1.0 - np.diag(FERPLUS_TRANSITION))[labels[eligible]]
        chosen = _systematic_pick(eligible, _inclusion(weights, n_flip), n_flip, rng)
    else:
        chosen = _ambiguous_pick(eligible, labels, ambiguity, n_flip, rng)
    cum = np.cumsum(probs[labels[chosen]], axis=1)
    u = rng.random(n_flip)[:, None] * cum[:, -1:]
    noisy[chosen] = np.minimum((cum <= u).sum(1), k - 1)
    return noisy


# --------------------------------------------------------------------------- rendering
def _rng(seed: int, stream: int, *key: int) -> np.random.Generator:
    # independent streams per purpose (and per split: ``key``), so adding draws to one leaves
    # the others alone
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(seed) >> 32, stream, *key])


def _check(difficulty: float, style: str | None = None) -> None:
    if not np.isfinite(difficulty) or difficulty < 0:
        raise FerNasError(f"--difficulty {difficulty}: must be a number >= 0")
    if style is not None and style not in STYLES:
        raise FerNasError(f"style {style!r}: choose from {', '.join(STYLES)}")


def _frame(style: str) -> dict[str, Any]:
    return {"size": JAFFE_SIZE, "box": JAFFE_BOX} if style == "jaffe" else {"size": 48, "box": None}


def render(n: int, seed: int = 0, *, labels: Sequence[int] | np.ndarray | None = None, difficulty: float = 1.0,
           style: str = "fer", renderer: str = DEFAULT_RENDERER,
           substream: int | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Render ``n`` faces.

    Args:
        n: number of images.
        seed: everything (labels, faces, pixel noise) is a function of the seed.
        labels: class per image; default: a shuffled draw with the style's class
            balance. Classes are FER2013's order; for ``style="ck"`` index 6 is
            contempt instead of neutral.
        difficulty: 0 prototypical and clean, 1 default, larger is harder.
        style: ``fer`` (in-the-wild nuisances, 48×48), ``ck`` (lab conditions,
            apex expressions, 48×48) or ``jaffe`` (lab conditions, 256×256 with
            the face in rows/cols 48..208).
        renderer: ``v1`` or ``v2`` (:data:`RENDERERS`).
        substream: another set of people from the same seed (the exports draw each split
            from its own: ``0`` Training, ``1`` PublicTest, ``2`` PrivateTest).

    For a given ``n`` and ``seed`` the people, poses and light do not depend on
    ``labels``: rendering the same seed with other labels shows the same faces
    with other expressions.

    Returns:
        ``(images, labels, extra)``: uint8 N×H×W, int64 N clean labels, and a
        dict with ``classes``, ``au`` (float32 N×len(AUS)), ``intensity`` and
        all render ``params``.
    """
    _check(difficulty, style)
    R = renderer_module(renderer)
    n = int(n)
    if n < 0:
        raise FerNasError(f"n={n}: must be >= 0")
    if labels is None:
        weights = {"fer": FER_TRAIN_COUNTS, "ck": CK_COUNTS, "jaffe": JAFFE_COUNTS}[style]
        labels = np.repeat(np.arange(7), class_counts(n, weights))
        _rng(seed, 1).shuffle(labels)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(labels) != n:
        raise FerNasError(f"labels: expected {n} labels, got {len(labels)}")
    if n and (labels.min() < 0 or labels.max() > 6):
        raise FerNasError("labels: classes must be in 0..6")
    expr = labels.copy()
    if style == "ck":
        expr[labels == 6] = R.EXPRESSIONS.index("contempt")
    key = () if substream is None else (int(substream),)
    params = R.sample_params(_rng(seed, 2, *key), expr, difficulty=difficulty, style=style)
    images = R.draw(params, seed=int(_rng(seed, 3, *key).integers(2**62)), **_frame(style))
    classes = list(CK_CLASSES if style == "ck" else FER_CLASSES)
    extra = {"classes": classes, "au": np.stack([params[a] for a in R.AUS], 1), "intensity": params["intensity"],
             "params": params}
    return images, labels, extra


# --------------------------------------------------------------------------- exports
@dataclass(frozen=True)
class ExportSpec:
    """Everything a SynthFER export is made from; equal specs give equal exports, and the cache
    name is a function of the spec (:meth:`cache_name`).

    FER2013-style formats (:data:`NOISY_FORMATS`) have three splits. ``size`` is the total,
    divided in FER2013's proportions (80 / 10 / 10 %); ``train_size``, ``public_size`` and
    ``private_size`` set a split's size instead of its share. Each split is drawn from its own
    stream of the seed (people, expressions, labels, flips), so the same seed gives the same
    Training faces and labels whatever the test splits' sizes. ``noise_splits`` says which
    splits carry the label noise (:data:`NOISE_SPLITS`); PrivateTest is always clean.
    """

    fmt: str
    size: int | None = None
    seed: int = 0
    noise: float = 0.1
    difficulty: float = 1.0
    noise_mode: str = "uniform"
    renderer: str = DEFAULT_RENDERER
    train_size: int | None = None
    public_size: int | None = None
    private_size: int | None = None
    noise_splits: str = "train"

    @property
    def fer_like(self) -> bool:
        """True for the formats with Training / PublicTest / PrivateTest rows (and label noise)."""
        return self.fmt in NOISY_FORMATS

    def check(self, prefix: str = "") -> None:
        """One-line errors for every bad value, before anything is written. ``prefix`` names the
        flags as a caller spells them (``synth_`` for a stage's ``--synth_size`` ...)."""
        f = {k: f"--{prefix}{k}" for k in ("renderer", "noise_mode", "noise_splits", "size", "noise", "difficulty",
                                             "train_size", "public_size", "private_size")}
        if self.renderer not in RENDERERS:
            raise FerNasError(f"{f['renderer']} {self.renderer!r}: choose from {', '.join(RENDERERS)}")
        if self.fmt not in FORMATS:
            raise FerNasError(f"--format {self.fmt!r}: choose from {', '.join(FORMATS)}")
        if self.noise_mode not in NOISE_MODES:
            raise FerNasError(f"{f['noise_mode']} {self.noise_mode!r}: choose from {', '.join(NOISE_MODES)}")
        if self.noise_splits not in NOISE_SPLITS:
            raise FerNasError(f"{f['noise_splits']} {self.noise_splits!r}: choose from {', '.join(NOISE_SPLITS)}")
        if self.size is not None and int(self.size) <= 0:
            raise FerNasError(f"{f['size']} {self.size}: must be a positive number of images")
        if not (np.isfinite(self.noise) and 0.0 <= self.noise <= 1.0):
            raise FerNasError(f"{f['noise']} {self.noise}: must be a fraction between 0 and 1")
        if not np.isfinite(self.difficulty) or self.difficulty < 0:
            raise FerNasError(f"{f['difficulty']} {self.difficulty}: must be a number >= 0")
        given = {f[k]: v for k, v in (("train_size", self.train_size), ("public_size", self.public_size),
                                      ("private_size", self.private_size)) if v is not None}
        if not self.fer_like:
            if given or self.noise_splits != "train":
                flag = next(iter(given), f["noise_splits"])
                raise FerNasError(f"{flag}: only the FER2013-style exports ({', '.join(NOISY_FORMATS)}) have "
                                  f"Training/PublicTest/PrivateTest splits, not --format {self.fmt}")
            unit = CK_FRAMES if self.fmt == "ck48" else 1
            if self.size is not None and self.fmt in ("ck48", "jaffe") and int(self.size) < 7 * unit:
                raise FerNasError(f"{f['size']} {self.size}: need at least {7 * unit} images (one "
                                  f"{'sequence' if unit > 1 else 'image'} per class)")
            return
        for flag, v in given.items():
            if int(v) <= 0:
                raise FerNasError(f"{flag} {v}: must be a positive number of images")
        if 0 in self.split_sizes():
            raise FerNasError(f"{f['size']} {self.size}: need at least 10 rows (every split needs images)")

    def split_sizes(self) -> tuple[int, int, int]:
        """Training, PublicTest and PrivateTest sizes (FER-like formats)."""
        share = class_counts(_DEFAULT_FER_TOTAL if self.size is None else int(self.size), FER_SPLIT_SIZES)
        given = (self.train_size, self.public_size, self.private_size)
        return tuple(int(share[k]) if g is None else int(g) for k, g in enumerate(given))  # type: ignore[return-value]

    def normalized(self) -> "ExportSpec":
        """The same export under one name: test-set formats carry no noise, and with nothing
        flipped every noise mode and noise split is the same export."""
        spec = self
        if not self.fer_like:
            spec = replace(spec, noise=0.0)
        if spec.noise == 0.0:
            spec = replace(spec, noise_mode="uniform", noise_splits="train")
        return spec

    def cache_name(self) -> str:
        """The cached export's folder name (of the normalized spec)."""
        s = self.normalized()
        # the default mode keeps the names that exports had before modes existed
        mode_key = "" if s.noise_mode == "uniform" else f"-{s.noise_mode}"
        # v1's names are those its exports always had; v2's carry its revision after the first
        version = RENDER_VERSION if s.renderer == "v1" else s.renderer[1:] + renderer_module(s.renderer).REVISION
        tail = f"-seed{int(s.seed)}-noise{float(s.noise):.6g}{mode_key}"
        if s.fer_like:
            # the three sizes by name: exports from before splits were drawn separately had
            # "-n<size>" here and are never mistaken for these
            train, public, private = s.split_sizes()
            head = f"{s.fmt}-train{train}-pub{public}-priv{private}"
            tail += "-noisyval" if s.noise_splits == "train+val" else ""
        else:
            head = f"{s.fmt}-n{'full' if s.size is None else int(s.size)}"
        return f"{head}{tail}-diff{float(s.difficulty):.6g}-v{version}"


def _fer_rows(spec: ExportSpec) -> dict[str, Any]:
    """The FER2013-style rows shared by the ``fer2013``, ``folder`` and wild exports: Training,
    then PublicTest, then PrivateTest, each split drawn from its own stream of the seed."""
    noisy_codes = {0, 1} if spec.noise_splits == "train+val" else {0}
    parts: list[dict[str, np.ndarray]] = []
    for code, m in enumerate(spec.split_sizes()):
        clean = np.repeat(np.arange(7), class_counts(m, FER_TRAIN_COUNTS))
        _rng(spec.seed, 1, code).shuffle(clean)
        images, _, extra = render(m, spec.seed, labels=clean, difficulty=spec.difficulty, style="fer",
                                  renderer=spec.renderer, substream=code)
        ambiguity = ambiguity_score(clean, extra["intensity"], extra["au"])
        noise = spec.noise if code in noisy_codes else 0.0
        labels = flip_labels(clean, noise, _rng(spec.seed, 4, code), mode=spec.noise_mode, ambiguity=ambiguity)
        parts.append({"images": images, "clean": clean, "labels": labels, "usage": np.full(m, code),
                      "intensity": np.asarray(extra["intensity"])})
    return {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}


def _write_clean(path: Path, files: Sequence[Any], clean: np.ndarray) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "clean_label"])
        w.writerows(zip(files, clean.tolist()))


def _save_png(path: Path, img: np.ndarray, fmt: str = "PNG") -> None:
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(img)).save(path, format=fmt)


def _export_fer2013(out: Path, spec: ExportSpec) -> dict[str, Any]:
    from nas.data.fer2013 import write_fer2013_csv

    rows = _fer_rows(spec)
    write_fer2013_csv(out / "fer2013.csv", rows["labels"].tolist(), [SPLITS[u] for u in rows["usage"].tolist()],
                      rows["images"])
    _write_clean(out / "clean_labels.csv", range(len(rows["images"])), rows["clean"])
    return rows


def _export_folder(out: Path, spec: ExportSpec) -> dict[str, Any]:
    rows = _fer_rows(spec)
    for top in ("train", "test"):
        for c in FER_CLASSES:
            (out / top / c).mkdir(parents=True, exist_ok=True)
    files = []
    for i, (img, lab, use) in enumerate(zip(rows["images"], rows["labels"].tolist(), rows["usage"].tolist())):
        rel = f"{'train' if use == 0 else 'test'}/{FER_CLASSES[lab]}/{SPLITS[use]}_{i}.png"
        _save_png(out / rel, img)
        files.append(rel)
    _write_clean(out / "clean_labels.csv", files, rows["clean"])
    return rows


def _colour_photo(img: np.ndarray, side: int, pad: int = 0) -> np.ndarray:
    """A grey face as a warm-tinted RGB photo of ``side`` px (the face), in a mid-grey frame of
    ``pad`` px: what RAF-DB's aligned JPEGs and AffectNet's photos look like to a reader."""
    from PIL import Image

    face = np.asarray(Image.fromarray(img).resize((side, side), Image.Resampling.BICUBIC), dtype=np.float64)
    rgb = np.stack([face, face * 0.92, face * 0.82], axis=-1)
    out = np.full((side + 2 * pad, side + 2 * pad, 3), 128.0)
    out[pad:pad + side, pad:pad + side] = rgb
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _export_wild(out: Path, spec: ExportSpec) -> dict[str, Any]:
    """FER2013-style SynthFER rows in RAF-DB's official layout (aligned 100x100 colour JPEGs and
    list_patition_label.txt) or AffectNet's (photos with a face box in training.csv and
    validation.csv). Training is the dataset's training part; PublicTest and PrivateTest its
    test part (RAF-DB test, AffectNet validation). Labels go through each dataset's own numbering."""
    from nas.data.labelmap import NATIVE, canonical

    fmt = spec.fmt
    rows = _fer_rows(spec)
    to_native = {FER_CLASSES.index(canonical(v)): k for k, v in NATIVE[fmt].items() if canonical(v) in FER_CLASSES}
    rng = _rng(spec.seed, 9)
    files, lines = [], []
    for i, (img, lab, use) in enumerate(zip(rows["images"], rows["labels"].tolist(), rows["usage"].tolist())):
        part = "train" if use == 0 else "test"
        if fmt == "rafdb":
            name = f"{part}_{i + 1:05d}.jpg"
            rel = f"basic/Image/aligned/{part}_{i + 1:05d}_aligned.jpg"
            photo = _colour_photo(img, 100)
            lines.append(f"{name} {to_native[lab]}")
        else:
            side, pad = int(rng.integers(64, 129)), int(rng.integers(8, 40))
            sub = f"{i % 97}"
            rel = f"Manually_Annotated_Images/{sub}/{part}_{i:06d}.jpg"
            photo = _colour_photo(img, side, pad)
            lines.append((part, [f"{sub}/{part}_{i:06d}.jpg", pad, pad, side, side, "", to_native[lab], "0.0", "0.0"]))
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        _save_png(out / rel, photo, "JPEG")
        files.append(rel)
    if fmt == "rafdb":
        (out / "basic" / "EmoLabel").mkdir(parents=True, exist_ok=True)
        (out / "basic" / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    else:
        header = ["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks",
                  "expression", "valence", "arousal"]
        for part, name in (("train", "training.csv"), ("test", "validation.csv")):
            with open(out / name, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(header)
                w.writerows(r for p, r in lines if p == part)
    _write_clean(out / "clean_labels.csv", files, rows["clean"])
    return rows


def _balanced_assign(rng: np.random.Generator, n_owners: int, wants: Sequence[int]) -> list[np.ndarray]:
    """For each request of ``k`` distinct owners (subjects), pick the ``k`` owners
    holding the fewest items so far, ties at random: every owner gets some."""
    load = np.zeros(n_owners, dtype=np.int64)
    out = []
    for k in wants:
        picks = []
        while k > 0:  # more requests than owners: go round again
            order = np.lexsort((rng.random(n_owners), load))
            pick = order[:min(k, n_owners)]
            load[pick] += 1
            picks.append(pick)
            k -= len(pick)
        out.append(np.sort(np.concatenate(picks)) if picks else np.zeros(0, np.int64))
    return out


def _scaled(counts: Sequence[int], size: int | None, full: int, unit: int = 1) -> np.ndarray:
    if size is None:
        return np.asarray(counts, dtype=np.int64)
    if int(size) < 7 * unit:
        raise FerNasError(f"--size {size}: need at least {7 * unit} images (one {'sequence' if unit > 1 else 'image'} per class)")
    return np.maximum(unit, np.round(np.asarray(counts) * int(size) / full / unit).astype(np.int64) * unit)


def _subject_params(rng: np.random.Generator, n_subjects: int, style: str, R: Any) -> dict[str, np.ndarray]:
    ident = R.sample_identity(rng, n_subjects)
    if style == "jaffe":
        # JAFFE's posers: dark hair, mostly long
        ident["hair"] = rng.uniform(0.03, 0.15, n_subjects)
        ident["long_hair"] = (rng.random(n_subjects) < 0.8).astype(np.float64)
    return ident


def _export_ck48(out: Path, size: int | None, seed: int, difficulty: float,
                 renderer: str = DEFAULT_RENDERER) -> dict[str, Any]:
    R = renderer_module(renderer)
    rng = _rng(seed, 5)
    n_img = _scaled(CK_COUNTS, size, sum(CK_COUNTS), CK_FRAMES)
    n_seq = n_img // CK_FRAMES
    n_subj = int(min(CK_SUBJECTS, max(3, round(CK_SUBJECTS * n_seq.sum() / (sum(CK_COUNTS) // CK_FRAMES)))))
    n_subj = min(n_subj, int(n_seq.sum()))
    subj_ids = np.sort(rng.choice(np.arange(5, 1000), size=n_subj, replace=False))
    picks = _balanced_assign(rng, n_subj, n_seq.tolist())
    seq_label = np.concatenate([np.full(len(p), c) for c, p in enumerate(picks)])
    seq_subj = np.concatenate(picks)
    # sequence numbers run per subject in a random order of their sessions
    order = rng.permutation(len(seq_label))
    seq_no = np.zeros(len(seq_label), dtype=np.int64)
    seen: dict[int, int] = {}
    for i in order.tolist():
        seen[int(seq_subj[i])] = seen.get(int(seq_subj[i]), 0) + 1
        seq_no[i] = seen[int(seq_subj[i])]
    ident = _subject_params(rng, n_subj, "ck", R)
    expr = seq_label.copy()
    expr[seq_label == 6] = R.EXPRESSIONS.index("contempt")
    p_seq = R.sample_params(rng, expr, difficulty=difficulty, style="ck",
                          identity={k: v[seq_subj] for k, v in ident.items()})
    # the last CK_FRAMES frames of each sequence: same person and pose, expression
    # still rising towards the apex
    rep = np.repeat(np.arange(len(seq_label)), CK_FRAMES)
    ramp = np.tile(np.linspace(0.9, 1.0, CK_FRAMES), len(seq_label)).astype(np.float32)
    params = {k: v[rep].copy() for k, v in p_seq.items()}
    for a in R.AUS:
        params[a] *= ramp
    params["tx"] += rng.normal(0, 0.004, len(rep)).astype(np.float32)
    params["ty"] += rng.normal(0, 0.004, len(rep)).astype(np.float32)
    images = R.draw(params, seed=int(rng.integers(2**62)))
    n_frames = rng.integers(10, 45, len(seq_label))
    labels = seq_label[rep]
    files = []
    for c in CK_FOLDERS:
        (out / c).mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        s = rep[i]
        frame = int(n_frames[s]) - (CK_FRAMES - 1) + i % CK_FRAMES
        rel = f"{CK_FOLDERS[labels[i]]}/S{subj_ids[seq_subj[s]]:03d}_{seq_no[s]:03d}_{frame:08d}.png"
        _save_png(out / rel, img)
        files.append(rel)
    _write_clean(out / "clean_labels.csv", files, labels)
    return {"images": images, "clean": labels, "labels": labels, "subjects": subj_ids[seq_subj[rep]]}


def _export_jaffe(out: Path, size: int | None, seed: int, difficulty: float,
                  renderer: str = DEFAULT_RENDERER) -> dict[str, Any]:
    R = renderer_module(renderer)
    rng = _rng(seed, 6)
    counts = _scaled(JAFFE_COUNTS, size, sum(JAFFE_COUNTS))
    n_subj = len(JAFFE_SUBJECTS)
    # spread each expression's images over the subjects as evenly as possible
    per = np.zeros((n_subj, 7), dtype=np.int64)
    load = np.zeros(n_subj, dtype=np.int64)
    for c, k in enumerate(counts.tolist()):
        base, extra = divmod(k, n_subj)
        per[:, c] = base
        order = np.lexsort((rng.random(n_subj), load))
        per[order[:extra], c] += 1
        load += per[:, c]
    subj, lab, rank = [], [], []
    for s in range(n_subj):
        for c in range(7):
            for r in range(int(per[s, c])):
                subj.append(s)
                lab.append(c)
                rank.append(r + 1)
    subj_a, lab_a = np.array(subj), np.array(lab)
    ident = _subject_params(rng, n_subj, "jaffe", R)
    params = R.sample_params(rng, lab_a, difficulty=difficulty, style="jaffe",
                           identity={k: v[subj_a] for k, v in ident.items()})
    images = R.draw(params, seed=int(rng.integers(2**62)), size=JAFFE_SIZE, box=JAFFE_BOX)
    files = []
    for i, img in enumerate(images):
        rel = f"{JAFFE_SUBJECTS[subj[i]]}.{JAFFE_CODES[lab[i]]}{rank[i]}.{i + 1}.tiff"
        _save_png(out / rel, img, fmt="TIFF")
        files.append(rel)
    _write_clean(out / "clean_labels.csv", files, lab_a)
    return {"images": images, "clean": lab_a, "labels": lab_a,
            "subjects": np.array([JAFFE_SUBJECTS[s] for s in subj])}


def check_export(fmt: str, size: int | None = None, noise: float = 0.1, difficulty: float = 1.0,
                 noise_mode: str = "uniform", renderer: str = DEFAULT_RENDERER, **splits: Any) -> None:
    """One-line errors for bad export options (``splits``: ``train_size``, ``public_size``,
    ``private_size``, ``noise_splits``), before anything is written."""
    ExportSpec(fmt, size, 0, noise, difficulty, noise_mode, renderer, **splits).check()


def _write_into(out: Path, spec: ExportSpec) -> dict[str, Any]:
    if spec.fmt == "fer2013":
        return _export_fer2013(out, spec)
    if spec.fmt == "folder":
        return _export_folder(out, spec)
    if spec.fmt in ("rafdb", "affectnet"):
        return _export_wild(out, spec)
    if spec.fmt == "ck48":
        return _export_ck48(out, spec.size, spec.seed, spec.difficulty, spec.renderer)
    return _export_jaffe(out, spec.size, spec.seed, spec.difficulty, spec.renderer)


def _manifest(spec: ExportSpec, rows: dict[str, Any]) -> dict[str, Any]:
    noisy_fmt = spec.fer_like
    info: dict[str, Any] = {
        "format": spec.fmt, "size": None if spec.size is None else int(spec.size),
        "n_images": int(len(rows["clean"])), "seed": int(spec.seed), "noise": float(spec.noise) if noisy_fmt else 0.0,
        "noise_mode": spec.noise_mode if noisy_fmt else "uniform", "difficulty": float(spec.difficulty),
        "renderer": spec.renderer, "flipped": int((rows["labels"] != rows["clean"]).sum())}
    if noisy_fmt:
        usage = rows["usage"]
        info["splits"] = {name: int((usage == code).sum()) for code, name in enumerate(SPLITS)}
        info["noise_splits"] = spec.noise_splits
        info["flipped_by_split"] = {name: int((rows["labels"] != rows["clean"])[usage == code].sum())
                                    for code, name in enumerate(SPLITS)}
    if noisy_fmt and info["flipped"]:
        # how strongly the flips sit on weak expressions (lower = weaker)
        flipped = rows["labels"] != rows["clean"]
        train = rows["usage"] == 0
        info["mean_intensity_flipped"] = round(float(rows["intensity"][flipped].mean()), 4)
        info["mean_intensity_kept"] = round(float(rows["intensity"][train & ~flipped].mean()), 4) \
            if (train & ~flipped).any() else None
    return info


def _export_atomic(final: Path, spec: ExportSpec) -> dict[str, Any]:
    """Write into a temporary sibling folder, then rename it to ``final``: a crash
    never leaves a half export under the final name."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        rows = _write_into(tmp, spec)
        info = _manifest(spec, rows)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info


def _is_export(folder: Path) -> bool:
    """An export folder is complete once it exists (it appears by rename) and
    holds the clean-label sidecar."""
    f = folder / "clean_labels.csv"
    try:
        with open(f) as fh:
            return fh.readline().strip() == "file,clean_label"
    except OSError:
        return False


def export(fmt: str, out: str | os.PathLike, *, size: int | None = None, seed: int = 0, noise: float = 0.1,
           difficulty: float = 1.0, force: bool = False, noise_mode: str = "uniform",
           renderer: str = DEFAULT_RENDERER, train_size: int | None = None, public_size: int | None = None,
           private_size: int | None = None, noise_splits: str = "train") -> dict[str, Any]:
    """Write a SynthFER export in format ``fmt`` to the folder ``out`` (created;
    it must not exist, or be empty, or with ``force`` be an earlier SynthFER
    export, which is replaced). Returns a summary: format, image count, seed,
    options, split sizes and the number of flipped labels.

    ``size``: total images (default: 35887 rows for ``fer2013``/``folder``, 981
    for ``ck48``, 213 for ``jaffe``; smaller sizes keep the proportions).
    ``train_size``/``public_size``/``private_size``: a FER-like split's size instead of its
    share of ``size``; ``noise_splits``: ``train`` or ``train+val`` (:class:`ExportSpec`).
    ``noise_mode``: which labels are flipped (:func:`flip_labels`); ``renderer``:
    ``v1`` or ``v2``.
    """
    spec = ExportSpec(fmt, size, seed, noise, difficulty, noise_mode, renderer, train_size, public_size,
                      private_size, noise_splits)
    spec.check()
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise FerNasError(f"{out}: exists and is not a folder")
        if any(out.iterdir()):
            if not force:
                raise FerNasError(f"{out}: folder exists and is not empty (use --force to replace an earlier export)")
            if not _is_export(out):
                raise FerNasError(f"{out}: not a SynthFER export (no clean_labels.csv); refusing to replace it")
            shutil.rmtree(out)
        else:
            out.rmdir()
    return _export_atomic(out, spec)


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where cached exports live: ``cache_dir``, else ``$FERNAS_CACHE/synthfer``,
    else ``~/.cache/fer-nas/synthfer``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("FERNAS_CACHE")
    return Path(env) / "synthfer" if env else Path.home() / ".cache" / "fer-nas" / "synthfer"


def _remove_stale_temps(final: Path, max_age_s: float = 6 * 3600) -> None:
    """Temporary folders that a killed export left behind (a live export touches its
    folder far more often than this)."""
    if not final.parent.is_dir():
        return
    now = time.time()
    for p in final.parent.glob(f".{final.name}.tmp-*"):
        try:
            if now - p.stat().st_mtime > max_age_s:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


def export_cached(fmt: str, *, size: int | None = None, seed: int = 0, noise: float = 0.1, difficulty: float = 1.0,
                  cache_dir: str | os.PathLike | None = None, noise_mode: str = "uniform",
                  renderer: str = DEFAULT_RENDERER, train_size: int | None = None, public_size: int | None = None,
                  private_size: int | None = None, noise_splits: str = "train") -> Path:
    """The folder of a SynthFER export, rendered on first use and cached by its
    :class:`ExportSpec` (:meth:`ExportSpec.cache_name`: format, split sizes, seed, noise, noise
    mode and splits, difficulty, renderer version). Concurrent callers may both render; the
    first rename wins, the other result is dropped."""
    spec = ExportSpec(fmt, size, seed, noise, difficulty, noise_mode, renderer, train_size, public_size,
                      private_size, noise_splits)
    spec.check()
    spec = spec.normalized()
    final = cache_root(cache_dir) / spec.cache_name()
    if _is_export(final):
        return final
    _remove_stale_temps(final)
    try:
        _export_atomic(final, spec)
    except OSError:
        if not _is_export(final):  # lost a race to another process: use its result
            raise
    return final


# --------------------------------------------------------------------------- preview
def preview(path: str | os.PathLike, *, style: str = "fer", difficulty: float = 1.0, seed: int = 0,
            n_cols: int = 10, zoom: int = 3, renderer: str = DEFAULT_RENDERER) -> Path:
    """Write a PNG grid: a row per class, labelled. The first two columns are
    clean prototypes (difficulty 0), the rest are random samples at
    ``difficulty`` from weak to strong expression."""
    from PIL import Image, ImageDraw

    _check(difficulty, style)
    n_clean = 2
    classes = CK_CLASSES if style == "ck" else FER_CLASSES
    labels = np.repeat(np.arange(7), n_cols)
    img_d, _, ex = render(len(labels), seed, labels=labels, difficulty=difficulty, style=style, renderer=renderer)
    img_0, _, _ = render(7 * n_clean, seed + 1, labels=np.repeat(np.arange(7), n_clean), difficulty=0.0, style=style,
                         renderer=renderer)
    tile = 48 * zoom

    def fit(a: np.ndarray) -> Image.Image:
        return Image.fromarray(np.ascontiguousarray(a)).resize((tile, tile), Image.NEAREST if a.shape[0] == 48 else Image.BILINEAR)

    label_w, head_h, gap = 70, 34, 6
    W = label_w + (n_clean + n_cols) * tile + gap
    H = head_h + 7 * tile
    canvas = Image.new("L", (W, H), 255)
    drawer = ImageDraw.Draw(canvas)
    drawer.text((4, 4), f"SynthFER, style {style}, seed {seed}", fill=0)
    drawer.text((label_w, 19), "clean (difficulty 0)", fill=0)
    drawer.text((label_w + n_clean * tile + gap, 19), f"difficulty {difficulty:g}: weak -> strong expression", fill=0)
    inten = ex["intensity"].reshape(7, n_cols)
    for c in range(7):
        y = head_h + c * tile
        drawer.text((6, y + tile // 2 - 6), classes[c], fill=0)
        for j in range(n_clean):
            canvas.paste(fit(img_0[c * n_clean + j]), (label_w + j * tile, y))
        for j, k in enumerate(np.argsort(inten[c], kind="stable")):
            canvas.paste(fit(img_d[c * n_cols + int(k)]), (label_w + n_clean * tile + gap + j * tile, y))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


# --------------------------------------------------------------------------- CLI
