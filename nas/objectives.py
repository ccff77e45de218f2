"""What a search optimises and what its subnets must meet: objectives, hard constraints, Pareto fronts and
their hypervolume. Pure numpy (the strategies that need no gradients must not need torch).

Metrics: `accuracy` (higher is better) and the costs, lower is better: `latency_ms` (on a named lookup
table), `macs`, `flops`, `params`, `memory_access`, `memory_access_bytes`, `peak_activation`,
`peak_activation_bytes`. A constraint is one line, `METRIC OP BOUND`: `latency_ms<=2.5`, `params<=300k`,
`macs<1.5M`, `accuracy>=0.97` (suffixes k, M, G). An objective is `METRIC` or `METRIC:max|min`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from search_spaces.errors import HwnasError

#: Every metric a search can optimise or constrain, with its natural direction.
METRICS: dict[str, str] = {
    "accuracy": "max", "latency_ms": "min", "macs": "min", "flops": "min", "params": "min",
    "memory_access": "min", "memory_access_bytes": "min", "peak_activation": "min", "peak_activation_bytes": "min",
}
OPERATORS = ("<=", ">=", "<", ">")
_SUFFIXES = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9}
#: Evaluated metrics of a batch of architectures: metric name -> one value per architecture.
Columns = Mapping[str, np.ndarray]
_CONSTRAINT = re.compile(r"^\s*([A-Za-z_]+)\s*(<=|>=|<|>)\s*([-+0-9.eE]+)\s*([kKMG]?)\s*$")


class ObjectiveError(HwnasError):
    """A malformed objective or constraint; the message names what was wrong and what is allowed."""


def _check_metric(metric: str, text: str) -> str:
    if metric not in METRICS:
        raise ObjectiveError(f"{text!r}: unknown metric {metric!r}; the metrics are {', '.join(METRICS)}")
    return metric


@dataclass(frozen=True)
class Constraint:
    """A hard limit on one metric, e.g. `latency_ms <= 2.5`."""

    metric: str
    op: str
    bound: float

    def __post_init__(self) -> None:
        _check_metric(self.metric, str(self))
        if self.op not in OPERATORS:
            raise ObjectiveError(f"{self}: unknown comparison {self.op!r}; use one of {', '.join(OPERATORS)}")
        if not np.isfinite(self.bound):
            raise ObjectiveError(f"{self}: the bound must be a finite number")

    @classmethod
    def parse(cls, text: str) -> Constraint:
        """`METRIC OP NUMBER[k|M|G]`, e.g. `params<=300k`."""
        found = _CONSTRAINT.match(text)
        if found is None:
            raise ObjectiveError(f"constraint {text!r} is not METRIC OP BOUND (e.g. latency_ms<=2.5, params<=300k); "
                                 f"OP is one of {', '.join(OPERATORS)} and BOUND a number with an optional k, M or G")
        metric, op, number, suffix = found.groups()
        _check_metric(metric, text)
        try:
            value = float(number)
        except ValueError:
            raise ObjectiveError(f"constraint {text!r}: {number!r} is not a number") from None
        return cls(metric, op, value * _SUFFIXES[suffix])

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.bound:g}"

    def satisfied(self, values: np.ndarray | float) -> np.ndarray:
        """Whether each value meets the constraint (NaN never does)."""
        v = np.asarray(values, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            return {"<=": v <= self.bound, "<": v < self.bound, ">=": v >= self.bound, ">": v > self.bound}[self.op]

    def violation(self, values: np.ndarray | float) -> np.ndarray:
        """How far each value breaks the bound, relative to it (0 where it is met): what constraint-aware
        ranking and soft penalties use."""
        v = np.asarray(values, dtype=np.float64)
        excess = v - self.bound if self.op in ("<=", "<") else self.bound - v
        scale = abs(self.bound) if self.bound != 0 else 1.0
        return np.where(self.satisfied(v), 0.0, np.maximum(excess, 0.0) / scale)


@dataclass(frozen=True)
class Objective:
    """One metric to optimise, and which way."""

    metric: str
    direction: str

    def __post_init__(self) -> None:
        _check_metric(self.metric, str(self))
        if self.direction not in ("max", "min"):
            raise ObjectiveError(f"objective {self}: direction {self.direction!r} is not max or min")

    @classmethod
    def parse(cls, text: str) -> Objective:
        """`METRIC` (its natural direction) or `METRIC:max|min`."""
        metric, _, direction = text.strip().partition(":")
        metric = _check_metric(metric.strip(), text)
        return cls(metric, direction.strip() or METRICS[metric])

    def __str__(self) -> str:
        return f"{self.metric}:{self.direction}"

    @property
    def sign(self) -> float:
        """+1 to minimise, -1 to maximise: `sign * value` is always minimised."""
        return 1.0 if self.direction == "min" else -1.0


def parse_constraints(texts: Iterable[str]) -> tuple[Constraint, ...]:
    return tuple(Constraint.parse(t) for t in texts)


def parse_objectives(texts: Iterable[str]) -> tuple[Objective, ...]:
    objectives = tuple(Objective.parse(t) for t in texts)
    if not objectives:
        raise ObjectiveError(f"a search needs at least one objective; the metrics are {', '.join(METRICS)}")
    names = [o.metric for o in objectives]
    if len(set(names)) != len(names):
        raise ObjectiveError(f"objectives {', '.join(map(str, objectives))} name a metric twice")
    return objectives


def feasible(columns: Mapping[str, np.ndarray], constraints: Sequence[Constraint]) -> np.ndarray:
    """Rows of `columns` (metric -> values) that meet every constraint."""
    n = len(next(iter(columns.values()))) if columns else 0
    ok = np.ones(n, dtype=bool)
    for c in constraints:
        if c.metric not in columns:
            raise ObjectiveError(f"constraint {c} needs {c.metric!r}, which was not evaluated "
                                 f"(evaluated: {', '.join(columns) or 'nothing'})")
        ok &= c.satisfied(columns[c.metric])
    return ok


def minimised(columns: Mapping[str, np.ndarray], objectives: Sequence[Objective]) -> np.ndarray:
    """(n, m) matrix of the objectives, each signed so that smaller is better."""
    missing = [o.metric for o in objectives if o.metric not in columns]
    if missing:
        raise ObjectiveError(f"objectives {', '.join(missing)} were not evaluated "
                             f"(evaluated: {', '.join(columns) or 'nothing'})")
    return np.stack([o.sign * np.asarray(columns[o.metric], dtype=np.float64) for o in objectives], axis=1)


def pareto_mask(points: np.ndarray) -> np.ndarray:
    """Which rows of `points` (n, m; every column minimised) no other row dominates (no worse everywhere,
    better somewhere). Duplicates of a front point are all kept."""
    p = np.asarray(points, dtype=np.float64)
    keep = np.ones(len(p), dtype=bool)
    for i in range(len(p)):
        if keep[i]:
            dominated = np.all(p[i] <= p, axis=1) & np.any(p[i] < p, axis=1)
            keep &= ~dominated
    return keep


def hypervolume(points: np.ndarray, reference: Sequence[float] | np.ndarray) -> float:
    """Exact volume of the region dominated by `points` (n, m; every column minimised) and bounded by
    `reference` (each coordinate worse than any point of interest). Points not strictly better than the
    reference in every coordinate add nothing. Slices along the last objective down to an exact 2-D sweep
    (Hypervolume by Slicing Objectives): fine for the fronts a search keeps (hundreds of points, 2-4
    objectives)."""
    ref = np.asarray(reference, dtype=np.float64)
    p = np.asarray(points, dtype=np.float64).reshape(-1, ref.size)
    p = p[np.all(p < ref, axis=1)]
    if len(p) == 0:
        return 0.0
    return _hv(p[pareto_mask(p)], ref)


def _hv(p: np.ndarray, ref: np.ndarray) -> float:
    if ref.size == 1:
        return float(ref[0] - p[:, 0].min())
    if ref.size == 2:
        order = np.lexsort((p[:, 1], p[:, 0]))
        total, best_y = 0.0, ref[1]
        for x, y in p[order]:
            if y < best_y:
                total += (ref[0] - x) * (best_y - y)
                best_y = y
        return float(total)
    p = p[np.argsort(p[:, -1], kind="stable")]
    total = 0.0
    for i in range(len(p)):
        top = p[i + 1, -1] if i + 1 < len(p) else ref[-1]
        if top > p[i, -1]:
            total += (top - p[i, -1]) * _hv(p[: i + 1, :-1], ref[:-1])
    return float(total)
