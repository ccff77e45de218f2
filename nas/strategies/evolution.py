"""Random search and the two evolutionary searches, on gene rows (no torch).

- `RandomSearch`: uniform samples of the space.
- `Evolution`: the once-for-all search (Cai et al. 2020): a population of the best `population` told so far;
  the best `parents_ratio` of it are parents; each new candidate is a mutation of a random parent (each gene
  resampled with probability `mutate_prob`) with probability `mutation_ratio`, else a crossover of two.
- `RegularizedEvolution` (aging evolution, Real et al. 2019): the population is the last `population` told
  (the oldest dies, however good); each candidate mutates the best of `sample_size` random members.

Until `population` results are told, all three propose uniform samples. Candidates pass the strategy's
screen (cheap cost constraints), with the base class's bounded retries; all three oversample (their proposals
are cheap independent draws).

When the population has converged (nearly every feasible proposal is a repeat), the two evolutions widen step by
step (`explore_levels`, see `nas.strategies.base`): the mutation probability doubled, x4, x8 (at most 1); then a
restart from the archive (parents, or the tournament's population, drawn from every feasible row told); then
uniform samples. Each ask starts one level below where the last one ended, so a search that moves again
narrows back to the paper's recipe.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nas.objectives import Constraint, Objective
from nas.strategies.base import Columns, Strategy, rank_rows
from nas.strategies.options import OptionError
from search_spaces import SearchSpace

#: The levels of proposals of the two evolutions (`Strategy.explore`), narrowest first.
EVOLUTION_LEVELS = ("the population", "mutation x2", "mutation x4", "mutation x8", "the archive", "uniform samples")
ARCHIVE, UNIFORM = 4, 5


class RandomSearch(Strategy):
    name = "random"
    oversample = exhausts = proposes_canonical = True
    explore_names = ("uniform samples",)

    def _propose(self, n: int) -> np.ndarray:
        return self.space.sample_genes(self.rng, n)


def _check(strategy: str, checks: list[tuple[str, Any, bool, str]]) -> None:
    """Raise an `OptionError` for the first (option, value, ok, allowed) that is not ok."""
    for option, value, ok, allowed in checks:
        if not ok:
            raise OptionError(f"{strategy}: {option} must be {allowed} (got {value!r})")


@dataclass(frozen=True)
class EvolutionConfig:
    """Options of `evolution`: population size, share of it that are parents, chance that a child is a mutant
    (else a crossover), and per-gene mutation probability."""

    population: int = 100
    parents_ratio: float = 0.25
    mutation_ratio: float = 0.5
    mutate_prob: float = 0.1

    def __post_init__(self) -> None:
        _check("evolution", [("population", self.population, self.population >= 2, "at least 2"),
                             ("mutate_prob", self.mutate_prob, 0 < self.mutate_prob <= 1, "in (0, 1]"),
                             ("parents_ratio", self.parents_ratio, 0 < self.parents_ratio <= 1, "in (0, 1]"),
                             ("mutation_ratio", self.mutation_ratio, 0 < self.mutation_ratio <= 1, "in (0, 1]")])


@dataclass(frozen=True)
class RegularizedEvolutionConfig:
    """Options of `regularized-evolution`: population size (the last told), tournament size, per-gene mutation
    probability."""

    population: int = 100
    sample_size: int = 25
    mutate_prob: float = 0.1

    def __post_init__(self) -> None:
        _check("regularized-evolution", [
            ("population", self.population, self.population >= 2, "at least 2"),
            ("mutate_prob", self.mutate_prob, 0 < self.mutate_prob <= 1, "in (0, 1]"),
            ("sample_size", self.sample_size, 1 <= self.sample_size <= self.population,
             f"in 1..population ({self.population})")])


class Evolution(Strategy):
    name = "evolution"
    config_class = EvolutionConfig
    config: EvolutionConfig
    oversample = exhausts = proposes_canonical = True
    explore_levels, explore_names = UNIFORM, EVOLUTION_LEVELS

    def __init__(self, space: SearchSpace, objectives: Sequence[Objective], constraints: Sequence[Constraint] = (),
                 **kwargs: Any) -> None:
        super().__init__(space, objectives, constraints, **kwargs)
        self.survivors = np.zeros(0, dtype=np.int64)  # told rows in the population, best first

    def _learn(self, genes: np.ndarray, columns: Columns) -> None:
        pool = np.concatenate([self.survivors, np.arange(self.told - len(genes), self.told)])
        self.survivors = pool[rank_rows(self.scores[pool], self.violations[pool])][: self.config.population]

    def _propose(self, n: int) -> np.ndarray:
        c = self.config
        if self.told < c.population or self.explore >= UNIFORM:
            return self.space.sample_genes(self.rng, n)
        if self.explore == ARCHIVE:
            parents = self.genes[_archive(self.violations, self.survivors)]
        else:
            parents = self.genes[self.survivors[: max(1, int(round(c.parents_ratio * c.population)))]]
        mutate = self.rng.random(n) < c.mutation_ratio
        first = parents[self.rng.integers(0, len(parents), n)]
        second = parents[self.rng.integers(0, len(parents), n)]
        children = np.empty_like(first)
        children[mutate] = self.space.mutate_genes(first[mutate], self.rng, _widened(c.mutate_prob, self.explore))
        children[~mutate] = self.space.crossover_genes(first[~mutate], second[~mutate], self.rng)
        return children


class RegularizedEvolution(Strategy):
    name = "regularized-evolution"
    config_class = RegularizedEvolutionConfig
    config: RegularizedEvolutionConfig
    oversample = exhausts = proposes_canonical = True
    explore_levels, explore_names = UNIFORM, EVOLUTION_LEVELS

    def _propose(self, n: int) -> np.ndarray:
        population, k = self.config.population, self.config.sample_size
        if self.told < population or self.explore >= UNIFORM:
            return self.space.sample_genes(self.rng, n)
        alive = np.arange(self.told - population, self.told)  # aging: the last `population` told
        if self.explore == ARCHIVE:  # a population drawn from the archive
            archive = _archive(self.violations, alive)
            alive = np.sort(self.rng.choice(archive, size=min(population, len(archive)), replace=False))
        draws = self.rng.random((n, len(alive)))
        if len(self.objectives) == 1:  # a total order: the winner is the sampled member ranked first overall
            rank = np.empty(len(alive), dtype=np.int64)
            rank[rank_rows(self.scores[alive], self.violations[alive])] = np.arange(len(alive))
            samples = np.argpartition(draws, min(k, len(alive)) - 1, axis=1)[:, :k]
            winners = alive[np.take_along_axis(samples, np.argmin(rank[samples], axis=1)[:, None], axis=1)[:, 0]]
        else:  # Pareto front and crowding depend on the sample: ranked one by one
            samples = alive[np.argsort(draws, axis=1)[:, :k]]
            winners = np.array([row[rank_rows(self.scores[row], self.violations[row])[0]] for row in samples])
        return self.space.mutate_genes(self.genes[winners], self.rng, _widened(self.config.mutate_prob, self.explore))


def _widened(p: float, level: int) -> float:
    """The mutation probability at exploration `level`: doubled per level up to 3 (at most 1); the paper's at the
    archive."""
    return min(1.0, p * 2 ** level) if level < ARCHIVE else p


def _archive(violations: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Every feasible row told (`fallback` when none is)."""
    feasible = np.flatnonzero(violations == 0)
    return feasible if len(feasible) else fallback
