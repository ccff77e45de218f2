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

from search_spaces import ArchConfig, BlockConfig, BlockSite, SearchSpace
from search_spaces.errors import SpaceError
from supernets.elastic_layers import ACT_FUNCS, ElasticBlock, ElasticConvBN
from supernets.kinds import block_kind
from supernets.layers import ConvBNAct
from supernets.models import StaticNet, build_model


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
                family: nn.ModuleList([block_kind(family).elastic.from_stage(family, st, in_widths if i == 0
                                                                             else st.widths, i)
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
        """The static model of `arch` with this supernet's weights (and BatchNorm statistics) copied in.

        `arch` may state explicit widths (a pruned subnet): its grid projection must be in the space and each
        explicit width must fit the slot's weights; the leading channels are copied, as for a grid subnet.
        """
        self.space.validate_parent(arch)
        sites = [(site, self._slot(site)) for site in arch.sites()]
        model = build_model(arch)
        model.stem.load_state_dict(self.stem.state_dict())
        for site, slot in sites:
            slot.copy_into(model.stages[site.stage][site.position], site.block, site.in_channels)
        self.head.copy_into(model.head, arch.head.channels, arch.last_channels, 1)
        if self.hidden is not None and model.hidden is not None:
            model.hidden.load_state_dict(self.hidden.state_dict())
        model.classifier.load_state_dict(self.classifier.state_dict())
        return model.train(self.training)

    def _slot(self, site: BlockSite) -> ElasticBlock:
        """The slot that holds `site`'s weights, after checking that the block's widths fit in them."""
        slot: ElasticBlock = self.stages[site.stage][site.block.family][site.position]
        for what, width, most in slot.width_limits(site.block, site.in_channels):
            if width > most:
                raise SpaceError(f"block s{site.stage}.b{site.position} ({site.block.family}) has {what} {width}, "
                                 f"more than this supernet's weights hold there; at most {most}")
        return slot

    @torch.no_grad()
    def sort_channels(self) -> None:
        """Importance-sort every block's expanded channels (before an expand-ratio phase shrinks them)."""
        for stage in self.stages:
            for slots in stage.values():
                for slot in slots:
                    slot.sort_channels()

