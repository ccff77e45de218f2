"""Every registered strategy passes the conformance suite; evolution beats random search on a toy objective."""

import numpy as np
import pytest

from latency_tables.table import find_table
from nas.evaluators import CostEvaluator
from nas.objectives import Constraint, hypervolume, minimised, parse_constraints, parse_objectives
from nas.strategies import STRATEGIES, StrategyError, get_strategy
from nas.strategies.base import crowding_distance, pareto_fronts, rank_rows
from nas.strategies.conformance import check_strategy, run
from search_spaces import get_space

SPACE = get_space("small")
COSTS = CostEvaluator(SPACE, [find_table("small", "ort", "fp32")])


def evaluate(genes):
    """Costs from the shipped table, and a stand-in accuracy that grows with log MACs (deterministic)."""
    columns = COSTS.columns(genes)
    columns["accuracy"] = 0.8 + 0.02 * np.log(columns["macs"] / 1e6)
    return columns


def factory(name, objectives=("accuracy",), constraints=("latency_ms<=0.2",), small=True, **options):
    """A seed -> strategy maker; `small` gives the evolutionary searches a population of 16 (quick suites)."""
    cons = parse_constraints(constraints)
    latency = next(c for c in cons if c.metric == "latency_ms")

    def screen(genes):
        return latency.satisfied(COSTS.columns(genes)["latency_ms"])

    sizes = {"evolution": {"population": 16}, "regularized-evolution": {"population": 16, "sample_size": 4},
             "nsga2": {"population_size": 16}, "tpe": {"n_startup_trials": 16}}
    options = {**(sizes.get(name, {}) if small else {}), **options}
    return lambda seed: get_strategy(name, SPACE, parse_objectives(objectives), cons, seed=seed, screen=screen,
                                     **options)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_passes_the_conformance_suite(name):
    check_strategy(factory(name), evaluate, [8] * 6)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_multi_objective_strategies_pass_it_too(name):
    check_strategy(factory(name, objectives=("accuracy", "latency_ms")), evaluate, [8] * 6)


def test_a_history_from_other_settings_does_not_replay():
    trace = run(factory("evolution")(0), evaluate, [8, 8, 8])
    with pytest.raises(StrategyError, match="does not follow from seed 1"):
        factory("evolution")(1).replay(trace)


def test_constraints_no_sample_meets_give_a_bounded_clear_error():
    strategy = factory("random", constraints=("latency_ms<=0.0001",), retry_budget=5)(0)
    with pytest.raises(StrategyError, match="after 5 rounds of proposals only 0 of 4 new architecture"):
        strategy.ask(4)


def test_unknown_strategy_and_bad_options_are_named():
    names = "differentiable, evolution, nsga2, random, regularized-evolution, rl, tpe"
    with pytest.raises(StrategyError, match=f"unknown strategy 'annealing'; the strategies are {names}"):
        get_strategy("annealing", SPACE, parse_objectives(["accuracy"]))
    with pytest.raises(StrategyError, match="sample_size must be in 1..population"):
        get_strategy("regularized-evolution", SPACE, parse_objectives(["accuracy"]), population=4, sample_size=9)


def test_ranking_puts_feasible_first_then_the_objective():
    scores = np.array([[3.0], [1.0], [2.0], [0.5]])
    violations = np.array([0.0, 0.0, 0.0, 0.3])
    assert rank_rows(scores, violations).tolist() == [1, 2, 0, 3]
    points = np.array([[1, 3], [2, 2], [3, 1], [2, 3], [4, 4]])
    assert [f.tolist() for f in pareto_fronts(points)] == [[0, 1, 2], [3], [4]]
    assert crowding_distance(points[:3]).tolist() == [np.inf, 2.0, np.inf]
    assert rank_rows(points.astype(float), np.zeros(5)).tolist()[:3] == [0, 2, 1]  # boundary points first


SEARCH = {"population": 50}


@pytest.mark.parametrize("name, options", [("evolution", SEARCH),
                                           ("regularized-evolution", {**SEARCH, "sample_size": 10})])
def test_evolution_finds_better_subnets_than_random_search_at_an_equal_budget(name, options):
    """Maximise the stand-in accuracy (MACs) under a latency limit: after 2,000 evaluations the evolutionary
    searches' best feasible subnet beats random search's on each of 3 seeds."""
    limit = Constraint.parse("latency_ms<=0.2")
    for seed in range(3):
        best = {}
        for strategy_name, opts in (("random", {}), (name, options)):
            trace = run(factory(strategy_name, small=False, **opts)(seed), evaluate, [50] * 40)
            accuracy = np.concatenate([c["accuracy"] for _, c in trace])
            latency = np.concatenate([c["latency_ms"] for _, c in trace])
            assert limit.satisfied(latency).all() and len(accuracy) == 2000  # the screen kept all within the limit
            best[strategy_name] = accuracy.max()
        assert best[name] > best["random"], (seed, best)


def test_multi_objective_evolution_has_more_hypervolume_than_random_search():
    objectives = parse_objectives(["accuracy", "latency_ms"])
    for seed in range(3):
        volume = {}
        for name, opts in (("random", {}), ("evolution", SEARCH)):
            trace = run(factory(name, objectives=("accuracy", "latency_ms"), small=False, **opts)(seed), evaluate,
                        [50] * 40)
            columns = {k: np.concatenate([c[k] for _, c in trace]) for k in ("accuracy", "latency_ms")}
            volume[name] = hypervolume(minimised(columns, objectives), [-0.7, 0.2])
        assert volume["evolution"] > volume["random"], (seed, volume)


def test_the_strategies_and_the_cost_evaluator_do_not_need_torch():
    import subprocess
    import sys

    code = "import sys, nas.strategies, nas.evaluators; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() \
        == "False"
