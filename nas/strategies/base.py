"""The one small interface every search strategy has: `ask(n)` -> n canonical gene rows of the space,
`tell(genes, columns)` -> what they were measured to be (metric name -> one value per row).

Strategies are seeded (`numpy.random.Generator` from `seed`) and hold no state that is not a function of
the seed and the results told, in order. An interrupted search therefore resumes by `replay`: a fresh
strategy with the same seed is asked and told the recorded batches again (the evaluations come from the
study, not recomputed), and continues with the same trace as a run that was never interrupted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

import numpy as np

from nas.objectives import Columns, Constraint, Objective, minimised, pareto_mask
from nas.strategies.options import NoOptions, StrategyError, build_config
from search_spaces import SearchSpace

#: A cheap check run before a candidate is asked for (cost constraints on the analytic counts or a latency
#: table): gene rows -> boolean mask of the rows worth evaluating.
Screen = Callable[[np.ndarray], np.ndarray]


class Strategy:
    """Base class. Subclasses set `name`, `config_class` (a frozen dataclass of their options) and implement
    `_propose(n)` (n candidate rows, before screening) and, when they learn, `_learn(genes, columns)`.

    The options come as `config=` (a `config_class`) or as keywords (checked into one); `self.config` holds them.
    """

    name = ""
    needs_torch = False
    config_class: ClassVar[type] = NoOptions

    def __init__(self, space: SearchSpace, objectives: Sequence[Objective], constraints: Sequence[Constraint] = (),
                 *, seed: int = 0, screen: Screen | None = None, retry_budget: int = 100, config: Any = None,
                 **options: Any) -> None:
        if config is not None and options:
            raise StrategyError(f"{self.name}: give config= or options ({', '.join(options)}), not both")
        if config is not None and not isinstance(config, self.config_class):
            raise StrategyError(f"{self.name}: config= takes a {self.config_class.__name__}, not "
                                f"{type(config).__name__}")
        self.config: Any = config if config is not None else build_config(self.name, self.config_class, options)
        if not objectives:
            raise StrategyError(f"strategy {self.name!r} needs at least one objective")
        if retry_budget < 1:
            raise StrategyError(f"retry_budget must be at least 1 (got {retry_budget})")
        self.space, self.objectives, self.constraints = space, tuple(objectives), tuple(constraints)
        self.seed, self.screen, self.retry_budget = seed, screen, retry_budget
        self.rng = np.random.default_rng(seed)
        self.genes = np.zeros((0, len(space.genes)), dtype=np.int64)  # everything told, in order
        self.scores = np.zeros((0, len(self.objectives)))  # the told objectives, signed so smaller is better
        self.violations = np.zeros(0)  # summed relative constraint violation of each told row (0: feasible)
        self._told_keys: set[bytes] = set()  # canonical rows told, for the each-architecture-once check

    @property
    def told(self) -> int:
        """How many architectures have been told."""
        return len(self.genes)

    # ----------------------------------------------------------------------------------------- protocol

    def ask(self, n: int = 1) -> np.ndarray:
        """`n` canonical gene rows to evaluate next: each passing `screen` (if one was given), none told before
        and none twice."""
        if n < 1:
            raise StrategyError(f"ask for at least one architecture (got {n})")
        found: list[np.ndarray] = []
        seen: set[bytes] = set()  # this batch's rows (told ones are in `_told_keys`)
        for _ in range(self.retry_budget):
            rows = self.space.canonical_genes(self._propose(n - len(found)))
            if self.screen is not None:
                rows = rows[np.asarray(self.screen(rows), dtype=bool)]
            for row in rows:  # each architecture once: nothing told before, nothing twice in a batch
                key = row.tobytes()
                if key not in seen and key not in self._told_keys:
                    seen.add(key)
                    found.append(row)
            if len(found) >= n:
                return np.stack(found[:n])
        raise StrategyError(
            f"{self.name}: after {self.retry_budget} rounds of proposals only {len(found)} of {n} new "
            f"architecture(s) met the constraints ({', '.join(map(str, self.constraints)) or 'the screen'}); "
            f"loosen them, or raise the retry budget")

    def tell(self, genes: np.ndarray, columns: Columns) -> None:
        """Record the evaluation of rows asked for earlier (`columns`: metric -> one value per row)."""
        genes = self.space.canonical_genes(genes)
        n = len(genes)
        lengths = {name: len(np.atleast_1d(v)) for name, v in columns.items()}
        if any(length != n for length in lengths.values()):
            raise StrategyError(f"tell got {n} architecture(s) but columns of lengths {lengths}")
        scores = minimised(columns, self.objectives)
        violation = np.zeros(n)
        for c in self.constraints:
            if c.metric in columns:
                violation += c.violation(columns[c.metric])
        violation = np.where(np.isnan(scores).any(axis=1), np.inf, violation)
        self.genes = np.concatenate([self.genes, genes])
        self.scores = np.concatenate([self.scores, scores])
        self.violations = np.concatenate([self.violations, violation])
        self._told_keys.update(row.tobytes() for row in genes)
        self._learn(genes, columns)

    def replay(self, batches: Iterable[tuple[np.ndarray, Columns]]) -> int:
        """Resume: ask and tell the recorded `batches` again, in order; returns how many rows were replayed.
        Raises a `StrategyError` when a batch is not what this strategy (seed, options) asks for."""
        count = 0
        for genes, columns in batches:
            genes = self.space.canonical_genes(genes)
            asked = self.ask(len(genes))
            if not np.array_equal(asked, genes):
                raise StrategyError(
                    f"{self.name}: the recorded history does not follow from seed {self.seed} and these options "
                    f"(row {count + int(np.argmax((asked != genes).any(axis=1)))} differs); resume with the "
                    f"settings the search started with")
            self.tell(genes, columns)
            count += len(genes)
        return count

    # ---------------------------------------------------------------------------------------- ranking

    def ranking(self) -> np.ndarray:
        """Indices of everything told, best first: feasible rows before infeasible ones (by violation), then
        by the objective (one) or by Pareto front and crowding distance (several); ties by age, oldest first."""
        return rank_rows(self.scores, self.violations)

    # --------------------------------------------------------------------------------- for subclasses

    def _propose(self, n: int) -> np.ndarray:
        raise NotImplementedError

    def _learn(self, genes: np.ndarray, columns: Columns) -> None:
        """Update what the strategy has learned (default: nothing beyond the told history)."""

    def describe(self) -> dict[str, Any]:
        return {"strategy": self.name, "seed": self.seed, "told": self.told, **dataclasses.asdict(self.config)}


def rank_rows(scores: np.ndarray, violations: np.ndarray) -> np.ndarray:
    """Best-first order of rows of `scores` (n, m; smaller is better) given their constraint violations."""
    n = len(scores)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if scores.shape[1] == 1:
        primary = np.nan_to_num(scores[:, 0], nan=np.inf)
        return np.lexsort((np.arange(n), primary, violations))
    front = np.full(n, n, dtype=np.int64)
    crowd = np.zeros(n)
    feasible = np.flatnonzero(violations == 0)
    fronts = pareto_fronts(scores[feasible])
    for level, members in enumerate(fronts):
        rows = feasible[members]
        front[rows] = level
        crowd[rows] = crowding_distance(scores[rows])
    return np.lexsort((np.arange(n), -crowd, front, violations))


def pareto_fronts(points: np.ndarray) -> list[np.ndarray]:
    """Non-dominated sorting: the indices of each successive front (every column minimised; NaN counts as the
    worst value). Each front is `pareto_mask` of the rows left."""
    p = np.nan_to_num(np.asarray(points, dtype=np.float64), nan=np.inf)
    remaining, fronts = np.arange(len(p)), []
    for _ in range(len(p)):  # each round takes at least one row: a non-empty set has a non-dominated row
        if not remaining.size:
            break
        front = pareto_mask(p[remaining])
        fronts.append(remaining[front])
        remaining = remaining[~front]
    return fronts


def crowding_distance(points: np.ndarray) -> np.ndarray:
    """NSGA-II crowding distance of each point of one front (boundary points: infinite)."""
    n, m = points.shape
    distance = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for j in range(m):
        order = np.argsort(points[:, j], kind="stable")
        span = points[order[-1], j] - points[order[0], j]
        distance[order[0]] = distance[order[-1]] = np.inf
        if span > 0:
            distance[order[1:-1]] += (points[order[2:], j] - points[order[:-2], j]) / span
    return distance
