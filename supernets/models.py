"""Static networks built from an `ArchConfig`: stem, stages of blocks, head, classifier."""

from __future__ import annotations

import torch
from torch import nn

from search_spaces import ArchConfig
from supernets.blocks import build_block, zero_init_residual
from supernets.layers import ConvBNAct, get_act_layer


class StaticNet(nn.Module):
    """The network an `ArchConfig` describes; `arch` is kept so the model can be saved with its config."""

    def __init__(self, arch: ArchConfig, dropout: float = 0.0) -> None:
        super().__init__()
        self.arch = arch
        stem: list[nn.Module] = [ConvBNAct(arch.in_channels, arch.stem.channels, arch.stem.kernel, arch.stem.stride,
                                           act=arch.stem.act)]
        if arch.stem.maxpool:
            stem.append(nn.MaxPool2d(3, 2, 1))
        self.stem = nn.Sequential(*stem)
        stages: list[list[nn.Module]] = [[] for _ in arch.stages]
        for site in arch.sites():
            stages[site.stage].append(build_block(site.block, site.in_channels))
        self.stages = nn.Sequential(*(nn.Sequential(*blocks) for blocks in stages))
        head = arch.head
        self.head = ConvBNAct(arch.last_channels, head.channels, 1, act=head.act)
        classifier: list[nn.Module] = []
        features = head.channels
        if head.hidden:
            classifier += [nn.Linear(head.channels, head.hidden), get_act_layer(head.act)]
            features = head.hidden
        classifier += [nn.Dropout(dropout), nn.Linear(features, arch.num_classes)]
        self.classifier = nn.Sequential(*classifier)
        for block in self.stages.modules():
            zero_init_residual(block)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


def build_model(arch: ArchConfig, *, dropout: float = 0.0) -> StaticNet:
    """The static network for `arch` (input channels and classes are part of the architecture)."""
    return StaticNet(arch, dropout)
