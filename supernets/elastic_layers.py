"""Elastic layers and blocks: they hold the largest weights and take the sub-shape as call arguments (no active
state). One elastic block class per block kind; `supernets.kinds.BLOCK_KINDS` pairs each with its static block.

Elastic kernel (once-for-all, Cai et al. 2020): the largest kernel is stored; a smaller one is the centre
crop of the next larger *transformed* kernel, passed through a learned (k*k x k*k) matrix initialised to
the identity and shared by all channels of the layer. Elastic width: the first c channels are used.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from search_spaces import BlockConfig, StageSpec, get_family
from search_spaces.families import Family
from supernets.blocks import FusedMBConv, InvertedResidual, ShuffleV2Unit
from supernets.layers import channel_shuffle, split_even_odd

ACT_FUNCS = {
    "relu": F.relu,
    "relu6": F.relu6,
    "hswish": F.hardswish,
    "swish": F.silu,
    "hsigmoid": F.hardsigmoid,
    "sigmoid": torch.sigmoid,
}


def centre_crop(weight: torch.Tensor, kernel: int) -> torch.Tensor:
    start = (weight.shape[-1] - kernel) // 2
    return weight[..., start:start + kernel, start:start + kernel]


class ElasticConv(nn.Module):
    """A convolution that runs with any in/out width up to its maximum and any of its kernels.

    `depthwise=True` makes a depthwise conv (one filter per channel; in = out = the input's width).
    """

    def __init__(self, in_max: int, out_max: int, kernels: tuple[int, ...], *, depthwise: bool = False,
                 bias: bool = False) -> None:
        super().__init__()
        self.kernels = tuple(sorted(set(kernels), reverse=True))
        self.depthwise = depthwise
        k = self.kernels[0]
        self.weight = nn.Parameter(torch.empty(out_max, 1 if depthwise else in_max, k, k))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # torch's Conv2d default
        self.bias = nn.Parameter(torch.zeros(out_max)) if bias else None
        if bias:
            bound = 1 / math.sqrt(self.weight[0].numel())
            nn.init.uniform_(self.bias, -bound, bound)
        # One matrix per step down the kernel chain, e.g. 7->5 (25x25) and 5->3 (9x9).
        self.transforms = nn.ParameterDict({
            f"{big}to{small}": nn.Parameter(torch.eye(small * small))
            for big, small in zip(self.kernels, self.kernels[1:], strict=False)
        })

    def kernel_weight(self, out_ch: int, in_ch: int, kernel: int) -> torch.Tensor:
        """The weight a subnet uses: sliced to (out_ch, in_ch) and brought down to `kernel`."""
        if kernel not in self.kernels:
            raise ValueError(f"kernel {kernel} is not one of this layer's kernels {self.kernels}")
        weight = self.weight[:out_ch, : (1 if self.depthwise else in_ch)]
        for big, small in zip(self.kernels, self.kernels[1:], strict=False):
            if big == kernel:
                break
            crop = centre_crop(weight, small)
            weight = (crop.reshape(-1, small * small) @ self.transforms[f"{big}to{small}"]).reshape(crop.shape)
        return weight

    def forward(self, x: torch.Tensor, out_ch: int, kernel: int, stride: int = 1) -> torch.Tensor:
        in_ch = x.shape[1]
        if self.depthwise:
            out_ch = in_ch
        weight = self.kernel_weight(out_ch, in_ch, kernel)
        bias = self.bias[:out_ch] if self.bias is not None else None
        return F.conv2d(x, weight, bias, stride, kernel // 2, 1, in_ch if self.depthwise else 1)


class ElasticBN(nn.BatchNorm2d):
    """BatchNorm over the first C channels of its statistics and affine parameters (C = the input's width)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        use_batch_stats = self.training or not self.track_running_stats
        running_mean = self.running_mean[:c] if self.running_mean is not None else None
        running_var = self.running_var[:c] if self.running_var is not None else None
        if self.training and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        return F.batch_norm(x, running_mean, running_var, self.weight[:c], self.bias[:c], use_batch_stats,
                            self.momentum if self.momentum is not None else 0.1, self.eps)


class ElasticConvBN(nn.Module):
    """Elastic conv + elastic BN (+ activation by name at call time)."""

    def __init__(self, in_max: int, out_max: int, kernels: tuple[int, ...], *, depthwise: bool = False) -> None:
        super().__init__()
        self.conv = ElasticConv(in_max, out_max, kernels, depthwise=depthwise)
        self.bn = ElasticBN(out_max)

    def forward(self, x: torch.Tensor, out_ch: int, kernel: int, stride: int = 1, act: str | None = None
                ) -> torch.Tensor:
        y = self.bn(self.conv(x, out_ch, kernel, stride))
        return ACT_FUNCS[act](y) if act else y

    @torch.no_grad()
    def copy_into(self, static: nn.Sequential, out_ch: int, in_ch: int, kernel: int) -> None:
        """Copy the sub-weights into a static ConvBNAct (conv at [0], BatchNorm at [1])."""
        static[0].weight.copy_(self.conv.kernel_weight(out_ch, in_ch, kernel))
        copy_bn(self.bn, static[1])


@torch.no_grad()
def copy_bn(src: nn.BatchNorm2d, dst: nn.BatchNorm2d) -> None:
    c = dst.num_features
    dst.weight.copy_(src.weight[:c])
    dst.bias.copy_(src.bias[:c])
    dst.running_mean.copy_(src.running_mean[:c])
    dst.running_var.copy_(src.running_var[:c])
    dst.num_batches_tracked.copy_(src.num_batches_tracked)


#: (what, the block's width, the most the slot's weights allow), e.g. ("middle channels (m)", 37, 96).
WidthLimit = tuple[str, int, int]


class ElasticBlock(nn.Module):
    """A supernet slot: the shared weights of one block position for one family.

    `from_stage` builds it for block `index` of a stage; `forward(x, block)` runs `block` on them; `copy_into`
    fills the static block of `block` with the leading channels; `width_limits` says which of `block`'s widths
    the weights can hold (explicit widths may be anything up to the slot's largest).
    """

    @classmethod
    def from_stage(cls, family: str, stage: StageSpec, in_widths: tuple[int, ...], index: int) -> ElasticBlock:
        raise NotImplementedError

    def width_limits(self, block: BlockConfig, in_ch: int) -> list[WidthLimit]:
        raise NotImplementedError

    def copy_into(self, static: nn.Module, block: BlockConfig, in_ch: int) -> None:
        raise NotImplementedError

    def zero_init_residual(self) -> None:
        """Start as the identity where the block is residual (see `blocks.zero_init_residual`)."""

    def sort_channels(self) -> None:
        """Reorder the middle channels by importance, most first (where the kind allows it)."""


class ElasticInvertedResidual(ElasticBlock):
    """mbv2 / mbv3 / effnet with elastic kernel, expand ratio (or middle width) and widths."""

    def __init__(self, fam: Family, in_max: int, out_max: int, expands: tuple[float, ...], kernels: tuple[int, ...],
                 se: float) -> None:
        super().__init__()
        self.fam = fam
        self.mid_max = max(fam.mid_channels(in_max, e) for e in expands)
        self.sortable = 1.0 not in expands  # with expand 1 the middle width is the input's: not ours to reorder
        self.expand = ElasticConvBN(in_max, self.mid_max, (1,)) if any(e != 1.0 for e in expands) else None
        self.dw = ElasticConvBN(self.mid_max, self.mid_max, kernels, depthwise=True)
        self.se_reduce = self.se_expand = None
        self.squeeze_max = fam.se_channels(in_max, self.mid_max, se) if se > 0 else 0
        if se > 0:
            self.se_reduce = ElasticConv(self.mid_max, self.squeeze_max, (1,), bias=True)
            self.se_expand = ElasticConv(self.squeeze_max, self.mid_max, (1,), bias=True)
        self.project = ElasticConvBN(self.mid_max, out_max, (1,))

    @classmethod
    def from_stage(cls, family: str, stage: StageSpec, in_widths: tuple[int, ...], index: int) -> ElasticBlock:
        fam = get_family(family)
        se = stage.se if fam.se_is_knob else fam.se_ratios[0]
        return cls(fam, max(in_widths), max(stage.widths), stage.expands, stage.kernels, se)

    def width_limits(self, block: BlockConfig, in_ch: int) -> list[WidthLimit]:
        return [("middle channels (m)", block.mid_channels(in_ch), self.mid_max),
                ("SE squeeze channels (q)", block.squeeze_channels(in_ch), self.squeeze_max)]

    def forward(self, x: torch.Tensor, block: BlockConfig) -> torch.Tensor:
        in_ch, act = x.shape[1], block.activation
        mid, squeeze = block.mid_channels(in_ch), block.squeeze_channels(in_ch)
        h = self.expand(x, mid, 1, act=act) if block.expand != 1.0 and self.expand is not None else x
        h = self.dw(h, mid, block.kernel, block.stride, act=act)
        if squeeze and self.se_reduce is not None and self.se_expand is not None:
            s = ACT_FUNCS[self.fam.se_inner_act](self.se_reduce(h.mean((2, 3), keepdim=True), squeeze, 1))
            h = h * ACT_FUNCS[self.fam.se_gate](self.se_expand(s, mid, 1))
        h = self.project(h, block.out_channels, 1)
        return x + h if block.has_residual(in_ch) else h

    def zero_init_residual(self) -> None:
        self.project.bn.weight.zero_()

    @torch.no_grad()
    def copy_into(self, static: InvertedResidual, block: BlockConfig, in_ch: int) -> None:  # type: ignore[override]
        mid, squeeze = block.mid_channels(in_ch), block.squeeze_channels(in_ch)
        if static.expand is not None and self.expand is not None:
            self.expand.copy_into(static.expand, mid, in_ch, 1)
        self.dw.copy_into(static.dw, mid, 1, block.kernel)
        if static.se is not None and self.se_reduce is not None and self.se_expand is not None:
            se = static.se
            se.reduce.weight.copy_(self.se_reduce.kernel_weight(squeeze, mid, 1))
            se.reduce.bias.copy_(self.se_reduce.bias[:squeeze])
            se.expand.weight.copy_(self.se_expand.kernel_weight(mid, squeeze, 1))
            se.expand.bias.copy_(self.se_expand.bias[:mid])
        self.project.copy_into(static.project, block.out_channels, mid, 1)

    @torch.no_grad()
    def sort_channels(self) -> None:
        """Reorder the expanded channels by importance (L1 norm of the projection's weights), most first."""
        if not self.sortable or self.expand is None:
            return
        order = self.project.conv.weight.abs().sum((0, 2, 3)).argsort(descending=True)
        _permute_out(self.expand, order)
        _permute_out(self.dw, order)
        if self.se_reduce is not None and self.se_expand is not None:
            self.se_reduce.weight.copy_(self.se_reduce.weight[:, order])
            self.se_expand.weight.copy_(self.se_expand.weight[order])
            self.se_expand.bias.copy_(self.se_expand.bias[order])
        self.project.conv.weight.copy_(self.project.conv.weight[:, order])


def _permute_out(layer: ElasticConvBN, order: torch.Tensor) -> None:
    layer.conv.weight.copy_(layer.conv.weight[order])
    for tensor in (layer.bn.weight, layer.bn.bias, layer.bn.running_mean, layer.bn.running_var):
        tensor.copy_(tensor[order])


class ElasticFused(ElasticBlock):
    """fused MBConv with elastic kernel (on the full kxk conv), expand ratio (or middle width) and widths."""

    def __init__(self, fam: Family, in_max: int, out_max: int, expands: tuple[float, ...], kernels: tuple[int, ...]
                 ) -> None:
        super().__init__()
        self.fam = fam
        self.mid_max = max(fam.mid_channels(in_max, e) for e in expands)
        self.sortable = True
        self.expand = ElasticConvBN(in_max, self.mid_max, kernels)
        self.project = ElasticConvBN(self.mid_max, out_max, (1,))
        self.single = ElasticConvBN(in_max, out_max, kernels) if 1.0 in expands else None

    @classmethod
    def from_stage(cls, family: str, stage: StageSpec, in_widths: tuple[int, ...], index: int) -> ElasticBlock:
        return cls(get_family(family), max(in_widths), max(stage.widths), stage.expands, stage.kernels)

    def width_limits(self, block: BlockConfig, in_ch: int) -> list[WidthLimit]:
        return [("middle channels (m)", block.mid_channels(in_ch), self.mid_max)] if block.expand != 1.0 else []

    def forward(self, x: torch.Tensor, block: BlockConfig) -> torch.Tensor:
        in_ch, act, k, s = x.shape[1], block.activation, block.kernel, block.stride
        if block.expand == 1.0 and self.single is not None:
            h = self.single(x, block.out_channels, k, s, act=act)
        else:
            h = self.expand(x, block.mid_channels(in_ch), k, s, act=act)
            h = self.project(h, block.out_channels, 1)
        return x + h if block.has_residual(in_ch) else h

    def zero_init_residual(self) -> None:
        for layer in (self.project, self.single):
            if layer is not None:
                layer.bn.weight.zero_()

    @torch.no_grad()
    def copy_into(self, static: FusedMBConv, block: BlockConfig, in_ch: int) -> None:  # type: ignore[override]
        if static.conv is not None and self.single is not None:
            self.single.copy_into(static.conv, block.out_channels, in_ch, block.kernel)
            return
        assert static.expand is not None and static.project is not None
        mid = block.mid_channels(in_ch)
        self.expand.copy_into(static.expand, mid, in_ch, block.kernel)
        self.project.copy_into(static.project, block.out_channels, mid, 1)

    @torch.no_grad()
    def sort_channels(self) -> None:
        order = self.project.conv.weight.abs().sum((0, 2, 3)).argsort(descending=True)
        _permute_out(self.expand, order)
        self.project.conv.weight.copy_(self.project.conv.weight[:, order])


class ElasticShuffle(ElasticBlock):
    """ShuffleNetV2 unit with elastic kernel and widths; split and two-branch weights as the slot needs.

    Its channels are coupled across the split and the shuffle, so they keep their order (no importance sort), and
    it is not residual (a split unit replaces the half it transforms; see `blocks.ShuffleV2Unit`)."""

    def __init__(self, in_max: int, out_max: int, kernels: tuple[int, ...], split: bool, two_branch: bool) -> None:
        super().__init__()
        self.branch_max = branch = out_max // 2
        self.sortable = False
        self.split = nn.ModuleList([ElasticConvBN(branch, branch, (1,)),
                                    ElasticConvBN(branch, branch, kernels, depthwise=True),
                                    ElasticConvBN(branch, branch, (1,))]) if split else None
        self.left = nn.ModuleList([ElasticConvBN(in_max, in_max, kernels, depthwise=True),
                                   ElasticConvBN(in_max, branch, (1,))]) if two_branch else None
        self.right = nn.ModuleList([ElasticConvBN(in_max, branch, (1,)),
                                    ElasticConvBN(branch, branch, kernels, depthwise=True),
                                    ElasticConvBN(branch, branch, (1,))]) if two_branch else None

    @classmethod
    def from_stage(cls, family: str, stage: StageSpec, in_widths: tuple[int, ...], index: int) -> ElasticBlock:
        stride = stage.stride if index == 0 else 1
        split = stride == 1 and bool(set(in_widths) & set(stage.widths))
        two_branch = stride == 2 or any(i != o for i in in_widths for o in stage.widths)
        return cls(max(in_widths), max(stage.widths), stage.kernels, split, two_branch)

    def width_limits(self, block: BlockConfig, in_ch: int) -> list[WidthLimit]:
        branch = block.branch_channels
        return [("branch channels (b)", branch, self.branch_max),
                ("left branch channels (out - b)", block.out_channels - branch, self.branch_max),
                ("middle channels (m)", block.mid_channels(in_ch), self.branch_max)]

    def forward(self, x: torch.Tensor, block: BlockConfig) -> torch.Tensor:
        in_ch, k, s, act = x.shape[1], block.kernel, block.stride, block.activation
        mid, branch = block.mid_channels(in_ch), block.branch_channels
        if block.is_split_unit(in_ch) and self.split is not None:
            keep, work = split_even_odd(x)
            pw1, dw, pw2 = self.split
            out = torch.cat((keep, pw2(dw(pw1(work, mid, 1, act=act), mid, k), branch, 1, act=act)), dim=1)
        elif self.left is not None and self.right is not None:
            (ldw, lpw), (pw1, dw, pw2) = self.left, self.right
            left = lpw(ldw(x, in_ch, k, s), block.out_channels - branch, 1, act=act)
            right = pw2(dw(pw1(x, mid, 1, act=act), mid, k, s), branch, 1, act=act)
            out = torch.cat((left, right), dim=1)
        else:
            raise ValueError(f"this ShuffleNet slot has no weights for {block} on {in_ch} channels")
        return channel_shuffle(out, 2)

    @torch.no_grad()
    def copy_into(self, static: ShuffleV2Unit, block: BlockConfig, in_ch: int) -> None:  # type: ignore[override]
        mid, branch, k = block.mid_channels(in_ch), block.branch_channels, block.kernel
        right = static.right
        if static.left is None and self.split is not None:
            pw1, dw, pw2 = self.split
            pw1.copy_into(right.pw1, mid, in_ch // 2, 1)
        else:
            assert self.left is not None and self.right is not None and static.left is not None
            self.left[0].copy_into(static.left.dw, in_ch, 1, k)
            self.left[1].copy_into(static.left.pw, block.out_channels - branch, in_ch, 1)
            pw1, dw, pw2 = self.right
            pw1.copy_into(right.pw1, mid, in_ch, 1)
        dw.copy_into(right.dw, mid, 1, k)
        pw2.copy_into(right.pw2, branch, mid, 1)
