"""How many channels each dependency group of a subnet keeps, so that a latency table predicts the pruned subnet
within a budget: a `PrunePlan` allocated against measured latency, not MACs. Torch-free.

Algorithm (`method="greedy"`), after NetAdapt (Yang et al., "NetAdapt: Platform-Aware Neural Network Adaptation
for Mobile Applications", ECCV 2018, arXiv:1804.03230): start from the parent's widths. At each step, propose
for every group its next smaller allowed width (a multiple of `round_to`, at least `min_channels`), dropping its
lowest-scored channels; price every proposal with the table (`LatencyTable.predict_arch` of
`PrunePlan.apply_to(parent)`, so the next layers' narrower inputs, the table's network-level correction and,
for measured keys, the runtime's staircases are in the price); take the proposal with the best ratio of
predicted latency saved to importance removed, the importance normalised per group: a step's cost is the share
of the importance its group still holds that the step removes (scale-free across groups and criteria, and
rising as a group thins, so one group is not cut to its last channels while others keep all of theirs). Repeat
until the prediction is within the budget. Where no proposal saves latency (a table can be non-monotone), the
one that costs least latency is taken, so the walk always moves towards every group at its fewest channels; it
takes at most as many steps as there are widths to step down through (<= sum of group widths / `round_to`).

Differences from NetAdapt: no short-term fine-tune per proposal (the importance scores stand in for the accuracy
it measures) and one width step per iteration instead of a per-iteration latency target.

Off-grid widths: a pruned block's key (explicit widths, e.g. `m40-q8`, or channels off the grid) is usually not
in a table measured on the search grid; the table estimates it (`LatencyTable.estimate_key`: the nearest measured
key of the same shape class, scaled by the table's fitted latency model). `Allocation.estimated_keys` lists every
key of the result that was estimated, so a caller can measure them (`latency_tables.ondemand.measure_missing`) or
say that the prediction is partly estimated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from latency_tables.keys import arch_keys
from latency_tables.table import LatencyTable
from search_spaces import ArchConfig
from search_spaces.errors import HwnasError
from search_spaces.plans import PrunePlan, channel_groups

#: Allocation methods by name.
METHODS = ("greedy",)
#: Added to the importance removed, so a step removing only zero-scored channels has a finite, very high ratio.
_EPS = 1e-12


class AllocationError(HwnasError):
    """A budget that cannot be met, or settings or scores the allocator cannot use."""


@dataclass(frozen=True)
class Allocation:
    """What `allocate_latency` chose: the plan, the pruned architecture and the table's prediction for it."""

    plan: PrunePlan
    arch: ArchConfig
    latency_ms: float
    parent_latency_ms: float
    budget_ms: float
    table_id: str
    #: Kept channels per group (every prunable group, pruned or not), in network order.
    widths: Mapping[str, int] = field(default_factory=dict)
    #: Keys of `arch` the table lacks, whose latency it estimated (canonical key strings).
    estimated_keys: tuple[str, ...] = ()
    steps: int = 0

    @property
    def estimated(self) -> bool:
        """Whether the prediction used any estimated (unmeasured) key."""
        return bool(self.estimated_keys)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (for metrics.json): the table, budget, predictions, kept widths, estimated keys."""
        return {"table": self.table_id, "budget_ms": self.budget_ms, "latency_ms": self.latency_ms,
                "parent_latency_ms": self.parent_latency_ms, "estimated": self.estimated,
                "estimated_keys": list(self.estimated_keys), "widths": dict(self.widths), "steps": self.steps,
                "plan": self.plan.to_dict()}


def predicted_latency(table: LatencyTable, arch: ArchConfig) -> tuple[float, tuple[str, ...]]:
    """(the table's predicted latency of `arch` in ms, the keys it had to estimate)."""
    estimated = tuple(sorted({k.to_str() for k in arch_keys(arch) if k not in table.rows}))
    return table.predict_arch(arch, estimate_missing=True), estimated


def width_options(size: int, round_to: int, min_channels: int) -> list[int]:
    """The widths a group of `size` channels may keep, widest first: its own size, then the multiples of
    `round_to` below it that are at least `min_channels` (only its size when there are none)."""
    smaller = [w for w in range(round_to, size, round_to) if w >= min_channels]
    return [size, *reversed(smaller)]


def _check_settings(budget_ms: float, round_to: int, min_channels: int, method: str) -> None:
    if method not in METHODS:
        raise AllocationError(f"unknown allocation method {method!r}; allowed: {', '.join(METHODS)}")
    for name, value in (("round_to", round_to), ("min_channels", min_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise AllocationError(f"{name} must be a whole number >= 1; got {value!r}")
    if isinstance(budget_ms, bool) or not isinstance(budget_ms, (int, float)) or not math.isfinite(budget_ms) \
            or budget_ms <= 0:
        raise AllocationError(f"latency budget must be a finite number of ms > 0; got {budget_ms!r}")


def _ranked(scores: Mapping[str, np.ndarray], widths: Mapping[str, int], arch: ArchConfig
            ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per scored group: (channel indices by falling score, their scores in that order, normalised to sum 1; equal
    shares where every score is 0)."""
    unknown = sorted(set(scores) - set(widths))
    if unknown:
        raise AllocationError(f"scores for {', '.join(unknown)}, which are not prunable groups of {arch.key}; "
                              f"allowed: {', '.join(widths)}")
    ranked = {}
    for group in widths:
        if group not in scores:
            continue
        values = np.asarray(scores[group], dtype=float)
        if values.shape != (widths[group],) or not np.all(np.isfinite(values)) or np.any(values < 0):
            raise AllocationError(f"scores of group {group} must be {widths[group]} finite numbers >= 0 (one per "
                                  f"channel); got shape {values.shape}")
        total = values.sum()
        normalised = values / total if total > 0 else np.full(len(values), 1.0 / len(values))
        order = np.argsort(-values, kind="stable")
        ranked[group] = (order, normalised[order])
    return ranked


class _Pricer:
    """The table's prediction for a parent pruned to given widths (cached by widths)."""

    def __init__(self, table: LatencyTable, arch: ArchConfig, groups: list[str]) -> None:
        self.table, self.arch, self.groups = table, arch, groups
        self._cache: dict[tuple[int, ...], float] = {}

    def plan(self, widths: Mapping[str, int], ranked: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> PrunePlan:
        full = channel_groups(self.arch)
        keep = {g: tuple(sorted(int(i) for i in ranked[g][0][:w])) for g, w in widths.items() if w < full[g]}
        return PrunePlan(self.arch.key, keep)

    def __call__(self, widths: Mapping[str, int]) -> float:
        key = tuple(widths[g] for g in self.groups)
        if key not in self._cache:
            full = channel_groups(self.arch)
            keep = {g: tuple(range(w)) for g, w in widths.items() if w < full[g]}
            pruned = PrunePlan(self.arch.key, keep).apply_to(self.arch)
            self._cache[key] = self.table.predict_arch(pruned, estimate_missing=True)
        return self._cache[key]


def _best_step(widths: dict[str, int], levels: dict[str, int], options: Mapping[str, list[int]],
               ranked: Mapping[str, tuple[np.ndarray, np.ndarray]], price: _Pricer, latency: float
               ) -> tuple[str, float]:
    """The group whose next width step has the best (latency saved / importance removed), and its latency; the
    least latency lost when no step saves any."""
    best: tuple[bool, float] | None = None
    choice = ("", latency)
    for group, level in levels.items():
        if level + 1 >= len(options[group]):
            continue
        narrower = options[group][level + 1]
        trial = price({**widths, group: narrower})
        saved = latency - trial
        kept = ranked[group][1][:widths[group]]
        removed = float(kept[narrower:].sum() / kept.sum()) if kept.sum() > 0 else 0.0
        rank = (saved > 0, saved / (removed + _EPS) if saved > 0 else saved)
        if best is None or rank > best:
            best, choice = rank, (group, trial)
    return choice


def allocate_latency(arch: ArchConfig, scores: Mapping[str, np.ndarray], table: LatencyTable, budget_ms: float, *,
                     round_to: int = 8, min_channels: int = 8, method: str = "greedy") -> Allocation:
    """Allocate channels per group so that `table` predicts the pruned `arch` within `budget_ms` (see the module's
    docstring). `scores` holds one importance score per channel of each group to prune (`nas.compress.importance`);
    groups without scores keep every channel. Kept counts are multiples of `round_to` (1 allows any count), at least
    `min_channels`; a group no wider than that is not pruned."""
    _check_settings(budget_ms, round_to, min_channels, method)
    sizes = channel_groups(arch)
    ranked = _ranked(scores, sizes, arch)
    options = {g: width_options(sizes[g], round_to, min_channels) for g in ranked}
    price = _Pricer(table, arch, list(sizes))
    widths = dict(sizes)
    floor_ms = price({**widths, **{g: o[-1] for g, o in options.items()}})
    if floor_ms > budget_ms:
        raise AllocationError(
            f"latency budget {budget_ms:.4g} ms cannot be met on table {table.table_id}: the smallest latency "
            f"reachable with round_to={round_to}, min_channels={min_channels} (every scored group at its fewest "
            f"channels) is {floor_ms:.4g} ms (the unpruned subnet: {price(widths):.4g} ms)")
    levels = {g: 0 for g in options}
    latency, steps = price(widths), 0
    for _ in range(sum(len(o) - 1 for o in options.values())):
        if latency <= budget_ms:
            break
        group, latency = _best_step(widths, levels, options, ranked, price, latency)
        levels[group] += 1
        widths[group] = options[group][levels[group]]
        steps += 1
    if latency > budget_ms:  # the walk ends at every group's fewest channels, which meets the budget (checked)
        raise AllocationError(f"latency budget {budget_ms:.4g} ms not met after {steps} steps ({latency:.4g} ms)")
    plan = price.plan(widths, ranked)
    pruned = plan.apply_to(arch)
    latency_ms, estimated = predicted_latency(table, pruned)
    return Allocation(plan, pruned, latency_ms, price(sizes), float(budget_ms), table.table_id,
                      MappingProxyType(dict(widths)), estimated, steps)


def allocate(arch: ArchConfig, scores: Mapping[str, np.ndarray], table: LatencyTable, budget_ms: float, *,
             round_to: int = 8, min_channels: int = 8, method: str = "greedy") -> PrunePlan:
    """The `PrunePlan` of `allocate_latency` (which also returns the prediction and the keys it estimated)."""
    return allocate_latency(arch, scores, table, budget_ms, round_to=round_to, min_channels=min_channels,
                            method=method).plan
