"""Every registered strategy passes the conformance suite; evolution beats random search on a toy objective."""

import re

import numpy as np
import pytest

from latency_tables.table import find_table
from nas.evaluators import CostEvaluator
from nas.objectives import Constraint, hypervolume, minimised, parse_constraints, parse_objectives
from nas.search import cost_screen
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


# ------------------------------------------------------------------------------ a search that converges

def tiny_space():
    """80 architectures (2 resolutions x 2 widths x depth 1 or 2 of kernel 3/5 and expand 2/3), priced
    analytically: a search exhausts it in a second."""
    from search_spaces.arch import HeadConfig, StemConfig
    from search_spaces.space import SearchSpace, StageSpec

    return SearchSpace(name="tiny", resolutions=(24, 28), in_channels=1, num_classes=10,
                       stem=StemConfig(8, 3, 2, "relu"),
                       stages=(StageSpec(("mbv2",), (8, 16), (1, 2), 2, (3, 5), (2.0, 3.0)),),
                       head=HeadConfig(32, 0, "relu"))


def every_architecture(space):
    """Every canonical gene row of a small space, once."""
    grids = np.meshgrid(*[np.arange(s) for s in space.gene_sizes], indexing="ij")
    return np.unique(space.canonical_genes(np.stack([g.ravel() for g in grids], axis=1)), axis=0)


def converge(name, seed, space, costs, constraint, batch=8, **options):
    """Ask and tell `batch` rows (accuracy: log MACs) until the strategy stops; the strategy."""
    strategy = get_strategy(name, space, parse_objectives(["accuracy"]), [constraint], seed=seed,
                            screen=cost_screen(costs, [constraint]), retry_budget=10, **options)
    for _ in range(1000):
        genes = strategy.ask(batch)
        if len(genes):
            columns = costs.columns(genes)
            columns["accuracy"] = 0.8 + 0.02 * np.log(columns["macs"] / 1e6)
            strategy.tell(genes, columns)
        if strategy.stopped is not None:
            return strategy
    raise AssertionError(f"{name} did not stop after {strategy.told} architectures told")


@pytest.mark.parametrize("name, options", [("evolution", {"population": 8}),
                                           ("regularized-evolution", {"population": 8, "sample_size": 3}),
                                           ("random", {})])
def test_a_search_that_exhausts_its_space_stops_cleanly_and_says_why(name, options):
    """Run to convergence on a space of 80 architectures: no error; every feasible architecture told exactly
    once; the reason given; asking again after the stop is an error; the same seed tells the same rows."""
    space = tiny_space()
    costs = CostEvaluator(space)
    everything = every_architecture(space)
    assert len(everything) == space.size() == 80
    median = float(np.median(costs.columns(everything)["macs"]))
    limit = Constraint.parse(f"macs<={median}")
    feasible = everything[limit.satisfied(costs.columns(everything)["macs"])]
    strategy = converge(name, 0, space, costs, limit, **options)
    told = {row.tobytes() for row in strategy.genes}
    assert len(told) == strategy.told == len(feasible) == 40  # unique, and nothing feasible left out
    assert told == {row.tobytes() for row in feasible}
    assert strategy.stopped.startswith(f"the space under these constraints is exhausted for {name}: after 10 rounds")
    assert f"only 0 of 8 new architecture(s) met macs<={median:g}; 40 told" in strategy.stopped
    assert strategy.describe()["stopped"] == strategy.stopped
    with pytest.raises(StrategyError, match=f"{name} has stopped and asks for nothing more: the space under"):
        strategy.ask(8)  # a loop that ignored `stopped` would spin on empty asks
    again = converge(name, 0, space, costs, limit, **options)
    assert np.array_equal(again.genes, strategy.genes) and again.stopped == strategy.stopped


@pytest.mark.parametrize("name, options", [("nsga2", {"population_size": 8}), ("tpe", {"n_startup_trials": 8}),
                                           ("rl", {})])
def test_a_strategy_that_cannot_widen_stops_cleanly_when_it_converges(name, options):
    """Strategies with no wider proposals (Optuna's, the policy's) stop with what they found and say they have
    converged, instead of raising; nothing told twice."""
    space = tiny_space()
    costs = CostEvaluator(space)
    limit = Constraint.parse(f"macs<={float(np.median(costs.columns(every_architecture(space))['macs']))}")
    strategy = converge(name, 0, space, costs, limit, **options)
    assert 8 <= strategy.told <= 40 and len({row.tobytes() for row in strategy.genes}) == strategy.told
    assert strategy.stopped.startswith(f"the search has converged for {name}: after 10 rounds")
    found = re.search(rf"only (\d+) of 8 new architecture\(s\) met {limit}; (\d+) told$", strategy.stopped)
    assert found and int(found[1]) + int(found[2]) == strategy.told, strategy.stopped  # the last batch came short


def test_a_stopped_search_replays_with_its_short_last_batch_and_stops_again():
    """Resume from the recorded batches of a search that stopped (its last batch shorter than asked): the replay
    follows, and the resumed strategy stops at the same architectures."""
    space = tiny_space()
    costs = CostEvaluator(space)
    limit = Constraint.parse(f"macs<={float(np.median(costs.columns(every_architecture(space))['macs']))}")
    strategy = converge("evolution", 2, space, costs, limit, batch=6, population=8)
    sizes = [6] * (strategy.told // 6) + ([strategy.told % 6] if strategy.told % 6 else [])
    assert sizes[-1] < 6  # 40 feasible rows in batches of 6: the last one came short
    edges = np.cumsum([0, *sizes])
    trace = [(strategy.genes[a:b], {"accuracy": -strategy.scores[a:b, 0], "macs": costs.columns(
        strategy.genes[a:b])["macs"]}) for a, b in zip(edges[:-1], edges[1:], strict=True)]
    resumed = get_strategy("evolution", space, parse_objectives(["accuracy"]), [limit], seed=2,
                           screen=cost_screen(costs, [limit]), retry_budget=10, population=8)
    assert resumed.replay(trace) == 40
    assert resumed.ask(6).shape == (0, len(space.genes)) and "exhausted" in resumed.stopped


def test_the_evolutions_reach_uniform_samples_before_they_stop():
    space = tiny_space()
    costs = CostEvaluator(space)
    limit = Constraint.parse(f"macs<={float(np.median(costs.columns(every_architecture(space))['macs']))}")
    for name, options in (("evolution", {"population": 8}),
                          ("regularized-evolution", {"population": 8, "sample_size": 3})):
        strategy = converge(name, 1, space, costs, limit, **options)
        assert strategy.explore == strategy.explore_levels == 5
        assert "the last from uniform samples" in strategy.stopped


def test_the_paper_settings_with_the_screen_no_longer_die_of_convergence():
    """Once-for-all's settings (parents 0.25, mutation ratio 0.5, mutation probability 0.1) at population 50,
    screened by the shipped litert int8 table under its median latency, as `hwnas search` installs it: the
    old retry loop raised at generation 85 of 100; now all 100 generations run, each row told once."""
    table = find_table("small", "litert", "int8")
    costs = CostEvaluator(SPACE, [table])
    limit = Constraint.parse("latency_ms<=0.2709")
    strategy = get_strategy("evolution", SPACE, parse_objectives(["accuracy"]), [limit], seed=0,
                            screen=cost_screen(costs, [limit]), population=50, parents_ratio=0.25,
                            mutation_ratio=0.5, mutate_prob=0.1)
    for _ in range(100):
        genes = strategy.ask(50)
        columns = costs.columns(genes)
        columns["accuracy"] = 0.9 + 0.02 * np.log(columns["macs"] / 1e6)
        strategy.tell(genes, columns)
    assert strategy.stopped is None and strategy.told == 5000
    assert len({row.tobytes() for row in strategy.genes}) == 5000
    assert limit.satisfied(costs.columns(strategy.genes)["latency_ms"]).all()
    assert strategy.explore > 0  # it had to widen: the population had converged


def test_widened_mutation_finds_new_rows_near_a_converged_population():
    """A converged population: the one parent (the best) and every architecture one gene away from it told, and a
    mutation so rare (0.01) that the paper's recipe proposes almost only repeats. The ask is still filled, by
    widened mutation (not the archive or uniform samples): every new row is 2-6 genes away from the parent."""
    base = SPACE.sample_genes(np.random.default_rng(5), 1)[0]
    neighbours = [np.where(np.arange(len(base)) == i, v, base) for i, size in enumerate(SPACE.gene_sizes)
                  for v in range(size) if v != base[i]]
    neighbours = np.unique(SPACE.canonical_genes(np.stack(neighbours)), axis=0)
    neighbours = neighbours[(neighbours != base).any(axis=1)]
    strategy = get_strategy("evolution", SPACE, parse_objectives(["accuracy"]), seed=0, population=16,
                            parents_ratio=1 / 16, mutation_ratio=1.0, mutate_prob=0.01)
    told = np.concatenate([base[None], neighbours])
    strategy.tell(told, {"accuracy": np.r_[0.9, np.full(len(neighbours), 0.8)]})
    genes = strategy.ask(16)
    assert genes.shape == (16, len(SPACE.genes)) and strategy.stopped is None
    assert 1 <= strategy.explore <= 3, strategy.explore  # mutation x2 .. x8
    assert not {row.tobytes() for row in genes} & {row.tobytes() for row in told}
    distance = (genes != base).sum(axis=1)
    assert distance.min() >= 2 and distance.max() <= 6, distance
    uniform = (SPACE.sample_genes(np.random.default_rng(0), 200) != base).sum(axis=1)
    assert np.median(uniform) >= 12, np.median(uniform)  # what uniform samples would have given


def test_row_keys_are_exact_in_one_word_and_in_several():
    from nas.strategies.base import RowKeys

    for name, words in (("small", 1), ("imagenet", 2)):
        space = get_space(name)
        keys = RowKeys(space)
        assert keys.words == words
        rows = space.sample_genes(np.random.default_rng(0), 3000)
        rows = np.concatenate([rows, rows[:500]])
        told = keys.insert(keys.empty(), keys(rows[:1000]))
        expected = {row.tobytes() for row in rows[:1000]}
        assert keys.contains(told, keys(rows)).tolist() == [row.tobytes() in expected for row in rows]
        assert len(np.unique(keys(rows))) == len({row.tobytes() for row in rows})
