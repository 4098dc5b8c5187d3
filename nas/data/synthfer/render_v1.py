"""SynthFER's face renderer: parameters -> grayscale faces, batched on tensors.

A face is a stack of soft-edged implicit shapes (ellipses, lid and lip curves,
brow bands) evaluated on the pixel grid of every image of a chunk at once.
Geometry lives in *face units*: the 48×48 FER frame spans [-1, 1] on both
axes, the face oval is about 0.8 wide (half-width) and 1.0 tall (half-height).
All faces of a chunk are drawn upright by the same tensor ops (each feature
only on the rows it can occupy), then one batched affine resampling applies
every image's roll, scale and shift.

Expressions are set by action-unit-like intensities (:data:`AUS`); the class
prototypes in :data:`PROTOTYPES` follow FACS descriptions of the basic
emotions, and share units where the real expressions do (angry/disgust share
the lowered brow, fear/surprise the raised brow and wide eyes, sad is a weak
version of neutral's resting face plus inner-brow raise and corner depression),
so classes overlap roughly the way FER+'s similarity matrix says.

Parameters are drawn with a NumPy ``Generator`` (stable across versions);
per-pixel noise and background texture with a seeded ``torch.Generator``.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from nas.runtime.heap import retain_freed_heap

__all__ = ["AUS", "EXPRESSIONS", "PROTOTYPES", "sample_identity", "sample_params", "sample_expression", "sample_nuisances", "draw",
           "draw_occluders", "Params"]

#: Action units, in the column order of :data:`PROTOTYPES`.
AUS: tuple[str, ...] = (
    "au1",   # inner brow raiser
    "au2",   # outer brow raiser
    "au4",   # brow lowerer (down and together)
    "au5",   # upper lid raiser (eyes wide)
    "au43",  # lids droop (sadness, tiredness)
    "au6",   # cheek raiser
    "au7",   # lid tightener
    "au9",   # nose wrinkler
    "au10",  # upper lip raiser
    "au12",  # lip corner puller (smile)
    "au14",  # one-sided corner pull (contempt)
    "au15",  # lip corner depressor
    "au17",  # chin raiser
    "au20",  # lip stretcher
    "au24",  # lip presser
    "au25",  # lips part
    "au26",  # jaw drop
)
#: Expressions rendered: FER2013 order, then contempt (CK+).
EXPRESSIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral", "contempt")

_A = {a: i for i, a in enumerate(AUS)}


def au_row(columns: dict[str, int], **units: float) -> list[float]:
    """A prototype row: each named unit's intensity in its column of ``columns``, 0 elsewhere."""
    row = [0.0] * len(columns)
    for k, v in units.items():
        row[columns[k]] = v
    return row


def _proto(**kw: float) -> list[float]:
    return au_row(_A, **kw)


#: Prototype AU intensities per expression (rows in :data:`EXPRESSIONS` order).
PROTOTYPES: np.ndarray = np.array([
    _proto(au4=1.0, au7=0.8, au24=0.9, au17=0.5, au5=0.25, au9=0.15, au10=0.1),          # angry
    _proto(au9=1.0, au10=1.0, au4=0.55, au7=0.5, au15=0.45, au17=0.45, au24=0.2),          # disgust
    _proto(au1=1.0, au2=0.8, au4=0.35, au5=1.0, au20=0.9, au25=0.8, au26=0.5),          # fear
    _proto(au6=0.9, au12=1.0, au25=0.65, au26=0.15),                                   # happy
    _proto(au1=0.9, au4=0.35, au43=0.6, au15=0.9, au17=0.55),                           # sad
    _proto(au1=1.0, au2=1.0, au5=0.9, au25=0.9, au26=1.0),                              # surprise
    _proto(),                                                                          # neutral
    _proto(au14=1.0, au7=0.15),                                                        # contempt
], dtype=np.float32)

#: Units a resting face can show a little of (identity, not expression); they
#: make weak sad/angry/happy faces look neutral and vice versa.
_REST_AUS = np.array([_A[a] for a in ("au1", "au4", "au43", "au15", "au12", "au7", "au17", "au5")])

Params = dict[str, np.ndarray]


# --------------------------------------------------------------------------- sampling
def _beta_mean(rng: np.random.Generator, mean: np.ndarray | float, conc: float, n: int) -> np.ndarray:
    mean = np.clip(np.broadcast_to(np.asarray(mean, dtype=np.float64), (n,)), 1e-3, 1 - 1e-3)
    return rng.beta(mean * conc, (1 - mean) * conc)


def sample_identity(rng: np.random.Generator, n: int) -> Params:
    """Per-person shape and tone, independent of the expression."""
    u = lambda lo, hi: rng.uniform(lo, hi, n)  # noqa: E731
    g = lambda m, s: m + s * rng.standard_normal(n)  # noqa: E731
    p: Params = {
        "skin": u(0.42, 0.82),
        "hair": np.where(rng.random(n) < 0.8, u(0.03, 0.3), u(0.3, 0.75)),
        "face_a": g(0.76, 0.04),
        "face_b": g(0.98, 0.04),
        "face_cy": g(0.06, 0.03),
        "jaw": u(0.12, 0.38),
        "eye_x": g(0.31, 0.02),
        "eye_y": g(-0.1, 0.03),
        "eye_w": g(0.125, 0.01),
        "eye_open": g(0.5, 0.06),
        "iris": g(0.5, 0.04),
        "brow_dy": g(0.17, 0.02),
        "brow_t": g(0.045, 0.008),
        "brow_w": g(0.17, 0.015),
        "brow_arch": g(0.03, 0.015),
        "brow_dark": u(0.5, 0.9),
        "nose_y": g(0.25, 0.03),
        "nose_w": g(0.075, 0.01),
        "mouth_y": g(0.53, 0.03),
        "mouth_w": g(0.22, 0.02),
        "lip_t": g(0.035, 0.007),
        "lip_dark": u(0.7, 0.88),
        "hairline": g(-0.58, 0.08),
        "hair_curve": u(0.1, 0.6),
        "fringe": np.where(rng.random(n) < 0.3, u(0.1, 0.35), 0.0),
        "long_hair": (rng.random(n) < 0.45).astype(np.float64),
        "hair_top": g(-1.2, 0.06),
        "hair_side": u(1.05, 1.22),
        "ear": (rng.random(n) < 0.7).astype(np.float64),
        "shade": u(0.1, 0.35),
        "clothes": u(0.05, 0.9),
    }
    return p


def sample_params(rng: np.random.Generator, expressions: np.ndarray, *, difficulty: float = 1.0,
                  style: str = "fer", identity: Params | None = None) -> Params:
    """Draw render parameters for faces showing ``expressions`` (indices into
    :data:`EXPRESSIONS`). ``identity`` (arrays of length N) replaces the random
    per-image identity, e.g. to keep one subject's face across images.

    ``difficulty`` scales expression weakness and variation and the nuisance
    ranges (0: prototypical, frontal, clean; 1: default; 2: hard).
    """
    expressions = np.asarray(expressions, dtype=np.int64)
    n = len(expressions)
    d = max(float(difficulty), 0.0)
    ident = sample_identity(rng, n) if identity is None else {k: np.asarray(v, dtype=np.float64) for k, v in identity.items()}

    au, inten = sample_expression(rng, PROTOTYPES[expressions], _REST_AUS, style, d)

    p: Params = dict(ident)
    for i, name in enumerate(AUS):
        p[name] = au[:, i]
    p["intensity"] = inten
    p["side"] = np.where(rng.random(n) < 0.5, -1.0, 1.0)  # which corner contempt pulls
    p["gaze_x"] = 0.12 * rng.standard_normal(n)
    p["gaze_y"] = 0.08 * rng.standard_normal(n) + 0.12 * au[:, _A["au43"]]

    sample_nuisances(rng, p, n, style, d)
    return {k: np.asarray(v, dtype=np.float32) for k, v in p.items()}


def sample_expression(rng: np.random.Generator, prototypes: np.ndarray, rest_units: np.ndarray, style: str,
                      d: float, spread: tuple[float, float, float] = (1.0, 1.0, 1.0),
                      weak: tuple[float, float] = (0.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """``(au, intensity)``: each face's prototype (N×units) scaled by an intensity drawn for the
    style (CK+ apex frames, JAFFE's mild posed faces, or FER's spread widening with the
    difficulty ``d``), per-unit jitter and drop-out, plus a little of the ``rest_units`` a
    resting face shows; ``spread`` scales the FER style's jitter, drop-out and resting face;
    ``weak`` = (how much the FER style's mean intensity drops per unit of difficulty beyond v1's
    0.2, a factor on the concentration of its beta distribution): a wider, weaker spread.
    Shared by the renderers; the draws' order is part of the output."""
    n = len(prototypes)
    if style == "ck":
        inten = rng.uniform(0.8, 1.05, n)  # CK+48 frames are the sequence's apex
        jit, drop, rest = 0.1, 0.0, 0.05
    elif style == "jaffe":
        inten = 0.25 + 0.75 * _beta_mean(rng, 0.7, 8.0, n)  # posed but often mild
        jit, drop, rest = 0.15, 0.05, 0.08
    else:
        mean = np.clip(0.92 - (0.2 + weak[0]) * d, 0.25, 0.97)
        inten = 0.08 + 0.97 * _beta_mean(rng, mean, (5.0 + 3.0 / (0.2 + d)) * weak[1], n)
        jit, drop, rest = (0.3 * min(d, 2.0) * spread[0], min(0.2 * d, 0.45) * spread[1], 0.13 * d * spread[2])
    au = prototypes * inten[:, None]
    au = au * np.clip(1.0 + jit * rng.standard_normal(au.shape), 0.2, 1.8)
    if drop > 0:
        dropped = rng.random(au.shape) < drop
        au = np.where(dropped, au * rng.uniform(0.0, 0.5, au.shape), au)
    rest_au = np.zeros_like(au)
    rest_au[:, rest_units] = np.abs(rest * rng.standard_normal((n, len(rest_units))))
    au = np.clip(au + rest_au, 0.0, 1.3)
    return au, inten


def sample_nuisances(rng: np.random.Generator, p: Params, n: int, style: str, d: float) -> None:
    """Pose, light, camera and occluders, drawn independently of the expression, into ``p``
    (``style`` fer: in-the-wild ranges scaled by the difficulty ``d``; ck/jaffe: lab
    conditions). Shared by the renderers; the draws' order is part of the output."""
    if style == "fer":
        s = d
        p["roll"] = np.clip(rng.standard_normal(n) * math.radians(7.0) * s, -0.45, 0.45)
        p["yaw"] = np.clip(rng.standard_normal(n) * 0.25 * s, -0.5, 0.5)
        p["scale"] = np.exp(np.clip(rng.standard_normal(n) * 0.07 * s, -0.2, 0.2))
        p["tx"] = np.clip(rng.standard_normal(n) * 0.06 * s, -0.18, 0.18)
        p["ty"] = np.clip(rng.standard_normal(n) * 0.06 * s, -0.18, 0.18)
        p["light_x"] = rng.standard_normal(n) * 0.22 * s
        p["light_y"] = rng.standard_normal(n) * 0.12 * s
        p["bright"] = rng.standard_normal(n) * 0.07 * s
        p["contrast"] = np.exp(rng.standard_normal(n) * 0.18 * s)
        p["noise"] = rng.uniform(0.0, 0.03, n) * s
        p["blur"] = np.clip(rng.uniform(-1.0, 1.3, n) * min(s, 1.5), 0.0, 1.5)
        p["bg"] = rng.uniform(0.05, 0.95, n)
        p["bg_tex"] = rng.uniform(0.0, 0.25, n) * min(s, 1.5)
        p["glasses"] = (rng.random(n) < 0.08 * min(s, 2.0)).astype(np.float64)
        p["sunglasses"] = p["glasses"] * (rng.random(n) < 0.25)
        p["hand"] = (rng.random(n) < 0.05 * min(s, 2.0)).astype(np.float64)
        p["strands"] = (rng.random(n) < 0.08 * min(s, 2.0)).astype(np.float64)
    else:
        # CK+ and JAFFE: lab conditions, frontal, even light, plain background
        p["roll"] = rng.standard_normal(n) * math.radians(1.5)
        p["yaw"] = rng.standard_normal(n) * 0.03
        p["scale"] = np.exp(rng.standard_normal(n) * 0.02)
        p["tx"] = rng.standard_normal(n) * 0.015
        p["ty"] = rng.standard_normal(n) * 0.015
        p["light_x"] = rng.standard_normal(n) * 0.04
        p["light_y"] = rng.standard_normal(n) * 0.03
        p["bright"] = rng.standard_normal(n) * 0.02
        p["contrast"] = np.exp(rng.standard_normal(n) * 0.04)
        p["noise"] = np.full(n, 0.006)
        p["blur"] = np.full(n, 0.3 if style == "ck" else 0.0)
        p["bg"] = rng.uniform(0.55, 0.8, n) if style == "jaffe" else rng.uniform(0.15, 0.5, n)
        p["bg_tex"] = np.zeros(n)
        for k in ("glasses", "sunglasses", "hand", "strands"):
            p[k] = np.zeros(n)
    # occluder geometry, drawn for everyone so the stream does not depend on who has one
    p["hand_u"] = rng.uniform(-0.5, 0.5, n)
    p["hand_v"] = rng.uniform(0.45, 0.95, n)
    p["hand_rot"] = rng.uniform(-0.6, 0.6, n)
    p["hand_tone"] = rng.uniform(0.85, 1.1, n)
    p["strand_u"] = rng.uniform(-0.5, 0.5, n)
    p["strand_phase"] = rng.uniform(0, 2 * math.pi, n)


# --------------------------------------------------------------------------- drawing
class _Frame:
    """Pixel geometry of one output size.

    The face is drawn upright in a *canvas*: the output grid extended by a
    margin, in face units (u right, v down). Every image is then mapped to its
    pose by one batched affine resampling; an identity pose copies canvas
    pixels exactly. Drawing upright lets each feature touch only the rows (and
    columns) it can occupy, with u and v as broadcast 1-D grids.
    """

    def __init__(self, size: int, box: tuple[int, int, int] | None):
        top, left, side = box if box is not None else (0, 0, size)
        self.size = size
        self.px = 2.0 / side                         # pixel size in face units
        self.pad = max(2, round(0.125 * side))       # canvas margin, pixels
        k = torch.arange(-self.pad, size + self.pad, dtype=torch.float32) + 0.5
        self.cu = (k - left) / side * 2 - 1          # canvas pixel centres (u)
        self.cv = (k - top) / side * 2 - 1           # canvas pixel centres (v)
        self.n = len(k)
        j = torch.arange(size, dtype=torch.float32) + 0.5
        self.X = ((j - left) / side * 2 - 1).view(1, 1, size)   # output pixel centres
        self.Y = ((j - top) / side * 2 - 1).view(1, size, 1)
        # output normalised coords x_n in [-1, 1] -> frame coords: x = a x_n + b
        self.ax = size / side
        self.bx = (size / 2 - left) / side * 2 - 1
        self.by = (size / 2 - top) / side * 2 - 1
        # canvas normalised coords: (u - centre) / half-extent
        self.c_u = float(self.cu[0] + self.cu[-1]) / 2
        self.c_v = float(self.cv[0] + self.cv[-1]) / 2
        self.half = self.n * self.px / 2
        # 5 -> n bilinear interpolation matrix for the background texture
        eye5 = torch.eye(5).view(5, 1, 5)
        self.up = F.interpolate(eye5, size=self.n, mode="linear", align_corners=False).view(5, self.n).T.contiguous()

    def _span(self, grid: torch.Tensor, lo: Any, hi: Any) -> slice:
        lo = float(lo.min()) if isinstance(lo, torch.Tensor) else float(lo)
        hi = float(hi.max()) if isinstance(hi, torch.Tensor) else float(hi)
        g0 = float(grid[0])
        r0 = max(0, int(math.floor((lo - g0) / self.px)) - 1)
        r1 = min(self.n, int(math.ceil((hi - g0) / self.px)) + 2)
        return slice(r0, max(r0, r1))

    def rows(self, lo: Any, hi: Any) -> slice:
        """Canvas rows whose v lies in [lo, hi] (plus a pixel of anti-aliasing)."""
        return self._span(self.cv, lo, hi)

    def cols(self, lo: Any, hi: Any) -> slice:
        return self._span(self.cu, lo, hi)

    def cols_within(self, centre: Any, w: Any) -> slice:
        """Canvas columns whose u lies within ``w`` of ``centre`` (per face; the union)."""
        return self._span(self.cu, centre - w, centre + w)


def _hypot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # faster on CPU than the library hypot, which is not vectorised
    return torch.addcmul(a * a, b, b).sqrt_()


def _alpha(dist: torch.Tensor, ipx: float) -> torch.Tensor:
    """Coverage of a shape from a signed distance (negative inside), ~1 px ramp."""
    return dist.mul_(-ipx).add_(0.5).clamp_(0.0, 1.0)


def _ellipse_dist(du: torch.Tensor, dv: torch.Tensor, ra: Any, rb: Any) -> torch.Tensor:
    """Approximate signed distance to an axis-aligned ellipse (exact for circles)."""
    return _ellipse_dist_from_radius(_hypot(du / ra, dv / rb), ra, rb)


def _ellipse_dist_from_radius(q: torch.Tensor, ra: Any, rb: Any) -> torch.Tensor:
    """:func:`_ellipse_dist` from the elliptic radius ``q`` = |(du/ra, dv/rb)| (modified in place)."""
    if isinstance(ra, float) and isinstance(rb, float):
        return q.sub_(1.0).mul_(min(ra, rb))
    return q.sub_(1.0).mul_(torch.minimum(torch.as_tensor(ra), torch.as_tensor(rb)))


def _capsule_dist(u: torch.Tensor, v: torch.Tensor, u0, v0, u1, v1, r) -> torch.Tensor:
    """Signed distance to a rounded segment (finger, strand piece)."""
    du, dv = u1 - u0, v1 - v0
    pu, pv = u - u0, v - v0
    t = ((pu * du + pv * dv) / (du * du + dv * dv)).clamp_(0.0, 1.0)
    return _hypot(pu - t * du, pv - t * dv).sub_(r)


def _draw_canvas(P: dict[str, torch.Tensor], fr: _Frame, rand: list[torch.Tensor]) -> torch.Tensor:
    """Upright faces on the canvas (N×n×n floats, ~0..1)."""
    n = P["skin"].shape[0]
    C = fr.n
    ipx = 1.0 / fr.px
    U = fr.cu.view(1, 1, C)
    V = fr.cv.view(1, C, 1)
    yaw = P["yaw"]
    uf = U - 0.12 * yaw                   # inner features shift more than the outline
    ua = uf.abs()                         # mirrored coordinate for paired features
    skin = P["skin"]

    # background with low-frequency texture
    tex = rand[0] - 0.5
    img = fr.up @ tex @ fr.up.T              # bilinear upsampling as two small matmuls
    img = img.mul_(P["bg_tex"] * 2).add_(P["bg"])

    # clothes and neck
    r = fr.rows(0.5, 10.0)
    sub, v_ = img[:, r], V[:, r]
    sub.lerp_(P["clothes"].expand_as(sub), _alpha((1.12 + 0.1 * U * U) - v_, ipx))
    sub.lerp_((skin * 0.78).expand_as(sub), _alpha(torch.maximum(U.abs() - 0.36, 0.55 - v_), ipx))

    # hair behind the head (short: cap; long: falls to the shoulders)
    fa, fb, cy = P["face_a"], P["face_b"], P["face_cy"]
    hair = P["hair"].expand_as(img)
    ha = fa * P["hair_side"]
    hb = cy - P["hair_top"]
    d_cap = _ellipse_dist(U, V - cy, ha, hb)
    d_long = torch.maximum(U.abs() - ha, torch.maximum(V - (0.3 + 0.9 * P["long_hair"]), cy - V))
    img.lerp_(hair, _alpha(torch.minimum(d_cap, d_long), ipx))

    # ears
    r = fr.rows(cy - 0.3, cy + 0.15)
    sub = img[:, r]
    d = _ellipse_dist(U.abs() - fa * 0.97, V[:, r] - (cy - 0.08), 0.09, 0.17)
    sub.lerp_((skin * 0.85).expand_as(sub), _alpha(d, ipx).mul_(P["ear"]))

    # face oval with tapering jaw; a dropped jaw lengthens the chin
    dv = V - cy
    below = (dv * 6).clamp_(0.0, 1.0)
    dvn = dv / (fb + 0.12 * P["au26"] * below)
    halfw = fa * (1 - P["jaw"] * dvn.clamp(0.0, 1.2) ** 2)
    q = _hypot(U / halfw, dvn)
    a_face = _alpha((q - 1) * fa, ipx)
    shade = skin * (1 - P["shade"] * q.clamp_(max=1.0) ** 3)
    img.lerp_(shade, a_face)

    # hairline / fringe over the forehead
    hl = P["hairline"] + P["hair_curve"] * U * U + P["fringe"] * (1 - (U / fa).clamp(-1, 1) ** 2)
    img.lerp_(hair, _alpha(torch.maximum(V - hl, d_cap), ipx))

    # --- expression
    au1, au2, au4, au5 = P["au1"], P["au2"], P["au4"], P["au5"]
    au43, au6, au7, au9 = P["au43"], P["au6"], P["au7"], P["au9"]
    au10, au12, au14, au15 = P["au10"], P["au12"], P["au14"], P["au15"]
    au17, au20, au24, au25, au26 = P["au17"], P["au20"], P["au24"], P["au25"], P["au26"]
    ex, ey, ew = P["eye_x"], P["eye_y"], P["eye_w"]

    # cheeks: raised and brighter with AU6/AU12
    cu = ex + 0.03
    cv = ey + 0.3 - 0.07 * au6 - 0.03 * au12
    r = fr.rows(cv - 0.13, cv + 0.13)
    sub, v_, af = img[:, r], V[:, r], a_face[:, r]
    r2 = ((ua - cu) / 0.17) ** 2 + ((v_ - cv) / 0.12) ** 2
    sub.add_((1 - r2).clamp_(0, 1).mul_(skin * (0.03 + 0.09 * au6 + 0.03 * au12)).mul_(af))

    # mouth and nose geometry (needed by the folds)
    mw = P["mouth_w"] * (1 + 0.3 * au20 + 0.18 * au12 - 0.18 * au24 + 0.1 * au14 - 0.1 * au26)
    my = P["mouth_y"] + 0.025 * au26 - 0.02 * au10 - 0.015 * au17
    ny = P["nose_y"] - 0.025 * au9
    nw = P["nose_w"] * (1 + 0.25 * au9 + 0.1 * au10)

    # nasolabial folds, deepened by smile, upper-lip raise, nose wrinkle
    u0, v0 = nw + 0.05, ny - 0.02
    u1, v1 = mw + 0.05, my + 0.05 + 0.03 * au15
    r = fr.rows(v0, v1)
    sub, v_ = img[:, r], V[:, r]
    t = (v_ - v0) / (v1 - v0)
    line_u = u0 + t * (u1 - u0) + 0.04 * t * (1 - t)
    d = torch.maximum((ua - line_u).abs_().sub_(0.012), (t - 0.5).abs_().sub_(0.5).mul_(v1 - v0))
    k = (0.07 + 0.45 * au12 + 0.4 * au10 + 0.3 * au9 + 0.15 * au6 + 0.15 * au20).clamp(max=0.6)
    sub.mul_(1 - _alpha(d, ipx).mul_(k))

    # nose: bridge sides, tip highlight, nostrils, AU9 creases
    c = fr.cols(-0.45, 0.45)
    un = U[:, :, c] - 0.2 * yaw
    uan = un.abs()
    r = fr.rows(ey, ny + 0.04)
    sub, v_ = img[:, r, c], V[:, r]
    d = torch.maximum((uan - nw * 0.75).abs_().sub_(0.012), (v_ - (ey + 2 * ny) / 3).abs_().sub_((ny - ey) / 3))
    sub.mul_(1 - _alpha(d, ipx).mul_(0.07))
    r2 = (un / 0.06) ** 2 + ((v_ - ny + 0.05) / 0.05) ** 2
    sub.add_((1 - r2).clamp_(0, 1).mul_(0.07))
    d = _ellipse_dist(uan - nw * 0.65, v_ - ny - 0.005, 0.035, 0.018)
    sub.mul_(1 - _alpha(d, ipx).mul_(0.5))
    wr = (v_ - ey - 0.03) / 0.045
    d = torch.maximum(((wr - wr.round()).abs_() * 0.045).sub_(0.008),
                      torch.maximum(uan - 0.08, (wr - 1).abs_().sub_(1.4) * 0.045))
    sub.mul_(1 - _alpha(d, ipx).mul_(0.45 * au9))

    # brows: raised (AU1/AU2), lowered and drawn together (AU4); furrows; forehead lines
    bx = ex - 0.01 - 0.035 * au4 + 0.01 * au2
    bw = P["brow_w"]
    xb = (ua - bx) / bw
    tb = xb.clamp(-1, 1)
    by = ey - P["brow_dy"] - 0.06 * au2 - 0.035 * au1 + 0.055 * au4 + 0.015 * au9 - 0.015 * au5
    lift_in = 0.075 * au1 - 0.06 * au4 - 0.02 * au9
    ycb = by - P["brow_arch"] * (1 - tb * tb) - lift_in * (1 - tb) * 0.5 - 0.03 * au2 * (1 + tb) * 0.5
    thick = P["brow_t"] * (1.1 - 0.35 * (tb + 1) * 0.5)
    r = fr.rows(by - 0.26, by + 0.14)
    sub, v_ = img[:, r], V[:, r]
    d = torch.maximum((v_ - ycb).abs_() - thick, (xb.abs() - 1) * bw)
    brow_col = P["hair"] * 0.6 + skin * 0.4 * (1 - P["brow_dark"])
    sub.lerp_(brow_col.expand_as(sub), _alpha(d, ipx).mul_(0.9))
    d = torch.maximum((ua - 0.045).abs_().sub_(0.008), (v_ - by - 0.01).abs_().sub_(0.05))
    sub.mul_(1 - _alpha(d, ipx).mul_(0.35 * au4))
    fl = (v_ - by + 0.12) / 0.07
    d = torch.maximum(((fl - fl.round()).abs_() * 0.07).sub_(0.007),
                      torch.maximum(ua - 0.35, (fl + 0.5).abs_().sub_(1.0) * 0.07))
    sub.mul_(1 - _alpha(d, ipx).mul_((0.35 * (au1 + au2) - 0.1).clamp(0, 0.5)))

    # eyes: socket shadow, almond between the lids, iris, upper lid line, crease
    r = fr.rows(ey - 2.0 * ew, ey + 1.6 * ew)
    sub, v_ = img[:, r], V[:, r]
    xe = (ua - ex) / ew
    ye = (v_ - ey) / ew
    r2 = (xe / 1.7) ** 2 + ((ye + 0.02 / ew) / 1.3) ** 2
    sub.mul_(1 - (1 - r2).clamp_(0, 1).mul_(0.22 + 0.1 * au4 + 0.08 * au7))
    kk = 1 - xe * xe
    ou = (P["eye_open"] * (1 + 0.6 * au5 - 0.4 * au7 - 0.25 * au6 - 0.5 * au43)).clamp(min=0.06)
    ol = (0.32 * (1 - 0.5 * au7 - 0.6 * au6) + 0.06 * au5).clamp(min=0.04)
    yu = -ou * kk
    yl = ol * kk
    a_eye = _alpha(torch.minimum(ye - yu, yl - ye).mul_(-ew), ipx)
    sub.lerp_((0.55 + 0.3 * skin).expand_as(sub), a_eye)
    d = _hypot(xe - P["gaze_x"] * torch.sign(uf), ye - P["gaze_y"]).sub_(P["iris"]).mul_(ew)
    sub.lerp_(torch.full_like(sub, 0.1), _alpha(d, ipx).mul_(a_eye))
    xo = (xe.abs() - 1.05) * ew
    d = torch.maximum((ye - yu).abs_().sub_(0.12).mul_(ew), xo)
    sub.lerp_(torch.full_like(sub, 0.08), _alpha(d, ipx).mul_(0.85))
    d = torch.maximum((ye - yu * 1.25 + 0.5).abs_().sub_(0.1).mul_(ew), xo + 0.15 * ew)
    sub.mul_(1 - _alpha(d, ipx).mul_((0.25 - 0.25 * au5).clamp(min=0)))

    # mouth: corner lift (AU12) / depression (AU15), one-sided pull (AU14),
    # upper lip raise (AU10), stretch (AU20), press (AU24), opening (AU25/AU26)
    ot = 0.004 + 0.03 * au10 + 0.018 * au25 + 0.012 * au12 * au25
    ob = 0.006 + 0.025 * au25 + 0.2 * au26 + 0.02 * au20 * au25
    ul = P["lip_t"] * (1 - 0.75 * au24.clamp(max=1))
    ll = P["lip_t"] * 1.35 * (1 - 0.7 * au24.clamp(max=1)) * (1 + 0.3 * au17)
    c = fr.cols(-(mw * 1.1 + 0.12 * yaw.abs()).max() - 0.02, (mw * 1.1 + 0.12 * yaw.abs()).max() + 0.02)
    r = fr.rows(my - 0.1 - ot - ul, my + ob + ll + 0.11)
    sub, v_ = img[:, r, c], V[:, r]
    xm = uf[:, :, c] / mw
    km = 1 - xm * xm
    lift = -0.07 * au12 + 0.055 * au15 + 0.015 * au20 + 0.015 * au10 - 0.01 * au6
    one = (xm * P["side"]).clamp_(min=0.0)
    dy = v_ - (my + lift * xm * xm - 0.075 * au14 * one * one)
    xo = (xm.abs() - 1) * mw
    km_l = km.clamp(min=0).sqrt_()
    d = torch.minimum(dy + (ot + ul) * km_l, (ob + ll) * km_l - dy).neg_()
    sub.lerp_((skin * P["lip_dark"]).expand_as(sub), _alpha(torch.maximum(d, xo), ipx))
    d = torch.minimum(dy + ot * km, ob * km - dy).neg_().sub_(0.011)
    a_open = _alpha(torch.maximum(d, xo), ipx)
    sub.lerp_(torch.full_like(sub, 0.1), a_open)
    teeth = ((au25 + 0.3 * au10 + 0.5 * au12 - 0.3) * 2).clamp(0, 1)
    th = torch.minimum(ot + ob, torch.full_like(ot, 0.05))
    sub.lerp_(torch.full_like(sub, 0.78), _alpha(dy + (ot - th) * km, ipx).mul_(a_open).mul_(teeth))
    d = torch.maximum((dy - ob - ll - 0.07).abs_().sub_(0.012), (xm.abs() - 0.55) * mw)
    sub.mul_(1 - _alpha(d, ipx).mul_(0.12 + 0.3 * au17))

    draw_occluders(img, P, fr, U, V, ua, ex, ey, ew, skin)
    return img


def draw_occluders(img: torch.Tensor, P: dict[str, torch.Tensor], fr: _Frame, U: torch.Tensor, V: torch.Tensor,
                   ua: torch.Tensor, ex: torch.Tensor, ey: torch.Tensor, ew: torch.Tensor, skin: torch.Tensor) -> None:
    """Glasses, a hand, hair strands, drawn in place only into the images that have them
    (``ua``: the mirrored column coordinate; ``ex, ey, ew``: eye centre and width)."""
    ipx = 1.0 / fr.px
    sel = P["glasses"].view(-1).nonzero().view(-1)
    if sel.numel():
        e_x, e_y, e_w = ex[sel], ey[sel], ew[sel]
        r = fr.rows(e_y - 1.6 * e_w - 0.02, e_y + 1.6 * e_w + 0.02)
        uu, vv = ua[sel], V[:, r]
        part = img[sel]
        sub = part[:, r]
        d_ring = _ellipse_dist(uu - e_x, vv - e_y - 0.01, e_w * 1.9, e_w * 1.45)
        inside = _alpha(d_ring.clone(), ipx)
        sub.lerp_(torch.full_like(sub, 0.06), inside.mul_(0.25 + 0.7 * P["sunglasses"][sel]))
        bridge = torch.maximum((vv - e_y + 0.03).abs_().sub_(0.012), uu - (e_x - e_w * 1.8))
        sub.lerp_(torch.full_like(sub, 0.05), _alpha(torch.minimum(d_ring.abs_().sub_(0.014), bridge), ipx))
        img[sel] = part
    sel = P["hand"].view(-1).nonzero().view(-1)
    if sel.numel():
        hu, hv, rot = P["hand_u"][sel], P["hand_v"][sel], P["hand_rot"][sel]
        c_, s_ = torch.cos(rot), torch.sin(rot)
        lu = c_ * (U - hu) + s_ * (V - hv)
        lv = c_ * (V - hv) - s_ * (U - hu)
        d = _ellipse_dist(lu, lv - 0.2, 0.3, 0.32)
        for f in range(4):
            fu = -0.21 + 0.14 * f
            flen = 0.32 + 0.08 * (1.5 - abs(f - 1.5))
            d = torch.minimum(d, _capsule_dist(lu, lv, fu, 0.0, fu * 1.1, -flen, 0.06))
        part = img[sel]
        tone = (skin[sel] * P["hand_tone"][sel]).clamp(max=1.0)
        part.lerp_(tone.expand_as(part), _alpha(d.clone(), ipx))
        part.mul_(1 - _alpha(d.abs_().sub_(0.008), ipx).mul_(0.35))
        img[sel] = part
    sel = P["strands"].view(-1).nonzero().view(-1)
    if sel.numel():
        r = fr.rows(-10.0, 0.32)
        vv = V[:, r]
        part = img[sel]
        sub = part[:, r]
        hair_s = P["hair"][sel].expand_as(sub)
        for j in range(3):
            su = P["strand_u"][sel] + 0.12 * j
            wave = torch.sin(vv * 5 + P["strand_phase"][sel] + j) * 0.06
            d = torch.maximum((U - su - wave - 0.15 * vv).abs_().sub_(0.013), vv - 0.15 * j)
            sub.lerp_(hair_s, _alpha(d, ipx).mul_(0.9))
        img[sel] = part


def _pose(canvas: torch.Tensor, P: dict[str, torch.Tensor], fr: _Frame, mode: str = "bilinear") -> torch.Tensor:
    """Resample upright canvases into the output frame at each image's roll,
    scale and shift (one batched warp; ``mode`` of ``grid_sample``)."""
    n = canvas.shape[0]
    cr, sr = torch.cos(P["roll"]).view(n), torch.sin(P["roll"]).view(n)
    s = P["scale"].view(n) * fr.half
    ox = fr.bx - P["tx"].view(n)
    oy = fr.by - P["ty"].view(n)
    a = fr.ax
    theta = torch.stack([
        torch.stack([cr * a / s, sr * a / s, (cr * ox + sr * oy - fr.c_u * P["scale"].view(n)) / s], 1),
        torch.stack([-sr * a / s, cr * a / s, (cr * oy - sr * ox - fr.c_v * P["scale"].view(n)) / s], 1),
    ], 1)
    grid = F.affine_grid(theta, [n, 1, fr.size, fr.size], align_corners=False)
    return F.grid_sample(canvas.unsqueeze(1), grid, mode=mode, padding_mode="border",
                         align_corners=False).view(n, fr.size, fr.size)


def _photometric(img: torch.Tensor, P: dict[str, torch.Tensor], fr: _Frame, gen: torch.Generator) -> torch.Tensor:
    """Light gradient, contrast, blur and sensor noise, in the output frame."""
    img.mul_(1 + P["light_x"] * fr.X + P["light_y"] * fr.Y)
    img.sub_(0.5).mul_(P["contrast"]).add_(0.5 + P["bright"])
    for rep in range(2):
        w = (P["blur"] - rep).clamp(0, 1)
        if not bool((w > 0).any()):
            break
        p = F.pad(img.unsqueeze(1), (1, 1, 1, 1), mode="replicate").squeeze(1)
        b = p[:, :, :-2] + 2 * p[:, :, 1:-1] + p[:, :, 2:]
        b = (b[:, :-2] + 2 * b[:, 1:-1] + b[:, 2:]).mul_(1.0 / 16)
        img.lerp_(b, w.expand_as(img))
    img.add_(torch.randn(img.shape, generator=gen).mul_(P["noise"]))
    return img


#: Faces drawn per tensor op inside a chunk (at 48×48; scaled by the area like the chunk): a
#: block's canvases stay in a core's cache and its features' spans are tighter (measured: 13 %
#: faster than drawing 128 at once on the 2-core CPU).
BLOCK = 64

#: A canvas function: (parameters of a block of faces, the frame, the block's uniform random
#: 5×5 fields, in the renderer's order) -> upright canvases.
DrawCanvas = Callable[[dict[str, torch.Tensor], _Frame, list[torch.Tensor]], torch.Tensor]


def draw_chunks(params: Params, draw_canvas: DrawCanvas, *, size: int, box: tuple[int, int, int] | None, seed: int,
                chunk: int, pose_mode: str = "bilinear", fields: int = 1) -> np.ndarray:
    """The renderers' outer loop: per chunk of faces, ``fields`` uniform 5×5 random fields per
    face are drawn, ``draw_canvas`` draws the chunk upright in blocks, each block is posed
    (``pose_mode`` of the warp), and the chunk gets its photometric nuisances; uint8
    N×size×size. The random numbers are drawn per chunk in a fixed order, so the result depends
    only on ``params``, ``seed`` and ``chunk``, not on the block size (a face's pixels must not
    depend on the other faces of its block; ``tests/test_synthfer.py`` checks that)."""
    n = len(params["skin"])
    out = np.empty((n, size, size), dtype=np.uint8)
    fr = _Frame(size, box)
    gen = torch.Generator().manual_seed(int(seed))
    chunk = max(1, chunk * 48 * 48 // (size * size))
    block = max(1, BLOCK * 48 * 48 // (size * size))
    # Many mid-sized elementwise ops: intra-op threads buy little and, on a busy
    # machine, cost up to 8x (measured on 2 shared cores), so draw on one thread. Their
    # temporaries of about a megabyte made glibc shrink and regrow its heap all the time
    # (a page fault per page: 0.3 s of system time per 1.0 s of drawing), hence
    # retain_freed_heap.
    retain_freed_heap()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            for start in range(0, n, chunk):
                sl = slice(start, min(n, start + chunk))
                P = {k: torch.from_numpy(np.ascontiguousarray(v[sl])).view(-1, 1, 1) for k, v in params.items()}
                m = sl.stop - sl.start
                rand = [torch.rand((m, 5, 5), generator=gen) for _ in range(fields)]
                img = torch.empty(m, size, size)
                for b in range(0, m, block):
                    bl = slice(b, min(m, b + block))
                    Pb = {k: v[bl] for k, v in P.items()}
                    img[bl] = _pose(draw_canvas(Pb, fr, [r[bl] for r in rand]), Pb, fr, mode=pose_mode)
                out[sl] = _photometric(img, P, fr, gen).mul_(255.0).round_().clamp_(0, 255).to(torch.uint8).numpy()
    finally:
        torch.set_num_threads(threads)
    return out


def draw(params: Params, *, size: int = 48, box: tuple[int, int, int] | None = None, seed: int = 0,
         chunk: int = 128) -> np.ndarray:
    """Render faces from ``params`` (arrays of length N) into uint8 N×size×size.

    ``box`` = (top, left, side) of the face frame inside the image (default: the
    whole image, as in FER2013's 48×48 crops). ``seed`` drives pixel noise and
    background texture; the result depends only on ``params``, ``seed`` and
    ``chunk``.
    """
    return draw_chunks(params, _draw_canvas, size=size, box=box, seed=seed, chunk=chunk)
