"""Training that survives noisy labels: the ``--robust`` methods of every classification stage.

Each method changes only the loss of a step (:meth:`nas.engine.trainer.Classification.step`);
the loop, resume, DDP and the NaN policy stay the engine's. They combine with the relabelling
rules, which rewrite a batch's targets before the loss (the target hook).

``eac`` — Erasing Attention Consistency (Zhang, Wang, Ling and Deng, ECCV 2022, "Learn From
All"). It never changes a label. The batch is randomly erased (torchvision's RandomErasing
with the paper's scale 0.02–0.25: probability 0.5, aspect ratio 0.3–3.3, erased to the mean),
and its horizontal flip is erased independently, as the authors' code does for noisy labels.
Both go through the network; the cross-entropy is taken on the first only (their "imbalanced
framework"), and the class activation maps of the two, the last feature map weighted by the
classifier's weights (held fixed in the maps, without bias), must agree once the second is
flipped back: ``loss = CE(f(x1), y) + λ · mean((CAM(x1) − flip(CAM(x2)))²)``, λ = 5. A network
that memorises a flipped label does it from a part of the face; the consistency term makes that
part matter on both sides and under erasing. It needs a head of global pooling and one linear
layer (the genotype networks); the baselines pool to a grid and classify with an MLP, so their
maps are not defined (:func:`supports_cams`).

``smallloss`` — small-loss selection, the family of Co-teaching (Han et al., NeurIPS 2018): early
in training a network fits the clean labels before the flipped ones, so the samples with the
largest loss in a batch are the likeliest to be mislabelled. Each step keeps the
``1 − τ(e)`` share of the batch with the smallest loss and drops the rest from the gradient;
``τ(e) = τ_max · min(1, e / T_k)`` rises over the first ``T_k`` epochs (``--robust_ramp``, 10)
to ``τ_max`` (``--robust_forget``: the noise rate you suspect, 0.3 by default). One network
selects for itself (no peer network): the single-network form, at the cost of one forward pass.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from nas.runtime.errors import FerNasError

__all__ = ["ROBUST_METHODS", "supports_cams", "random_erasing", "class_activation_maps", "flip_consistency",
           "forget_rate", "small_loss_mask", "check_robust"]

ROBUST_METHODS = ("none", "eac", "smallloss")


def supports_cams(model: nn.Module) -> bool:
    """True when ``model``'s head is global pooling and one linear layer and its forward can
    hand back the last feature map (``forward(x, features=True)``): class activation maps exist."""
    return bool(getattr(model, "supports_cams", False)) and isinstance(getattr(model, "classifier", None), nn.Linear)


def check_robust(method: str, model: nn.Module | None = None, arch: str = "the model") -> None:
    """One-line errors: an unknown method, or EAC on a network without class activation maps."""
    if method not in ROBUST_METHODS:
        raise FerNasError(f"--robust {method!r}: choose from {', '.join(ROBUST_METHODS)}")
    if method == "eac" and model is not None and not supports_cams(model):
        raise FerNasError(f"--robust eac needs class activation maps, a head of global pooling and one linear layer "
                          f"(the genotype networks); {arch} pools to a grid and classifies with an MLP")


def random_erasing(x: torch.Tensor, generator: torch.Generator | None, *, p: float = 0.5,
                   scale: tuple[float, float] = (0.02, 0.25), ratio: tuple[float, float] = (0.3, 3.3),
                   value: float = 0.0) -> torch.Tensor:
    """torchvision's RandomErasing, batched: with probability ``p`` per image, a rectangle of
    ``scale`` of the area and aspect ratio in ``ratio`` (log-uniform) is set to ``value`` (0:
    the mean of normalised images). Where torchvision retries a rectangle that does not fit (up to
    ten times), this clips its sides to the image. Draws from ``generator`` on ``x``'s device."""
    B, _, H, W = x.shape
    dev = x.device
    u = torch.rand(B, 5, generator=generator, device=dev)
    area = H * W * (scale[0] + (scale[1] - scale[0]) * u[:, 0])
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    aspect = torch.exp(log_r)
    h = torch.sqrt(area * aspect).round().clamp(1, H)
    w = torch.sqrt(area / aspect).round().clamp(1, W)
    top = (u[:, 2] * (H - h + 1)).floor()
    left = (u[:, 3] * (W - w + 1)).floor()
    on = u[:, 4] < p
    rows = torch.arange(H, device=dev).view(1, H, 1)
    cols = torch.arange(W, device=dev).view(1, 1, W)
    mask = ((rows >= top.view(B, 1, 1)) & (rows < (top + h).view(B, 1, 1))
            & (cols >= left.view(B, 1, 1)) & (cols < (left + w).view(B, 1, 1)) & on.view(B, 1, 1))
    return x.masked_fill(mask.unsqueeze(1), value)


def class_activation_maps(features: torch.Tensor, classifier: nn.Linear) -> torch.Tensor:
    """B×K×H×W maps ``Σ_c W[k, c] · F[b, c]`` of a B×C×H×W feature map under the classifier's
    weights, which are held fixed (detached, no bias), as in EAC."""
    return torch.einsum("bchw,kc->bkhw", features.float(), classifier.weight.detach().float())


def flip_consistency(cams: torch.Tensor, cams_of_flipped: torch.Tensor) -> torch.Tensor:
    """The mean squared difference between the maps of images and the maps of their horizontal
    flips, flipped back (0 for a network whose maps flip with its input)."""
    return F.mse_loss(cams, torch.flip(cams_of_flipped, dims=[-1]))


def forget_rate(epoch: int, max_rate: float, ramp_epochs: int) -> float:
    """The share of each batch small-loss selection drops at (0-based) ``epoch``: rises linearly to
    ``max_rate`` over ``ramp_epochs`` epochs (Co-teaching's schedule), then stays."""
    if ramp_epochs <= 0:
        return float(max_rate)
    return float(max_rate) * min(1.0, epoch / ramp_epochs)


def small_loss_mask(losses: torch.Tensor, keep: float) -> torch.Tensor:
    """A float mask (1 = kept) of the ``ceil(keep · B)`` samples with the smallest loss (at least
    one), ties broken by position; on the device, no host sync."""
    B = losses.shape[0]
    k = max(1, min(B, math.ceil(keep * B - 1e-9)))
    order = torch.argsort(losses.detach(), stable=True)
    mask = torch.zeros_like(losses, dtype=torch.float32)
    mask[order[:k]] = 1.0
    return mask
