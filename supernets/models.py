"""Static networks built from an `ArchConfig`: stem, stages of blocks, head, classifier.

Submodule paths are layer ids (`stem`, `s1.b0.expand`, `s1.b0.se.reduce`, `head`, `hidden`, `classifier`), so
a plan keyed by layer id finds its layer with `model.get_submodule(layer_id)`; `layer_modules` lists them.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from search_spaces import ArchConfig, BlockConfig, HeadConfig, StemConfig, get_family
from supernets.blocks import zero_init_residual
from supernets.kinds import build_block
from supernets.layers import ConvBNAct, get_act_layer


class _Classifying(nn.Module):
    """A module ending in the head's parts, named as layer ids: `head` (1x1 conv), optional `hidden` (+ its
    activation `hidden_act`), `dropout`, `classifier`."""

    head: ConvBNAct
    hidden: nn.Linear | None
    hidden_act: nn.Module | None
    dropout: nn.Dropout
    classifier: nn.Linear

    def _add_head(self, head: HeadConfig, in_channels: int, num_classes: int, dropout: float) -> None:
        self.head = ConvBNAct(in_channels, head.channels, 1, act=head.act)
        self.hidden = nn.Linear(head.channels, head.hidden) if head.hidden else None
        self.hidden_act = get_act_layer(head.act) if head.hidden else None
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(head.hidden or head.channels, num_classes)

    def _classify(self, features: torch.Tensor) -> torch.Tensor:
        """Global average pool, the optional hidden layer, dropout and the classifier."""
        h = features.mean((2, 3))
        if self.hidden is not None and self.hidden_act is not None:
            h = self.hidden_act(self.hidden(h))
        return self.classifier(self.dropout(h))


class StaticNet(_Classifying):
    """The network an `ArchConfig` describes; `arch` is kept so the model can be saved with its config.

    Children: `stem`, optional `stem_pool`, one `nn.Sequential` per stage (`s0`, `s1`, ...) of blocks `b0`, `b1`,
    ..., then the head's parts (`head`, optional `hidden` and `hidden_act`, `dropout`, `classifier`).
    """

    def __init__(self, arch: ArchConfig, dropout: float = 0.0) -> None:
        super().__init__()
        self.arch = arch
        self.stem = ConvBNAct(arch.in_channels, arch.stem.channels, arch.stem.kernel, arch.stem.stride,
                              act=arch.stem.act)
        self.stem_pool = nn.MaxPool2d(3, 2, 1) if arch.stem.maxpool else None
        blocks: list[OrderedDict[str, nn.Module]] = [OrderedDict() for _ in arch.stages]
        for site in arch.sites():
            block = build_block(site.block, site.in_channels)
            zero_init_residual(block)
            blocks[site.stage][f"b{site.position}"] = block
        for index, stage in enumerate(blocks):
            self.add_module(f"s{index}", nn.Sequential(stage))
        self._add_head(arch.head, arch.last_channels, arch.num_classes, dropout)

    @property
    def stages(self) -> tuple[nn.Sequential, ...]:
        """The stages in order (`s0`, `s1`, ...); `stages[i][j]` is block `s{i}.b{j}`."""
        return tuple(self.get_submodule(f"s{i}") for i in range(len(self.arch.stages)))  # type: ignore[misc]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The head's 1x1 conv output, before pooling."""
        h = self.stem(x)
        if self.stem_pool is not None:
            h = self.stem_pool(h)
        for stage in self.stages:
            h = stage(h)
        return self.head(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._classify(self.features(x))


def build_stem(stem: StemConfig, in_channels: int) -> nn.Sequential:
    """The stem on its own (a lookup-table piece): `stem` (conv, BN, activation), then the optional `stem_pool`
    (3x3 stride-2 max pool), named as in `StaticNet`."""
    parts: OrderedDict[str, nn.Module] = OrderedDict(
        stem=ConvBNAct(in_channels, stem.channels, stem.kernel, stem.stride, act=stem.act))
    if stem.maxpool:
        parts["stem_pool"] = nn.MaxPool2d(3, 2, 1)
    return nn.Sequential(parts)


class HeadNet(_Classifying):
    """The head on its own (1x1 conv, global average pool, classifier): a lookup-table piece, named as in
    `StaticNet`."""

    def __init__(self, head: HeadConfig, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self._add_head(head, in_channels, num_classes, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._classify(self.head(x))


def build_model(arch: ArchConfig, *, dropout: float = 0.0) -> StaticNet:
    """The static network for `arch` (input channels and classes are part of the architecture)."""
    return StaticNet(arch, dropout)


def _legacy_block_name(block: BlockConfig, rest: str) -> str:
    """A block parameter's name in the positional layout before layer ids (`body.<i>`, `left.<i>`, `right.<i>`)."""
    layer, _, tail = rest.partition(".")
    kind = get_family(block.family).kind
    if kind == "shuffle":
        branch, _, layer_tail = rest.partition(".")
        layer, _, tail = layer_tail.partition(".")
        order = {"left": ("dw", "pw"), "right": ("pw1", "dw", "pw2")}[branch]
        return f"{branch}.{order.index(layer)}.{tail}"
    if kind == "fused" and layer == "conv":
        return f"body.{tail}"
    present = [name for name, here in (("expand", block.expand != 1.0), ("dw", kind != "fused"),
                                       ("se", block.se_ratio > 0), ("project", True)) if here]
    return f"body.{present.index(layer)}.{tail}"


def legacy_state_names(arch: ArchConfig) -> dict[str, str]:
    """Parameter name in `build_model(arch)` -> its name in the positional layout hwnas used before layer ids
    (`stem.0.0.weight`, `stages.1.0.body.2.1.bias`, `classifier.3.weight`), so weights saved then still load."""
    model = build_model(arch)
    blocks = {f"s{site.stage}.b{site.position}": site.block for site in arch.sites()}
    names = {}
    for name in model.state_dict():
        top, _, rest = name.partition(".")
        if top == "stem":
            names[name] = f"stem.0.{rest}"
        elif top == "hidden":
            names[name] = f"classifier.0.{rest}"
        elif top == "classifier":
            names[name] = f"classifier.{3 if arch.head.hidden else 1}.{rest}"
        elif top == "head":
            names[name] = name
        else:
            position, _, inner = rest.partition(".")
            block = blocks[f"{top}.{position}"]
            names[name] = f"stages.{top[1:]}.{position[1:]}.{_legacy_block_name(block, inner)}"
    return names
