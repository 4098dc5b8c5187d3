"""Zero-cost proxies: scores of an untrained network from one Training batch, each as its paper
defines it (and as the reference implementation of Abdelfattah et al., "Zero-Cost Proxies for
Lightweight NAS", ICLR 2021, computes it). Higher is better for every score here.

* ``naswot`` (Mellor et al., "Neural Architecture Search without Training", ICML 2021): each
  ReLU's input, thresholded at 0, gives every image a binary code; ``K[i, j]`` counts the units
  where images i and j agree (summed over the ReLUs: ``c cᵀ + (1−c)(1−c)ᵀ``) and the score is
  ``log |det K|``. Networks that tell the images of a batch apart score high.
* ``synflow`` (Tanaka et al. 2020, the data-free form Abdelfattah et al. use): batch norm removed,
  every parameter replaced by its absolute value, in float64, one all-ones input; ``R`` = the sum
  of the outputs; score = Σ over conv and linear weights of ``|θ ⊙ ∂R/∂θ|``.
* ``snip`` (Lee et al. 2019): Σ ``|θ ⊙ ∂L/∂θ|`` over conv and linear weights, L the cross-entropy
  of the batch.
* ``grad_norm``: Σ over conv and linear layers of the L2 norm of ``∂L/∂θ``.
* ``jacob_cov`` (Mellor et al. 2020, the first version of NASWOT): the Jacobian of the summed
  outputs with respect to each input image, flattened; the eigenvalues ``σ`` of the correlation
  matrix of those rows score ``−Σ (log(σ + k) + 1/(σ + k))``, k = 1e-5.

Each function takes a freshly built network (it is changed: weights made absolute, gradients
left) and restores nothing; :func:`score_network` copies the network first.
"""
from __future__ import annotations

import copy
import math
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PROXIES", "naswot", "naswot_kernel", "synflow", "snip", "grad_norm", "jacob_cov", "score_network",
           "rank_vote"]


def _logits(out: torch.Tensor | tuple) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def naswot_kernel(codes: Sequence[torch.Tensor]) -> torch.Tensor:
    """The NASWOT kernel of binary activation codes: for each layer's N×units 0/1 matrix ``c``,
    ``c cᵀ + (1 − c)(1 − c)ᵀ`` (how many units two images agree on), summed over the layers."""
    n = codes[0].shape[0]
    K = torch.zeros(n, n, dtype=torch.float64)
    for c in codes:
        c = c.reshape(n, -1).double()
        K += c @ c.t() + (1.0 - c) @ (1.0 - c).t()
    return K


@torch.no_grad()
def naswot(model: nn.Module, x: torch.Tensor) -> float:
    """``log |det K|`` of the batch's NASWOT kernel (see the module docstring)."""
    codes: list[torch.Tensor] = []

    def hook(_m: nn.Module, inp: tuple, _out: torch.Tensor) -> None:
        codes.append((inp[0].detach() > 0).reshape(inp[0].shape[0], -1).cpu())

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    if not codes:
        return float("nan")
    return float(torch.linalg.slogdet(naswot_kernel(codes))[1])


def _without_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every batch-norm layer replaced by the identity."""
    net = copy.deepcopy(model)
    for name, m in list(net.named_modules()):
        for child_name, child in list(m.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                setattr(m, child_name, nn.Identity())
    return net


def synflow(model: nn.Module, input_shape: Sequence[int]) -> float:
    """Synaptic flow of the data-free, batch-norm-free, absolute-valued network (float64)."""
    net = _without_batchnorm(model).double()
    with torch.no_grad():
        for p in net.state_dict().values():
            if p.is_floating_point():
                p.abs_()
    net.zero_grad(set_to_none=True)
    x = torch.ones(1, *input_shape, dtype=torch.float64, device=next(net.parameters()).device)
    torch.sum(_logits(net(x))).backward()
    return float(sum((w.detach() * w.grad).abs().sum() for w in _weights(net) if w.grad is not None))


def _loss_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    F.cross_entropy(_logits(model(x)), y).backward()
    return _weights(model)


def snip(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Σ ``|θ ⊙ ∂L/∂θ|`` over conv and linear weights."""
    return float(sum((w.detach() * w.grad).abs().sum() for w in _loss_grads(model, x, y) if w.grad is not None))


def grad_norm(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Σ over conv and linear layers of ``‖∂L/∂θ‖₂``."""
    return float(sum(w.grad.norm() for w in _loss_grads(model, x, y) if w.grad is not None))


def jacob_cov(model: nn.Module, x: torch.Tensor) -> float:
    """``−Σ (log(σ + k) + 1/(σ + k))`` over the eigenvalues of the correlation matrix of the
    per-image input Jacobians (k = 1e-5); NaN when the correlations are undefined."""
    model.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    out = _logits(model(x))
    out.backward(torch.ones_like(out))
    jac = x.grad.detach().reshape(x.shape[0], -1).double().cpu().numpy()
    with np.errstate(all="ignore"):
        corr = np.corrcoef(jac)
    if not np.isfinite(corr).all():
        return float("nan")
    v = np.linalg.eigvalsh((corr + corr.T) / 2)  # symmetric: real eigenvalues
    k = 1e-5
    with np.errstate(all="ignore"):
        return float(-np.sum(np.log(v + k) + 1.0 / (v + k)))


#: name -> (model, images, labels) -> score
PROXIES: dict[str, Callable[[nn.Module, torch.Tensor, torch.Tensor], float]] = {
    "naswot": lambda m, x, y: naswot(m, x),
    "synflow": lambda m, x, y: synflow(m, x.shape[1:]),
    "snip": lambda m, x, y: snip(m, x, y),
    "grad_norm": lambda m, x, y: grad_norm(m, x, y),
    "jacob_cov": lambda m, x, y: jacob_cov(m, x),
}


def score_network(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                  proxies: Sequence[str] = tuple(PROXIES)) -> dict[str, float]:
    """Every proxy of an untrained ``model`` on the batch ``(x, y)``, each on its own copy (in
    training mode, as the reference implementation scores networks; drop-path off)."""
    out = {}
    for name in proxies:
        net = copy.deepcopy(model).train()
        if hasattr(net, "drop_path_prob"):
            net.drop_path_prob = 0.0
        out[name] = PROXIES[name](net, x, y)
    return out


def rank_vote(scores: Sequence[Mapping[str, float]], proxies: Sequence[str]) -> list[float]:
    """Per candidate, the mean over ``proxies`` of its rank among the candidates (1 = lowest
    score; NaN scores rank lowest): the vote by which ``--zc_proxy vote`` keeps a cell."""
    n = len(scores)
    total = np.zeros(n)
    for p in proxies:
        vals = np.array([s[p] if math.isfinite(s[p]) else -np.inf for s in scores])
        order = np.argsort(vals, kind="stable")
        ranks = np.empty(n)
        ranks[order] = np.arange(1, n + 1)
        total += ranks
    return (total / max(len(proxies), 1)).tolist()
