"""Static networks built from an `ArchConfig`: stem, stages of blocks, head, classifier."""

from __future__ import annotations

import torch
from torch import nn

from search_spaces import ArchConfig, HeadConfig, StemConfig
from supernets.blocks import build_block, zero_init_residual
from supernets.layers import ConvBNAct, get_act_layer


class StaticNet(nn.Module):
    """The network an `ArchConfig` describes; `arch` is kept so the model can be saved with its config."""

    def __init__(self, arch: ArchConfig, dropout: float = 0.0) -> None:
        super().__init__()
        self.arch = arch
        self.stem = build_stem(arch.stem, arch.in_channels)
        stages: list[list[nn.Module]] = [[] for _ in arch.stages]
        for site in arch.sites():
            stages[site.stage].append(build_block(site.block, site.in_channels))
        self.stages = nn.Sequential(*(nn.Sequential(*blocks) for blocks in stages))
        self.head = ConvBNAct(arch.last_channels, arch.head.channels, 1, act=arch.head.act)
        self.classifier = build_classifier(arch.head, arch.num_classes, dropout)
        for block in self.stages.modules():
            zero_init_residual(block)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


def build_stem(stem: StemConfig, in_channels: int) -> nn.Sequential:
    """Stem convolution (BN, activation), then the optional 3x3 stride-2 max pool."""
    layers: list[nn.Module] = [ConvBNAct(in_channels, stem.channels, stem.kernel, stem.stride, act=stem.act)]
    if stem.maxpool:
        layers.append(nn.MaxPool2d(3, 2, 1))
    return nn.Sequential(*layers)


def build_classifier(head: HeadConfig, num_classes: int, dropout: float = 0.0) -> nn.Sequential:
    """What follows the head's pooled features: the optional hidden layer, dropout, the classifier."""
    layers: list[nn.Module] = []
    features = head.channels
    if head.hidden:
        layers += [nn.Linear(head.channels, head.hidden), get_act_layer(head.act)]
        features = head.hidden
    layers += [nn.Dropout(dropout), nn.Linear(features, num_classes)]
    return nn.Sequential(*layers)


class HeadNet(nn.Module):
    """The head on its own (1x1 conv, global average pool, classifier): a lookup-table piece."""

    def __init__(self, head: HeadConfig, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.head = ConvBNAct(in_channels, head.channels, 1, act=head.act)
        self.classifier = build_classifier(head, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.head(x).mean((2, 3)))


def build_model(arch: ArchConfig, *, dropout: float = 0.0) -> StaticNet:
    """The static network for `arch` (input channels and classes are part of the architecture)."""
    return StaticNet(arch, dropout)
