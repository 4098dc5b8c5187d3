"""The evaluation network built from a genotype (DARTS's ``NetworkCIFAR``, for FER).

A 3x3 stem makes ``3 * C`` maps from the grey input, ``layers`` cells follow with
reduction cells (stride 2, channels doubled) at ``layers // 3`` and ``2 * layers // 3``,
then global average pooling and a linear classifier. An auxiliary head reads the
output of cell ``2 * layers // 3`` during training. Drop-path zeroes whole
non-identity edges per sample with probability ``model.drop_path_prob``; the trainer
sets that attribute each epoch (the linear ramp is the trainer's business).

Differences from DARTS, all parameter-free so the published sizes hold:

* ``in_channels`` (1 for grey faces) instead of 3 for the stem.
* The auxiliary head (DARTS's CIFAR head: ReLU, 5x5 average pool stride 3, 1x1 conv
  to 128, 2x2 conv to 768, linear) assumes an 8x8 map. FER inputs of 40, 44 and 48
  pixels give 10x10, 11x11 and 12x12 maps after the two reductions, which leave
  1x1, 2x2 and 2x2 maps after the 2x2 conv; an adaptive average pool to 1x1 before
  the linear layer makes the head work for every map of at least 8x8 (inputs of 32
  pixels and more) without changing its parameters.
* ``FactorizedReduce`` from :mod:`nas.models.ops` also handles odd map sizes.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from nas.models.genotypes import Genotype, validate_genotype
from nas.models.ops import OPS, FactorizedReduce, Identity, ReLUConvBN

__all__ = ["drop_path", "Cell", "AuxiliaryHead", "NetworkFER", "STEM_MULTIPLIER"]

STEM_MULTIPLIER = 3


def drop_path(x: torch.Tensor, drop_prob: float | torch.Tensor) -> torch.Tensor:
    """Zero each sample of ``x`` with probability ``drop_prob`` and rescale the kept ones
    by ``1 / (1 - drop_prob)``. The mask is drawn on ``x``'s device from the global RNG
    (so ``torch.manual_seed`` reproduces it); not in place, so autograd stays exact.

    A 0-d tensor ``drop_prob`` is the compiled path: the graph does not depend on its value, so
    the per-epoch ramp never recompiles, and 0 draws a mask of ones (the same values as
    skipping, one more draw from the RNG)."""
    if isinstance(drop_prob, torch.Tensor):
        keep_t = 1.0 - drop_prob.to(torch.float32)
        mask = torch.bernoulli(keep_t.expand(x.shape[0], 1, 1, 1))
        return x * (mask / keep_t).to(x.dtype)
    if drop_prob <= 0.0:
        return x
    keep = 1.0 - drop_prob
    # Drawn and scaled in float32 so that a bf16/fp16 activation does not round the
    # keep probability; then cast to x's dtype for the multiply.
    mask = torch.bernoulli(torch.full((x.shape[0], 1, 1, 1), keep, device=x.device, dtype=torch.float32))
    return x * mask.div_(keep).to(x.dtype)


class Cell(nn.Module):
    """One cell of a genotype: two preprocessed inputs, ``len(ops) // 2`` nodes each
    summing two operations, output the concatenation of the ``concat`` nodes."""

    def __init__(self, genotype: Genotype, C_prev_prev: int, C_prev: int, C: int, reduction: bool,
                 reduction_prev: bool) -> None:
        super().__init__()
        # The previous-previous state is twice as large as this cell's input when the
        # previous cell reduced, so it is brought to size by a factorized reduction.
        self.preprocess0 = (FactorizedReduce(C_prev_prev, C) if reduction_prev
                            else ReLUConvBN(C_prev_prev, C, 1, 1, 0))
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0)
        pairs = genotype.reduce if reduction else genotype.normal
        concat = genotype.reduce_concat if reduction else genotype.normal_concat
        self.reduction = reduction
        self._steps = len(pairs) // 2
        self._concat = [int(c) for c in concat]
        self.multiplier = len(self._concat)
        self._indices = [int(i) for _, i in pairs]
        self._ops = nn.ModuleList()
        for name, index in pairs:
            # Only edges that read a cell input are strided in a reduction cell.
            stride = 2 if reduction and index < 2 else 1
            self._ops.append(OPS[name](C, stride, True))

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float | torch.Tensor) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        use_drop = self.training and (isinstance(drop_prob, torch.Tensor) or drop_prob > 0.0)
        for i in range(self._steps):
            total = None
            for k in (2 * i, 2 * i + 1):
                op = self._ops[k]
                h = op(states[self._indices[k]])
                if use_drop and not isinstance(op, Identity):
                    h = drop_path(h, drop_prob)
                total = h if total is None else total + h
            states.append(total)
        return torch.cat([states[i] for i in self._concat], dim=1)


class AuxiliaryHead(nn.Module):
    """DARTS's CIFAR auxiliary classifier with an adaptive 1x1 pool before the linear
    layer, so 10x10, 11x11 and 12x12 maps (40/44/48-pixel inputs) all work."""

    def __init__(self, C: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            # Not in place: the cell output it reads also feeds the next cells.
            nn.ReLU(inplace=False),
            nn.AvgPool2d(5, stride=3, padding=0, count_include_pad=False),
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.BatchNorm2d(768),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(torch.flatten(x, 1))


class NetworkFER(nn.Module):
    """Network of ``layers`` cells of ``genotype`` with ``init_channels`` channels in
    the first cell. ``forward`` returns logits, or ``(logits, logits_aux)`` in training
    mode when ``auxiliary`` is on."""

    default_input_size = 44
    #: global pooling + one linear layer: class activation maps exist (``forward(x, features=True)``)
    supports_cams = True

    def __init__(self, genotype: Genotype, num_classes: int = 7, init_channels: int = 36, layers: int = 12,
                 auxiliary: bool = True, in_channels: int = 1, drop_path_prob: float = 0.0) -> None:
        super().__init__()
        genotype = validate_genotype(genotype)
        if layers < 3:
            # Reductions sit at layers//3 and 2*layers//3; below 3 cells they would
            # collide with the first cell or each other.
            raise ValueError(f"layers must be at least 3, got {layers}")
        self.genotype = genotype
        self._layers = layers
        self._auxiliary = auxiliary
        # A compiled trainer sets drop_path_traced: the forward then reads the probability from
        # this buffer, which the setter below keeps equal to drop_path_prob. A float in the graph
        # is a guard, and the ramp's first step up from 0 recompiled it.
        self.register_buffer("drop_path_tensor", torch.zeros(()), persistent=False)
        self.drop_path_traced = False
        self.drop_path_prob = float(drop_path_prob)
        C_curr = STEM_MULTIPLIER * init_channels
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False),
            nn.BatchNorm2d(C_curr),
        )
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, init_channels
        self.cells = nn.ModuleList()
        self.reduction_indices = (layers // 3, 2 * layers // 3)
        self.aux_index = 2 * layers // 3
        reduction_prev = False
        C_aux = None
        for i in range(layers):
            reduction = i in self.reduction_indices
            if reduction:
                C_curr *= 2
            cell = Cell(genotype, C_prev_prev, C_prev, C_curr, reduction, reduction_prev)
            reduction_prev = reduction
            self.cells.append(cell)
            C_prev_prev, C_prev = C_prev, cell.multiplier * C_curr
            if i == self.aux_index:
                C_aux = C_prev
        self.auxiliary_head = AuxiliaryHead(C_aux, num_classes) if auxiliary else None
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    @property
    def drop_path_prob(self) -> float:
        """The probability of dropping each non-identity edge of a sample in training mode."""
        return self._drop_path_prob

    @drop_path_prob.setter
    def drop_path_prob(self, p: float) -> None:
        """Set the probability, and the buffer a compiled network reads it from."""
        self._drop_path_prob = float(p)
        with torch.no_grad():
            self.drop_path_tensor.fill_(float(p))  # asynchronous on a GPU: no host sync

    def forward(self, x: torch.Tensor, features: bool = False):
        """Logits, or ``(logits, logits_aux)`` in training mode with the auxiliary head; with
        ``features=True`` always ``(logits, logits_aux or None, last feature map)`` (for class
        activation maps: ``classifier.weight`` applied to the map at each position)."""
        logits_aux = None
        drop = self.drop_path_tensor if self.drop_path_traced else self.drop_path_prob
        s0 = s1 = self.stem(x)
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, drop)
            if i == self.aux_index and self.auxiliary_head is not None and self.training:
                logits_aux = self.auxiliary_head(s1)
        logits = self.classifier(torch.flatten(self.global_pooling(s1), 1))
        if features:
            return logits, logits_aux, s1
        if logits_aux is not None:
            return logits, logits_aux
        return logits

