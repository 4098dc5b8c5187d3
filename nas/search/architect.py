"""The architecture step of differentiable search (DARTS).

First order (default): the architecture parameters follow the gradient of the
validation loss at the current weights. Second order (``unrolled=True``): they follow
the gradient of the validation loss after one virtual SGD step of the weights,

    grad_a L_val(w', a),   w' = w - eta * (momentum * v + grad_w L_train(w, a) + wd * w),

which is ``grad_a L_val(w', a) - eta * H v'`` with ``v' = grad_w' L_val(w', a)`` and
the mixed Hessian-vector product ``H v' = grad_a grad_w L_train . v'`` taken by central
finite differences at ``w +/- R v'`` (``R = 0.01 / |v'|``), as in DARTS.

The virtual forwards run through :func:`torch.func.functional_call` with copies of the
BN buffers, so the model's weights and running statistics are never touched by them.

``beta_decay_weight`` (β-DARTS, Ye et al. CVPR 2022, ``--strategy beta_darts``) adds
``weight * mean over the edges of both cells of logsumexp(alpha_e)`` to the validation
loss: the smooth maximum of each edge's architecture weights, which keeps their value and
spread from growing (the searcher sets the weight each epoch).

Optionally a parameter-aware regulariser is added to the validation loss:
``complexity_weight * sum_edges softmax(alpha_e) . cost / sum(cost)`` over every edge of
both cell types, ``cost`` being each candidate op's parameter count. (Auto-FERNet's code
applied its penalty to the first normal edge only; here every edge of both cells counts.)

Edges that SGAS has decided or pruned stop learning: their gradients are zeroed and
their values restored after the optimizer step (Adam's moments and weight decay would
otherwise keep moving them).
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, ContextManager

import torch
import torch.nn.functional as F
from torch.func import functional_call

from nas.engine.loop import UpdateGuard, nonfinite
from nas.engine.optim import build_optimizer
from nas.models.ops import op_param_count
from nas.runtime.distributed import all_reduce_mean_grads
from nas.search.supernet import UNDECIDED, SearchNetwork

__all__ = ["Architect", "complexity_costs"]


def complexity_costs(primitives: list[str]) -> torch.Tensor:
    """Relative parameter cost of each candidate op (parameter counts at C=12,
    normalised to sum 1)."""
    c = torch.tensor([float(op_param_count(p, 12)) for p in primitives])
    return c / c.sum() if c.sum() > 0 else c


class Architect:
    """Owns the architecture optimizer (Adam, betas (0.5, 0.999)) and performs one
    architecture update per call of :meth:`step`."""

    def __init__(self, model: SearchNetwork, arch_learning_rate: float = 3e-4, arch_weight_decay: float = 1e-3,
                 unrolled: bool = False, complexity_weight: float = 0.0,
                 autocast: Callable[[], ContextManager] | None = None, hvp_r: float = 0.01,
                 fused: bool | None = None) -> None:
        self.model = model
        self.unrolled = unrolled
        self.complexity_weight = float(complexity_weight)
        self.beta_decay_weight = 0.0
        self.autocast = autocast or nullcontext
        self.hvp_r = hvp_r
        # fused on CUDA (None): a non-finite step is skipped on the device, no host sync
        self.optimizer = build_optimizer(model.arch_parameters(), "adam", lr=arch_learning_rate, betas=(0.5, 0.999),
                                         weight_decay=arch_weight_decay, fused=fused)
        self._costs = complexity_costs(model.primitives)

    # -- losses -------------------------------------------------------------------------
    def complexity_loss(self) -> torch.Tensor:
        """Expected relative parameter cost summed over all edges of both cell types."""
        m = self.model
        costs = self._costs.to(m.alphas_normal.device, m.alphas_normal.dtype)
        return sum((F.softmax(a, dim=-1) @ costs).sum() for a in (m.alphas_normal, m.alphas_reduce))

    def beta_decay_loss(self) -> torch.Tensor:
        """β-DARTS's Beta-Decay term: the mean over every edge of both cell types of
        ``logsumexp`` of its architecture weights."""
        m = self.model
        return torch.cat([torch.logsumexp(a, dim=-1) for a in (m.alphas_normal, m.alphas_reduce)]).mean()

    def _val_objective(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(_full(logits), target)
        if self.complexity_weight:
            loss = loss + self.complexity_weight * self.complexity_loss()
        if self.beta_decay_weight:
            loss = loss + self.beta_decay_weight * self.beta_decay_loss()
        return loss

    def _forward(self, weights: dict[str, torch.Tensor] | None, buffers: dict[str, torch.Tensor] | None,
                 x: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            if weights is None:
                return self.model(x)
            return functional_call(self.model, {**weights, **buffers}, (x,))

    # -- the step ---------------------------------------------------------------------
    def step(self, x_train: torch.Tensor, y_train: torch.Tensor, x_valid: torch.Tensor, y_valid: torch.Tensor,
             eta: float, w_optimizer: torch.optim.Optimizer | None = None,
             guard: UpdateGuard | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One architecture update; ``eta`` is the weights' current learning rate and
        ``w_optimizer`` their optimizer (its momentum buffers and weight decay enter the
        virtual step). The update is applied only when the loss and the gradients are
        finite (``guard``, the loop's). Returns ``(validation loss, bad flag)`` as device
        tensors (no host sync)."""
        self.optimizer.zero_grad(set_to_none=True)
        if all(st != UNDECIDED for c in ("normal", "reduce") for st in self.model.edge_state[c]):
            # every edge decided (SGAS's last epochs): no architecture weight enters the forward
            # pass, so there is nothing to update; the validation loss is still reported
            with torch.no_grad():
                loss = self._val_objective(self._forward(None, None, x_valid), y_valid)
            return loss.detach(), torch.zeros((), device=loss.device)
        if self.unrolled:
            loss, grads = self.unrolled_grads(x_train, y_train, x_valid, y_valid, eta, w_optimizer)
            for p, g in zip(self.model.arch_parameters(), grads):
                p.grad = g
        else:
            loss = self._val_objective(self._forward(None, None, x_valid), y_valid)
            loss.backward(inputs=self.model.arch_parameters())
        params = self.model.arch_parameters()
        all_reduce_mean_grads(params)  # every rank keeps identical architecture weights
        grads = [p.grad for p in params if p.grad is not None]
        bad = guard.flag(loss, *grads) if guard is not None else nonfinite(loss, *grads)
        self._masked_step(bad)
        return loss.detach(), bad

    def _frozen_masks(self) -> list[torch.Tensor | None]:
        """Per architecture tensor, a bool mask of its frozen rows (None: none frozen), built from
        the edge states in Python and kept until they change (decisions come at epoch ends), so
        a step reads nothing back from the device."""
        m = self.model
        key = tuple(tuple(m.edge_state[c]) for c in ("normal", "reduce"))
        if getattr(self, "_masks_key", None) == key:
            return self._masks
        masks: list[torch.Tensor | None] = []
        for name in m.arch_parameter_names():
            p = getattr(m, name)
            cell = "normal" if name.endswith("normal") else "reduce"
            rows = (m.frozen_edges(cell) if name.startswith("alphas")
                    else [i for a, b in m.frozen_nodes(cell) for i in range(a, b)])
            if not rows:
                masks.append(None)
                continue
            mask = torch.zeros(p.shape[0], dtype=torch.bool)
            mask[rows] = True
            masks.append(mask.to(p.device))
        self._masks_key, self._masks = key, masks
        return masks

    def _masked_step(self, bad: torch.Tensor) -> None:
        params = self.model.arch_parameters()
        masks = self._frozen_masks()
        saved = []
        # masked_fill/where, not boolean indexing (which asks the device how many are set: a sync)
        for p, mask in zip(params, masks):
            if mask is not None:
                rows = mask.view(-1, *([1] * (p.dim() - 1)))
                if p.grad is not None:
                    p.grad.masked_fill_(rows, 0.0)
                saved.append(p.detach().clone())
            else:
                saved.append(None)
        UpdateGuard.apply(self.optimizer, bad)
        with torch.no_grad():
            for p, mask, s in zip(params, masks, saved):
                if mask is not None:
                    p.copy_(torch.where(mask.view(-1, *([1] * (p.dim() - 1))), s, p))

    # -- second order ------------------------------------------------------------------
    def unrolled_grads(self, x_train: torch.Tensor, y_train: torch.Tensor, x_valid: torch.Tensor,
                       y_valid: torch.Tensor, eta: float,
                       w_optimizer: torch.optim.Optimizer | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Validation loss at the virtual weights and the second-order architecture
        gradients (finite-difference Hessian-vector product)."""
        m = self.model
        named = m.named_weight_parameters()
        names = [n for n, _ in named]
        params = [p for _, p in named]
        arch = m.arch_parameters()
        buffers = {n: b.clone() for n, b in m.named_buffers()}
        hyper = _sgd_hyper(w_optimizer, names, params)

        # virtual step w' = w - eta * (momentum * v + g + wd * w)
        w = {n: p.detach() for n, p in zip(names, params)}
        w_req = {n: p.detach().requires_grad_(True) for n, p in w.items()}
        loss_t = F.cross_entropy(_full(self._forward(w_req, buffers, x_train)), y_train)
        g = torch.autograd.grad(loss_t, list(w_req.values()), allow_unused=True)
        w_new = {}
        for (n, p), gi in zip(w.items(), g):
            mom, wd, buf = hyper[n]
            step = wd * p if gi is None else gi + wd * p
            if buf is not None and mom:
                step = step + mom * buf
            w_new[n] = (p - eta * step).requires_grad_(True)

        loss_v = self._val_objective(self._forward(w_new, buffers, x_valid), y_valid)
        grads = torch.autograd.grad(loss_v, arch + list(w_new.values()), allow_unused=True)
        d_arch = [torch.zeros_like(a) if gr is None else gr for a, gr in zip(arch, grads[: len(arch)])]
        v = [torch.zeros_like(p) if gr is None else gr for p, gr in zip(w_new.values(), grads[len(arch):])]

        implicit = self.hessian_vector_product(w, v, buffers, x_train, y_train)
        return loss_v.detach(), [d - eta * h for d, h in zip(d_arch, implicit)]

    def hessian_vector_product(self, w: dict[str, torch.Tensor], v: list[torch.Tensor],
                               buffers: dict[str, torch.Tensor], x: torch.Tensor,
                               y: torch.Tensor) -> list[torch.Tensor]:
        """``d/da (grad_w L_train(w, a) . v)`` by central differences."""
        arch = self.model.arch_parameters()
        norm = torch.sqrt(sum((_full(t) ** 2).sum() for t in v))
        r = self.hvp_r / (norm + 1e-12)
        out = []
        for sign in (1.0, -1.0):
            shifted = {n: p + (sign * r).to(p.dtype) * vi for (n, p), vi in zip(w.items(), v)}
            loss = F.cross_entropy(_full(self._forward(shifted, buffers, x)), y)
            gr = torch.autograd.grad(loss, arch, allow_unused=True)
            out.append([torch.zeros_like(a) if g is None else g for a, g in zip(arch, gr)])
        return [(gp - gn) / (2 * r) for gp, gn in zip(*out)]

    # -- state ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The optimizer's state (the alphas live in the model's state)."""
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s output."""
        self.optimizer.load_state_dict(state["optimizer"])


def _sgd_hyper(opt: torch.optim.Optimizer | None, names: list[str], params: list[torch.Tensor]) -> dict:
    """Per-parameter ``(momentum, weight_decay, momentum_buffer)`` of the weight optimizer
    (zeros and None for parameters it does not hold)."""
    by_id = {}
    if opt is not None:
        for group in opt.param_groups:
            for p in group["params"]:
                buf = opt.state.get(p, {}).get("momentum_buffer")
                by_id[id(p)] = (group.get("momentum", 0.0), group.get("weight_decay", 0.0), buf)
    return {n: by_id.get(id(p), (0.0, 0.0, None)) for n, p in zip(names, params)}


def _full(t: torch.Tensor) -> torch.Tensor:
    """Losses in at least fp32 (bf16 logits under autocast), without demoting fp64."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t
