"""One static torch module per block family, each faithful to its paper, and a factory keyed by family.

Channel widths (expansion, SE squeeze) come from `search_spaces.families`, the same place the analytic
counters take them from.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
from torch import nn

from search_spaces import BlockConfig, get_family
from supernets.layers import ConvBNAct, SqueezeExcite


class InvertedResidual(nn.Module):
    """mbv2 / mbv3 / effnet: [1x1 expand] -> kxk depthwise -> [SE] -> 1x1 linear project (+ identity).

    The expansion layer is skipped when the expand ratio is 1; the residual applies at stride 1 with
    equal input and output widths (Sandler et al. 2018; Howard et al. 2019; Tan & Le 2019).
    """

    def __init__(self, block: BlockConfig, in_channels: int) -> None:
        super().__init__()
        fam = get_family(block.family)
        mid = fam.mid_channels(in_channels, block.expand)
        layers: list[nn.Module] = []
        if block.expand != 1.0:
            layers.append(ConvBNAct(in_channels, mid, 1, act=block.activation))
        layers.append(ConvBNAct(mid, mid, block.kernel, block.stride, groups=mid, act=block.activation))
        if block.se_ratio > 0:
            squeeze = fam.se_channels(in_channels, mid, block.se_ratio)
            layers.append(SqueezeExcite(mid, squeeze, fam.se_inner_act, fam.se_gate))
        layers.append(ConvBNAct(mid, block.out_channels, 1))
        self.body = nn.Sequential(*layers)
        self.residual = block.stride == 1 and in_channels == block.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return x + out if self.residual else out


class FusedMBConv(nn.Module):
    """fused: kxk expand conv -> 1x1 linear project; a single kxk conv when expand is 1 (Tan & Le 2021)."""

    def __init__(self, block: BlockConfig, in_channels: int) -> None:
        super().__init__()
        fam = get_family(block.family)
        mid = fam.mid_channels(in_channels, block.expand)
        if block.expand != 1.0:
            self.body: nn.Module = nn.Sequential(
                ConvBNAct(in_channels, mid, block.kernel, block.stride, act=block.activation),
                ConvBNAct(mid, block.out_channels, 1),
            )
        else:
            self.body = ConvBNAct(in_channels, block.out_channels, block.kernel, block.stride, act=block.activation)
        self.residual = block.stride == 1 and in_channels == block.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return x + out if self.residual else out


def split_even_odd(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ShuffleNet's channel split in a width-independent order: (even channels, odd channels)."""
    return x[:, 0::2], x[:, 1::2]


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    batch, channels, height, width = x.shape
    x = x.view(batch, groups, channels // groups, height, width).transpose(1, 2)
    return x.reshape(batch, channels, height, width)


class ShuffleV2Unit(nn.Module):
    """shufflev2 (Ma et al. 2018, Fig. 3): at stride 1 with equal widths, split the channels, transform one half
    (1x1 -> kxk depthwise -> 1x1), concatenate and shuffle. Otherwise both branches see the whole input:
    kxk depthwise -> 1x1 on the left, 1x1 -> kxk depthwise -> 1x1 on the right (the paper's stride-2 unit).

    The split takes the odd channels to transform and keeps the even ones, and the 2-group shuffle puts every
    channel back where it was read from (kept at 2i, transformed at 2i+1). That is the paper's split and shuffle
    with one fixed channel order, chosen so that a channel means the same at every width and depth of a stage:
    `x.chunk(2)` plus shuffle moves each kept channel from i to 2i in every unit, so a supernet stage run at
    another width or depth would hand the next stage its channels in another order. The mixing of the two
    halves happens in the stage's first (two-branch) unit, whose output interleaves its branches."""

    def __init__(self, block: BlockConfig, in_channels: int) -> None:
        super().__init__()
        branch = block.out_channels // 2
        k, s, act = block.kernel, block.stride, block.activation
        self.split = block.stride == 1 and in_channels == block.out_channels
        right_in = branch if self.split else in_channels
        self.left: nn.Module | None = None
        if not self.split:
            self.left = nn.Sequential(
                ConvBNAct(in_channels, in_channels, k, s, groups=in_channels),
                ConvBNAct(in_channels, branch, 1, act=act),
            )
        self.right = nn.Sequential(
            ConvBNAct(right_in, branch, 1, act=act),
            ConvBNAct(branch, branch, k, s, groups=branch),
            ConvBNAct(branch, branch, 1, act=act),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.left is None:
            keep, work = split_even_odd(x)
            out = torch.cat((keep, self.right(work)), dim=1)
        else:
            out = torch.cat((self.left(x), self.right(x)), dim=1)
        return channel_shuffle(out, 2)


@torch.no_grad()
def zero_init_residual(block: nn.Module) -> None:
    """Start a residual block as the identity: zero the scale of the BatchNorm that ends its branch.

    (Goyal et al. 2017.) Deep stacks of freshly initialised blocks then pass their input through, which
    matters most in a supernet whose later stages must accept any earlier stage's family.
    """
    if isinstance(block, (InvertedResidual, FusedMBConv)) and block.residual:
        # The branch ends in a ConvBNAct; a fused block at expand 1 is a single one.
        body = cast(nn.Sequential, block.body)
        norm = (body if isinstance(body, ConvBNAct) else cast(nn.Sequential, body[-1]))[1]
    else:  # ShuffleNet units replace the half they transform: zeroing it would not give the identity
        return
    assert isinstance(norm, nn.BatchNorm2d)
    norm.weight.zero_()


BLOCKS: dict[str, Callable[[BlockConfig, int], nn.Module]] = {
    "mbv2": InvertedResidual,
    "mbv3": InvertedResidual,
    "effnet": InvertedResidual,
    "fused": FusedMBConv,
    "shufflev2": ShuffleV2Unit,
}


def build_block(block: BlockConfig, in_channels: int) -> nn.Module:
    """The static module for `block` receiving `in_channels` channels."""
    return BLOCKS[block.family](block, in_channels)
