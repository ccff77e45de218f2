"""Compression plans as data: which channels a pruned subnet keeps (`PrunePlan`) and the precision each layer
runs at (`BitWidthPlan`). Torch-free, frozen, with a canonical JSON codec and a key.

Both are keyed by layer id (`stem`, `s{stage}.b{position}.{layer}`, `head`, `hidden`, `classifier`; see the
README). A prune plan's dependency groups are the sets of channels that must be pruned together; a group is
named after the layer whose output channels it is: `s1.b0.expand` (a block's middle channels), `s1.b0.se.reduce`
(its SE squeeze), `s1.b0.right.pw1` (a ShuffleNet unit's inner branch width), and for the channels a chain of
residual adds shares, the layer that first writes them (`stem`, `s1.b0.project`, `s2.b0.conv`); `head` and
`hidden` for the head. `channel_groups(arch)` lists them; `PrunePlan.apply_to` gives the pruned architecture
with explicit widths, which `build_model` builds and `nas.export.prune` fills from the parent's weights.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, NamedTuple

from search_spaces.arch import ArchConfig, BlockConfig, BlockSite, HeadConfig, StemConfig
from search_spaces.codec import canonical_json, short_key
from search_spaces.errors import HwnasError
from search_spaces.families import get_family

#: Precisions a runtime runs natively, that a layer may be given.
PRECISIONS = ("fp32", "fp16", "int8")
#: Simulated integer bit-widths (fake quantisation), `w<weight bits>a<activation bits>`: weights 2-8 bits,
#: activations 2-8 or 16. No runtime runs them: they price size and BitOPs for accelerators hwnas cannot run, and a
#: layer at one is always in its plan's `simulated`.
SIMULATED_PRECISION = re.compile(r"w([2-8])a([2-8]|16)")
#: Every simulated precision, most bits first (weights, then activations).
SIMULATED_PRECISIONS = tuple(f"w{w}a{a}" for w in range(8, 1, -1) for a in (16, *range(8, 1, -1)))
PRUNE_FORMAT = "hwnas.prune-plan/1"
BITWIDTH_FORMAT = "hwnas.bitwidth-plan/1"

_BLOCK_LAYERS = ("expand", "dw", "se.reduce", "se.expand", "project", "conv",
                 "left.dw", "left.pw", "right.pw1", "right.dw", "right.pw2")
_LAYER_ID = re.compile(r"(stem|head|hidden|classifier|s\d+\.b\d+\.(" + "|".join(re.escape(n) for n in _BLOCK_LAYERS)
                       + r"))")


class PlanError(HwnasError):
    """A prune or bit-width plan that is malformed or does not fit its architecture."""


class LayerGroups(NamedTuple):
    """The channel groups a layer reads and writes (None: channels that cannot be pruned, e.g. the image, the
    classes, a ShuffleNet unit's concatenated output)."""

    inputs: str | None
    outputs: str | None




def _json_object(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, TypeError) as err:
        raise PlanError(f"{what} is not JSON: {err}") from None


class _CanonicalJson:
    """Canonical JSON and a key for a frozen plan that has `to_dict`."""

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces)."""
        return canonical_json(self.to_dict())

    @property
    def key(self) -> str:
        """12 hex digits of the SHA-256 of the canonical JSON."""
        return short_key(self.to_dict())


# ---------------------------------------------------------------------------------------- channel groups


def _shuffle_layers(site: BlockSite, prefix: str, in_g: str | None) -> tuple[dict[str, LayerGroups], str | None]:
    """ShuffleNet unit: only the transformed branch's inner width is prunable; the unit's output (concatenated and
    shuffled) and, in a split unit, its input are fixed."""
    inner_g = prefix + "right.pw1"
    if site.block.is_split_unit(site.in_channels):
        layers = {"right.pw1": LayerGroups(None, inner_g)}
    else:
        layers = {"left.dw": LayerGroups(in_g, in_g), "left.pw": LayerGroups(in_g, None),
                  "right.pw1": LayerGroups(in_g, inner_g)}
    layers |= {"right.dw": LayerGroups(inner_g, inner_g), "right.pw2": LayerGroups(inner_g, None)}
    return {prefix + k: v for k, v in layers.items()}, None


def _fused_layers(site: BlockSite, prefix: str, in_g: str | None) -> tuple[dict[str, LayerGroups], str | None]:
    """Fused MBConv: kxk expand -> 1x1 project (or one kxk conv); a residual ties the output to the input."""
    block = site.block
    expands = block.expand != 1.0
    out_g = in_g if block.has_residual(site.in_channels) else prefix + ("project" if expands else "conv")
    mid_g = prefix + "expand"
    layers = {"expand": LayerGroups(in_g, mid_g), "project": LayerGroups(mid_g, out_g)} if expands else \
        {"conv": LayerGroups(in_g, out_g)}
    return {prefix + k: v for k, v in layers.items()}, out_g


def _inverted_residual_layers(site: BlockSite, prefix: str, in_g: str | None
                              ) -> tuple[dict[str, LayerGroups], str | None]:
    """Inverted residual: the middle group runs from expand (or the input) through dw and SE to project."""
    block = site.block
    expands = block.expand != 1.0
    mid_g: str | None = prefix + "expand" if expands else in_g
    out_g = in_g if block.has_residual(site.in_channels) else prefix + "project"
    layers = {"expand": LayerGroups(in_g, mid_g)} if expands else {}
    layers["dw"] = LayerGroups(mid_g, mid_g)
    if block.se_ratio > 0:
        layers |= {"se.reduce": LayerGroups(mid_g, prefix + "se.reduce"),
                   "se.expand": LayerGroups(prefix + "se.reduce", mid_g)}
    layers["project"] = LayerGroups(mid_g, out_g)
    return {prefix + k: v for k, v in layers.items()}, out_g


#: The dependency analysis of one block, per `Family.kind`: (site, layer-id prefix, input group) -> the block's
#: layers with their groups, and the group of the block's output (None: not prunable).
GROUPERS: dict[str, Callable[[BlockSite, str, str | None], tuple[dict[str, LayerGroups], str | None]]] = {
    "inverted_residual": _inverted_residual_layers,
    "fused": _fused_layers,
    "shuffle": _shuffle_layers,
}


def _block_layers(site: BlockSite, prefix: str, in_g: str | None) -> tuple[dict[str, LayerGroups], str | None]:
    """The layers of one block with their groups, and the group of the block's output."""
    return GROUPERS[get_family(site.block.family).kind](site, prefix, in_g)


def layer_groups(arch: ArchConfig) -> dict[str, LayerGroups]:
    """Every prunable or quantisable layer of `arch` by layer id, in network order, with the channel groups it
    reads and writes. Channels a split ShuffleNet unit reads or a ShuffleNet unit writes are not prunable."""
    layers = {"stem": LayerGroups(None, "stem")}
    current: str | None = "stem"
    fixed: set[str] = set()
    for site in arch.sites():
        if site.block.is_split_unit(site.in_channels) and current is not None:
            fixed.add(current)  # its halves are split by position: pruning them would change the unit
        block_layers, current = _block_layers(site, f"s{site.stage}.b{site.position}.", current)
        layers |= block_layers
    layers["head"] = LayerGroups(current, "head")
    last = "head"
    if arch.head.hidden:
        layers["hidden"] = LayerGroups("head", "hidden")
        last = "hidden"
    layers["classifier"] = LayerGroups(last, None)
    return {name: LayerGroups(*(None if g in fixed else g for g in groups)) for name, groups in layers.items()}


def channel_groups(arch: ArchConfig) -> dict[str, int]:
    """The prunable channel groups of `arch` (see the module's docstring) and their widths, in network order."""
    widths: dict[str, int] = {"stem": arch.stem.channels}
    for site in arch.sites():
        block, prefix = site.block, f"s{site.stage}.b{site.position}."
        widths[prefix + "expand"] = widths[prefix + "right.pw1"] = block.mid_channels(site.in_channels)
        widths[prefix + "se.reduce"] = block.squeeze_channels(site.in_channels)
        widths[prefix + "project"] = widths[prefix + "conv"] = block.out_channels
    widths |= {"head": arch.head.channels, "hidden": arch.head.hidden}
    groups = {g for lg in layer_groups(arch).values() for g in lg if g is not None}
    return {name: widths[name] for name in widths if name in groups}


def _check_layer_id(name: Any, where: str) -> str:
    if not isinstance(name, str) or not _LAYER_ID.fullmatch(name):
        raise PlanError(f"{where}: {name!r} is not a layer id; allowed: stem, s<stage>.b<position>.<layer> with "
                        f"layer one of {', '.join(_BLOCK_LAYERS)}, head, hidden, classifier")
    return name


def _unknown(kind: str, names: Iterable[str], allowed: Sequence[str], arch: ArchConfig) -> PlanError:
    shown = ", ".join(allowed[:40]) + (", ..." if len(allowed) > 40 else "")
    return PlanError(f"{kind} {', '.join(sorted(names))} not in architecture {arch.key}; allowed: {shown}")


# --------------------------------------------------------------------------------------------- pruning


def _indices(group: str, values: Any) -> tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise PlanError(f"prune plan group {group}: kept channels must be a list of indices; got {values!r}")
    out = tuple(values)
    if not out or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in out):
        raise PlanError(f"prune plan group {group}: kept channels must be at least one whole number >= 0; "
                        f"got {list(out)}")
    if list(out) != sorted(set(out)):
        raise PlanError(f"prune plan group {group}: kept channel indices must be sorted and unique; got {list(out)}")
    return out


@dataclass(frozen=True)
class PrunePlan(_CanonicalJson):
    """The channels a pruned subnet keeps: for each pruned dependency group (by layer id, see the module's
    docstring) the sorted indices kept of the parent's channels; groups not named keep every channel. `parent`
    is the key of the architecture the plan prunes."""

    parent: str
    keep: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.parent, str) or not re.fullmatch(r"[0-9a-f]{12}", self.parent):
            raise PlanError(f"prune plan parent must be an architecture key (12 hex digits); got {self.parent!r}")
        if not isinstance(self.keep, Mapping):
            raise PlanError(f"prune plan keep must map group ids to kept indices; got {type(self.keep).__name__}")
        checked = {_check_layer_id(g, "prune plan group"): v for g, v in self.keep.items()}
        keep = {g: _indices(g, v) for g, v in sorted(checked.items())}
        object.__setattr__(self, "keep", MappingProxyType(keep))

    def __hash__(self) -> int:
        return hash(self.key)

    def to_dict(self) -> dict[str, Any]:
        return {"format": PRUNE_FORMAT, "parent": self.parent, "keep": {g: list(v) for g, v in self.keep.items()}}

    @classmethod
    def from_dict(cls, data: Any) -> PrunePlan:
        if not isinstance(data, Mapping) or data.get("format") != PRUNE_FORMAT:
            raise PlanError(f"a prune plan is a JSON object with format {PRUNE_FORMAT!r}; got {str(data)[:80]}")
        unknown = set(data) - {"format", "parent", "keep"}
        if unknown:
            raise PlanError(f"prune plan has unknown fields {', '.join(sorted(unknown))}; allowed: format, parent, "
                            f"keep")
        return cls(data.get("parent", ""), data.get("keep", {}))

    @classmethod
    def from_json(cls, text: str) -> PrunePlan:
        return cls.from_dict(_json_object(text, "prune plan"))

    def check(self, arch: ArchConfig) -> dict[str, int]:
        """Refuse a plan that does not fit `arch` (another parent, unknown groups, indices past a group's width);
        returns the groups' widths."""
        if arch.key != self.parent:
            raise PlanError(f"prune plan parent {self.parent} is not architecture {arch.key}; a plan replays only "
                            f"on the architecture it was made for")
        widths = channel_groups(arch)
        unknown = [g for g in self.keep if g not in widths]
        if unknown:
            raise _unknown("prune plan groups", unknown, list(widths), arch)
        for group, kept in self.keep.items():
            if kept[-1] >= widths[group]:
                raise PlanError(f"prune plan group {group}: index {kept[-1]} is past its {widths[group]} channels; "
                                f"allowed: 0 to {widths[group] - 1}")
        return widths

    def width(self, group: str | None, default: int) -> int:
        """How many channels of `group` the plan keeps (`default` when it keeps them all)."""
        return len(self.keep[group]) if group is not None and group in self.keep else default

    def apply_to(self, arch: ArchConfig) -> ArchConfig:
        """The pruned architecture: `arch` with each group's width cut to the channels kept, written with explicit
        widths (`mid`, `squeeze`, `noskip`) where the family's rules would derive others from the new widths."""
        self.check(arch)
        groups = layer_groups(arch)
        stem = replace(arch.stem, channels=self.width("stem", arch.stem.channels))
        in_channels = stem.channels
        stages: list[list[BlockConfig]] = [[] for _ in arch.stages]
        for site in arch.sites():
            block = self._pruned_block(site, groups, in_channels)
            stages[site.stage].append(block)
            in_channels = block.out_channels
        head = replace(arch.head, channels=self.width("head", arch.head.channels),
                       hidden=self.width("hidden", arch.head.hidden) if arch.head.hidden else 0)
        return _rebuilt(arch, stem, stages, head)

    def _pruned_block(self, site: BlockSite, groups: Mapping[str, LayerGroups], in_channels: int) -> BlockConfig:
        block, prefix = site.block, f"s{site.stage}.b{site.position}."
        last = next(groups[prefix + n] for n in ("project", "conv", "right.pw2") if prefix + n in groups)
        mid_group = prefix + ("right.pw1" if get_family(block.family).kind == "shuffle" else "expand")
        mid = self.width(mid_group, block.mid_channels(site.in_channels))
        squeeze = self.width(prefix + "se.reduce", block.squeeze_channels(site.in_channels))
        new = replace(block, out_channels=self.width(last.outputs, block.out_channels), mid=None, squeeze=None)
        if mid_group in groups and new.mid_channels(in_channels) != mid:  # without expansion, mid is the input
            new = replace(new, mid=mid)
        if new.squeeze_channels(in_channels) != squeeze:
            new = replace(new, squeeze=squeeze)
        if new.has_residual(in_channels) and not block.has_residual(site.in_channels):
            new = replace(new, noskip=True)
        return new


def _rebuilt(arch: ArchConfig, stem: StemConfig, stages: list[list[BlockConfig]], head: HeadConfig) -> ArchConfig:
    return ArchConfig(arch.resolution, arch.in_channels, arch.num_classes, stem,
                      tuple(tuple(stage) for stage in stages), head)


# ------------------------------------------------------------------------------------------- bit-widths


def simulated_bits(precision: Any) -> tuple[int, int] | None:
    """(weight bits, activation bits) of a simulated precision such as `w4a8`; None for anything else (a native
    precision included)."""
    match = SIMULATED_PRECISION.fullmatch(precision) if isinstance(precision, str) else None
    return (int(match.group(1)), int(match.group(2))) if match else None


def _precision(where: str, value: Any) -> str:
    if value not in PRECISIONS and simulated_bits(value) is None:
        raise PlanError(f"{where} is {value!r}; allowed: {', '.join(PRECISIONS)}, or a simulated "
                        f"w<2-8>a<2-8|16> (e.g. w4a8)")
    return str(value)


@dataclass(frozen=True)
class BitWidthPlan(_CanonicalJson):
    """The precision each layer runs at: `layers` by layer id, `default` for every layer not named. `simulated`
    names the layers whose precision the runtime does not run natively (fake-quantised: their accuracy is the
    plan's, their latency is not); every layer named at a simulated precision (`w4a8`) is added to it. A simulated
    `default` covers layers not named, which `simulated_in(arch)` lists."""

    layers: Mapping[str, str] = field(default_factory=dict)
    default: str = "fp32"
    simulated: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if not isinstance(self.layers, Mapping):
            raise PlanError(f"bit-width plan layers must map layer ids to precisions; got "
                            f"{type(self.layers).__name__}")
        checked = {_check_layer_id(n, "bit-width plan layer"): p for n, p in self.layers.items()}
        layers = {n: _precision(f"bit-width plan precision of {n}", p) for n, p in sorted(checked.items())}
        object.__setattr__(self, "layers", MappingProxyType(layers))
        object.__setattr__(self, "default", _precision("bit-width plan default precision", self.default))
        if isinstance(self.simulated, (str, bytes, Mapping)) or not isinstance(self.simulated, Iterable):
            raise PlanError(f"bit-width plan simulated must be a list of layer ids; got {self.simulated!r}")
        simulated = {_check_layer_id(n, "bit-width plan simulated layer") for n in self.simulated}
        simulated |= {n for n, p in layers.items() if simulated_bits(p) is not None}
        object.__setattr__(self, "simulated", frozenset(simulated))

    def __hash__(self) -> int:
        return hash(self.key)

    def precision_of(self, layer_id: str) -> str:
        """The precision `layer_id` runs at."""
        return self.layers.get(layer_id, self.default)

    def precisions(self, arch: ArchConfig) -> dict[str, str]:
        """Every layer of `arch` with its precision, in network order (what `analytic_cost(precision=...)` takes)."""
        self.check(arch)
        return {name: self.precision_of(name) for name in layer_groups(arch)}

    def used(self, arch: ArchConfig) -> tuple[str, ...]:
        """The precisions the layers of `arch` run at, each once: native ones in `PRECISIONS` order, then simulated
        ones in `SIMULATED_PRECISIONS` order (most bits first)."""
        found = set(self.precisions(arch).values())
        return tuple(p for p in (*PRECISIONS, *SIMULATED_PRECISIONS) if p in found)

    @property
    def has_simulated(self) -> bool:
        """Whether any layer may be simulated: one is listed in `simulated`, or the default is simulated."""
        return bool(self.simulated) or simulated_bits(self.default) is not None

    def simulated_in(self, arch: ArchConfig) -> frozenset[str]:
        """The layers of `arch` that are simulated: `simulated`, and those the default covers when it is simulated."""
        return self.simulated | {n for n, p in self.precisions(arch).items() if simulated_bits(p) is not None}

    def check(self, arch: ArchConfig) -> None:
        """Refuse layer ids (in `layers` or `simulated`) that `arch` does not have."""
        names = layer_groups(arch)
        unknown = [n for n in (*self.layers, *self.simulated) if n not in names]
        if unknown:
            raise _unknown("bit-width plan layers", set(unknown), list(names), arch)

    def to_dict(self) -> dict[str, Any]:
        return {"format": BITWIDTH_FORMAT, "default": self.default, "layers": dict(self.layers),
                "simulated": sorted(self.simulated)}

    @classmethod
    def from_dict(cls, data: Any) -> BitWidthPlan:
        if not isinstance(data, Mapping) or data.get("format") != BITWIDTH_FORMAT:
            raise PlanError(f"a bit-width plan is a JSON object with format {BITWIDTH_FORMAT!r}; "
                            f"got {str(data)[:80]}")
        unknown = set(data) - {"format", "default", "layers", "simulated"}
        if unknown:
            raise PlanError(f"bit-width plan has unknown fields {', '.join(sorted(unknown))}; allowed: format, "
                            f"default, layers, simulated")
        return cls(data.get("layers", {}), data.get("default", "fp32"), data.get("simulated", ()))

    @classmethod
    def from_json(cls, text: str) -> BitWidthPlan:
        return cls.from_dict(_json_object(text, "bit-width plan"))
