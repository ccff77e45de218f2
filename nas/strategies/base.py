"""The one small interface every search strategy has: `ask(n)` -> n canonical gene rows of the space,
`tell(genes, columns)` -> what they were measured to be (metric name -> one value per row).

Strategies are seeded (`numpy.random.Generator` from `seed`) and hold no state that is not a function of
the seed and the results told, in order. An interrupted search therefore resumes by `replay`: a fresh
strategy with the same seed is asked and told the recorded batches again (the evaluations come from the
study, not recomputed), and continues with the same trace as a run that was never interrupted.

`ask` proposes in rounds until it has `n` new rows that pass the screen, at most `retry_budget` rounds. A
search that converges finds new feasible rows scarce (nearly every proposal is a repeat); it does not die of it:

1. a strategy with `explore_levels` proposes more widely, one level up after each round whose feasible
   proposals are nearly all repeats (evolution: a larger mutation probability, then parents from the whole
   archive, then uniform samples); each ask starts one level below where the last one ended;
2. when even the widest level leaves the ask short after `retry_budget` rounds, `ask` returns the rows it found
   (possibly none) and `stopped` says why; the caller tells them and ends its loop.

A `StrategyError` is kept for misuse: `n < 1`, an inconsistent `tell`, asking a stopped strategy again, or
constraints that no architecture proposed before anything was told meets.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

import numpy as np

from nas.objectives import Columns, Constraint, Objective, minimised, pareto_mask
from nas.strategies.options import NoOptions, StrategyError, build_config
from search_spaces import SearchSpace

#: A cheap check run before a candidate is asked for (cost constraints on the analytic counts or a latency
#: table): gene rows -> boolean mask of the rows worth evaluating.
Screen = Callable[[np.ndarray], np.ndarray]

#: A round's feasible proposals are scarce in new rows when fewer than this share of them is new (the next round
#: proposes more widely), rich when at least `RICH_SHARE` is (the next proposes more narrowly).
SCARCE_SHARE, RICH_SHARE = 0.25, 0.75
#: Bounds of a round of an oversampling strategy (rows proposed at once).
MIN_ROUND, MAX_ROUND = 16, 8192


class Strategy:
    """Base class. Subclasses set `name`, `config_class` (a frozen dataclass of their options) and implement
    `_propose(n)` (n candidate rows, before screening) and, when they learn, `_learn(genes, columns)`.

    `oversample`: proposals are cheap independent draws, so a round proposes as many as the yield of the last
    round says an ask needs (else exactly the rows still wanted: Optuna's trials, a policy's draws or a ranked
    list are not wasted). `explore_levels`: how many wider levels of proposals than its own (level 0) `_propose`
    knows (it reads `self.explore`); `explore_names` names each level for messages. `proposes_canonical`:
    `_propose` returns canonical rows already (else `ask` makes them so). `exhausts`: the widest level proposes
    uniform samples of the space, so a stop there means the space under the constraints is exhausted (else the
    search has converged).

    The options come as `config=` (a `config_class`) or as keywords (checked into one); `self.config` holds them.
    """

    name = ""
    needs_torch = False
    config_class: ClassVar[type] = NoOptions
    oversample: ClassVar[bool] = False
    explore_levels: ClassVar[int] = 0
    explore_names: ClassVar[tuple[str, ...]] = ("its own proposals",)
    exhausts: ClassVar[bool] = False
    proposes_canonical: ClassVar[bool] = False

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
        self._told = 0
        self._genes = np.zeros((0, len(space.genes)), dtype=np.int64)  # grown by doubling; `genes` is a view
        self._scores = np.zeros((0, len(self.objectives)))
        self._violations = np.zeros(0)
        self._keys = RowKeys(space)
        self._told_keys = self._keys.empty()  # sorted keys of the rows told, for the each-architecture-once check
        self.explore = 0  # the level of proposals (0: the strategy's own; see `explore_levels`)
        self.stopped: str | None = None  # why the strategy stopped asking (None: it has not)
        self._yield = [0.5] * (self.explore_levels + 1)  # per level: share of its last round's proposals kept
        self._last_ask = 64  # rows the last ask wanted (sizes an oversampling round)

    @property
    def told(self) -> int:
        """How many architectures have been told."""
        return self._told

    @property
    def genes(self) -> np.ndarray:
        """Every row told, in order (n, G)."""
        return self._genes[: self._told]

    @property
    def scores(self) -> np.ndarray:
        """The told objectives, signed so that smaller is better (n, objectives)."""
        return self._scores[: self._told]

    @property
    def violations(self) -> np.ndarray:
        """Summed relative constraint violation of each told row (0: feasible; inf: a NaN objective)."""
        return self._violations[: self._told]

    # ----------------------------------------------------------------------------------------- protocol

    def ask(self, n: int = 1) -> np.ndarray:
        """Up to `n` canonical gene rows to evaluate next: each passing `screen` (if one was given), none told
        before and none twice. Fewer (possibly none) only when the strategy stops (`stopped` says why); asking a
        stopped strategy again is an error."""
        if n < 1:
            raise StrategyError(f"ask for at least one architecture (got {n})")
        if self.stopped is not None:  # a caller that goes on asking would loop for ever on empty asks
            raise StrategyError(f"{self.name} has stopped and asks for nothing more: {self.stopped}")
        found = np.zeros((0, len(self.space.genes)), dtype=np.int64)
        found_keys, proposed = self._keys.empty(), 0
        for _ in range(self.retry_budget):
            size = self._round_size() if self.oversample else n - len(found)
            rows = self._propose(size)
            rows = rows if self.proposes_canonical else self.space.canonical_genes(rows)
            proposed += len(rows)
            new, keys = self._new_rows(rows, found_keys)  # repeats are dropped before the screen prices anything
            repeats = len(rows) - len(new)
            if self.screen is not None and len(new):
                feasible = np.asarray(self.screen(new), dtype=bool)
                new, keys = new[feasible], keys[feasible]
            take = n - len(found)
            found = np.concatenate([found, new[:take]])
            found_keys = np.sort(np.concatenate([found_keys, keys[:take]]))
            self._next_level(len(rows), len(new), repeats)
            if len(found) >= n:
                break
        else:
            self._give_up(n, len(found), proposed)
        self._last_ask = n
        return found

    def _next_level(self, proposed: int, new: int, repeats: int) -> None:
        """Note a round's yield; widen after a round whose feasible proposals were nearly all repeats (of rows told,
        found, or proposed earlier in the round: what was told met the constraints), narrow after one where nearly
        all were new (hysteresis: a level that works is kept)."""
        self._yield[self.explore] = new / max(proposed, 1)
        if new < SCARCE_SHARE * max(new + repeats, 1) and self.explore < self.explore_levels:
            self.explore += 1
        elif new >= RICH_SHARE * (new + repeats) and self.explore > 0:
            self.explore -= 1

    def _round_size(self) -> int:
        """Rows an oversampling round proposes: enough for the last ask at the yield of this level's last round (a
        function of the history, not of this ask's `n`, so that a shorter ask gets the first rows of a longer one)."""
        wanted = 1.25 * self._last_ask / max(self._yield[self.explore], 1.0 / MAX_ROUND)
        return int(min(MAX_ROUND, max(MIN_ROUND, math.ceil(wanted))))

    def _new_rows(self, rows: np.ndarray, found_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The rows (and their keys) that are new: first occurrences, in order, neither told nor found already."""
        keys = self._keys(rows)
        fresh = np.flatnonzero(~(self._keys.contains(self._told_keys, keys) | self._keys.contains(found_keys, keys)))
        _, first = np.unique(keys[fresh], return_index=True)  # told rows go first: fewer keys to sort
        fresh = fresh[np.sort(first)]
        return rows[fresh], keys[fresh]

    def _give_up(self, n: int, found: int, proposed: int) -> None:
        """The retry budget is spent with `found` < `n` rows: raise when nothing proposed before anything was told
        met the constraints (they exclude the space), else stop with the reason."""
        what = ", ".join(map(str, self.constraints)) or "the screen"
        if self.told == 0 and found == 0:
            raise StrategyError(
                f"{self.name}: after {self.retry_budget} rounds of proposals only 0 of {n} new architecture(s) met "
                f"the constraints ({what}); loosen them, or raise the retry budget")
        level = self.explore_names[self.explore] if self.explore < len(self.explore_names) else f"level {self.explore}"
        if self.exhausts and self.explore == self.explore_levels:
            state = "the space under these constraints is exhausted"
        else:
            state = "the search has converged"
        self.stopped = (f"{state} for {self.name}: after {self.retry_budget} rounds ({proposed:,} proposals, the "
                        f"last from {level}) only {found} of {n} new architecture(s) met {what}; {self.told:,} told")

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
        self._append(genes, scores, violation)
        self._told_keys = self._keys.insert(self._told_keys, self._keys(genes))
        self._learn(genes, columns)

    def _append(self, genes: np.ndarray, scores: np.ndarray, violation: np.ndarray) -> None:
        """Append told rows, doubling the buffers when full (amortised: a long search copies each row O(1) times)."""
        end = self._told + len(genes)
        if end > len(self._genes):
            capacity = max(end, 2 * len(self._genes), 64)
            self._genes = _grown(self._genes, capacity)
            self._scores = _grown(self._scores, capacity)
            self._violations = _grown(self._violations, capacity)
        self._genes[self._told:end], self._scores[self._told:end] = genes, scores
        self._violations[self._told:end] = violation
        self._told = end

    def replay(self, batches: Iterable[tuple[np.ndarray, Columns]]) -> int:
        """Resume: ask and tell the recorded `batches` again, in order; returns how many rows were replayed.
        Raises a `StrategyError` when a batch is not what this strategy (seed, options) asks for."""
        count = 0
        for genes, columns in batches:
            genes = self.space.canonical_genes(genes)
            asked = self.ask(len(genes))
            if asked.shape != genes.shape or not np.array_equal(asked, genes):
                differs = int(np.argmax((asked != genes).any(axis=1))) if asked.shape == genes.shape else len(asked)
                raise StrategyError(
                    f"{self.name}: the recorded history does not follow from seed {self.seed} and these options "
                    f"(row {count + differs} differs); resume with the settings the search started with")
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
        out = {"strategy": self.name, "seed": self.seed, "told": self.told, **dataclasses.asdict(self.config)}
        return {**out, "stopped": self.stopped} if self.stopped is not None else out


def _grown(array: np.ndarray, capacity: int) -> np.ndarray:
    out = np.zeros((capacity, *array.shape[1:]), dtype=array.dtype)
    out[: len(array)] = array
    return out


class RowKeys:
    """Exact keys of canonical gene rows, for de-duplication without a Python loop: each row read as a
    mixed-radix number, in as few int64 words as its genes need (one word: an int64 key; several: one
    fixed-size byte string per row)."""

    def __init__(self, space: SearchSpace) -> None:
        sizes = [int(s) for s in space.gene_sizes]
        word, capacity, columns = 0, 1, []
        for size in sizes:
            if capacity * size >= 2 ** 62:
                word, capacity = word + 1, 1
            columns.append((word, capacity))
            capacity *= size
        self.weights = np.zeros((len(sizes), word + 1), dtype=np.int64)
        for gene, (w, multiplier) in enumerate(columns):
            self.weights[gene, w] = multiplier
        self.words = word + 1

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        words = np.ascontiguousarray(np.asarray(rows, dtype=np.int64) @ self.weights)
        return words[:, 0].copy() if self.words == 1 else words.view(np.dtype((np.void, 8 * self.words))).ravel()

    def empty(self) -> np.ndarray:
        return self(np.zeros((0, len(self.weights)), dtype=np.int64))

    @staticmethod
    def contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """Whether each of `keys` is in `sorted_keys` (sorted)."""
        if not len(sorted_keys):
            return np.zeros(len(keys), dtype=bool)
        at = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
        return np.asarray(sorted_keys[at] == keys, dtype=bool)

    @staticmethod
    def insert(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """`sorted_keys` with `keys` added, still sorted."""
        keys = np.sort(keys)
        return np.insert(sorted_keys, np.searchsorted(sorted_keys, keys), keys)
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
