"""Frozen architecture descriptions: a block, the stem, the head and the whole network.

Objects validate themselves on construction, so an `ArchConfig` that exists is buildable. Its text and
JSON forms belong to `search_spaces.codec`; the methods here only delegate to it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from search_spaces.errors import ArchError
from search_spaces.families import ACTIVATIONS, MAX_CHANNELS, MAX_EXPAND, Family, get_family

MAX_RESOLUTION = 4096
MAX_CLASSES = 1_000_000


def _check_int(field: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArchError(f"{field} must be a whole number from {low} to {high}; got {value!r}")
    if not low <= value <= high:
        raise ArchError(f"{field} {value} is out of range; allowed: {low} to {high}")
    return value


def _check_choice(field: str, value: Any, allowed: Sequence[Any]) -> Any:
    if value not in allowed:
        shown = ", ".join(str(a) for a in allowed)
        raise ArchError(f"{field} is {value!r}, which is not allowed; allowed: {shown}")
    return value


def _check_ratio(field: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ArchError(f"{field} must be a number from {low:g} to {high:g}; got {value!r}")
    ratio = float(value)
    if not low <= ratio <= high:
        raise ArchError(f"{field} {ratio:g} is out of range; allowed: {low:g} to {high:g}")
    if round(ratio, 3) != ratio:
        raise ArchError(f"{field} {ratio!r} has more than 3 decimals; write it with at most 3 (e.g. 3.667)")
    return ratio


@dataclass(frozen=True)
class BlockConfig:
    """One block. `se` and `act` default to the family's fixed value where the family has one.

    The optional fields state widths off the search grid, so that a pruned block is still a block:
    `mid` the middle width (the expanded width of an MBConv, overriding `make_divisible(in x expand, 8)`; the
    transformed branch's inner width of a ShuffleNet unit), `squeeze` the SE squeeze width (overriding the
    family's rule), `noskip` no residual connection where stride 1 and equal widths would give one, `branch`
    the output width of a ShuffleNet unit's transformed branch (default half the output; the other branch gives
    the rest). `None` / `False` mean "as the family's rule says".
    """

    family: str
    kernel: int
    expand: float
    out_channels: int
    stride: int
    se: float | None = None
    act: str | None = None
    mid: int | None = None
    squeeze: int | None = None
    noskip: bool = False
    branch: int | None = None

    def __post_init__(self) -> None:
        fam = get_family(self.family)
        _check_choice(f"kernel of a {fam.name} block", self.kernel, fam.kernels)
        _check_choice(f"stride of a {fam.name} block", self.stride, fam.strides)
        _check_int(f"out channels of a {fam.name} block", self.out_channels, 1, MAX_CHANNELS)
        if fam.even_channels and self.out_channels % 2:
            raise ArchError(
                f"out channels of a {fam.name} block must be even (the unit splits them into two branches); "
                f"got {self.out_channels}"
            )
        if fam.has_expand:
            expand = _check_ratio(f"expand ratio of a {fam.name} block", self.expand, 1.0, MAX_EXPAND)
        elif self.expand != 1:
            raise ArchError(f"family {fam.name} has no expand ratio; got {self.expand!r} (leave it at 1)")
        else:
            expand = 1.0
        object.__setattr__(self, "expand", expand)
        se = fam.se_ratios[0] if self.se is None and not fam.se_is_knob else (self.se or 0.0)
        if isinstance(se, bool) or not isinstance(se, (int, float)):
            raise ArchError(f"SE ratio of a {fam.name} block must be a number; got {se!r}")
        se = _check_choice(f"SE ratio of a {fam.name} block", float(se), fam.se_ratios)
        object.__setattr__(self, "se", se)
        if self.act is None and fam.act_is_knob:
            raise ArchError(f"a {fam.name} block needs an activation; allowed: {', '.join(fam.activations)}")
        act = fam.activations[0] if self.act is None else self.act
        object.__setattr__(self, "act", _check_choice(f"activation of a {fam.name} block", act, fam.activations))
        self._check_explicit(fam)

    def _check_explicit(self, fam: Family) -> None:
        """The explicit widths: each a whole number where the block has that width, absent elsewhere."""
        name = fam.name
        if self.mid is not None:
            _check_int(f"middle channels (m) of a {name} block", self.mid, 1, MAX_CHANNELS)
            if not fam.branched and self.expand == 1.0:
                raise ArchError(f"middle channels (m{self.mid}) need an expansion layer; this {name} block has "
                                "expand ratio 1 (its middle width is its input width)")
        if self.squeeze is not None:
            _check_int(f"SE squeeze channels (q) of a {name} block", self.squeeze, 1, MAX_CHANNELS)
            if self.se_ratio == 0:
                raise ArchError(f"SE squeeze channels (q{self.squeeze}) need an SE module; this {name} block has "
                                "SE ratio 0")
        if not isinstance(self.noskip, bool):
            raise ArchError(f"noskip of a {name} block must be true or false; got {self.noskip!r}")
        if self.noskip and fam.branched:
            raise ArchError(f"a {name} unit has no residual connection to drop; noskip is not allowed there")
        if self.branch is not None:
            if not fam.branched:
                raise ArchError(f"branch channels (b{self.branch}) belong to ShuffleNet units; "
                                f"a {name} block has no branches")
            _check_int(f"branch channels (b) of a {name} unit", self.branch, 1, self.out_channels - 1)

    @property
    def se_ratio(self) -> float:
        """The SE ratio as a float (always set after construction)."""
        return float(self.se or 0.0)

    @property
    def activation(self) -> str:
        """The activation name (always set after construction)."""
        return str(self.act)

    @property
    def explicit(self) -> bool:
        """Whether any width or the skip is stated off the family's rules (the block is off the search grid)."""
        return self.mid is not None or self.squeeze is not None or self.noskip or self.branch is not None

    def on_grid(self) -> BlockConfig:
        """The same block with every explicit width dropped (the grid block it was pruned from)."""
        return replace(self, mid=None, squeeze=None, noskip=False, branch=None)

    def canonical(self, in_channels: int) -> BlockConfig:
        """The same block with every explicit width that only restates the family's rule dropped (`m` equal to the
        rule's middle width, `q` to its squeeze, `b` to half the output, `noskip` where there is no residual), so
        one network has one string and one key."""
        changes: dict[str, Any] = {}
        if self.mid is not None and self.mid == replace(self, mid=None).mid_channels(in_channels):
            changes["mid"] = None
        if self.squeeze is not None and self.squeeze == replace(self, squeeze=None).squeeze_channels(in_channels):
            changes["squeeze"] = None
        if self.branch is not None and self.branch == self.out_channels // 2:
            changes["branch"] = None
        if self.noskip and not replace(self, noskip=False).has_residual(in_channels):
            changes["noskip"] = False
        if not changes:
            return self
        return replace(self, **changes).canonical(in_channels)

    def mid_channels(self, in_channels: int) -> int:
        """Middle width: explicit `mid`, else the family's rule (MBConv: expanded width; ShuffleNet: branch)."""
        if self.mid is not None:
            return self.mid
        if get_family(self.family).branched:
            return self.branch_channels
        return get_family(self.family).mid_channels(in_channels, self.expand)

    def squeeze_channels(self, in_channels: int) -> int:
        """SE squeeze width: explicit `squeeze`, else the family's rule (0 without SE)."""
        if self.se_ratio == 0:
            return 0
        if self.squeeze is not None:
            return self.squeeze
        return get_family(self.family).se_channels(in_channels, self.mid_channels(in_channels), self.se_ratio)

    @property
    def branch_channels(self) -> int:
        """ShuffleNet: the transformed (right) branch's output width; the other branch gives the rest."""
        return self.branch if self.branch is not None else self.out_channels // 2

    def is_split_unit(self, in_channels: int) -> bool:
        """ShuffleNet: a split unit (stride 1, equal widths) transforms half its input and keeps the other."""
        return get_family(self.family).branched and self.stride == 1 and in_channels == self.out_channels

    def has_residual(self, in_channels: int) -> bool:
        """An MBConv adds its input at stride 1 with equal widths, unless `noskip` says it does not."""
        return (not get_family(self.family).branched and self.stride == 1
                and in_channels == self.out_channels and not self.noskip)

@dataclass(frozen=True)
class StemConfig:
    """First convolution (k x k, stride, BN, activation), optionally followed by a 3x3 stride-2 max pool."""

    channels: int
    kernel: int = 3
    stride: int = 2
    act: str = "relu"
    maxpool: bool = False

    def __post_init__(self) -> None:
        _check_int("stem channels", self.channels, 1, MAX_CHANNELS)
        _check_choice("stem kernel", self.kernel, (1, 3, 5, 7))
        _check_choice("stem stride", self.stride, (1, 2))
        _check_choice("stem activation", self.act, ACTIVATIONS)
        _check_choice("stem maxpool", self.maxpool, (False, True))


@dataclass(frozen=True)
class HeadConfig:
    """1x1 conv to `channels` (BN, activation), global average pool, optional hidden linear layer, classifier."""

    channels: int
    hidden: int = 0
    act: str = "relu"

    def __post_init__(self) -> None:
        _check_int("head channels", self.channels, 1, MAX_CHANNELS)
        _check_int("head hidden features", self.hidden, 0, MAX_CHANNELS)
        _check_choice("head activation", self.act, ACTIVATIONS)


class BlockSite(NamedTuple):
    """A block with its position and the width it receives."""

    stage: int
    position: int
    block: BlockConfig
    in_channels: int


@dataclass(frozen=True)
class ArchConfig:
    """A whole network: input, stem, stages of blocks, head. Canonical string and JSON round-trip exactly."""

    resolution: int
    in_channels: int
    num_classes: int
    stem: StemConfig
    stages: tuple[tuple[BlockConfig, ...], ...]
    head: HeadConfig

    def __post_init__(self) -> None:
        _check_int("resolution", self.resolution, 1, MAX_RESOLUTION)
        _check_int("input channels", self.in_channels, 1, MAX_CHANNELS)
        _check_int("number of classes", self.num_classes, 1, MAX_CLASSES)
        if not isinstance(self.stem, StemConfig) or not isinstance(self.head, HeadConfig):
            raise ArchError("stem must be a StemConfig and head a HeadConfig")
        if isinstance(self.stages, (str, bytes)) or not isinstance(self.stages, Sequence):
            raise ArchError(f"stages must be a sequence of sequences of blocks; got {type(self.stages).__name__}")
        stages = tuple(tuple(stage) for stage in self.stages)
        if not stages:
            raise ArchError("an architecture needs at least one stage")
        for s, stage in enumerate(stages):
            if not stage:
                raise ArchError(f"stage {s} is empty; every stage needs at least one block")
            for b, block in enumerate(stage):
                if not isinstance(block, BlockConfig):
                    raise ArchError(f"stage {s} block {b} must be a BlockConfig; got {type(block).__name__}")
        object.__setattr__(self, "stages", stages)
        for site in self.sites():
            block = site.block
            if block.branch is not None and block.is_split_unit(site.in_channels) \
                    and block.branch != block.out_channels // 2:
                raise ArchError(
                    f"stage {site.stage} block {site.position}: a split ShuffleNet unit keeps half of its "
                    f"{site.in_channels} input channels, so its branch is {block.out_channels // 2} channels; "
                    f"got b{block.branch}")
        # canonical blocks keep their output widths, so every site's input width is the same before and after
        canonical = [list(stage) for stage in stages]
        for site in self.sites():
            canonical[site.stage][site.position] = site.block.canonical(site.in_channels)
        object.__setattr__(self, "stages", tuple(tuple(stage) for stage in canonical))

    def sites(self) -> Iterator[BlockSite]:
        """Every block in order, with the number of channels it receives."""
        channels = self.stem.channels
        for s, stage in enumerate(self.stages):
            for b, block in enumerate(stage):
                yield BlockSite(s, b, block, channels)
                channels = block.out_channels

    @property
    def explicit(self) -> bool:
        """Whether any block states widths off the search grid (a pruned network)."""
        return any(block.explicit for stage in self.stages for block in stage)

    def on_grid(self) -> ArchConfig:
        """The same network with every block's explicit widths dropped (the grid network it was pruned from)."""
        return replace(self, stages=tuple(tuple(block.on_grid() for block in stage) for stage in self.stages))

    @property
    def depths(self) -> tuple[int, ...]:
        return tuple(len(stage) for stage in self.stages)

    @property
    def last_channels(self) -> int:
        return self.stages[-1][-1].out_channels

    def to_str(self) -> str:
        from search_spaces.codec import arch_to_str

        return arch_to_str(self)

    def to_json(self) -> str:
        from search_spaces.codec import arch_to_json

        return arch_to_json(self)

    def to_dict(self) -> dict[str, Any]:
        from search_spaces.codec import arch_to_dict

        return arch_to_dict(self)

    @property
    def key(self) -> str:
        """Short stable hash of the canonical JSON (12 hex digits of SHA-256)."""
        from search_spaces.codec import arch_key

        return arch_key(self)

    @classmethod
    def from_str(cls, text: str) -> ArchConfig:
        from search_spaces.codec import arch_from_str

        return arch_from_str(text)

    @classmethod
    def from_json(cls, text: str) -> ArchConfig:
        from search_spaces.codec import arch_from_json

        return arch_from_json(text)

    @classmethod
    def from_dict(cls, data: Any) -> ArchConfig:
        from search_spaces.codec import arch_from_dict

        return arch_from_dict(data)

    def __str__(self) -> str:
        return self.to_str()
