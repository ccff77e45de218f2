"""Searches record into an Optuna study and resume from it."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from nas.objectives import parse_constraints, parse_objectives
from nas.strategies import get_strategy
from nas.strategies.conformance import run
from nas.study import dashboard_thread, history, note_measured, open_study, quiet_optuna, record
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


def test_objectives_are_named_also_on_a_study_made_without_names(tmp_path):
    import warnings

    import optuna

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    assert open_study(storage, "s", OBJECTIVES, SPACE).metric_names == ["accuracy", "latency_ms"]
    with quiet_optuna():  # a study as hwnas made it before it named the objectives
        old = optuna.create_study(storage=storage, study_name="old", directions=["maximize", "minimize"])
    assert old.metric_names is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Optuna's "experimental" warning is not passed on
        assert open_study(storage, "old", OBJECTIVES, SPACE).metric_names == ["accuracy", "latency_ms"]


def strict_json(text):
    def refuse(name):
        raise ValueError(f"{name} is not JSON a browser parses")

    return json.loads(text, parse_constant=refuse)


def api(url, path):
    import urllib.request

    with urllib.request.urlopen(url + path, timeout=30) as reply:
        return strict_json(reply.read())


def test_the_installed_dashboard_shows_names_feasibility_and_attributes(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = open_study(storage, "s", OBJECTIVES, SPACE)
    strategy = get_strategy("evolution", SPACE, OBJECTIVES, CONSTRAINTS, seed=4, population=8)
    ((genes, columns),) = run(strategy, evaluate, [8])
    columns = {**columns, "latency_ms": columns["latency_ms"].copy()}
    columns["latency_ms"][7] = np.nan  # not priced: a failed trial, infeasible by an unknown amount
    both = parse_constraints(["latency_ms<=0.2", "macs<=3M"])
    record(study, SPACE, genes, columns, OBJECTIVES, both, strategy="evolution", seed=4, batch=0,
           latency_table="small-ort-fp32-test")
    assert note_measured(study, [{"key": "abc", "measured_latency_ms": 0.125}, {"key": "def"}]) == 1

    with dashboard_thread(storage) as url:
        assert url.startswith("http://127.0.0.1:")
        (summary,) = api(url, "api/studies")["study_summaries"]
        detail = api(url, f"api/studies/{summary['study_id']}?after=0")
    assert detail["objective_names"] == ["accuracy", "latency_ms"]
    study_attrs = {a["key"]: a["value"] for a in detail["user_attrs"]}
    assert study_attrs["measured_latency_ms:abc"] == "0.125" and "measured_latency_ms:def" not in study_attrs
    trials = sorted(detail["trials"], key=lambda t: t["number"])
    assert len(trials) == 8 and [t["state"] for t in trials] == ["Complete"] * 7 + ["Fail"]
    feasible = []
    for i, trial in enumerate(trials):
        latency, macs = columns["latency_ms"][i], columns["macs"][i]
        assert len(trial["constraints"]) == 2  # what the dashboard's plots read: <= 0 where met
        if i < 7:
            assert trial["constraints"] == pytest.approx([latency - 0.2, macs - 3e6])
        else:
            assert trial["constraints"][0] > 1e300 and trial["constraints"][1] == pytest.approx(macs - 3e6)
        attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
        arch = SPACE.from_genes(genes[i])
        assert attrs["arch"] == arch.to_str() and attrs["key"] == arch.key
        assert attrs["latency_table"] == "small-ort-fp32-test" and float(attrs["macs"]) == macs
        assert {"params", "flops", "peak_activation", "memory_access"} <= set(attrs)
        assert attrs["feasible"] == str(bool(latency <= 0.2 and macs <= 3e6))
        feasible.append(attrs["feasible"] == "True")
    assert True in feasible and False in feasible  # the test data has both kinds
    # Optuna itself still reads the named form (a strategy replaying the study sees each constraint by name)
    reopened = open_study(storage, "s", OBJECTIVES, SPACE)
    first = reopened.get_trials()[0]
    assert first.constraints["latency_ms<=0.2"] == pytest.approx(columns["latency_ms"][0] - 0.2)
    assert first.constraints["macs<=3e+06"] == pytest.approx(columns["macs"][0] - 3e6)
    # the new attributes are labels, not metric columns a replayed strategy is told
    ((_, replayed),) = history(reopened, SPACE, strategy="evolution", seed=4)
    assert replayed.keys() == columns.keys()


def test_a_busy_port_is_a_clear_error(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    open_study(storage, "s", OBJECTIVES, SPACE)
    with dashboard_thread(storage) as url:
        port = int(url.rsplit(":", 1)[1].strip("/"))
        with pytest.raises(HwnasError, match=f"cannot serve the dashboard on 127.0.0.1:{port}: .*give another"):
            dashboard_thread(storage, port=port).__enter__()


def test_a_search_labels_its_study_with_its_command_and_tables(tmp_path):
    from latency_tables.table import find_table
    from nas.evaluators import CostEvaluator
    from nas.search import Search, SearchSettings

    table = find_table("small", "ort", "fp32")
    costs = CostEvaluator(SPACE, [table])
    settings = SearchSettings("random", OBJECTIVES, CONSTRAINTS, budget=6, batch=3, seed=1)
    storage = f"sqlite:///{tmp_path / 'study.db'}"

    def accuracy(genes):
        return np.linspace(0.9, 0.95, len(genes))

    Search(SPACE, settings, costs, accuracy, storage=storage, study_name="s", progress=False,
           study_attrs={"command": "hwnas run configs/x.toml", "config": "configs/x.toml"}).run()
    study = open_study(storage, "s", OBJECTIVES, SPACE)
    assert study.user_attrs["command"] == "hwnas run configs/x.toml" and study.user_attrs["config"] == "configs/x.toml"
    assert study.user_attrs["latency_tables"] == [table.table_id]
    trials = study.get_trials()
    assert len(trials) == 6 and {t.user_attrs["latency_table"] for t in trials} == {table.table_id}
    worker = SearchSettings("random", OBJECTIVES, CONSTRAINTS, budget=3, batch=3, seed=1, worker=1)
    Search(SPACE, worker, costs, accuracy, storage=storage, study_name="s", progress=False).run()
    labels = open_study(storage, "s", OBJECTIVES, SPACE).user_attrs
    assert labels["command:w1"].split()[0] == Path(sys.argv[0]).name and labels["command"] == "hwnas run configs/x.toml"
