"""Optuna's samplers behind the `ask()` / `tell()` interface: TPE (multi-objective TPE for several
objectives) and NSGA-II, each with the constraints as Optuna constraints.

The sampler keeps its own in-memory study of what it proposed: each gene is one integer parameter. A
proposal the strategy turns down (a duplicate, or one the screen rejects) is told to that study as pruned,
so the sampler moves on; an evaluated one is told its objective values. The in-memory study is rebuilt by
`replay` on resume (the search's own study, `nas.study`, is where results live).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from nas.objectives import Constraint, Objective
from nas.strategies.base import Columns, Screen, Strategy, StrategyError
from nas.study import _optuna, constraint_value
from search_spaces import SearchSpace


class OptunaSampler(Strategy):
    """Base of the Optuna-backed strategies; subclasses set `name` and `_sampler(seed, **options)`."""

    def __init__(self, space: SearchSpace, objectives: Sequence[Objective], constraints: Sequence[Constraint] = (),
                 *, seed: int = 0, screen: Screen | None = None, retry_budget: int = 100, **options: Any) -> None:
        super().__init__(space, objectives, constraints, seed=seed, screen=screen, retry_budget=retry_budget)
        optuna = _optuna()
        self._tell_state = optuna.trial.TrialState
        self.options = options
        sampler = self._sampler(seed, **options)
        self.study = optuna.create_study(directions=["maximize" if o.direction == "max" else "minimize"
                                                     for o in self.objectives], sampler=sampler)
        self._proposed: list[tuple[bytes, Any]] = []  # this ask's proposals: (canonical row, trial)
        self._pending: dict[bytes, Any] = {}  # asked, not yet told

    def _sampler(self, seed: int, **options: Any) -> Any:
        raise NotImplementedError

    def _propose(self, n: int) -> np.ndarray:
        rows = np.zeros((n, len(self.space.genes)), dtype=np.int64)
        for i in range(n):
            trial = self.study.ask()
            rows[i] = [trial.suggest_int(g.name, 0, g.choices - 1) for g in self.space.genes]
            self._proposed.append((self.space.canonical_genes(rows[i])[0].tobytes(), trial))
        return rows

    def ask(self, n: int = 1) -> np.ndarray:
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

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), **self.options}


class TPE(OptunaSampler):
    name = "tpe"

    def _sampler(self, seed: int, n_startup_trials: int = 20, **options: Any) -> Any:
        from optuna.samplers import TPESampler

        return TPESampler(seed=seed, n_startup_trials=n_startup_trials, multivariate=True, **options)


class NSGA2(OptunaSampler):
    name = "nsga2"

    def _sampler(self, seed: int, population_size: int = 50, **options: Any) -> Any:
        from optuna.samplers import NSGAIISampler

        return NSGAIISampler(seed=seed, population_size=population_size, **options)
