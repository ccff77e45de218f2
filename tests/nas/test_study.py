"""Searches record into an Optuna study and resume from it."""

import numpy as np
import pytest

from nas.objectives import parse_constraints, parse_objectives
from nas.strategies import get_strategy
from nas.strategies.conformance import run
from nas.study import history, open_study, record
from search_spaces import get_space
from search_spaces.errors import HwnasError
from tests.nas.test_strategies import evaluate

SPACE = get_space("small")
OBJECTIVES = parse_objectives(["accuracy", "latency_ms"])
CONSTRAINTS = parse_constraints(["latency_ms<=0.2"])


def each_evaluated_once(trials):
    return len({t.user_attrs["key"] for t in trials}) == len(trials)  # each architecture evaluated once


def test_every_evaluation_is_a_trial_and_a_search_resumes_from_the_study(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = open_study(storage, "s", OBJECTIVES, SPACE)
    strategy = get_strategy("evolution", SPACE, OBJECTIVES, CONSTRAINTS, seed=4, population=8)
    trace = run(strategy, evaluate, [8, 8, 8])
    for batch, (genes, columns) in enumerate(trace):
        record(study, SPACE, genes, columns, OBJECTIVES, CONSTRAINTS, strategy="evolution", seed=4, batch=batch)

    reopened = open_study(storage, "s", OBJECTIVES, SPACE)
    trials = reopened.get_trials()
    assert len(trials) == 24
    first = trials[0]
    arch = SPACE.from_genes(trace[0][0][0])
    assert first.user_attrs["arch"] == arch.to_str() and first.user_attrs["key"] == arch.key
    assert first.values == [trace[0][1]["accuracy"][0], trace[0][1]["latency_ms"][0]]
    assert first.user_attrs["macs"] == trace[0][1]["macs"][0]
    # Optuna's constraint value is <= 0 exactly where the latency limit is met
    assert all((t.constraints["latency_ms<=0.2"] <= 0) == (t.user_attrs["latency_ms"] <= 0.2) for t in trials)
    assert {t.user_attrs["latency_ms"] <= 0.2 for t in trials} == {True, False} and each_evaluated_once(trials)
    assert {t.number for t in reopened.best_trials} <= {t.number for t in trials}

    # the study gives back the batches; a fresh strategy replays them and continues as if never stopped
    recorded = history(reopened, SPACE, strategy="evolution", seed=4)
    assert [len(g) for g, _ in recorded] == [8, 8, 8]
    assert all(np.array_equal(g, t[0]) for (g, _), t in zip(recorded, trace, strict=True))
    resumed = get_strategy("evolution", SPACE, OBJECTIVES, CONSTRAINTS, seed=4, population=8)
    assert resumed.replay(recorded) == 24
    assert np.array_equal(resumed.ask(8), strategy.ask(8))
    assert history(reopened, SPACE, strategy="evolution", seed=5) == []


def test_a_study_of_another_search_is_refused(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    open_study(storage, "s", OBJECTIVES, SPACE)
    with pytest.raises(HwnasError, match="holds a search with .*accuracy:max.*give another --study name"):
        open_study(storage, "s", parse_objectives(["accuracy", "params"]), SPACE)


@pytest.mark.parametrize("level", ["DEBUG", "ERROR"])
def test_optuna_log_level_is_left_as_it_was(tmp_path, level):
    import optuna

    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(getattr(optuna.logging, level))
    try:
        study = open_study(f"sqlite:///{tmp_path / 'study.db'}", "s", OBJECTIVES, SPACE)
        strategy = get_strategy("tpe", SPACE, OBJECTIVES, CONSTRAINTS, seed=0, n_startup_trials=2)
        ((genes, columns),) = run(strategy, evaluate, [3])
        record(study, SPACE, genes, columns, OBJECTIVES, CONSTRAINTS, strategy="tpe", seed=0, batch=0)
        assert optuna.logging.get_verbosity() == getattr(optuna.logging, level)
        assert len(study.get_trials()) == 3
    finally:
        optuna.logging.set_verbosity(before)
