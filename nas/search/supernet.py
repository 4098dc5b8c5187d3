"""The search supernet: mixed operations, search cells and the network that holds the
architecture parameters.

Every edge of a cell (node ``i`` takes inputs from states ``0 .. i+1``; 14 edges for 4
nodes) is a :class:`MixedOp`: the softmax(alpha)-weighted sum of all candidate
operations. Each edge also carries a decision state (:data:`UNDECIDED`, :data:`PRUNED` or
the index of the chosen op), set by SGAS: a decided edge runs only its chosen operation
and a pruned edge runs nothing at all, which is where SGAS saves compute and memory as
the search proceeds. ``always_compute_all=True`` restores the naive behaviour (every op
of every edge computed, decisions applied through one-hot weights) for benchmarks.

``aux_skip`` (DARTS-, Chu et al. ICLR 2021, ``--strategy darts_minus``) adds
``aux_skip * x`` to every undecided edge that keeps the resolution: an auxiliary skip
connection outside the softmax, whose weight the searcher decays to 0, so the real
``skip_connect`` no longer has to win the softmax to carry the residual path. Stride-2
edges get none (an identity cannot downsample without weights).

``partial_channels=K > 1`` is PC-DARTS: only ``C/K`` channels of each edge go through
the candidate ops, the rest bypass them, channels are shuffled, and per-edge betas
(edge normalisation) weight the inputs of each node.
"""
from __future__ import annotations

import math

from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from nas.runtime.errors import FerNasError
from nas.models.genotypes import Genotype
from nas.models.ops import OPS, FactorizedReduce, ReLUConvBN, search_space

__all__ = [
    "UNDECIDED", "PRUNED", "MixedOp", "SearchCell", "SearchNetwork", "edge_list", "node_edge_ranges",
    "channel_shuffle", "derive_darts_genotype",
]

UNDECIDED = -1
PRUNED = -2


def edge_list(steps: int) -> list[tuple[int, int]]:
    """``(node, input)`` for every edge of a cell, in the order of the alpha rows."""
    return [(i, j) for i in range(steps) for j in range(i + 2)]


def node_edge_ranges(steps: int) -> list[tuple[int, int]]:
    """``(start, end)`` alpha-row range of the incoming edges of each node."""
    out, start = [], 0
    for i in range(steps):
        out.append((start, start + i + 2))
        start += i + 2
    return out


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet channel shuffle (PC-DARTS mixes bypassed and processed channels)."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class MixedOp(nn.Module):
    """All candidate operations of one edge."""

    def __init__(self, C: int, stride: int, primitives: Sequence[str], partial_channels: int = 1) -> None:
        super().__init__()
        self.k = int(partial_channels)
        self.stride = stride
        self.primitives = list(primitives)
        c_op = C // self.k
        self._ops = nn.ModuleList()
        for name in self.primitives:
            op = OPS[name](c_op, stride, False)
            if "pool" in name:
                op = nn.Sequential(op, nn.BatchNorm2d(c_op, affine=False))
            self._ops.append(op)
        self._none = [i for i, p in enumerate(self.primitives) if p == "none"]
        self.none_index = self._none[0] if self._none else UNDECIDED
        # Bypassed channels at stride 2 are max-pooled to the new size (PC-DARTS);
        # ceil_mode keeps the sizes equal to the ops' ceil(H/2) on odd inputs.
        self.bypass_pool = nn.MaxPool2d(2, 2, ceil_mode=True) if (self.k > 1 and stride == 2) else None

    def _mix(self, x: torch.Tensor, weights: torch.Tensor | None, selected: int, compute_all: bool) -> torch.Tensor:
        if selected >= 0 and not compute_all:
            return self._ops[selected](x)
        if compute_all:
            if selected == UNDECIDED and weights is None:
                raise ValueError("an undecided edge needs weights")
            if selected >= 0:  # a decided edge in the all-ops (DARTS-like) path: the chosen op alone
                return sum((1.0 if k == selected else 0.0) * op(x) for k, op in enumerate(self._ops))
            return sum(w * op(x) for w, op in zip(weights, self._ops))
        out = None
        # one unbind rather than an indexing op per candidate: fewer autograd nodes, and
        # their backward is one stack instead of a zero-filled scatter per op
        ws = weights.unbind(0)
        for i, op in enumerate(self._ops):
            if i in self._none:  # contributes exactly zero to the value and to every gradient
                continue
            y = ws[i] * op(x)
            out = y if out is None else out + y
        if out is None:  # a space of only 'none'
            out = self._ops[0](x)
        return out

    def forward(self, x: torch.Tensor, weights: torch.Tensor | None, selected: int = UNDECIDED,
                compute_all: bool = False) -> torch.Tensor:
        if self.k == 1:
            return self._mix(x, weights, selected, compute_all)
        c = x.shape[1] // self.k
        head, tail = x[:, :c], x[:, c:]
        y = self._mix(head, weights, selected, compute_all)
        if self.bypass_pool is not None:
            tail = self.bypass_pool(tail)
        return channel_shuffle(torch.cat([y, tail], dim=1), self.k)


class SearchCell(nn.Module):
    """A DARTS search cell: two preprocessed inputs, ``steps`` nodes, the last
    ``multiplier`` states concatenated."""

    def __init__(self, steps: int, multiplier: int, C_prev_prev: int, C_prev: int, C: int, reduction: bool,
                 reduction_prev: bool, primitives: Sequence[str], partial_channels: int = 1) -> None:
        super().__init__()
        self.reduction = reduction
        self.steps = steps
        self.multiplier = multiplier
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=False)
        self._ops = nn.ModuleList(
            MixedOp(C, 2 if reduction and j < 2 else 1, primitives, partial_channels)
            for _, j in edge_list(steps)
        )

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor, edge_state: Sequence[int],
                edge_weights: Sequence[Any] | None = None, compute_all: bool = False,
                aux_skip: float = 0.0) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for i in range(self.steps):
            acc = None
            for j, h in enumerate(states):
                e = offset + j
                st = edge_state[e]
                if st == PRUNED and (not compute_all or self._ops[e].none_index < 0):
                    continue  # contributes zero: nothing is computed
                if st == PRUNED:  # naive baseline: compute everything, keep only 'none'
                    y = self._ops[e](h, weights[e], self._ops[e].none_index, True)
                else:
                    y = self._ops[e](h, weights[e], st, compute_all)
                    if aux_skip and st == UNDECIDED and self._ops[e].stride == 1:
                        y = y + aux_skip * h
                if edge_weights is not None and edge_weights[e] is not None:
                    y = edge_weights[e] * y
                acc = y if acc is None else acc + y
            offset += len(states)
            states.append(acc)
        return torch.cat(states[-self.multiplier:], dim=1)


class SearchNetwork(nn.Module):
    """The supernet searched by DARTS/SGAS (stem x3 from ``in_channels``, reduction
    cells at L/3 and 2L/3, global pooling, linear classifier).

    Architecture parameters (``alphas_normal``, ``alphas_reduce`` and, with partial
    channels, ``betas_normal``, ``betas_reduce``) are ``nn.Parameter``s of this module:
    they are in ``state_dict`` and follow ``.to()``; :meth:`arch_parameters` and
    :meth:`weight_parameters` split the parameters into two disjoint lists."""

    def __init__(self, C: int = 16, num_classes: int = 7, layers: int = 8,
                 primitives: str | Sequence[str] = "auto_fernet", steps: int = 4, multiplier: int = 4,
                 stem_multiplier: int = 3, in_channels: int = 1, partial_channels: int = 1,
                 always_compute_all: bool = False) -> None:
        super().__init__()
        if isinstance(primitives, str):
            primitives = search_space(primitives)
        unknown = [p for p in primitives if p not in OPS]
        if unknown:
            raise FerNasError(f"unknown operation(s) in search space: {', '.join(unknown)}")
        k = int(partial_channels)
        if k < 1 or C % k:
            raise FerNasError(f"--partial_channels {k}: must be >= 1 and divide --init_channels {C}")
        if layers < 3:
            raise FerNasError(f"--layers {layers}: the search network needs at least 3 layers")
        self.primitives = list(primitives)
        self.C, self.num_classes, self.layers = C, num_classes, layers
        self.steps, self.multiplier, self.partial_channels = steps, multiplier, k
        self.always_compute_all = always_compute_all
        self.aux_skip = 0.0  # DARTS-'s auxiliary skip weight (the searcher's schedule sets it)

        c_curr = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c_curr, 3, padding=1, bias=False), nn.BatchNorm2d(c_curr))
        c_pp, c_p, c_curr = c_curr, c_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                c_curr *= 2
            cell = SearchCell(steps, multiplier, c_pp, c_p, c_curr, reduction, reduction_prev, self.primitives, k)
            reduction_prev = reduction
            self.cells.append(cell)
            c_pp, c_p = c_p, multiplier * c_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_p, num_classes)

        n_edges, n_ops = len(edge_list(steps)), len(self.primitives)
        self.alphas_normal = nn.Parameter(1e-3 * torch.randn(n_edges, n_ops))
        self.alphas_reduce = nn.Parameter(1e-3 * torch.randn(n_edges, n_ops))
        if k > 1:
            self.betas_normal = nn.Parameter(1e-3 * torch.randn(n_edges))
            self.betas_reduce = nn.Parameter(1e-3 * torch.randn(n_edges))
        # Decisions: a Python mirror for the forward pass (no device sync per step) and
        # int64 buffers so that they travel in state_dict; hooks keep the two in step.
        self.edge_state: dict[str, list[int]] = {"normal": [UNDECIDED] * n_edges, "reduce": [UNDECIDED] * n_edges}
        self.register_buffer("edge_state_normal", torch.full((n_edges,), UNDECIDED, dtype=torch.int64))
        self.register_buffer("edge_state_reduce", torch.full((n_edges,), UNDECIDED, dtype=torch.int64))
        self.register_state_dict_pre_hook(_edge_state_to_buffers)
        self.register_load_state_dict_post_hook(_edge_state_from_buffers)

    # -- parameters -----------------------------------------------------------------
    @property
    def num_edges(self) -> int:
        """Edges of one cell (rows of an alpha matrix)."""
        return self.alphas_normal.shape[0]

    def arch_parameters(self) -> list[nn.Parameter]:
        """Architecture parameters (alphas, and betas with partial channels)."""
        ps = [self.alphas_normal, self.alphas_reduce]
        if self.partial_channels > 1:
            ps += [self.betas_normal, self.betas_reduce]
        return ps

    def arch_parameter_names(self) -> list[str]:
        """The attribute names of :meth:`arch_parameters`, in the same order."""
        names = ["alphas_normal", "alphas_reduce"]
        return names + (["betas_normal", "betas_reduce"] if self.partial_channels > 1 else [])

    def weight_parameters(self) -> list[nn.Parameter]:
        """Every other parameter (what the weight optimizer trains)."""
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def named_weight_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) of every weight parameter (everything but the architecture parameters)."""
        arch = {id(p) for p in self.arch_parameters()}
        return [(n, p) for n, p in self.named_parameters() if id(p) not in arch]

    def alphas(self, cell_type: str) -> nn.Parameter:
        """The architecture weights of ``cell_type`` ('normal' or 'reduce'), one row per edge."""
        return self.alphas_normal if cell_type == "normal" else self.alphas_reduce

    @torch.no_grad()
    def alpha_entropy(self) -> float:
        """How undecided the architecture still is: the mean over undecided edges of both cell
        types of the entropy of the softmax of their architecture weights, divided by its maximum
        ``log(ops)`` (1: uniform, as at the start; 0: one op holds all the weight). NaN once every
        edge is decided. A host read: call it at epoch ends."""
        values = []
        for c in ("normal", "reduce"):
            live = [e for e, st in enumerate(self.edge_state[c]) if st == UNDECIDED]
            if live:
                p = torch.softmax(self.alphas(c).detach().float()[live], dim=-1)
                values.append(-(p * p.clamp_min(1e-12).log()).sum(-1) / math.log(p.shape[-1]))
        return float(torch.cat(values).mean()) if values else float("nan")

    def betas(self, cell_type: str) -> nn.Parameter | None:
        """The edge-normalisation weights of ``cell_type`` with partial channels, else None."""
        if self.partial_channels == 1:
            return None
        return self.betas_normal if cell_type == "normal" else self.betas_reduce

    # -- decision state -------------------------------------------------------------------
    def frozen_edges(self, cell_type: str) -> list[int]:
        """Edges whose architecture weights no longer learn (decided or pruned)."""
        return [e for e, s in enumerate(self.edge_state[cell_type]) if s != UNDECIDED]

    def frozen_nodes(self, cell_type: str) -> list[tuple[int, int]]:
        """Alpha-row ranges of nodes all of whose incoming edges are decided or pruned."""
        st = self.edge_state[cell_type]
        return [(a, b) for a, b in node_edge_ranges(self.steps) if all(s != UNDECIDED for s in st[a:b])]

    # -- forward ----------------------------------------------------------------------
    def _edge_weights(self, cell_type: str) -> list[torch.Tensor | None] | None:
        """Per-edge input weights from the betas (softmax over each node's live edges)."""
        betas = self.betas(cell_type)
        if betas is None:
            return None
        st = self.edge_state[cell_type]
        out: list[torch.Tensor | None] = [None] * self.num_edges
        for a, b in node_edge_ranges(self.steps):
            live = [e for e in range(a, b) if st[e] != PRUNED]
            w = F.softmax(betas[live], dim=-1)
            for n, e in enumerate(live):
                out[e] = w[n]
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        compute_all = self.always_compute_all
        w_normal = F.softmax(self.alphas_normal, dim=-1)
        w_reduce = F.softmax(self.alphas_reduce, dim=-1)
        ew_normal, ew_reduce = self._edge_weights("normal"), self._edge_weights("reduce")
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            if cell.reduction:
                s = cell(s0, s1, w_reduce, self.edge_state["reduce"], ew_reduce, compute_all, self.aux_skip)
            else:
                s = cell(s0, s1, w_normal, self.edge_state["normal"], ew_normal, compute_all, self.aux_skip)
            s0, s1 = s1, s
        out = self.global_pooling(s1).flatten(1)
        return self.classifier(out)

    # -- genotypes --------------------------------------------------------------------
    def darts_genotype(self) -> Genotype:
        """DARTS's rule on the current alphas (and betas): per node the two inputs
        with the strongest non-none op, each with that op."""
        return derive_darts_genotype(
            self.alphas_normal.detach(), self.alphas_reduce.detach(), self.primitives, self.steps,
            self.multiplier, betas_normal=None if self.betas("normal") is None else self.betas_normal.detach(),
            betas_reduce=None if self.betas("reduce") is None else self.betas_reduce.detach())


def _edge_state_to_buffers(module: SearchNetwork, prefix: str = "", keep_vars: bool = False) -> None:
    for cell in ("normal", "reduce"):
        buf = getattr(module, f"edge_state_{cell}")
        buf.copy_(torch.tensor(module.edge_state[cell], dtype=torch.int64))


def _edge_state_from_buffers(module: SearchNetwork, incompatible_keys: Any = None) -> None:
    module.edge_state = {cell: [int(v) for v in getattr(module, f"edge_state_{cell}").tolist()]
                         for cell in ("normal", "reduce")}


def _parse_darts(weights: torch.Tensor, primitives: Sequence[str], steps: int) -> list[tuple[str, int]]:
    none = primitives.index("none") if "none" in primitives else -1
    w = weights.clone().float().cpu()
    if none >= 0:
        w[:, none] = -1.0
    gene: list[tuple[str, int]] = []
    for i, (a, b) in enumerate(node_edge_ranges(steps)):
        strength = w[a:b].max(dim=1).values
        # Stable sort: ties go to the lower input index, as Python's sorted in DARTS.
        order = sorted(range(i + 2), key=lambda j: -float(strength[j]))[:2]
        for j in order:
            gene.append((primitives[int(torch.argmax(w[a + j]))], j))
    return gene


def derive_darts_genotype(alphas_normal: torch.Tensor, alphas_reduce: torch.Tensor, primitives: Sequence[str],
                          steps: int = 4, multiplier: int = 4, betas_normal: torch.Tensor | None = None,
                          betas_reduce: torch.Tensor | None = None) -> Genotype:
    """Genotype by DARTS's rule (PC-DARTS's when betas are given: op weights are
    scaled by each node's softmax over its input betas)."""

    def weights(alphas: torch.Tensor, betas: torch.Tensor | None) -> torch.Tensor:
        w = F.softmax(alphas.float(), dim=-1)
        if betas is not None:
            scale = torch.cat([F.softmax(betas.float()[a:b], dim=-1) for a, b in node_edge_ranges(steps)])
            w = w * scale[:, None]
        return w

    concat = list(range(2 + steps - multiplier, steps + 2))
    return Genotype(_parse_darts(weights(alphas_normal, betas_normal), primitives, steps), concat,
                    _parse_darts(weights(alphas_reduce, betas_reduce), primitives, steps), concat)
