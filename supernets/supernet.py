"""The once-for-all supernet: per stage, elastic weights for each family the space allows there.

`supernet(x, arch)` runs subnet `arch` (the architecture is an argument; nothing is "set active").
`materialize(arch)` returns the static model of `build_model(arch)` with the subnet's weights copied in.

Elasticity per family: mbv2 / mbv3 / effnet / fused share weights across kernel (transformation
matrices), expand ratio (first `mid` channels) and width (first `c` channels) within a family, and depth
(a stage at depth d runs its first d blocks). ShuffleNetV2 units share across kernel, width and depth; they
have no expand ratio. A ShuffleNet slot keeps separate weights for its split unit and its two-branch unit,
since the two compute different things.
"""

from __future__ import annotations

import torch
from torch import nn

from search_spaces import ArchConfig, BlockConfig, SearchSpace, get_family
from search_spaces.families import Family
from supernets.blocks import FusedMBConv, InvertedResidual, ShuffleV2Unit, channel_shuffle, split_even_odd
from supernets.elastic_layers import ACT_FUNCS, ElasticConv, ElasticConvBN
from supernets.layers import ConvBNAct
from supernets.models import StaticNet, build_model


class ElasticInvertedResidual(nn.Module):
    """mbv2 / mbv3 / effnet with elastic kernel, expand ratio and widths."""

    def __init__(self, fam: Family, in_max: int, out_max: int, expands: tuple[float, ...], kernels: tuple[int, ...],
                 se: float) -> None:
        super().__init__()
        self.fam = fam
        mid_max = max(fam.mid_channels(in_max, e) for e in expands)
        self.sortable = 1.0 not in expands  # with expand 1 the middle width is the input's: not ours to reorder
        self.expand = ElasticConvBN(in_max, mid_max, (1,)) if any(e != 1.0 for e in expands) else None
        self.dw = ElasticConvBN(mid_max, mid_max, kernels, depthwise=True)
        self.se_reduce = self.se_expand = None
        if se > 0:
            squeeze_max = fam.se_channels(in_max, mid_max, se)
            self.se_reduce = ElasticConv(mid_max, squeeze_max, (1,), bias=True)
            self.se_expand = ElasticConv(squeeze_max, mid_max, (1,), bias=True)
        self.project = ElasticConvBN(mid_max, out_max, (1,))

    def forward(self, x: torch.Tensor, block: BlockConfig) -> torch.Tensor:
        in_ch, act = x.shape[1], block.activation
        mid = self.fam.mid_channels(in_ch, block.expand)
        h = self.expand(x, mid, 1, act=act) if block.expand != 1.0 and self.expand is not None else x
        h = self.dw(h, mid, block.kernel, block.stride, act=act)
        if block.se_ratio > 0 and self.se_reduce is not None and self.se_expand is not None:
            squeeze = self.fam.se_channels(in_ch, mid, block.se_ratio)
            s = ACT_FUNCS[self.fam.se_inner_act](self.se_reduce(h.mean((2, 3), keepdim=True), squeeze, 1))
            h = h * ACT_FUNCS[self.fam.se_gate](self.se_expand(s, mid, 1))
        h = self.project(h, block.out_channels, 1)
        return x + h if block.stride == 1 and in_ch == block.out_channels else h

    def zero_init_residual(self) -> None:
        self.project.bn.weight.zero_()

    @torch.no_grad()
    def copy_into(self, static: InvertedResidual, block: BlockConfig, in_ch: int) -> None:
        mid = self.fam.mid_channels(in_ch, block.expand)
        body, i = static.body, 0
        if block.expand != 1.0 and self.expand is not None:
            self.expand.copy_into(body[0], mid, in_ch, 1)
            i = 1
        self.dw.copy_into(body[i], mid, 1, block.kernel)
        if block.se_ratio > 0 and self.se_reduce is not None and self.se_expand is not None:
            se, squeeze = body[i + 1], self.fam.se_channels(in_ch, mid, block.se_ratio)
            se.reduce.weight.copy_(self.se_reduce.kernel_weight(squeeze, mid, 1))
            se.reduce.bias.copy_(self.se_reduce.bias[:squeeze])
            se.expand.weight.copy_(self.se_expand.kernel_weight(mid, squeeze, 1))
            se.expand.bias.copy_(self.se_expand.bias[:mid])
        self.project.copy_into(body[-1], block.out_channels, mid, 1)

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


class ElasticFused(nn.Module):
    """fused MBConv with elastic kernel (on the full kxk conv), expand ratio and widths."""

    def __init__(self, fam: Family, in_max: int, out_max: int, expands: tuple[float, ...], kernels: tuple[int, ...]
                 ) -> None:
        super().__init__()
        self.fam = fam
        mid_max = max(fam.mid_channels(in_max, e) for e in expands)
        self.sortable = True
        self.expand = ElasticConvBN(in_max, mid_max, kernels)
        self.project = ElasticConvBN(mid_max, out_max, (1,))
        self.single = ElasticConvBN(in_max, out_max, kernels) if 1.0 in expands else None

    def forward(self, x: torch.Tensor, block: BlockConfig) -> torch.Tensor:
        in_ch, act, k, s = x.shape[1], block.activation, block.kernel, block.stride
        if block.expand == 1.0 and self.single is not None:
            h = self.single(x, block.out_channels, k, s, act=act)
        else:
            h = self.expand(x, self.fam.mid_channels(in_ch, block.expand), k, s, act=act)
            h = self.project(h, block.out_channels, 1)
        return x + h if s == 1 and in_ch == block.out_channels else h

    def zero_init_residual(self) -> None:
        for layer in (self.project, self.single):
            if layer is not None:
                layer.bn.weight.zero_()

    @torch.no_grad()
    def copy_into(self, static: FusedMBConv, block: BlockConfig, in_ch: int) -> None:
        if block.expand == 1.0 and self.single is not None:
            self.single.copy_into(static.body, block.out_channels, in_ch, block.kernel)
            return
        mid = self.fam.mid_channels(in_ch, block.expand)
        self.expand.copy_into(static.body[0], mid, in_ch, block.kernel)
        self.project.copy_into(static.body[1], block.out_channels, mid, 1)

    @torch.no_grad()
    def sort_channels(self) -> None:
        order = self.project.conv.weight.abs().sum((0, 2, 3)).argsort(descending=True)
        _permute_out(self.expand, order)
        self.project.conv.weight.copy_(self.project.conv.weight[:, order])


class ElasticShuffle(nn.Module):
    """ShuffleNetV2 unit with elastic kernel and width; split and two-branch weights as the slot needs."""

    def __init__(self, in_max: int, out_max: int, kernels: tuple[int, ...], split: bool, two_branch: bool) -> None:
        super().__init__()
        branch = out_max // 2
        self.sortable = False
        self.split = nn.ModuleList([ElasticConvBN(branch, branch, (1,)),
                                    ElasticConvBN(branch, branch, kernels, depthwise=True),
                                    ElasticConvBN(branch, branch, (1,))]) if split else None
        self.left = nn.ModuleList([ElasticConvBN(in_max, in_max, kernels, depthwise=True),
                                   ElasticConvBN(in_max, branch, (1,))]) if two_branch else None
        self.right = nn.ModuleList([ElasticConvBN(in_max, branch, (1,)),
                                    ElasticConvBN(branch, branch, kernels, depthwise=True),
                                    ElasticConvBN(branch, branch, (1,))]) if two_branch else None

    def forward(self, x: torch.Tensor, block: BlockConfig) -> torch.Tensor:
        branch, k, s, act = block.out_channels // 2, block.kernel, block.stride, block.activation
        if s == 1 and x.shape[1] == block.out_channels and self.split is not None:
            keep, work = split_even_odd(x)
            pw1, dw, pw2 = self.split
            out = torch.cat((keep, pw2(dw(pw1(work, branch, 1, act=act), branch, k), branch, 1, act=act)), dim=1)
        elif self.left is not None and self.right is not None:
            (ldw, lpw), (pw1, dw, pw2) = self.left, self.right
            left = lpw(ldw(x, x.shape[1], k, s), branch, 1, act=act)
            right = pw2(dw(pw1(x, branch, 1, act=act), branch, k, s), branch, 1, act=act)
            out = torch.cat((left, right), dim=1)
        else:
            raise ValueError(f"this ShuffleNet slot has no weights for {block} on {x.shape[1]} channels")
        return channel_shuffle(out, 2)

    def zero_init_residual(self) -> None:
        """Not residual: a split unit replaces the half it transforms (see `blocks.ShuffleV2Unit`)."""

    @torch.no_grad()
    def copy_into(self, static: ShuffleV2Unit, block: BlockConfig, in_ch: int) -> None:
        branch, k = block.out_channels // 2, block.kernel
        if static.left is None and self.split is not None:
            for src, dst, (o, i, kk) in zip(self.split, static.right, ((branch, branch, 1), (branch, 1, k),
                                                                        (branch, branch, 1)), strict=True):
                src.copy_into(dst, o, i, kk)
            return
        assert self.left is not None and self.right is not None and static.left is not None
        self.left[0].copy_into(static.left[0], in_ch, 1, k)
        self.left[1].copy_into(static.left[1], branch, in_ch, 1)
        for src, dst, (o, i, kk) in zip(self.right, static.right, ((branch, in_ch, 1), (branch, 1, k),
                                                                    (branch, branch, 1)), strict=True):
            src.copy_into(dst, o, i, kk)

    def sort_channels(self) -> None:
        """ShuffleNet channels are coupled across the split and the shuffle; they keep their order."""


def _slot(family: str, st, in_widths: tuple[int, ...], index: int) -> nn.Module:
    """Elastic weights for block `index` of a stage built from `st` (a StageSpec) for one family."""
    fam = get_family(family)
    in_max, out_max = max(in_widths), max(st.widths)
    stride = st.stride if index == 0 else 1
    if family == "shufflev2":
        split = stride == 1 and bool(set(in_widths) & set(st.widths))
        two_branch = stride == 2 or any(i != o for i in in_widths for o in st.widths)
        return ElasticShuffle(in_max, out_max, st.kernels, split, two_branch)
    if family == "fused":
        return ElasticFused(fam, in_max, out_max, st.expands, st.kernels)
    return ElasticInvertedResidual(fam, in_max, out_max, st.expands, st.kernels, st.se if fam.se_is_knob else
                                   fam.se_ratios[0])


class Supernet(nn.Module):
    """Weight-sharing network over every architecture of `space`."""

    def __init__(self, space: SearchSpace) -> None:
        super().__init__()
        self.space = space
        stem = space.stem
        self.stem = ConvBNAct(space.in_channels, stem.channels, stem.kernel, stem.stride, act=stem.act)
        self.maxpool = nn.MaxPool2d(3, 2, 1) if stem.maxpool else None
        self.stages = nn.ModuleList()
        in_widths: tuple[int, ...] = (stem.channels,)
        for st in space.stages:
            self.stages.append(nn.ModuleDict({
                family: nn.ModuleList([_slot(family, st, in_widths if i == 0 else st.widths, i)
                                       for i in range(st.max_depth)])
                for family in st.families
            }))
            in_widths = st.widths
        self._zero_init_residual()
        head = space.head
        self.head = ElasticConvBN(max(in_widths), head.channels, (1,))
        self.hidden = nn.Linear(head.channels, head.hidden) if head.hidden else None
        self.classifier = nn.Linear(head.hidden or head.channels, space.num_classes)

    def forward(self, x: torch.Tensor, arch: ArchConfig) -> torch.Tensor:
        h = self.stem_forward(x, arch)
        for index, blocks in enumerate(arch.stages):
            h = self.stage_forward(h, index, blocks)
        return self.head_forward(h, arch)

    def stem_forward(self, x: torch.Tensor, arch: ArchConfig) -> torch.Tensor:
        """Check `arch` and the input, and run the stem (and max-pool): the first stage's input."""
        self.space.validate(arch)
        if x.shape[1:] != (arch.in_channels, arch.resolution, arch.resolution):
            raise ValueError(f"input of shape {tuple(x.shape[1:])} does not fit {arch.in_channels} channels at "
                             f"{arch.resolution}px")
        h = self.stem(x)
        return self.maxpool(h) if self.maxpool is not None else h

    def stage_forward(self, h: torch.Tensor, index: int, blocks: tuple[BlockConfig, ...]) -> torch.Tensor:
        """Run stage `index` of a (validated) architecture, whose blocks there are `blocks`."""
        for slot, block in zip(self.stages[index][blocks[0].family], blocks, strict=False):
            h = slot(h, block)
        return h

    def head_forward(self, h: torch.Tensor, arch: ArchConfig) -> torch.Tensor:
        head = arch.head
        h = self.head(h, head.channels, 1, act=head.act).mean((2, 3))
        if self.hidden is not None:
            h = ACT_FUNCS[head.act](self.hidden(h))
        return self.classifier(h)

    @torch.no_grad()
    def _zero_init_residual(self) -> None:
        """Blocks after a stage's first always keep the stage width at stride 1, so the MBConv families are always
        residual there: zero the scale of the BatchNorm ending each one's branch (see `blocks.zero_init_residual`).
        ShuffleNet units are not residual and keep their initialisation."""
        for stage in self.stages:
            for slots in stage.values():
                for slot in list(slots)[1:]:
                    slot.zero_init_residual()

    @torch.no_grad()
    def materialize(self, arch: ArchConfig) -> StaticNet:
        """The static model of `arch` with this supernet's weights (and BatchNorm statistics) copied in."""
        self.space.validate(arch)
        model = build_model(arch)
        model.stem[0].load_state_dict(self.stem.state_dict())
        sites = list(arch.sites())
        for site in sites:
            slot = self.stages[site.stage][site.block.family][site.position]
            slot.copy_into(model.stages[site.stage][site.position], site.block, site.in_channels)
        self.head.copy_into(model.head, arch.head.channels, arch.last_channels, 1)
        linears = [m for m in model.classifier if isinstance(m, nn.Linear)]
        if self.hidden is not None:
            linears[0].load_state_dict(self.hidden.state_dict())
        linears[-1].load_state_dict(self.classifier.state_dict())
        return model.train(self.training)

    @torch.no_grad()
    def sort_channels(self) -> None:
        """Importance-sort every block's expanded channels (before an expand-ratio phase shrinks them)."""
        for stage in self.stages:
            for slots in stage.values():
                for slot in slots:
                    slot.sort_channels()

