"""SynthFER v2: shaded faces. Parameters -> grayscale faces, batched on tensors.

Where v1 draws flat shapes with 1–2 pixel lines, v2 builds each face as a **height field**
(a relief in face units: the head's dome, brow ridge, eye sockets and eyeballs, nose bridge,
tip and wings, cheeks, lips, chin) and an **albedo** (skin with low-frequency mottling,
brows, lips, sclera, iris, teeth, mouth cavity, hair), then lights the relief with the
scene's light: Lambertian shading from the height field's normals, a cavity term (valleys
darker than their surroundings, as occlusion makes them) and a faint specular highlight. So
expressions live where they do on real 48×48 faces, in shape and shading: furrows and
folds cast and catch light, the open mouth is a shadowed cavity with a bright tooth row,
raised cheeks bulge, eyes widen to show sclera.

Expressions are FACS action units moving shaped regions by several pixels (prototypes in
:data:`PROTOTYPES`, some classes with a second form in :data:`VARIANTS`, following the FACS
descriptions of the basic emotions):

* happiness: AU6 (cheeks raised and bulging, lower lids pushed up, crow's feet) + AU12 (lip
  corners up and back, deep nasolabial folds) + AU25 (lips parted over a bright tooth row);
* sadness: AU1+4 (inner brows raised and drawn together: oblique brows) + AU15 (corners pulled
  down at the ends) + AU17 (chin boss raised, lower lip pushed up) + AU43 (heavy lids) + AU64
  (eyes down); or, on half the faces, the open, down-turned mouth of crying (AU20+25+26);
* surprise: AU1+2 (round brows raised high, forehead lines) + AU5 (eyes wide, sclera above the
  iris) + AU26 (jaw dropped: a tall dark oval mouth);
* fear: AU1+2+4 (brows raised but flattened and drawn together: AU4 with AU1 pulls them
  together rather than down) + AU5+7 (upper lids raised, lower lids tensed) + AU20+15 (lips
  stretched sideways and down, both tooth rows bared) + AU25+26 (a wide open mouth, wider
  and squarer than surprise's oval);
* anger: AU4 (brows lowered and drawn together, glabella furrows, the eyes in shadow) + AU7
  (a glare) + AU23/24 (lips tightened and pressed thin), or AU10+25 (teeth bared);
* disgust: AU9 (nose wrinkled, its root shaded with creases, brows pulled down medially) +
  AU10 (upper lip raised in a squarer opening, upper teeth showing) + AU15/17;
* contempt (CK+): AU14 on one side.

A unit's visible extent rises fastest at low intensity and levels off at the apex
(:func:`_gain`: ``a (2 - a)``), as FACS's "slight" to "marked" grades already move the
features most of the way; the jaw drop (AU26) is halfway between that and proportional, since
an open mouth is seen even when slight. Intensities at the default difficulty are weaker and
more spread than v1's (:data:`INTENSITY_SPREAD`): FER2013 holds many subtle expressions, and
a face's recognisability should rise with its intensity.

Identity, pose, light, camera and occluders are drawn independently of the expression, with
v1's samplers (:func:`~nas.data.synthfer.render_v1.sample_expression`,
:func:`~nas.data.synthfer.render_v1.sample_nuisances`) and v2's own scales: people's
proportions spread twice as wide (:data:`IDENTITY_SPREAD`), expressions lose fewer units
(:data:`EXPRESSION_SPREAD`), the light spreads wider (:data:`LIGHT_SPREAD`), pose keeps v1's
ranges (roll σ 7°, shift σ 6 % of the frame, scale σ 7 %: FER2013's crops are "more or less
centred", not registered), noise is softer and there is no blur; the light's direction and
ambient share shade the relief. Posing (bicubic, which keeps 1–2 pixel features sharper than a
bilinear warp), photometric nuisances and occluders are v1's batched code. Proportions follow
FER2013's tight crops: the face fills the frame, eyes at about 40 % of its height, the mouth at
about 75 %.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from nas.data.synthfer.render_v1 import (EXPRESSIONS, Params, _alpha, _ellipse_dist,
                                         _ellipse_dist_from_radius, _Frame, _hypot, au_row, draw_chunks,
                                         draw_occluders, sample_expression, sample_nuisances)

__all__ = ["REVISION", "AUS", "EXPRESSIONS", "PROTOTYPES", "VARIANTS", "LIGHT_SPREAD", "sample_identity",
           "sample_params", "draw", "Params"]

#: Added to v2's cache names ("-v2" + this): bumped whenever v2's pictures change, so that
#: earlier exports are rebuilt. "" was 0.2's first v2; "r2" moved fear's, sadness's and
#: anger's cues and drew weaker, wider intensities; "r3" drew each face independently of the
#: faces beside it (four features were cut at the chunk's rows), took v1's pose ranges and
#: raised fear's upper lids further; "r4" dropped the blur, spread the light wider, drew anger's
#: units (AU4 brows, AU5+7 glare, AU23/24 pressed lips) stronger and bared its teeth on a fifth
#: of angry faces instead of 35 % (docs/synthfer.md).
REVISION = "r4"

#: Action units, in the column order of :data:`PROTOTYPES`.
AUS: tuple[str, ...] = (
    "au1",   # inner brow raiser
    "au2",   # outer brow raiser
    "au4",   # brow lowerer (down and together)
    "au5",   # upper lid raiser (eyes wide)
    "au6",   # cheek raiser
    "au7",   # lid tightener
    "au9",   # nose wrinkler
    "au10",  # upper lip raiser
    "au12",  # lip corner puller (smile)
    "au14",  # one-sided corner pull (contempt)
    "au15",  # lip corner depressor
    "au17",  # chin raiser
    "au20",  # lip stretcher
    "au23",  # lip tightener
    "au24",  # lip presser
    "au25",  # lips part
    "au26",  # jaw drop
    "au43",  # lids droop
    "au64",  # eyes down
)
_A = {a: i for i, a in enumerate(AUS)}


def _proto(**kw: float) -> list[float]:
    return au_row(_A, **kw)


#: Prototype AU intensities per expression (rows in :data:`EXPRESSIONS` order).
PROTOTYPES: np.ndarray = np.array([
    _proto(au4=1.3, au5=0.6, au7=1.1, au23=1.3, au24=1.1, au17=0.4, au9=0.15),                 # angry
    _proto(au9=1.0, au10=1.3, au25=0.6, au17=0.35, au15=0.6),                                  # disgust
    _proto(au1=1.0, au2=0.5, au4=0.8, au5=1.5, au7=0.2, au20=1.3, au25=1.0, au26=0.85, au10=0.5,
           au15=0.5),                                                                         # fear
    _proto(au6=1.0, au12=1.0, au25=1.0, au26=0.12),                                            # happy
    _proto(au1=0.7, au4=0.8, au15=1.0, au17=0.8, au43=0.8, au64=0.5),                          # sad
    _proto(au1=1.0, au2=1.0, au5=0.85, au25=1.0, au26=1.0),                                    # surprise
    _proto(),                                                                                  # neutral
    _proto(au14=1.0, au7=0.15),                                                                # contempt
], dtype=np.float32)

#: Second forms some faces of a class take instead (FACS lists both): anger with the teeth
#: bared (AU10+25) instead of pressed lips, sadness with the distressed open mouth of crying
#: (AU20+25) instead of the raised chin. ``(expression, share, {unit: value at full intensity})``;
#: units not named keep the prototype's value, those set to 0 are dropped.
VARIANTS: tuple[tuple[str, float, dict[str, float]], ...] = (
    ("angry", 0.2, {"au10": 0.8, "au25": 0.8, "au23": 0.15, "au24": 0.0}),
    ("sad", 0.5, {"au20": 0.6, "au25": 0.5, "au26": 0.3, "au17": 0.2}),
)

#: v2's scale of the FER style's per-unit jitter, drop-out and resting face (v1's are 1): a
#: shaded face shows a unit at half strength plainly, so fewer faces need to lose one
#: altogether to be as varied as FER2013's.
EXPRESSION_SPREAD = (0.4, 0.25, 0.8)

#: v2's FER-style intensities: (extra drop of the mean per unit of difficulty, factor on the
#: beta distribution's concentration). FER2013 holds many subtle expressions, and a shaded
#: face shows a weak unit plainly, so v2 draws them weaker and wider than v1.
INTENSITY_SPREAD = (0.1, 0.6)

#: How far people's proportions spread around the mean face (multiplies every identity
#: parameter's standard deviation).
IDENTITY_SPREAD = 2.0

#: How far the light's direction and gradient spread in FER2013's style (multiplies v1's
#: gradient and v2's azimuth draws; r4).
LIGHT_SPREAD = 1.25

#: Units a resting face can show a little of (identity, not expression).
_REST_AUS = np.array([_A[a] for a in ("au1", "au4", "au43", "au15", "au12", "au7", "au17", "au5")])


# --------------------------------------------------------------------------- sampling
def sample_identity(rng: np.random.Generator, n: int) -> Params:
    """Per-person shape, relief and tone, independent of the expression. Positions in face
    units (the frame spans [-1, 1]; v grows downwards)."""
    u = lambda lo, hi: rng.uniform(lo, hi, n)  # noqa: E731
    g = lambda m, s: m + IDENTITY_SPREAD * s * rng.standard_normal(n)  # noqa: E731
    return {
        "skin": u(0.42, 0.84),
        "hair": np.where(rng.random(n) < 0.8, u(0.03, 0.28), u(0.3, 0.75)),
        "face_a": g(0.86, 0.04),
        "face_b": g(1.0, 0.04),
        "face_cy": g(0.1, 0.03),
        "jaw": u(0.12, 0.36),
        "relief": u(0.6, 1.0),
        "age": rng.beta(1.5, 3.0, n),
        "eye_x": g(0.36, 0.02),
        "eye_y": g(-0.2, 0.03),
        "eye_w": g(0.145, 0.01),
        "eye_open": g(0.36, 0.05),
        "iris": g(0.52, 0.04),
        "brow_dy": g(0.18, 0.02),
        "brow_t": g(0.05, 0.008),
        "brow_w": g(0.2, 0.015),
        "brow_arch": g(0.035, 0.012),
        "brow_dark": u(0.45, 0.9),
        "nose_y": g(0.22, 0.03),
        "nose_w": g(0.1, 0.01),
        "nose_h": u(0.8, 1.2),
        "mouth_y": g(0.53, 0.03),
        "mouth_w": g(0.27, 0.02),
        "lip_t": g(0.05, 0.008),
        "lip_dark": u(0.8, 0.93),
        "hairline": g(-0.66, 0.08),
        "hair_curve": u(0.1, 0.5),
        "fringe": np.where(rng.random(n) < 0.3, u(0.1, 0.35), 0.0),
        "long_hair": (rng.random(n) < 0.45).astype(np.float64),
        "hair_top": g(-1.25, 0.06),
        "hair_side": u(1.04, 1.18),
        "ear": (rng.random(n) < 0.7).astype(np.float64),
        "mottle": u(0.01, 0.05),
        "clothes": u(0.05, 0.9),
    }


def sample_params(rng: np.random.Generator, expressions: np.ndarray, *, difficulty: float = 1.0,
                  style: str = "fer", identity: Params | None = None) -> Params:
    """Draw render parameters for faces showing ``expressions`` (indices into
    :data:`EXPRESSIONS`); ``identity`` (arrays of length N) replaces the random identity.
    ``difficulty`` scales expression weakness and variation and the nuisance ranges."""
    expressions = np.asarray(expressions, dtype=np.int64)
    n = len(expressions)
    d = max(float(difficulty), 0.0)
    ident = sample_identity(rng, n) if identity is None else {k: np.asarray(v, dtype=np.float64) for k, v in identity.items()}
    protos = PROTOTYPES[expressions].copy()
    pick = rng.random(n)
    for name, share, units in VARIANTS:
        sel = (expressions == EXPRESSIONS.index(name)) & (pick < share)
        for unit, value in units.items():
            protos[sel, _A[unit]] = value
    au, inten = sample_expression(rng, protos, _REST_AUS, style, d, spread=EXPRESSION_SPREAD, weak=INTENSITY_SPREAD)
    # a neutral face's intensity is how blank it is: a strong neutral shows little of the
    # resting-face units, a weak one more (so it lies nearer the other classes)
    neutral = expressions == EXPRESSIONS.index("neutral")
    au[neutral] *= np.clip(3.0 - 3.0 * inten[neutral], 0.1, 2.5)[:, None]
    p: Params = dict(ident)
    for i, name in enumerate(AUS):
        p[name] = au[:, i]
    p["intensity"] = inten
    p["side"] = np.where(rng.random(n) < 0.5, -1.0, 1.0)  # which corner contempt pulls
    p["gaze_x"] = 0.1 * rng.standard_normal(n)
    p["gaze_y"] = 0.06 * rng.standard_normal(n)
    sample_nuisances(rng, p, n, style, d)
    # v1's blur and noise were sized for line drawings. A shaded face keeps v1's noise draws,
    # scaled by 0.6, and no blur: its relief is already soft, and with r3's blur (0.6 of v1's)
    # the real model found 13 % of disgusted faces, without it 16 % (docs/synthfer.md). Pose
    # keeps v1's ranges (r2 had them at 0.4-0.6: a small CNN then read the faces too easily,
    # while the real model loses little to pose)
    p["noise"] = p["noise"] * 0.6
    p["blur"] = np.zeros(n)
    # the scene light that shades the relief: mostly from above and in front. In FER2013's
    # style its azimuth and v1's illumination gradient spread 1.25 times wider (r4): without
    # blur that keeps the small CNN under 90 %, and the real model reads the faces as well as
    # before (docs/synthfer.md, "How r4 was chosen")
    if style == "fer":
        p["light_x"] = p["light_x"] * LIGHT_SPREAD
        p["light_y"] = p["light_y"] * LIGHT_SPREAD
        p["light_az"] = np.clip(rng.standard_normal(n) * (0.15 + 0.3 * d), -1.1, 1.1) * LIGHT_SPREAD
        p["light_el"] = np.clip(0.45 + rng.standard_normal(n) * (0.1 + 0.15 * d), 0.0, 1.2)
        p["ambient"] = rng.uniform(0.3, 0.55, n)
    else:
        p["light_az"] = rng.standard_normal(n) * 0.05
        p["light_el"] = 0.35 + rng.standard_normal(n) * 0.03
        p["ambient"] = rng.uniform(0.45, 0.55, n)
    return {k: np.asarray(v, dtype=np.float32) for k, v in p.items()}


# --------------------------------------------------------------------------- drawing
def _bump(du: torch.Tensor, dv: torch.Tensor, su, sv) -> torch.Tensor:
    """A smooth compact bump: (1 - r²)² inside the ellipse of half-axes (su, sv), 0 outside."""
    r2 = (du / su).square_() + (dv / sv).square_()
    return r2.neg_().add_(1.0).clamp_(min=0.0).square_()


def _band(d: torch.Tensor, w) -> torch.Tensor:
    """A ridge profile across a distance ``d``: (1 - (d/w)²)², 0 beyond ``w``."""
    return (d / w).square_().neg_().add_(1.0).clamp_(min=0.0).square_()


# the share of a unit's visible extent that is proportional to its intensity (the rest is
# :func:`_gain`'s a*(2-a)): the jaw drops halfway between the two, since an open mouth is too
# strong a cue to saturate early
LINEAR_SHARE: dict[str, float] = {"au26": 0.5}


def _gain(a: torch.Tensor, linear: float = 0.0) -> torch.Tensor:
    """Visible extent of an action unit of intensity ``a``: a*(2-a) on [0, 1], then linear;
    ``linear`` blends in that share of ``a`` itself."""
    c = a.clamp(0.0, 1.0)
    g = c * (2 - c) + (a - c)
    return (1 - linear) * g + linear * a if linear else g


def _step(x: torch.Tensor) -> torch.Tensor:
    """Smoothstep on [0, 1]."""
    x = x.clamp(0.0, 1.0)
    return (x * x).mul_(x.mul_(-2.0).add_(3.0))    # -2x + 3 is 3 - 2x exactly


def _draw_canvas(P: dict[str, torch.Tensor], fr: _Frame, rand: list[torch.Tensor]) -> torch.Tensor:
    """Upright shaded faces on the canvas (N×n×n floats, ~0..1); ``rand``: two uniform 5×5
    fields per face (the background's texture, the skin's mottling)."""
    n = P["skin"].shape[0]
    C = fr.n
    ipx = 1.0 / fr.px
    U = fr.cu.view(1, 1, C)
    V = fr.cv.view(1, C, 1)
    yaw = P["yaw"]
    uf = U - 0.12 * yaw                    # inner features shift more than the outline
    ua = uf.abs()                          # mirrored coordinate for paired features
    skin, relief, age = P["skin"], P["relief"], P["age"]
    # a unit's visible displacement rises fastest at low intensity and levels off at the apex
    # (FACS's B-C "slight-marked" already moves the features most of the way): a*(2-a) up to 1
    au1, au2, au4, au5, au6, au7, au9, au10, au12, au14, au15, au17, au20, au23, au24, au25, au26, au43, au64 = (
        _gain(P[a], LINEAR_SHARE.get(a, 0.0)) for a in AUS)

    # background with low-frequency texture; the height field starts flat, far behind
    tex = rand[0] - 0.5
    A = (fr.up @ tex @ fr.up.T).mul_(P["bg_tex"] * 2).add_(P["bg"])      # albedo
    H = torch.zeros(n, C, C)                                             # height towards the viewer

    # clothes and the neck, set back in the jaw's shadow
    r = fr.rows(0.5, 10.0)
    sub, v_ = A[:, r], V[:, r]
    sub.lerp_(P["clothes"].expand_as(sub), _alpha((1.15 + 0.1 * U * U) - v_, ipx))
    a_neck = _alpha(torch.maximum(U.abs() - 0.42, 0.55 - v_), ipx)
    sub.lerp_((skin * 0.8).expand_as(sub), a_neck)
    H[:, r] += a_neck * 0.12

    # hair behind the head: a cap down to the temples, long hair further down by the cheeks
    fa, fb, cy = P["face_a"], P["face_b"], P["face_cy"]
    hair = P["hair"].expand_as(A)
    ha = fa * P["hair_side"]
    hb = cy - P["hair_top"]
    long_ = P["long_hair"]
    # the cap's elliptic radius serves its outline, its dome and the hairline below
    q_cap = _hypot(U / ha, (V - cy) / hb)
    e_cap = _ellipse_dist_from_radius(q_cap.clone(), ha, hb)
    d_cap = torch.maximum(e_cap, V - (cy - 0.35 + 0.3 * long_))
    d_long = torch.maximum(U.abs() - ha, torch.maximum(V - (0.35 + 0.9 * long_), cy - 0.35 - V)) + (1 - long_) * 9
    a_hair = _alpha(torch.minimum(d_cap, d_long), ipx)
    A.lerp_(hair, a_hair)
    H.add_(q_cap.clamp_(max=1.0).square_().neg_().add_(1.0).clamp_(min=0).sqrt_().mul_(a_hair).mul_(0.32))

    # ears
    r = fr.rows(cy - 0.45, cy + 0.05)
    du, dv = U.abs() - fa * 0.98, V[:, r] - (cy - 0.2)
    a_ear = _alpha(_ellipse_dist(du, dv, 0.09, 0.17), ipx) * P["ear"]
    A[:, r].lerp_((skin * 0.9).expand_as(A[:, r]), a_ear)
    H[:, r] += a_ear * (0.22 + 0.08 * _bump(du, dv, 0.09, 0.17))

    # face: a dome over an oval with a tapering jaw; a dropped jaw lengthens the chin
    # (computed in the face's box only: a_face is exactly zero outside it, q >= |dvn| and
    # q >= |U| / fa there, so what lies outside keeps its value)
    jaw = 0.22 * au26 + 0.03 * au25
    grow = 1 + fr.px / fa
    rf = fr.rows(cy - fb * grow - fr.px, cy + (fb + jaw) * grow + fr.px)
    cf = fr.cols_within(0.0, fa + fr.px)
    dv = V[:, rf] - cy
    below = (dv * 5).clamp_(0.0, 1.0)
    dvn = dv / (fb + jaw * below)
    halfw = fa * (1 - P["jaw"] * dvn.clamp(0.0, 1.2) ** 2)
    q = _hypot(U[:, :, cf] / halfw, dvn)
    a_face = torch.zeros_like(A)
    af = a_face[:, rf, cf]
    af.copy_(_alpha((q - 1) * fa, ipx))
    sub_a, sub_h = A[:, rf, cf], H[:, rf, cf]
    sub_a.lerp_(skin.expand_as(sub_a), af)
    dome = q.clamp(max=1.0).square_().neg_().add_(1.0).clamp_(min=0).pow_(0.65)     # -x + 1 is 1 - x exactly
    sub_h.mul_(1 - af).add_(af * dome * (0.6 * relief))
    mot = rand[1] - 0.5                     # skin: low-frequency mottling
    sub_a.add_((fr.up @ mot @ fr.up.T)[:, rf, cf] * af * (P["mottle"] * 2))

    # hairline and fringe over the forehead
    hl = P["hairline"] + P["hair_curve"] * U * U + P["fringe"] * (1 - (U / fa).clamp(-1, 1) ** 2)
    a_hl = _alpha(torch.maximum(V - hl, e_cap), ipx)
    A.lerp_(hair, a_hl)
    H.add_(a_hl * 0.03)

    ex, ey, ew = P["eye_x"], P["eye_y"], P["eye_w"]
    rel = relief * a_face                   # features sit on the face, scaled by its relief
    # Each feature below touches only the canvas rows and columns it can reach: outside them
    # its terms are exactly zero (compact bumps and bands, clamped ramps), so the slices save
    # time without changing a pixel, and a face does not depend on the faces drawn beside it
    # (in r2 four features reached beyond their rows and were cut there; r3 bounds them).
    # Paired features reach |uf| <= w, where uf = U - shift.
    shift = 0.12 * yaw

    # --- brows: raised (AU1 inner, AU2 outer), lowered and drawn together (AU4)
    bx = ex - 0.01 - 0.07 * au4 + 0.01 * au2
    bw = P["brow_w"]
    w = torch.clamp(bx + 1.3 * bw, min=0.1) + fr.px             # the ridge; the glabella
    c = fr.cols_within(shift, w)
    ua_c = ua[:, :, c]
    xb = (ua_c - bx) / bw
    tb = xb.clamp(-1, 1)
    # AU4 alone lowers the brows and pulls their inner ends down (anger's V); with AU1 (fear,
    # sadness) the frontalis holds them up, so AU4 mostly draws them together
    low4 = au4 * (1 - 0.65 * au1.clamp(max=1))
    by = ey - P["brow_dy"] - 0.09 * au2 - 0.06 * au1 + 0.12 * low4 - 0.02 * au5 + 0.03 * au9
    lift_in = 0.2 * au1 - 0.17 * low4 - 0.06 * au9
    arch = P["brow_arch"] * (1 + 0.8 * au2 - 0.6 * au4) + 0.035 * au2
    ycb = by - arch * (1 - tb * tb) - lift_in * (1 - tb) * 0.5
    # the brow's centre line lies between these (tb in [-1, 1]); the ridge reaches 0.155 below it
    lo = by - arch.clamp(min=0) - lift_in.clamp(min=0)
    hi = by - arch.clamp(max=0) + (-lift_in).clamp(min=0)
    r = fr.rows(torch.minimum(by - 0.36, lo - 0.2), torch.maximum(by + 0.18, hi + 0.2))
    sub_a, sub_h, v_, rr = A[:, r, c], H[:, r, c], V[:, r], rel[:, r, c]
    d = torch.maximum((v_ - ycb).abs_() - P["brow_t"] * (1.2 - 0.4 * (tb + 1) * 0.5), (xb.abs() - 1) * bw)
    a_brow = _alpha(d, ipx) * (0.9 * a_face[:, r, c])
    sub_a.lerp_((P["hair"] * 0.5 + skin * 0.4 * (1 - P["brow_dark"])).expand_as(sub_a), a_brow)
    sub_h.add_(_band(v_ - ycb - 0.035, 0.12) * _step(1.3 - xb.abs()) * (0.075 * rr))   # the brow ridge
    # AU4: glabella furrows (two vertical creases) and the bulge between them
    g_rows = _step((v_ - (by - 0.16)) / 0.06) * _step((by + 0.1 - v_) / 0.06)
    sub_h.sub_(_band(ua_c - 0.065, 0.035) * g_rows * (0.04 * au4 * rr))
    sub_h.add_(_band(ua_c, 0.06) * g_rows * (0.025 * au4 * rr))
    # AU1/AU2: horizontal forehead lines (AU1's across the middle, AU2's out to the sides)
    r = fr.rows(by - 0.55, by - 0.06)
    sub_h, v_, ua_c = H[:, r, cf], V[:, r], ua[:, :, cf]
    ph = (v_ - by + 0.08) / 0.09
    lines = torch.cos(ph * (2 * math.pi)).clamp_(min=0).pow_(3)
    wid = au1 * _step((0.45 - ua_c) / 0.25) + au2 * _step((0.62 - ua_c) / 0.2)
    fade = _step((v_ - (by - 0.5)) / 0.1) * _step((by - 0.09 - v_) / 0.04)
    sub_h.sub_(lines * fade * (wid * 0.04 + 0.008 * age) * rel[:, r, cf])

    # --- eyes: socket, eyeball, lids, sclera, iris, lash line
    r = fr.rows(ey - 2.3 * ew, ey + 2.1 * ew)
    w = ex + torch.maximum(2.0 * ew, 1.05 * ew + 0.17) + fr.px    # the socket; the crow's feet
    c = fr.cols_within(shift, w)
    sub_a, sub_h, v_, rr, af = A[:, r, c], H[:, r, c], V[:, r], rel[:, r, c], a_face[:, r, c]
    du, dv = ua[:, :, c] - ex, v_ - ey
    sub_h.sub_(_bump(du, dv + 0.01, 2.0 * ew, 1.5 * ew) * ((0.12 + 0.06 * au4 + 0.03 * au9) * rr))
    sub_h.add_(_bump(du, dv, 1.15 * ew, 0.8 * ew) * (0.05 * rr))
    xe, ye = du / ew, dv / ew
    kk = (1 - xe * xe).clamp_(min=0.0)
    # AU5 raises the upper lid (sclera shows above the iris); AU7 tightens and straightens the
    # lower lid; AU6 pushes the lower lid up; AU43 lets the upper lid droop
    ou = (P["eye_open"] * (1 + 1.6 * au5 - 0.35 * au7 - 0.5 * au6 - 0.6 * au43 - 0.3 * au4 - 0.55 * au9
                           - 0.3 * au64)).clamp(min=0.05)
    ol = (0.34 * (1 - 0.65 * au7 - 0.8 * au6 - 0.6 * au9) + 0.12 * au5).clamp(min=0.03)
    yu = -ou * kk.sqrt()
    yl = ol * kk.pow(0.6 + 0.8 * au7)                     # a tensed lower lid runs straight
    xo = (xe.abs() - 1.0) * ew
    a_eye = _alpha(torch.maximum(torch.minimum(ye - yu, yl - ye) * -ew, xo), ipx) * af
    sub_a.lerp_((0.62 + 0.35 * skin).clamp(max=0.95).expand_as(sub_a), a_eye)
    d = _hypot(xe - P["gaze_x"] * torch.sign(uf[:, :, c]), ye - P["gaze_y"] - 0.35 * au64).sub_(P["iris"]) * ew
    sub_a.lerp_(torch.full_like(sub_a, 0.16), _alpha(d, ipx) * a_eye)
    xo = (xe.abs() - 1.05) * ew
    d = torch.maximum((ye - yu).abs_().sub_(0.14) * ew, xo)                    # the lash line
    sub_a.lerp_(torch.full_like(sub_a, 0.1), _alpha(d, ipx) * (0.8 * af))
    crease = _band(ye - yu * 1.1 + 0.55 + 0.25 * au5, 0.22) * _step(1.2 - xe.abs())
    sub_h.sub_(crease * (0.035 * rr))
    # the lower lid's bulge (AU6, AU7)
    sub_h.add_(_band(ye - yl - 0.28, 0.3) * _step(1.15 - xe.abs()) * ((0.015 + 0.045 * au6 + 0.03 * au7) * rr))
    # AU6: crow's feet, creases fanning out of the outer corner
    dx = (du - 1.05 * ew).clamp_(min=0.0)
    fan = torch.cos((dv / (dx + 0.02)).clamp_(-1.2, 1.2) * 5.0).clamp_(min=0).pow_(3)
    fan.mul_(_band(dv, 1.8 * ew))          # the creases fade out above and below the eye
    sub_h.sub_(fan * _band(dx - 0.09, 0.08) * ((0.035 * au6 + 0.01 * age) * rr))

    # --- cheeks: raised and bulging with AU6 (and a little with AU12)
    cv = ey + 0.34 - 0.13 * au6 - 0.05 * au12 - 0.04 * au9
    r = fr.rows(cv - 0.3, cv + 0.3)
    c = fr.cols_within(shift, ex + 0.34 + fr.px)
    H[:, r, c] += (_bump(ua[:, :, c] - (ex + 0.04), V[:, r] - cv, 0.3, 0.24)
                   * ((0.03 + 0.13 * au6 + 0.05 * au12 + 0.04 * au9) * rel[:, r, c]))

    # --- mouth and nose geometry (the folds need both)
    mw = P["mouth_w"] * (1 + 0.55 * au20 + 0.3 * au12 - 0.2 * au24 - 0.15 * au23 + 0.1 * au14 - 0.22 * au26)
    my = P["mouth_y"] - 0.035 * au10 - 0.03 * au17 + 0.02 * au26
    c_up = -0.16 * au12 - 0.01 * au6 + 0.03 * au10 + 0.02 * au20     # corners: pulled up (a U)
    c_dn = 0.15 * au15 + 0.02 * au20 + 0.02 * au17                   # pulled down at the ends (an arch)
    cdy = c_up + c_dn
    ny = P["nose_y"] - 0.025 * au9 - 0.01 * au10
    nw = P["nose_w"] * (1 + 0.25 * au9 + 0.1 * au10)

    # --- nose: bridge, tip, wings, nostrils; AU9 wrinkles its root
    r = fr.rows(ey - 0.12, ny + 0.12)
    ra, rb = 0.03 + 0.01 * au9, 0.017 + 0.006 * au9                   # the nostrils' half-axes
    w = torch.maximum(torch.maximum(0.8 * nw + 0.07, 0.55 * nw + ra * (1 + 0.5 * fr.px / torch.minimum(ra, rb))),
                      torch.full_like(nw, 0.14)) + fr.px                 # wings, nostrils, root
    c = fr.cols_within(0.2 * yaw, w)
    sub_a, sub_h, v_, rr, af = A[:, r, c], H[:, r, c], V[:, r], rel[:, r, c], a_face[:, r, c]
    un = U[:, :, c] - 0.2 * yaw
    t = ((v_ - (ey - 0.05)) / (ny - ey + 0.05)).clamp(0, 1)
    nh = P["nose_h"] * rr
    bridge = _band(un, 0.09 + 0.05 * t) * _step((v_ - ey + 0.08) / 0.12) * _step((ny + 0.02 - v_) / 0.05)
    sub_h.add_(bridge * (0.03 + 0.07 * t) * nh)
    sub_h.add_(_bump(un, v_ - ny + 0.01, 0.09, 0.075) * (0.11 * nh))
    sub_h.add_(_bump(un.abs() - nw * 0.8, v_ - ny - 0.015, 0.07, 0.06) * ((0.03 + 0.03 * au9) * nh))
    d = _ellipse_dist(un.abs() - nw * 0.55, v_ - ny - 0.035, ra, rb)
    sub_a.mul_(1 - _alpha(d, ipx) * ((0.3 + 0.2 * au9) * af))
    wrinkles = torch.cos((v_ - ey - 0.02) * (2 * math.pi / 0.045)).clamp_(min=0).pow_(3)
    root = _band(un, 0.14) * _step((v_ - ey + 0.06) / 0.05) * _step((ey + 0.15 - v_) / 0.05)
    sub_h.sub_(wrinkles * root * (0.12 * au9 * rr))
    sub_a.mul_(1 - root * (0.35 * au9))

    # --- nasolabial folds: deepened by the smile, the raised upper lip, the nose wrinkle
    u0, v0 = nw + 0.05, ny - 0.02
    u1, v1 = mw + 0.06, my + cdy + 0.08 + 0.03 * au15
    r = fr.rows(v0 - 0.02, v1 + 0.04)
    w = torch.maximum(u0, u1) + (0.0125 + 0.16) + fr.px      # the line bows out by 0.0125 at most
    c = fr.cols_within(shift, w)
    sub_h, v_, ua_c = H[:, r, c], V[:, r], ua[:, :, c]
    t = ((v_ - v0) / (v1 - v0)).clamp(0, 1)
    line_u = u0 + t * (u1 - u0) + 0.05 * t * (1 - t)
    span = _step(t * 6) * _step((1 - t) * 5)
    k = (0.004 + 0.012 * age + 0.065 * au12 + 0.09 * au10 + 0.07 * au9 + 0.03 * au6 + 0.025 * au20) * rel[:, r, c]
    sub_h.sub_(_band(ua_c - line_u, 0.05) * span * k)
    sub_h.add_(_band(ua_c - line_u - 0.08, 0.08) * span * (0.8 * k))

    # --- mouth: lip corners up (AU12) or down (AU15), one-sided pull (AU14), upper lip raised
    # (AU10), stretched (AU20), tightened and pressed (AU23/24), parted (AU25), jaw drop (AU26)
    c = fr.cols_within(shift, 1.2 * mw + fr.px)       # the corner creases reach |xm| 1.17
    gup = 0.004 + 0.09 * au10 + 0.02 * au25 + 0.06 * au12 * au25            # opening above the lip line
    gdn = 0.004 + 0.025 * au25 + 0.3 * au26 + 0.07 * au20 * au25 + 0.05 * au12 * au25   # and below
    press = (1 - 0.7 * au24.clamp(max=1) - 0.4 * au23.clamp(max=1) - 0.4 * au12.clamp(max=1))
    ul = P["lip_t"] * press * (1 - 0.3 * au10.clamp(max=1))
    ll = P["lip_t"] * 1.3 * press * (1 + 0.4 * au17)
    # the lip line mc (below) over |xm| <= 1.2 lies between these; the lips, the opening and the
    # creases reach at most 0.2 beyond it
    mc_lo = my + 1.44 * c_up.clamp(max=0) + 1.73 * c_dn.clamp(max=0) - 0.12 * au14.clamp(min=0)
    mc_hi = my + 1.44 * c_up.clamp(min=0) + 1.73 * c_dn.clamp(min=0)
    r = fr.rows(mc_lo - gup.abs() - 1.1 * ul.abs() - 0.2, mc_hi + gdn.abs() + 1.2 * ll.abs() + 0.2)
    sub_a, sub_h, v_, af = A[:, r, c], H[:, r, c], V[:, r], a_face[:, r, c]
    xm = uf[:, :, c] / mw
    km = (1 - xm * xm).clamp(min=0.0)
    one = (xm * P["side"]).clamp(min=0.0)
    mc = my + c_up * xm * xm + c_dn * xm.abs().pow(3) - 0.08 * au14 * one * one
    dy = v_ - mc
    shp = (1 - xm.abs().pow(2.0 + 4.0 * au20 + 2.0 * au10)).clamp(min=0.0)  # stretched or raised: squarer
    open_top = mc - gup * shp
    open_bot = mc + gdn * shp.pow(0.7)
    xo = (xm.abs() - 1) * mw
    lips_d = torch.maximum(torch.maximum(open_top - ul * km.sqrt() - v_, v_ - open_bot - ll * km.sqrt()), xo)
    sub_a.lerp_((skin * P["lip_dark"]).expand_as(sub_a), _alpha(lips_d, ipx) * af)
    lip_h = _band(v_ - (open_top - 0.5 * ul), 0.6 * ul + 0.01) + _band(v_ - (open_bot + 0.55 * ll), 0.65 * ll + 0.01)
    sub_h.add_(lip_h * _step(1.05 - xm.abs()) * ((0.045 + 0.02 * au17 + 0.015 * au24) * relief))
    # the opening: a shadowed cavity, the upper tooth row along its top
    a_open = _alpha(torch.maximum(torch.maximum(open_top - v_, v_ - open_bot), xo + 0.01), ipx) * af
    sub_h.sub_(a_open * ((0.06 + 0.3 * (gup + gdn)) * relief))
    sub_a.lerp_(torch.full_like(sub_a, 0.08), a_open)
    teeth_vis = ((au25 + 0.6 * au10 + 0.5 * au12 - 0.15) * 2.5).clamp(0, 1)
    th = torch.minimum(gup + gdn, 0.05 + 0.6 * gup + 0.4 * au12 * (gup + gdn))
    a_teeth = _alpha(v_ - (open_top + th * shp), ipx) * a_open * teeth_vis
    # lips stretched back (AU20) also bare the lower row along the bottom of the opening
    lower_vis = ((au20 * au25 - 0.1) * 2.0).clamp(0, 1)
    th_l = torch.minimum(0.5 * (gup + gdn), torch.full_like(gdn, 0.04))
    a_low = _alpha(open_bot - th_l * shp - v_, ipx) * a_open * lower_vis
    a_teeth = torch.maximum(a_teeth, a_low)
    sub_a.lerp_(torch.full_like(sub_a, 0.88), a_teeth)
    sub_h.add_(a_teeth * ((0.03 + 0.3 * (gup + gdn)) * relief))
    # the seam between closed lips
    d = torch.maximum(dy.abs() - 0.008, xo)
    sub_a.mul_(1 - _alpha(d, ipx) * ((0.45 - 3.0 * (gup + gdn)).clamp(min=0) * af))
    # AU23/24: pressed lips bulge above and below the line; AU15: creases below the corners
    sub_h.add_(_band(dy + 0.1, 0.08) * km * ((0.02 * (au23 + au24)) * relief))
    corner = _band(xm.abs() - 1.05, 0.12) * _band(dy - 0.07, 0.08)
    sub_h.sub_(corner * ((0.03 * au15 + 0.01 * age) * relief))

    # --- chin: the boss, raised by AU17; the crease under the lower lip
    chin_v = cy + fb * 0.82 + jaw * 0.9 - 0.03 * au17
    lower = my + gdn + P["lip_t"] * 1.3
    crease = lower + 0.08 - 0.02 * au17
    r = fr.rows(torch.minimum(chin_v - 0.15, crease - 0.05), torch.maximum(chin_v + 0.15, crease + 0.05))
    c = fr.cols_within(shift, 0.24 + fr.px)
    sub_h, v_, rr, uf_c = H[:, r, c], V[:, r], rel[:, r, c], uf[:, :, c]
    sub_h.add_(_bump(uf_c, v_ - chin_v, 0.24, 0.15) * ((0.06 + 0.1 * au17) * rr))
    sub_h.sub_(_band(v_ - crease, 0.05) * _band(uf_c, 0.22) * ((0.015 + 0.02 * au17) * rr))

    img = _shade(A, H, P, fr)
    draw_occluders(img, P, fr, U, V, ua, ex, ey, ew, skin)
    return img


def _shade(A: torch.Tensor, H: torch.Tensor, P: dict[str, torch.Tensor], fr: _Frame) -> torch.Tensor:
    """Light the relief: Lambert from the height field's normals, a cavity term (valleys
    darker than their neighbourhood) and a faint specular highlight, times the albedo."""
    q = F.pad(H.unsqueeze(1), (2, 2, 2, 2), mode="replicate").squeeze(1)
    gu = (q[:, 2:-2, 3:-1] - q[:, 2:-2, 1:-3]).mul_(0.5 / fr.px).clamp_(-3.0, 3.0)
    gv = (q[:, 3:-1, 2:-2] - q[:, 1:-3, 2:-2]).mul_(0.5 / fr.px).clamp_(-3.0, 3.0)
    # (in-place where the same arithmetic allows: the canvas-sized temporaries cost as much
    # as the sums)
    tmp = gv * gv
    inv = (gu * gu).add_(tmp).add_(1.0).rsqrt_()
    az, el = P["light_az"], P["light_el"]
    lx, ly, lz = torch.sin(az) * torch.cos(el), -torch.sin(el), torch.cos(az) * torch.cos(el)
    ndotl = torch.sub(lz, gu * lx).sub_(torch.mul(gv, ly, out=tmp)).mul_(inv)
    diffuse = ndotl.clamp_(min=0.0).div_(lz.clamp(min=0.2))
    amb = P["ambient"]
    shade = diffuse.mul_(1 - amb).add_(amb)
    # cavity: how far a point lies below its 5x5 neighbourhood's (tent-weighted) mean height
    rows = (q[:, :, :-4] + q[:, :, 4:]).add_((q[:, :, 1:-3] + q[:, :, 3:-1]).mul_(2)).add_(q[:, :, 2:-2] * 3)
    blur = ((rows[:, :-4] + rows[:, 4:]).add_((rows[:, 1:-3] + rows[:, 3:-1]).mul_(2)).add_(rows[:, 2:-2] * 3)
            .mul_(1.0 / 81))
    cav = blur.sub_(H).clamp_(min=0.0)
    shade.mul_(cav.mul_(9.0).clamp_(max=0.6).neg_().add_(1.0))       # -x + 1 is 1 - x exactly
    img = A.mul_(shade.clamp_(0.0, 1.35))
    # specular: the half vector between the light and the viewer, to the 24th power
    hx, hy, hz = lx, ly, lz + 1.0
    hn = torch.rsqrt(hx * hx + hy * hy + hz * hz)
    s1 = torch.sub(hz, torch.mul(gu, hx, out=cav)).sub_(torch.mul(gv, hy, out=tmp)).mul_(inv).mul_(hn).clamp_(min=0.0)
    s8 = s1.square_().square_().square_()
    return img.add_(torch.mul(s8, s8, out=tmp).mul_(s8).mul_(0.06))


def draw(params: Params, *, size: int = 48, box: tuple[int, int, int] | None = None, seed: int = 0,
         chunk: int = 128) -> np.ndarray:
    """Render faces from ``params`` (arrays of length N) into uint8 N×size×size; ``box`` =
    (top, left, side) of the face frame in the image (default: the whole image, FER2013's
    framing); ``seed`` drives pixel noise, background texture and skin mottling."""
    # bicubic: a bilinear warp softens the 1-2 pixel features a shaded face has
    return draw_chunks(params, _draw_canvas, size=size, box=box, seed=seed, chunk=chunk, pose_mode="bicubic",
                       fields=2)
