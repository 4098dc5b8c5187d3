"""Batched, seeded augmentation on whatever device the batch is on.

A training batch is a uint8 B×1×H×W slice of the in-memory dataset. One call draws
every random parameter for the whole batch from a ``torch.Generator`` (on the
batch's device) and applies them with tensor operations: there is no per-sample
Python loop and no PIL. Without rotation/translation/scale, crop and flip are an
exact integer gather; with them, crop, flip and the affine transform are folded
into one matrix per sample and applied by a single ``grid_sample``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from nas.runtime.errors import FerNasError

__all__ = ["BatchAugment", "normalize", "eval_views", "EVAL_MODES"]

EVAL_MODES = ("none", "center", "tencrop")


def normalize(x: torch.Tensor, mean: float = 0.5, std: float = 0.25) -> torch.Tensor:
    """uint8 images -> float32 ``(x/255 - mean) / std``."""
    return (x.float() / 255.0 - mean) / std


def _check_crop(x: torch.Tensor, crop: int) -> tuple[int, int]:
    if x.dim() != 4:
        raise ValueError(f"expected a B×C×H×W batch, got shape {tuple(x.shape)}")
    H, W = int(x.shape[-2]), int(x.shape[-1])
    if crop > H or crop > W:
        raise FerNasError(f"crop {crop} is larger than the {W}x{H} images")
    return H, W


class BatchAugment:
    """Training augmentation: random crop (``crop`` from H×W), horizontal flip (p=0.5),
    rotation (±``rotate`` degrees), translation (±``translate`` of the size), scale
    (uniform in ``scale``), brightness and contrast jitter (factors in 1±value, as
    torchvision's ColorJitter), cutout (a ``cutout``-pixel square set to the mean,
    0 = off), then normalisation. Call with ``(uint8 B×C×H×W, generator)``; returns
    float32 B×C×crop×crop on the input's device. Same generator state -> same output.
    """

    def __init__(self, crop: int = 44, flip: bool = True, brightness: float = 0.2, contrast: float = 0.2,
                 rotate: float = 10.0, translate: float = 0.1, scale: tuple[float, float] = (0.9, 1.1),
                 cutout: int = 0, mean: float = 0.5, std: float = 0.25):
        self.crop, self.flip = int(crop), bool(flip)
        self.brightness, self.contrast = float(brightness), float(contrast)
        self.rotate, self.translate = float(rotate), float(translate)
        self.scale = (float(scale[0]), float(scale[1]))
        self.cutout, self.mean, self.std = int(cutout), float(mean), float(std)

    @property
    def affine(self) -> bool:
        """Whether a rotation, translation or scaling is asked for (else the affine warp is skipped)."""
        return self.rotate != 0 or self.translate != 0 or self.scale != (1.0, 1.0)

    def __repr__(self) -> str:
        return (f"BatchAugment(crop={self.crop}, flip={self.flip}, brightness={self.brightness}, "
                f"contrast={self.contrast}, rotate={self.rotate}, translate={self.translate}, scale={self.scale}, "
                f"cutout={self.cutout}, mean={self.mean}, std={self.std})")

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        H, W = _check_crop(x, self.crop)
        B, dev, c = x.shape[0], x.device, self.crop

        def uniform(lo: float, hi: float) -> torch.Tensor:
            return lo + (hi - lo) * torch.rand(B, generator=generator, device=dev)

        top = torch.randint(0, H - c + 1, (B,), generator=generator, device=dev)
        left = torch.randint(0, W - c + 1, (B,), generator=generator, device=dev)
        flip = uniform(0, 1) < 0.5 if self.flip else torch.zeros(B, dtype=torch.bool, device=dev)
        if self.affine:
            t = self.translate
            out = affine_crop(x, top, left, flip, c, angle=uniform(-self.rotate, self.rotate),
                              scale=uniform(*self.scale), tx=uniform(-t, t) * W, ty=uniform(-t, t) * H)
        else:
            out = crop_flip(x, top, left, flip, c).float()
        # in-place passes over the batch: these elementwise steps cost more than the crop itself
        if self.brightness > 0:
            b = uniform(max(0.0, 1 - self.brightness), 1 + self.brightness).view(B, 1, 1, 1)
            out.mul_(b / 255.0).clamp_(0, 1)
        else:
            out.div_(255.0)
        if self.contrast > 0:  # blend with the image mean, as torchvision's adjust_contrast
            f = uniform(max(0.0, 1 - self.contrast), 1 + self.contrast).view(B, 1, 1, 1)
            m = out.mean(dim=(1, 2, 3), keepdim=True)
            out = torch.addcmul(m * (1 - f), out, f).clamp_(0, 1)
        out.sub_(self.mean).div_(self.std)
        if self.cutout > 0:
            out = out.masked_fill(self._cutout_mask(B, c, dev, generator), 0.0)
        return out

    def _cutout_mask(self, B: int, c: int, dev: torch.device, g: torch.Generator | None) -> torch.Tensor:
        """B×1×c×c bool: a ``cutout``-sided square around a random centre, clipped at the border."""
        cy = torch.randint(0, c, (B, 1), generator=g, device=dev) - self.cutout // 2
        cx = torch.randint(0, c, (B, 1), generator=g, device=dev) - self.cutout // 2
        r = torch.arange(c, device=dev).view(1, c)
        rows = (r >= cy) & (r < cy + self.cutout)
        cols = (r >= cx) & (r < cx + self.cutout)
        return (rows[:, :, None] & cols[:, None, :]).unsqueeze(1)


def crop_flip(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor,
              crop: int) -> torch.Tensor:
    """Exact per-sample crop (``top``, ``left`` int64 B) and horizontal flip (bool B) by one gather."""
    B, C, H, W = x.shape
    ar = torch.arange(crop, device=x.device)
    rows = top[:, None] + ar  # B×crop
    cols = left[:, None] + torch.where(flip[:, None], crop - 1 - ar, ar)
    flat = (rows[:, :, None] * W + cols[:, None, :]).view(B, 1, crop * crop).expand(B, C, crop * crop)
    return x.reshape(B, C, H * W).gather(2, flat).view(B, C, crop, crop)


def affine_crop(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor, crop: int, *,
                angle: torch.Tensor, scale: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    """Rotate by ``angle`` degrees (counter-clockwise) and scale about the image centre, shift by (``tx``, ``ty``)
    pixels, then crop and flip as :func:`crop_flip` - all as one matrix per sample and one
    bilinear ``grid_sample`` (zeros outside). Float32 out, same 0..255 range as ``x``."""
    B = x.shape[0]
    H, W = x.shape[-2:]
    dev = x.device
    f32 = dict(dtype=torch.float32, device=dev)

    def mat(a, b_, c_, d, e, f_):  # batched 3×3 [[a b c] [d e f] [0 0 1]]
        z, o = torch.zeros(B, **f32), torch.ones(B, **f32)
        rows = [torch.stack([a, b_, c_], -1), torch.stack([d, e, f_], -1), torch.stack([z, z, o], -1)]
        return torch.stack(rows, 1)

    z, o = torch.zeros(B, **f32), torch.ones(B, **f32)
    # output normalised coords -> output pixel coords (align_corners=False convention)
    out_px = mat(o * crop / 2, z, o * (crop - 1) / 2, z, o * crop / 2, o * (crop - 1) / 2)
    fl = flip.to(torch.float32)
    flip_m = mat(1 - 2 * fl, z, fl * (crop - 1), z, o, z)
    crop_m = mat(o, z, left.to(torch.float32), z, o, top.to(torch.float32))
    # inverse of p -> c + s R (p - c) + t: p_in = c + R(-a)/s (p_out - c - t); the y axis points
    # down, so a = -angle makes a positive angle turn the face counter-clockwise (as torchvision)
    a = angle.to(torch.float32) * (-math.pi / 180)
    cos, sin = torch.cos(a) / scale, torch.sin(a) / scale
    cx, cy = (W - 1) / 2, (H - 1) / 2
    px, py = cx + tx, cy + ty
    inv = mat(cos, sin, cx - cos * px - sin * py, -sin, cos, cy + sin * px - cos * py)
    in_norm = mat(o * 2 / W, z, o * (1 / W - 1), z, o * 2 / H, o * (1 / H - 1))
    theta = (in_norm @ inv @ crop_m @ flip_m @ out_px)[:, :2]
    grid = F.affine_grid(theta, [B, x.shape[1], crop, crop], align_corners=False)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def eval_views(x: torch.Tensor, mode: str = "center", crop: int = 44, mean: float = 0.5,
               std: float = 0.25) -> torch.Tensor:
    """Evaluation views as one float32 V×B×C×h×w tensor: ``none`` (V=1, the whole image),
    ``center`` (V=1, centre crop) or ``tencrop`` (V=10: top-left, top-right, bottom-left,
    bottom-right, centre, then the same five of the flipped image, as torchvision's TenCrop)."""
    if mode not in EVAL_MODES:
        raise FerNasError(f"--tta {mode!r}: unknown evaluation view (choose from {', '.join(EVAL_MODES)})")
    if mode == "none":
        return normalize(x, mean, std).unsqueeze(0)
    H, W = _check_crop(x, crop)
    t, l_ = int(round((H - crop) / 2.0)), int(round((W - crop) / 2.0))
    if mode == "center":
        return normalize(x[..., t:t + crop, l_:l_ + crop], mean, std).unsqueeze(0)

    def five(img: torch.Tensor) -> list[torch.Tensor]:
        return [img[..., :crop, :crop], img[..., :crop, W - crop:], img[..., H - crop:, :crop],
                img[..., H - crop:, W - crop:], img[..., t:t + crop, l_:l_ + crop]]

    return normalize(torch.stack(five(x) + five(x.flip(-1))), mean, std)
