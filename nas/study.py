"""The Optuna study a search records into: every true evaluation is one trial (the architecture string, key,
strategy, seed, batch and every metric as user attributes; the genes as parameters; the objectives as values;
the constraints as Optuna constraints, so optuna-dashboard shows history, feasibility and the Pareto front).

Storage is any SQLAlchemy URL (`sqlite:///runs/NAME/study.db` on one machine; PostgreSQL or MySQL for many
workers). A search resumes from its study: `history` gives back the recorded batches of a strategy and seed
in order, for `Strategy.replay`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from nas.objectives import Columns, Constraint, Objective
from search_spaces import SearchSpace
from search_spaces.errors import HwnasError

#: User attributes hwnas sets on each trial besides the metric values.
_ATTRS = ("arch", "key", "strategy", "seed", "batch")


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise HwnasError("the search study needs optuna; install it with `pip install optuna`") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def open_study(storage: str, name: str, objectives: Sequence[Objective], space: SearchSpace) -> Any:
    """Create the study `name` in `storage`, or open it if it exists (it must have the same objectives and
    space: a study holds one search)."""
    optuna = _optuna()
    directions = ["maximize" if o.direction == "max" else "minimize" for o in objectives]
    wanted = {"objectives": [str(o) for o in objectives], "space": space.name}
    try:
        study = optuna.create_study(storage=storage, study_name=name, directions=directions, load_if_exists=True)
    except Exception as err:  # noqa: BLE001 - SQLAlchemy and Optuna errors: name the storage and the cause
        raise HwnasError(f"cannot open study {name!r} in {storage}: {err}") from None
    have = {k: study.user_attrs.get(k) for k in wanted}
    if all(v is None for v in have.values()) and not study.trials:
        for key, value in wanted.items():
            study.set_user_attr(key, value)
    elif have != wanted:
        raise HwnasError(f"study {name!r} in {storage} holds a search with {have}, not {wanted}; give another "
                         f"--study name")
    return study


def constraint_value(constraint: Constraint, value: float) -> float:
    """Optuna's form: <= 0 when met (the signed distance to the bound)."""
    if math.isnan(value):
        return math.inf
    return value - constraint.bound if constraint.op in ("<=", "<") else constraint.bound - value


def record(study: Any, space: SearchSpace, genes: np.ndarray, columns: Columns, objectives: Sequence[Objective],
           constraints: Sequence[Constraint] = (), *, strategy: str, seed: int, batch: int) -> None:
    """Add one trial per gene row (all in one storage call)."""
    optuna = _optuna()
    from optuna.distributions import IntDistribution

    distributions = {g.name: IntDistribution(0, g.choices - 1) for g in space.genes}
    metrics = {name: np.asarray(values) for name, values in columns.items()}
    trials = []
    for i, row in enumerate(np.atleast_2d(genes)):
        arch = space.from_genes(row)
        attrs: dict[str, Any] = {"arch": arch.to_str(), "key": arch.key, "strategy": strategy, "seed": seed,
                                 "batch": batch}
        for name, values in metrics.items():
            value = values[i].item()
            attrs[name] = value if not (isinstance(value, float) and math.isnan(value)) else None
        values_out = [float(metrics[o.metric][i]) for o in objectives]
        ok = all(math.isfinite(v) for v in values_out)
        trials.append(optuna.trial.create_trial(
            state=optuna.trial.TrialState.COMPLETE if ok else optuna.trial.TrialState.FAIL,
            values=values_out if ok else None,
            params={g.name: int(row[j]) for j, g in enumerate(space.genes)}, distributions=distributions,
            user_attrs=attrs,
            constraints={str(c): constraint_value(c, float(metrics[c.metric][i])) for c in constraints
                         if c.metric in metrics}))
    study.add_trials(trials)


def history(study: Any, space: SearchSpace, *, strategy: str, seed: int) -> list[tuple[np.ndarray, Columns]]:
    """The batches recorded by `strategy` with `seed`, in order: (gene rows, metric columns)."""
    batches: dict[int, list[Any]] = {}
    for trial in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        attrs = trial.user_attrs
        if attrs.get("strategy") == strategy and attrs.get("seed") == seed and "batch" in attrs:
            batches.setdefault(int(attrs["batch"]), []).append(trial)
    out: list[tuple[np.ndarray, Columns]] = []
    for index in sorted(batches):
        trials = batches[index]
        genes = np.array([[trial.params[g.name] for g in space.genes] for trial in trials], dtype=np.int64)
        names = [k for k in trials[0].user_attrs if k not in _ATTRS]
        columns = {name: np.array([np.nan if t.user_attrs.get(name) is None else t.user_attrs[name]
                                   for t in trials]) for name in names}
        out.append((genes, columns))
    return out
