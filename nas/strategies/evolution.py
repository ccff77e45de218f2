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
from typing import Any

import numpy as np

from nas.objectives import Constraint, Objective
from nas.strategies.base import Columns, Screen, Strategy, StrategyError, rank_rows
from search_spaces import SearchSpace


class RandomSearch(Strategy):
    name = "random"

    def _propose(self, n: int) -> np.ndarray:
        return self.space.sample_genes(self.rng, n)


class _Evolutionary(Strategy):
    def __init__(self, space: SearchSpace, objectives: Sequence[Objective], constraints: Sequence[Constraint] = (),
                 *, seed: int = 0, screen: Screen | None = None, retry_budget: int = 100, population: int = 100,
                 mutate_prob: float = 0.1) -> None:
        super().__init__(space, objectives, constraints, seed=seed, screen=screen, retry_budget=retry_budget)
        if population < 2:
            raise StrategyError(f"{self.name}: population must be at least 2 (got {population})")
        if not 0 < mutate_prob <= 1:
            raise StrategyError(f"{self.name}: mutate_prob must be in (0, 1] (got {mutate_prob})")
        self.population, self.mutate_prob = population, mutate_prob

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "population": self.population, "mutate_prob": self.mutate_prob}


class Evolution(_Evolutionary):
    name = "evolution"

    def __init__(self, space: SearchSpace, objectives: Sequence[Objective], constraints: Sequence[Constraint] = (),
                 *, seed: int = 0, screen: Screen | None = None, retry_budget: int = 100, population: int = 100,
                 parents_ratio: float = 0.25, mutation_ratio: float = 0.5, mutate_prob: float = 0.1) -> None:
        super().__init__(space, objectives, constraints, seed=seed, screen=screen, retry_budget=retry_budget,
                         population=population, mutate_prob=mutate_prob)
        for label, value in (("parents_ratio", parents_ratio), ("mutation_ratio", mutation_ratio)):
            if not 0 < value <= 1:
                raise StrategyError(f"{self.name}: {label} must be in (0, 1] (got {value})")
        self.parents_ratio, self.mutation_ratio = parents_ratio, mutation_ratio
        self.survivors = np.zeros(0, dtype=np.int64)  # told rows in the population, best first

    def _learn(self, genes: np.ndarray, columns: Columns) -> None:
        pool = np.concatenate([self.survivors, np.arange(self.told - len(genes), self.told)])
        self.survivors = pool[rank_rows(self.scores[pool], self.violations[pool])][: self.population]

    def _propose(self, n: int) -> np.ndarray:
        if self.told < self.population:
            return self.space.sample_genes(self.rng, n)
        parents = self.genes[self.survivors[: max(1, int(round(self.parents_ratio * self.population)))]]
        mutate = self.rng.random(n) < self.mutation_ratio
        first = parents[self.rng.integers(0, len(parents), n)]
        second = parents[self.rng.integers(0, len(parents), n)]
        mutants = self.space.mutate_genes(first, self.rng, self.mutate_prob)
        children = self.space.crossover_genes(first, second, self.rng)
        return np.where(mutate[:, None], mutants, children)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "parents_ratio": self.parents_ratio, "mutation_ratio": self.mutation_ratio}


class RegularizedEvolution(_Evolutionary):
    name = "regularized-evolution"

    def __init__(self, space: SearchSpace, objectives: Sequence[Objective], constraints: Sequence[Constraint] = (),
                 *, seed: int = 0, screen: Screen | None = None, retry_budget: int = 100, population: int = 100,
                 sample_size: int = 25, mutate_prob: float = 0.1) -> None:
        super().__init__(space, objectives, constraints, seed=seed, screen=screen, retry_budget=retry_budget,
                         population=population, mutate_prob=mutate_prob)
        if not 1 <= sample_size <= population:
            raise StrategyError(f"{self.name}: sample_size must be in 1..population ({population}); got {sample_size}")
        self.sample_size = sample_size

    def _propose(self, n: int) -> np.ndarray:
        if self.told < self.population:
            return self.space.sample_genes(self.rng, n)
        alive = np.arange(self.told - self.population, self.told)  # aging: the last `population` told
        samples = alive[np.argsort(self.rng.random((n, self.population)), axis=1)[:, : self.sample_size]]
        winners = np.array([row[rank_rows(self.scores[row], self.violations[row])[0]] for row in samples])
        return self.space.mutate_genes(self.genes[winners], self.rng, self.mutate_prob)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "sample_size": self.sample_size}
