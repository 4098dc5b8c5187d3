"""Hand-designed FER networks from the seed documents, as baselines for searched cells.

* ``vgg_fer`` — Khaireddin & Chen (2021), "Facial Emotion Recognition: State of the Art
  Performance on FER2013": four stages (64, 128, 256, 512 channels) of two
  conv3x3 + BN + ReLU and a 2x2 max-pool, then FC 2048-4096-4096-7 with dropout 0.2.
  Built for 40x40 crops (ten-crop of 48x48 images): four pools leave 2x2x512 = 2048
  features. 29,890,759 parameters.
* ``resnet_fer`` — the residual network of Groves: conv3x3 64 + BN, two residual
  blocks of 64, a stride-2 residual block to 128 with a 1x1 conv + BN shortcut, one
  more block of 128, pooled to 6x6 (6 * 6 * 128 = 4608 features), FC 4608-500-7.
  2,982,247 parameters (the count fixes the layout: convolutions inside blocks have no
  bias, the shortcut has its own BN, the FC layers have biases).
* ``cnn_shallow`` / ``cnn_deep`` — plain CNNs (two conv + one FC; four conv + two FC)
  with batch norm and dropout 0.3; widths are this toolkit's choice (see the classes).
* ``cnn_gap`` — a plain CNN whose head is global average pooling and one linear layer,
  like the genotype networks' (so class activation maps exist and ``--robust eac``
  applies) but fast on a CPU: four stages of two conv3x3 + BN + ReLU (16, 32, 64, 128)
  with 2x2 max-pools between them, no dropout. 294,615 parameters at 7 classes.

Input sizes: every baseline accepts 40, 44 and 48 pixel inputs. The pools before the
classifiers are adaptive average pools, which have no parameters, so the published
counts hold. For ``vgg_fer`` the adaptive 2x2 pool is the identity at 40 and 44 pixels
(the four max-pools already give 2x2) and averages the 3x3 map that 48 pixels give;
the published model saw 40-pixel crops, which stays its ``default_input_size``.
"""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["VGGFer", "ResNetFer", "CNNShallow", "CNNDeep", "CNNGap", "BASELINES", "BasicBlock"]


def _conv_bn_relu(c_in: int, c_out: int, bias: bool) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class _Baseline(nn.Module):
    """Common attributes every model of the toolkit carries."""

    default_input_size = 44

    def __init__(self, drop_path_prob: float = 0.0) -> None:
        super().__init__()
        # Plain networks have no cell edges to drop; the attribute exists so the
        # trainer can set it on any model.
        self.drop_path_prob = float(drop_path_prob)


class VGGFer(_Baseline):
    """Khaireddin & Chen's VGG variant for 40x40 FER crops (29,890,759 parameters at 7 classes)."""

    default_input_size = 40

    def __init__(self, num_classes: int = 7, in_channels: int = 1, drop_path_prob: float = 0.0,
                 dropout: float = 0.2) -> None:
        super().__init__(drop_path_prob)
        layers: list[nn.Module] = []
        c_in = in_channels
        for width in (64, 128, 256, 512):
            # The published network keeps conv biases in front of BN; they are part of its count.
            layers += _conv_bn_relu(c_in, width, True) + _conv_bn_relu(width, width, True)
            layers.append(nn.MaxPool2d(2, 2))
            c_in = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.classifier = nn.Sequential(
            nn.Linear(512 * 2 * 2, 4096), nn.Dropout(dropout), nn.ReLU(inplace=True),
            nn.Linear(4096, 4096), nn.Dropout(dropout), nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class BasicBlock(nn.Module):
    """ResNet basic block: conv3x3-BN-ReLU-conv3x3-BN plus shortcut, then ReLU. A strided
    or widening block uses a 1x1 conv + BN shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNetFer(_Baseline):
    """Groves's small ResNet for FER (2,982,247 parameters at 7 classes)."""

    def __init__(self, num_classes: int = 7, in_channels: int = 1, drop_path_prob: float = 0.0) -> None:
        super().__init__(drop_path_prob)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64),
                                  nn.ReLU(inplace=True))
        self.blocks = nn.Sequential(BasicBlock(64, 64), BasicBlock(64, 64), BasicBlock(64, 128, stride=2),
                                    BasicBlock(128, 128))
        self.pool = nn.AdaptiveAvgPool2d(6)
        self.classifier = nn.Sequential(nn.Linear(128 * 6 * 6, 500), nn.ReLU(inplace=True), nn.Linear(500, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


def _pooled_blocks(in_channels: int, widths: tuple[int, ...]) -> tuple[nn.Sequential, int]:
    """conv3x3-BN-ReLU-maxpool per width (no conv bias: BN's shift makes it redundant);
    returns the blocks and their output channels."""
    layers: list[nn.Module] = []
    c_in = in_channels
    for width in widths:
        layers += _conv_bn_relu(c_in, width, False) + [nn.MaxPool2d(2, 2)]
        c_in = width
    return nn.Sequential(*layers), c_in


class CNNShallow(_Baseline):
    """Two conv blocks (32, 64 channels; conv3x3-BN-ReLU-maxpool) and one FC layer from a
    6x6 adaptive pool, dropout 0.3 before it."""

    widths = (32, 64)
    pooled = 6

    def __init__(self, num_classes: int = 7, in_channels: int = 1, drop_path_prob: float = 0.0,
                 dropout: float = 0.3) -> None:
        super().__init__(drop_path_prob)
        self.features, c_in = _pooled_blocks(in_channels, self.widths)
        self.pool = nn.AdaptiveAvgPool2d(self.pooled)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(c_in * self.pooled ** 2, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class CNNDeep(_Baseline):
    """Four conv blocks (32, 64, 128, 256 channels; conv3x3-BN-ReLU-maxpool), a 2x2
    adaptive pool, FC 1024-256 with ReLU, FC 256-classes; dropout 0.3 before each FC."""

    widths = (32, 64, 128, 256)
    pooled = 2
    hidden = 256

    def __init__(self, num_classes: int = 7, in_channels: int = 1, drop_path_prob: float = 0.0,
                 dropout: float = 0.3) -> None:
        super().__init__(drop_path_prob)
        self.features, c_in = _pooled_blocks(in_channels, self.widths)
        self.pool = nn.AdaptiveAvgPool2d(self.pooled)
        self.classifier = nn.Sequential(
            # No BatchNorm1d here: it would fail on a last training batch of one sample.
            nn.Dropout(dropout), nn.Linear(c_in * self.pooled ** 2, self.hidden), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(self.hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class CNNGap(_Baseline):
    """Four stages (16, 32, 64, 128 channels) of two conv3x3-BN-ReLU, 2x2 max-pools between
    them, global average pooling and one linear layer: a head whose class activation maps exist
    (``forward(x, features=True)``), as the genotype networks'."""

    widths = (16, 32, 64, 128)
    supports_cams = True

    def __init__(self, num_classes: int = 7, in_channels: int = 1, drop_path_prob: float = 0.0) -> None:
        super().__init__(drop_path_prob)
        layers: list[nn.Module] = []
        c_in = in_channels
        for k, width in enumerate(self.widths):
            if k:
                layers.append(nn.MaxPool2d(2, 2))
            layers += _conv_bn_relu(c_in, width, False) + _conv_bn_relu(width, width, False)
            c_in = width
        self.features = nn.Sequential(*layers)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor, features: bool = False):
        f = self.features(x)
        logits = self.classifier(torch.flatten(self.global_pooling(f), 1))
        return (logits, None, f) if features else logits


# name -> constructor(num_classes, in_channels, drop_path_prob)
BASELINES: dict[str, type[_Baseline]] = {
    "vgg_fer": VGGFer,
    "resnet_fer": ResNetFer,
    "cnn_shallow": CNNShallow,
    "cnn_deep": CNNDeep,
    "cnn_gap": CNNGap,
}
