"""Small torch layers shared by the blocks: activation factory, conv-BN-activation, squeeze-excitation."""

from __future__ import annotations

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
