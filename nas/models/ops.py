"""Primitive operations of the cell search spaces, and the search spaces themselves.

Every entry of :data:`OPS` maps an operation name to ``constructor(C, stride, affine)``
returning a module that maps ``N x C x H x W`` to ``N x C x H' x W'`` with
``H' = ceil(H / stride)``. The convolutions follow DARTS's ReLU-Conv-BN order; the
``ghost`` op is GhostNet's ghost module (ratio 2, depthwise 3x3 cheap operation, ReLU)
as used by Auto-FERNet. Parameter counts equal those of the reference implementations,
so a genotype built from these ops has the published size.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "OPS", "SEARCH_SPACES", "DEFAULT_SEARCH_SPACE", "ReLUConvBN", "DilConv", "SepConv", "Identity", "Zero",
    "FactorizedReduce", "GhostModule", "op_param_count", "search_space",
]


class ReLUConvBN(nn.Module):
    """ReLU -> Conv (no bias) -> BatchNorm: the building block of DARTS cells."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int,
                 affine: bool = True) -> None:
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class DilConv(nn.Module):
    """ReLU -> dilated depthwise conv -> pointwise conv -> BN."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int, dilation: int,
                 affine: bool = True) -> None:
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride=stride, padding=padding, dilation=dilation,
                      groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class SepConv(nn.Module):
    """Two stacked (ReLU, depthwise, pointwise, BN) blocks; only the first is strided."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int,
                 affine: bool = True) -> None:
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride=stride, padding=padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_in, 1, bias=False),
            nn.BatchNorm2d(C_in, affine=affine),
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride=1, padding=padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Identity(nn.Identity):
    """The ``skip_connect`` op at stride 1 (a named class so cells can recognise it,
    e.g. to exempt it from drop-path)."""


class Zero(nn.Module):
    """The ``none`` op: zeros of the output shape (spatially subsampled at stride 2).

    Returns fresh zeros instead of ``x * 0`` so that a NaN/inf in ``x`` cannot leak
    through an edge that is meant to carry nothing, and no multiply is spent."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return torch.zeros_like(x)
        n, c, h, w = x.shape
        s = self.stride
        return x.new_zeros(n, c, -(-h // s), -(-w // s))


class FactorizedReduce(nn.Module):
    """Halve the spatial size with two 1x1 stride-2 convolutions on the input and on
    the input shifted by one pixel, concatenated along channels, then BN.

    Unlike DARTS this also works for odd sizes and odd ``C_out`` (the shifted path is
    padded by one row/column when needed); for even sizes and channels it is DARTS's op."""

    def __init__(self, C_in: int, C_out: int, affine: bool = True) -> None:
        super().__init__()
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out - C_out // 2, 1, stride=2, padding=0, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        shifted = x[:, :, 1:, 1:]
        if x.shape[-2] % 2 or x.shape[-1] % 2:
            shifted = F.pad(shifted, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2))
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1))


class GhostModule(nn.Module):
    """GhostNet's ghost module: a (strided) 1x1 primary conv makes ``ceil(C_out/ratio)``
    intrinsic maps, a cheap depthwise ``dw_size`` conv makes the rest; both BN + ReLU."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int = 1, ratio: int = 2, dw_size: int = 3,
                 stride: int = 1, relu: bool = True, affine: bool = True) -> None:
        super().__init__()
        self.C_out = C_out
        init_channels = math.ceil(C_out / ratio)
        new_channels = init_channels * (ratio - 1)
        self.primary_conv = nn.Sequential(
            nn.Conv2d(C_in, init_channels, kernel_size, stride, kernel_size // 2, bias=False),
            nn.BatchNorm2d(init_channels, affine=affine),
            nn.ReLU(inplace=True) if relu else nn.Identity(),
        )
        self.cheap_operation = nn.Sequential(
            nn.Conv2d(init_channels, new_channels, dw_size, 1, dw_size // 2, groups=init_channels, bias=False),
            nn.BatchNorm2d(new_channels, affine=affine),
            nn.ReLU(inplace=True) if relu else nn.Identity(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.primary_conv(x)
        x2 = self.cheap_operation(x1)
        out = torch.cat([x1, x2], dim=1)
        return out if out.shape[1] == self.C_out else out[:, : self.C_out]


def _conv_7x1_1x7(C: int, stride: int, affine: bool) -> nn.Module:
    return nn.Sequential(
        nn.ReLU(inplace=False),
        nn.Conv2d(C, C, (1, 7), stride=(1, stride), padding=(0, 3), bias=False),
        nn.Conv2d(C, C, (7, 1), stride=(stride, 1), padding=(3, 0), bias=False),
        nn.BatchNorm2d(C, affine=affine),
    )


OPS: dict[str, Callable[[int, int, bool], nn.Module]] = {
    "none": lambda C, stride, affine: Zero(stride),
    "max_pool_3x3": lambda C, stride, affine: nn.MaxPool2d(3, stride=stride, padding=1),
    "avg_pool_3x3": lambda C, stride, affine: nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False),
    "skip_connect": lambda C, stride, affine: Identity() if stride == 1 else FactorizedReduce(C, C, affine=affine),
    "sep_conv_3x3": lambda C, stride, affine: SepConv(C, C, 3, stride, 1, affine=affine),
    "sep_conv_5x5": lambda C, stride, affine: SepConv(C, C, 5, stride, 2, affine=affine),
    "sep_conv_7x7": lambda C, stride, affine: SepConv(C, C, 7, stride, 3, affine=affine),
    "dil_conv_3x3": lambda C, stride, affine: DilConv(C, C, 3, stride, 2, 2, affine=affine),
    "dil_conv_5x5": lambda C, stride, affine: DilConv(C, C, 5, stride, 4, 2, affine=affine),
    "ghost": lambda C, stride, affine: GhostModule(C, C, stride=stride, affine=affine),
    "conv_1x1": lambda C, stride, affine: ReLUConvBN(C, C, 1, stride, 0, affine=affine),
    "conv_3x3": lambda C, stride, affine: ReLUConvBN(C, C, 3, stride, 1, affine=affine),
    "conv_7x1_1x7": _conv_7x1_1x7,
}

# Candidate operations per edge. "none" stays first: SGAS and DARTS's genotype rule
# look at the non-none part of each edge's distribution.
SEARCH_SPACES: dict[str, list[str]] = {
    "auto_fernet": ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
                    "dil_conv_3x3", "dil_conv_5x5", "ghost", "conv_1x1", "conv_3x3"],
    "darts": ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
              "dil_conv_3x3", "dil_conv_5x5"],
}
DEFAULT_SEARCH_SPACE = "auto_fernet"


def search_space(spec: str) -> list[str]:
    """The primitive names of a search space: a name in :data:`SEARCH_SPACES`, or a
    comma-separated list of op names (e.g. ``none,skip_connect,sep_conv_3x3``).
    Anything else is a :class:`~nas.runtime.errors.FerNasError` listing the choices."""
    from nas.runtime.errors import FerNasError

    if spec in SEARCH_SPACES:
        return list(SEARCH_SPACES[spec])
    if "," not in spec:
        raise FerNasError(f"unknown search space {spec!r} (choose from {', '.join(SEARCH_SPACES)}, "
                          "or give a comma-separated list of operations)")
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in OPS]
    if unknown:
        raise FerNasError(f"search space {spec!r}: unknown operation(s) {', '.join(unknown)} "
                          f"(known: {', '.join(OPS)})")
    if len(set(names)) != len(names) or len([n for n in names if n != "none"]) < 1:
        raise FerNasError(f"search space {spec!r}: needs distinct operations, at least one besides 'none'")
    return names


@lru_cache(maxsize=None)
def op_param_count(name: str, C: int = 12, stride: int = 1) -> int:
    """Learnable parameters of op ``name`` with ``C`` channels, without BN affine
    parameters (as in the search supernet). At C=12 this reproduces Auto-FERNet's
    ``PARAMS`` table (e.g. sep_conv_3x3 504, ghost 126, conv_3x3 1296)."""
    return sum(p.numel() for p in OPS[name](C, stride, False).parameters())
