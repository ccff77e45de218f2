"""One static torch module per block kind, each faithful to its paper, and the registry keyed by `Family.kind`.

Submodule paths are layer ids: an inverted residual has `expand` (absent at expand 1), `dw`, `se` (`reduce`,
`expand`) and `project`; a fused block `expand` and `project`, or `conv` at expand 1; a ShuffleNet unit
`left` (`dw`, `pw`) and `right` (`pw1`, `dw`, `pw2`). Widths come from the block's resolved helpers
(`BlockConfig.mid_channels`, `squeeze_channels`, `branch_channels`, `has_residual`, `is_split_unit`), which
honour explicit widths and otherwise follow `search_spaces.families`, as the analytic counters do.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from search_spaces import BlockConfig, get_family
from supernets.layers import ConvBNAct, SqueezeExcite, channel_shuffle, split_even_odd


class InvertedResidual(nn.Module):
    """mbv2 / mbv3 / effnet: [1x1 expand] -> kxk depthwise -> [SE] -> 1x1 linear project (+ identity).

    The expansion layer is skipped when the expand ratio is 1; the residual applies at stride 1 with
    equal input and output widths unless the block says `noskip` (Sandler et al. 2018; Howard et al. 2019;
    Tan & Le 2019).
    """

    def __init__(self, block: BlockConfig, in_channels: int) -> None:
        super().__init__()
        fam, act = get_family(block.family), block.activation
        mid = block.mid_channels(in_channels)
        self.expand = ConvBNAct(in_channels, mid, 1, act=act) if block.expand != 1.0 else None
        self.dw = ConvBNAct(mid, mid, block.kernel, block.stride, groups=mid, act=act)
        squeeze = block.squeeze_channels(in_channels)
        self.se = SqueezeExcite(mid, squeeze, fam.se_inner_act, fam.se_gate) if squeeze else None
        self.project = ConvBNAct(mid, block.out_channels, 1)
        self.residual = block.has_residual(in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.expand(x) if self.expand is not None else x
        h = self.dw(h)
        if self.se is not None:
            h = self.se(h)
        h = self.project(h)
        return x + h if self.residual else h

    @torch.no_grad()
    def zero_init_residual(self) -> None:
        if self.residual:
            _zero_bn_scale(self.project)


class FusedMBConv(nn.Module):
    """fused: kxk expand conv -> 1x1 linear project; a single kxk conv when expand is 1 (Tan & Le 2021)."""

    def __init__(self, block: BlockConfig, in_channels: int) -> None:
        super().__init__()
        k, s, act, out = block.kernel, block.stride, block.activation, block.out_channels
        self.expand: ConvBNAct | None = None
        self.project: ConvBNAct | None = None
        self.conv: ConvBNAct | None = None
        if block.expand != 1.0:
            mid = block.mid_channels(in_channels)
            self.expand = ConvBNAct(in_channels, mid, k, s, act=act)
            self.project = ConvBNAct(mid, out, 1)
        else:
            self.conv = ConvBNAct(in_channels, out, k, s, act=act)
        self.residual = block.has_residual(in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv is not None:
            h = self.conv(x)
        else:
            assert self.expand is not None and self.project is not None
            h = self.project(self.expand(x))
        return x + h if self.residual else h

    @torch.no_grad()
    def zero_init_residual(self) -> None:
        if self.residual:
            last = self.conv if self.conv is not None else self.project
            assert last is not None
            _zero_bn_scale(last)


class ShuffleV2Unit(nn.Module):
    """shufflev2 (Ma et al. 2018, Fig. 3): at stride 1 with equal widths, split the channels, transform one half
    (1x1 -> kxk depthwise -> 1x1), concatenate and shuffle. Otherwise both branches see the whole input:
    kxk depthwise -> 1x1 on the left, 1x1 -> kxk depthwise -> 1x1 on the right (the paper's stride-2 unit).

    The right (transformed) branch has inner width `block.mid_channels` and output `block.branch_channels`; the
    left branch, or the kept half of a split unit, gives the rest of the output.

    The split takes the odd channels to transform and keeps the even ones, and the 2-group shuffle puts every
    channel back where it was read from (kept at 2i, transformed at 2i+1). That is the paper's split and shuffle
    with one fixed channel order, chosen so that a channel means the same at every width and depth of a stage:
    `x.chunk(2)` plus shuffle moves each kept channel from i to 2i in every unit, so a supernet stage run at
    another width or depth would hand the next stage its channels in another order. The mixing of the two
    halves happens in the stage's first (two-branch) unit, whose output interleaves its branches."""

    def __init__(self, block: BlockConfig, in_channels: int) -> None:
        super().__init__()
        k, s, act = block.kernel, block.stride, block.activation
        mid, branch = block.mid_channels(in_channels), block.branch_channels
        self.split = block.is_split_unit(in_channels)
        right_in = in_channels // 2 if self.split else in_channels
        self.left: nn.Sequential | None = None
        if not self.split:
            self.left = nn.Sequential(OrderedDict(
                dw=ConvBNAct(in_channels, in_channels, k, s, groups=in_channels),
                pw=ConvBNAct(in_channels, block.out_channels - branch, 1, act=act),
            ))
        self.right = nn.Sequential(OrderedDict(
            pw1=ConvBNAct(right_in, mid, 1, act=act),
            dw=ConvBNAct(mid, mid, k, s, groups=mid),
            pw2=ConvBNAct(mid, branch, 1, act=act),
        ))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.left is None:
            keep, work = split_even_odd(x)
            out = torch.cat((keep, self.right(work)), dim=1)
        else:
            out = torch.cat((self.left(x), self.right(x)), dim=1)
        return channel_shuffle(out, 2)

    def zero_init_residual(self) -> None:
        """Not residual: a split unit replaces the half it transforms, so zeroing it would not give the identity."""


def _zero_bn_scale(layer: ConvBNAct) -> None:
    norm = layer[1]
    assert isinstance(norm, nn.BatchNorm2d)
    norm.weight.zero_()


@torch.no_grad()
def zero_init_residual(block: nn.Module) -> None:
    """Start a residual block as the identity: zero the scale of the BatchNorm that ends its branch.

    (Goyal et al. 2017.) Deep stacks of freshly initialised blocks then pass their input through, which
    matters most in a supernet whose later stages must accept any earlier stage's family.
    """
    init = getattr(block, "zero_init_residual", None)
    if callable(init):
        init()
