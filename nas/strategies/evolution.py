"""Random search and the two evolutionary searches, on gene rows (no torch).

- `RandomSearch`: uniform samples of the space.
- `Evolution`: the once-for-all search (Cai et al. 2020): a population of the best `population` told so far;
  the best `parents_ratio` of it are parents; each new candidate is a mutation of a random parent (each gene
  resampled with probability `mutate_prob`) with probability `mutation_ratio`, else a crossover of two.
- `RegularizedEvolution` (aging evolution, Real et al. 2019): the population is the last `population` told
  (the oldest dies, however good); each candidate mutates the best of `sample_size` random members.

Until `population` results are told, all three propose uniform samples. Candidates pass the strategy's
screen (cheap cost constraints), with the base class's bounded retries.
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


class RandomSearch(Strategy):
    name = "random"

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

    def __init__(self, space: SearchSpace, objectives: Sequence[Objective], constraints: Sequence[Constraint] = (),
                 **kwargs: Any) -> None:
        super().__init__(space, objectives, constraints, **kwargs)
        self.survivors = np.zeros(0, dtype=np.int64)  # told rows in the population, best first

    def _learn(self, genes: np.ndarray, columns: Columns) -> None:
        pool = np.concatenate([self.survivors, np.arange(self.told - len(genes), self.told)])
        self.survivors = pool[rank_rows(self.scores[pool], self.violations[pool])][: self.config.population]

    def _propose(self, n: int) -> np.ndarray:
        c = self.config
        if self.told < c.population:
            return self.space.sample_genes(self.rng, n)
        parents = self.genes[self.survivors[: max(1, int(round(c.parents_ratio * c.population)))]]
        mutate = self.rng.random(n) < c.mutation_ratio
        first = parents[self.rng.integers(0, len(parents), n)]
        second = parents[self.rng.integers(0, len(parents), n)]
        mutants = self.space.mutate_genes(first, self.rng, c.mutate_prob)
        children = self.space.crossover_genes(first, second, self.rng)
        return np.where(mutate[:, None], mutants, children)


class RegularizedEvolution(Strategy):
    name = "regularized-evolution"
    config_class = RegularizedEvolutionConfig
    config: RegularizedEvolutionConfig

    def _propose(self, n: int) -> np.ndarray:
        population = self.config.population
        if self.told < population:
            return self.space.sample_genes(self.rng, n)
        alive = np.arange(self.told - population, self.told)  # aging: the last `population` told
        samples = alive[np.argsort(self.rng.random((n, population)), axis=1)[:, : self.config.sample_size]]
        winners = np.array([row[rank_rows(self.scores[row], self.violations[row])[0]] for row in samples])
        return self.space.mutate_genes(self.genes[winners], self.rng, self.config.mutate_prob)
