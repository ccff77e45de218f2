"""Small torch layers shared by the blocks: activation factory, conv-BN-activation, squeeze-excitation,
ShuffleNet's split and shuffle, and the walk that lists a model's layers by layer id."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from search_spaces.errors import ArchError

_ACT_LAYERS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "hswish": nn.Hardswish,
    "swish": nn.SiLU,
    "hsigmoid": nn.Hardsigmoid,
    "sigmoid": nn.Sigmoid,
}


def get_act_layer(name: str) -> nn.Module:
    """A new activation module by name (the names the architecture language uses)."""
    try:
        return _ACT_LAYERS[name]()
    except KeyError:
        raise ArchError(f"unknown activation {name!r}; known: {', '.join(_ACT_LAYERS)}") from None


class ConvBNAct(nn.Sequential):
    """k x k convolution without bias (padding k//2), BatchNorm, and an optional activation."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1,
                 act: str | None = None) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        if act is not None:
            layers.append(get_act_layer(act))
        super().__init__(*layers)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018): pool, 1x1 conv down, activation, 1x1 conv up, gate, scale."""

    def __init__(self, channels: int, squeeze: int, inner_act: str, gate: str) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeeze, 1)
        self.act = get_act_layer(inner_act)
        self.expand = nn.Conv2d(squeeze, channels, 1)
        self.gate = get_act_layer(gate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.expand(self.act(self.reduce(scale))))


def split_even_odd(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ShuffleNet's channel split in a width-independent order: (even channels, odd channels)."""
    return x[:, 0::2], x[:, 1::2]


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    batch, channels, height, width = x.shape
    x = x.view(batch, groups, channels // groups, height, width).transpose(1, 2)
    return x.reshape(batch, channels, height, width)


#: What counts as one prunable / quantisable layer: a conv+BN(+act) unit, a bare conv (SE), a linear layer.
LAYER_TYPES: tuple[type[nn.Module], ...] = (ConvBNAct, nn.Conv2d, nn.Linear)


def layer_modules(model: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """Every layer of `model` in execution order as (layer id, module); the layer id is the submodule path.

    A ConvBNAct is one layer (its conv is not listed again), so the ids are the ones the cost trace and the
    plans use: `stem`, `s1.b0.expand`, `s1.b0.se.reduce`, `head`, `classifier`, ...
    """
    for name, child in model.named_children():
        path = f"{prefix}.{name}" if prefix else name
        if isinstance(child, LAYER_TYPES):
            yield path, child
        else:
            yield from layer_modules(child, path)
