"""How many channels each dependency group of a subnet keeps, so that the pruned subnet fits a budget on a cost
metric: latency predicted by a measured latency table (not MACs), fp32 model size in bytes, MACs or fp32 BitOPs.
A `PrunePlan` and the walk that leads to it. Torch-free.

Algorithm (`method="greedy"`), after NetAdapt (Yang et al., "NetAdapt: Platform-Aware Neural Network Adaptation
for Mobile Applications", ECCV 2018, arXiv:1804.03230): start from the parent's widths. At each step, propose
for every group its next smaller allowed width (a multiple of `round_to`, at least `min_channels`), dropping its
lowest-scored channels; price every proposal on the pruned architecture (`PrunePlan.apply_to(parent)`, so the next
layers' narrower inputs are in the price; for latency, `LatencyTable.predict_arch` also brings the table's
network-level correction and, for measured keys, the runtime's staircases); take the proposal with the best ratio of
cost saved to importance removed, the importance normalised per group: a step's cost is the share
of the importance its group still holds that the step removes (scale-free across groups and criteria, and
rising as a group thins, so one group is not cut to its last channels while others keep all of theirs). Repeat
until the cost is within the budget. Where no proposal saves any (a latency table can be non-monotone), the
one that costs least is taken, so the walk always moves towards every group at its fewest channels (the floor); it
takes at most as many steps as there are widths to step down through (<= sum of group widths / `round_to`).
The walk is written once (`_walk`): `prune_path` returns its points, `allocate_budget` stops at the first point
within the budget, so the allocation for budget B is the first path point with cost <= B.

Metrics (`PRUNE_METRICS`, `prune_cost`): `latency_ms` from a table (needed); `size_bytes`, fp32 weight bytes
(BatchNorm folded, as `nas.compress.bits.layer_costs` counts them); `macs` (`AnalyticCostModel`); `bitops`, fp32
BitOPs (MACs x 32 x 32, as `layer_costs`).

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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from latency_tables.analytic import AnalyticCostModel
from latency_tables.keys import arch_keys
from latency_tables.table import LatencyTable
from nas.compress.bits import layer_costs
from search_spaces import ArchConfig
from search_spaces.errors import HwnasError
from search_spaces.plans import PrunePlan, channel_groups

#: Allocation methods by name.
METHODS = ("greedy",)
#: What a pruning budget may be on.
PRUNE_METRICS = ("latency_ms", "size_bytes", "macs", "bitops")
#: Added to the importance removed, so a step removing only zero-scored channels has a finite, very high ratio.
_EPS = 1e-12


class AllocationError(HwnasError):
    """A budget that cannot be met, or settings or scores the allocator cannot use."""


@dataclass(frozen=True)
class Allocation:
    """What `allocate_budget` chose: the plan, the pruned architecture and its cost in the budget's metric; the
    latency fields are the table's prediction when a table was given (`budget_ms` only for a latency budget), else
    None."""

    plan: PrunePlan
    arch: ArchConfig
    metric: str
    cost: float
    parent_cost: float
    budget: float
    latency_ms: float | None = None
    parent_latency_ms: float | None = None
    budget_ms: float | None = None
    table_id: str | None = None
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
        """A JSON-ready summary (for metrics.json): the metric, budget and cost, the table and its predictions,
        kept widths, estimated keys."""
        return {"metric": self.metric, "budget": self.budget, "cost": self.cost, "parent_cost": self.parent_cost,
                "table": self.table_id, "budget_ms": self.budget_ms, "latency_ms": self.latency_ms,
                "parent_latency_ms": self.parent_latency_ms, "estimated": self.estimated,
                "estimated_keys": list(self.estimated_keys), "widths": dict(self.widths), "steps": self.steps,
                "plan": self.plan.to_dict()}


@dataclass(frozen=True)
class PathPoint:
    """One point of the greedy pruning walk: after `step` width steps, the kept channels per group, the plan, the
    pruned architecture and its cost in the walk's metric."""

    step: int
    widths: Mapping[str, int]
    plan: PrunePlan
    arch: ArchConfig
    cost: float


#: Units of each metric, for messages.
_UNITS = {"latency_ms": "ms", "size_bytes": "bytes", "macs": "MACs", "bitops": "BitOPs"}


def prune_cost(arch: ArchConfig, metric: str, table: LatencyTable | None = None) -> float:
    """The cost of `arch` in `metric` (see the module's docstring); `latency_ms` needs `table`."""
    if metric not in PRUNE_METRICS:
        raise AllocationError(f"unknown pruning metric {metric!r}; allowed: {', '.join(PRUNE_METRICS)}")
    if metric == "latency_ms":
        if table is None:
            raise AllocationError("a latency_ms budget needs a latency table to predict the pruned subnet; give "
                                  "table=, or budget size_bytes, macs or bitops")
        return table.predict_arch(arch, estimate_missing=True)
    if metric == "macs":
        return float(AnalyticCostModel("fp32").estimate(arch).macs)
    return float(layer_costs(arch, ("fp32",), metric).sum())


def predicted_latency(table: LatencyTable, arch: ArchConfig) -> tuple[float, tuple[str, ...]]:
    """(the table's predicted latency of `arch` in ms, the keys it had to estimate)."""
    estimated = tuple(sorted({k.to_str() for k in arch_keys(arch) if k not in table.rows}))
    return table.predict_arch(arch, estimate_missing=True), estimated


def width_options(size: int, round_to: int, min_channels: int) -> list[int]:
    """The widths a group of `size` channels may keep, widest first: its own size, then the multiples of
    `round_to` below it that are at least `min_channels` (only its size when there are none)."""
    smaller = [w for w in range(round_to, size, round_to) if w >= min_channels]
    return [size, *reversed(smaller)]


def _check_settings(round_to: int, min_channels: int, method: str) -> None:
    if method not in METHODS:
        raise AllocationError(f"unknown allocation method {method!r}; allowed: {', '.join(METHODS)}")
    for name, value in (("round_to", round_to), ("min_channels", min_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise AllocationError(f"{name} must be a whole number >= 1; got {value!r}")


def _check_budget(metric: str, budget: float, what: str = "budget") -> None:
    if metric not in PRUNE_METRICS:
        raise AllocationError(f"unknown pruning metric {metric!r}; allowed: {', '.join(PRUNE_METRICS)}")
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget) or budget <= 0:
        name = "latency budget" if metric == "latency_ms" and what == "budget" else f"{metric} {what}"
        raise AllocationError(f"{name} must be a finite number of {_UNITS[metric]} > 0; got {budget!r}")


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
    """The cost of the parent pruned to given widths (cached by widths)."""

    def __init__(self, cost: Callable[[ArchConfig], float], arch: ArchConfig, groups: list[str]) -> None:
        self.cost, self.arch, self.groups = cost, arch, groups
        self.full = channel_groups(arch)
        self._cache: dict[tuple[int, ...], float] = {}

    def plan(self, widths: Mapping[str, int], ranked: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> PrunePlan:
        keep = {g: tuple(sorted(int(i) for i in ranked[g][0][:w])) for g, w in widths.items() if w < self.full[g]}
        return PrunePlan(self.arch.key, keep)

    def __call__(self, widths: Mapping[str, int]) -> float:
        key = tuple(widths[g] for g in self.groups)
        if key not in self._cache:
            keep = {g: tuple(range(w)) for g, w in widths.items() if w < self.full[g]}
            self._cache[key] = self.cost(PrunePlan(self.arch.key, keep).apply_to(self.arch))
        return self._cache[key]


def _best_step(widths: dict[str, int], levels: dict[str, int], options: Mapping[str, list[int]],
               ranked: Mapping[str, tuple[np.ndarray, np.ndarray]], price: _Pricer, cost: float
               ) -> tuple[str, float]:
    """The group whose next width step has the best (cost saved / importance removed), and the cost after it; the
    least cost added when no step saves any."""
    best: tuple[bool, float] | None = None
    choice = ("", cost)
    for group, level in levels.items():
        if level + 1 >= len(options[group]):
            continue
        narrower = options[group][level + 1]
        trial = price({**widths, group: narrower})
        saved = cost - trial
        kept = ranked[group][1][:widths[group]]
        removed = float(kept[narrower:].sum() / kept.sum()) if kept.sum() > 0 else 0.0
        rank = (saved > 0, saved / (removed + _EPS) if saved > 0 else saved)
        if best is None or rank > best:
            best, choice = rank, (group, trial)
    return choice


class _Walk:
    """The greedy walk's setting: ranked scores, width options per scored group and the pricer."""

    def __init__(self, arch: ArchConfig, scores: Mapping[str, np.ndarray], metric: str, table: LatencyTable | None,
                 round_to: int, min_channels: int) -> None:
        if metric == "latency_ms":
            prune_cost(arch, metric, table)  # refuses a latency walk without a table
        self.arch, self.metric, self.round_to, self.min_channels = arch, metric, round_to, min_channels
        self.sizes = channel_groups(arch)
        self.ranked = _ranked(scores, self.sizes, arch)
        self.options = {g: width_options(self.sizes[g], round_to, min_channels) for g in self.ranked}
        self.price = _Pricer(lambda pruned: prune_cost(pruned, metric, table), arch, list(self.sizes))

    def floor(self) -> float:
        """The cost with every scored group at its fewest channels (where the walk ends)."""
        return self.price({**self.sizes, **{g: o[-1] for g, o in self.options.items()}})

    def points(self) -> Iterator[tuple[int, dict[str, int], float]]:
        """(step, widths, cost) from the parent (step 0) to the floor, one width step at a time."""
        widths, levels = dict(self.sizes), {g: 0 for g in self.options}
        cost = self.price(widths)
        yield 0, dict(widths), cost
        for step in range(1, sum(len(o) - 1 for o in self.options.values()) + 1):
            group, cost = _best_step(widths, levels, self.options, self.ranked, self.price, cost)
            levels[group] += 1
            widths[group] = self.options[group][levels[group]]
            yield step, dict(widths), cost

    def point(self, step: int, widths: dict[str, int], cost: float) -> PathPoint:
        plan = self.price.plan(widths, self.ranked)
        return PathPoint(step, MappingProxyType(widths), plan, plan.apply_to(self.arch), cost)


def prune_path(arch: ArchConfig, scores: Mapping[str, np.ndarray], metric: str, until: float, *,
               table: LatencyTable | None = None, round_to: int = 8, min_channels: int = 8) -> list[PathPoint]:
    """The greedy walk (see the module's docstring) in `metric` from the parent (step 0) to its first point that
    costs <= `until`, or to the floor where every scored group is at its fewest channels."""
    _check_settings(round_to, min_channels, "greedy")
    _check_budget(metric, until, "path end")
    walk = _Walk(arch, scores, metric, table, round_to, min_channels)
    path = []
    for step, widths, cost in walk.points():
        path.append(walk.point(step, widths, cost))
        if cost <= until:
            break
    return path


def _unreachable(metric: str, budget: float, walk: _Walk, floor: float, table: LatencyTable | None
                 ) -> AllocationError:
    parent = walk.price(walk.sizes)
    if metric == "latency_ms" and table is not None:
        return AllocationError(
            f"latency budget {budget:.4g} ms cannot be met on table {table.table_id}: the smallest latency "
            f"reachable with round_to={walk.round_to}, min_channels={walk.min_channels} (every scored group at its "
            f"fewest channels) is {floor:.4g} ms (the unpruned subnet: {parent:.4g} ms)")
    unit = _UNITS[metric]
    return AllocationError(
        f"{metric} budget {budget:.6g} {unit} cannot be met: the smallest {metric} reachable with "
        f"round_to={walk.round_to}, min_channels={walk.min_channels} (every scored group at its fewest channels) "
        f"is {floor:.6g} {unit} (the unpruned subnet: {parent:.6g} {unit})")


def allocate_budget(arch: ArchConfig, scores: Mapping[str, np.ndarray], metric: str, budget: float, *,
                    table: LatencyTable | None = None, round_to: int = 8, min_channels: int = 8,
                    method: str = "greedy") -> Allocation:
    """Allocate channels per group so that the pruned `arch` costs at most `budget` in `metric` (`PRUNE_METRICS`;
    see the module's docstring): the first point of `prune_path` within the budget. `scores` holds one importance
    score per channel of each group to prune (`nas.compress.importance`); groups without scores keep every channel.
    Kept counts are multiples of `round_to` (1 allows any count), at least `min_channels`; a group no wider than
    that is not pruned. `table` is needed for `latency_ms` and, when given, predicts the result's latency for any
    metric."""
    _check_settings(round_to, min_channels, method)
    _check_budget(metric, budget)
    walk = _Walk(arch, scores, metric, table, round_to, min_channels)
    floor = walk.floor()
    if floor > budget:
        raise _unreachable(metric, budget, walk, floor, table)
    found = next(((s, w, c) for s, w, c in walk.points() if c <= budget), None)
    if found is None:  # the walk ends at the floor, which meets the budget (checked)
        raise AllocationError(f"{metric} budget {budget:.6g} not met by the walk down to its floor ({floor:.6g})")
    point = walk.point(*found)
    latency: dict[str, Any] = {}
    if table is not None:
        latency_ms, estimated = predicted_latency(table, point.arch)
        latency = {"latency_ms": latency_ms, "parent_latency_ms": table.predict_arch(arch, estimate_missing=True),
                   "budget_ms": float(budget) if metric == "latency_ms" else None, "table_id": table.table_id,
                   "estimated_keys": estimated}
    return Allocation(point.plan, point.arch, metric, point.cost, walk.price(walk.sizes), float(budget),
                      widths=point.widths, steps=point.step, **latency)


def allocate_latency(arch: ArchConfig, scores: Mapping[str, np.ndarray], table: LatencyTable, budget_ms: float, *,
                     round_to: int = 8, min_channels: int = 8, method: str = "greedy") -> Allocation:
    """`allocate_budget` on the `latency_ms` that `table` predicts."""
    return allocate_budget(arch, scores, "latency_ms", budget_ms, table=table, round_to=round_to,
                           min_channels=min_channels, method=method)


def allocate(arch: ArchConfig, scores: Mapping[str, np.ndarray], table: LatencyTable, budget_ms: float, *,
             round_to: int = 8, min_channels: int = 8, method: str = "greedy") -> PrunePlan:
    """The `PrunePlan` of `allocate_latency` (which also returns the prediction and the keys it estimated)."""
    return allocate_latency(arch, scores, table, budget_ms, round_to=round_to, min_channels=min_channels,
                            method=method).plan
