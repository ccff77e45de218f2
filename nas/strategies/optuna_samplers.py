"""Optuna's samplers behind the `ask()` / `tell()` interface: TPE (multi-objective TPE for several
objectives) and NSGA-II, each with the constraints as Optuna constraints.

The sampler keeps its own in-memory study of what it proposed: each gene is one integer parameter. A
proposal the strategy turns down (a duplicate, or one the screen rejects) is told to that study as pruned,
so the sampler moves on; an evaluated one is told its objective values. The in-memory study is rebuilt by
`replay` on resume (the search's own study, `nas.study`, is where results live).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from nas.objectives import Constraint, Objective
from nas.strategies.base import Columns, Strategy, StrategyError
from nas.strategies.options import OptionError
from nas.study import constraint_value, quiet_optuna
from search_spaces import SearchSpace


class OptunaSampler(Strategy):
    """Base of the Optuna-backed strategies; subclasses set `name` and `_sampler(seed, **options)`."""

    def __init__(self, space: SearchSpace, objectives: Sequence[Objective], constraints: Sequence[Constraint] = (),
                 **kwargs: Any) -> None:
        super().__init__(space, objectives, constraints, **kwargs)
        with quiet_optuna() as optuna:
            self._tell_state = optuna.trial.TrialState
            sampler = self._sampler(self.seed)
            self.study = optuna.create_study(directions=["maximize" if o.direction == "max" else "minimize"
                                                         for o in self.objectives], sampler=sampler)
        self._proposed: list[tuple[bytes, Any]] = []  # this ask's proposals: (canonical row, trial)
        self._pending: dict[bytes, Any] = {}  # asked, not yet told

    def _sampler(self, seed: int) -> Any:
        raise NotImplementedError

    def _propose(self, n: int) -> np.ndarray:
        rows = np.zeros((n, len(self.space.genes)), dtype=np.int64)
        for i in range(n):
            trial = self.study.ask()
            rows[i] = [trial.suggest_int(g.name, 0, g.choices - 1) for g in self.space.genes]
            self._proposed.append((self.space.canonical_genes(rows[i])[0].tobytes(), trial))
        return rows

    def ask(self, n: int = 1) -> np.ndarray:
        with quiet_optuna():
            return self._ask(n)

    def tell(self, genes: np.ndarray, columns: Columns) -> None:
        with quiet_optuna():
            super().tell(genes, columns)

    def _ask(self, n: int) -> np.ndarray:
        self._proposed = []
        chosen: set[bytes] = set()  # stays empty when no batch could be found: every proposal is pruned
        try:
            rows = super().ask(n)
            chosen = {row.tobytes() for row in rows}
            return rows
        finally:
            accepted = set()
            for key, trial in self._proposed:
                if key in chosen and key not in accepted:
                    accepted.add(key)
                    self._pending[key] = trial
                else:
                    self.study.tell(trial, state=self._tell_state.PRUNED)
            self._proposed = []

    def _learn(self, genes: np.ndarray, columns: Columns) -> None:
        for i, row in enumerate(genes):
            trial = self._pending.pop(row.tobytes(), None)
            if trial is None:
                raise StrategyError(f"{self.name}: told an architecture it did not ask for "
                                    f"({self.space.from_genes(row).to_str()})")
            values = [float(columns[o.metric][i]) for o in self.objectives]
            for c in self.constraints:  # Optuna's form: <= 0 when met; the samplers prefer feasible trials
                if c.metric in columns:
                    trial.set_constraint(str(c), constraint_value(c, float(columns[c.metric][i])))
            if all(np.isfinite(values)):
                self.study.tell(trial, values)
            else:
                self.study.tell(trial, state=self._tell_state.FAIL)


@dataclass(frozen=True)
class TPEConfig:
    """Options of `tpe` (Optuna's TPESampler): random trials before TPE starts, candidates scored per proposal,
    and whether the parameters are modelled jointly."""

    n_startup_trials: int = 20
    n_ei_candidates: int = 24
    multivariate: bool = True

    def __post_init__(self) -> None:
        for option, value in (("n_startup_trials", self.n_startup_trials), ("n_ei_candidates", self.n_ei_candidates)):
            if value < 1:
                raise OptionError(f"tpe: {option} must be at least 1 (got {value!r})")


@dataclass(frozen=True)
class NSGA2Config:
    """Options of `nsga2` (Optuna's NSGAIISampler): population size and the genetic operators' probabilities
    (`mutation_prob` None: Optuna's 1 / number of genes)."""

    population_size: int = 50
    mutation_prob: float | None = None
    crossover_prob: float = 0.9
    swapping_prob: float = 0.5

    def __post_init__(self) -> None:
        if self.population_size < 2:
            raise OptionError(f"nsga2: population_size must be at least 2 (got {self.population_size!r})")
        for option, value in (("mutation_prob", self.mutation_prob), ("crossover_prob", self.crossover_prob),
                              ("swapping_prob", self.swapping_prob)):
            if value is not None and not 0 <= value <= 1:
                raise OptionError(f"nsga2: {option} must be in [0, 1] (got {value!r})")


class TPE(OptunaSampler):
    name = "tpe"
    config_class = TPEConfig
    config: TPEConfig

    def _sampler(self, seed: int) -> Any:
        from optuna.samplers import TPESampler

        c = self.config
        return TPESampler(seed=seed, n_startup_trials=c.n_startup_trials, n_ei_candidates=c.n_ei_candidates,
                          multivariate=c.multivariate)


class NSGA2(OptunaSampler):
    name = "nsga2"
    config_class = NSGA2Config
    config: NSGA2Config

    def _sampler(self, seed: int) -> Any:
        from optuna.samplers import NSGAIISampler

        return NSGAIISampler(seed=seed, **asdict(self.config))
