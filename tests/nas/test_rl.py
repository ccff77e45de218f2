"""The REINFORCE strategy (`rl`): MnasNet's reward, what the controller learns from, and that it searches
better than random sampling. The conformance suite runs it in tests/nas/test_strategies.py."""

import numpy as np
import pytest

from nas.objectives import Constraint, parse_constraints, parse_objectives
from nas.strategies import StrategyError, get_strategy
from nas.strategies.conformance import check_strategy, run
from nas.strategies.rl import LSTMPolicy, ReinforceConfig, ReinforceSearch, mnasnet_reward
from tests.nas.test_strategies import SPACE, evaluate, factory


def rl(objectives=("accuracy",), constraints=(), seed=0, **options):
    return get_strategy("rl", SPACE, parse_objectives(objectives), parse_constraints(constraints), seed=seed,
                        **options)


def test_mnasnet_reward_soft_and_hard_by_hand():
    # soft: alpha = beta = -0.07; 2 ** -0.07 = 0.952638, 0.5 ** -0.07 = 1.049717
    soft = mnasnet_reward(0.75, np.array([2.0, 0.5, 1.0]), 1.0, -0.07, -0.07)
    assert soft == pytest.approx([0.714478, 0.787288, 0.75], rel=1e-5)
    # hard: alpha = 0, beta = -1: under the target the accuracy alone, over it accuracy * T / LAT
    hard = mnasnet_reward(0.75, np.array([2.0, 0.5, 1.0]), 1.0, 0.0, -1.0)
    assert hard.tolist() == [0.375, 0.75, 0.75]
    # alpha and beta each on their side of T: 4 ** -0.5 = 0.5, 0.25 ** -0.1 = 1.148698
    assert mnasnet_reward(0.75, np.array([4.0, 0.25]), 1.0, -0.1, -0.5) == pytest.approx([0.375, 0.861524], rel=1e-5)
    assert np.isnan(mnasnet_reward(np.nan, 1.0, 1.0, 0.0, -1.0))


def test_the_reward_takes_its_target_from_the_option_the_constraint_or_the_median_told():
    columns = {"accuracy": np.array([0.8, 0.8]), "latency_ms": np.array([0.1, 0.4])}
    assert rl(constraints=["latency_ms<=0.2"]).rewards(columns).tolist() == [0.8, 0.4]  # hard, T = the bound
    soft = rl(constraints=["latency_ms<=0.2"], reward="soft", target=0.1)  # T = 0.1: 0.8, 0.8 * 4 ** -0.07
    assert soft.rewards(columns) == pytest.approx([0.8, 0.726015], rel=1e-5)
    assert (soft.alpha, soft.beta) == (-0.07, -0.07)
    pareto = rl(objectives=["accuracy", "latency_ms"])  # no cost constraint: T = median latency told so far
    pareto.tell(SPACE.sample_genes(np.random.default_rng(0), 3),
                {"accuracy": np.array([0.5, 0.6, 0.7]), "latency_ms": np.array([1.0, 3.0, 2.0])})
    assert pareto.rewards({"accuracy": np.array([0.6]), "latency_ms": np.array([4.0])}).tolist() == [0.3]
    assert pareto.describe()["reward_latency"] == "latency_ms"
    assert rl().rewards(columns).tolist() == [0.8, 0.8]  # one objective, no constraint: the objective itself
    assert rl(objectives=["latency_ms"]).rewards(columns).tolist() == [-0.1, -0.4]  # signed: larger is better


def test_rewards_that_cannot_be_formed_are_refused_by_name():
    with pytest.raises(StrategyError, match="needs an objective to maximise .* got latency_ms:min, params:min"):
        rl(objectives=["latency_ms", "params"])
    with pytest.raises(StrategyError, match="target = 0.1 needs a cost to compare with it"):
        rl(target=0.1)


@pytest.mark.parametrize("option, value, allowed", [
    ("lr", 0, "a number > 0"), ("lr", float("nan"), "a number > 0"), ("baseline_decay", 1.0, r"in \[0, 1\)"),
    ("entropy", -0.1, "a number >= 0"), ("reward", "medium", "one of soft, hard"),
    ("alpha", float("inf"), "a finite number"), ("target", -2.0, "a number > 0"),
    ("turned_down_weight", 1.5, r"in \[0, 1\]"), ("optimizer", "rmsprop", "one of adam, sgd"),
    ("policy", "transformer", "one of factorized, lstm"), ("hidden", 0, "a whole number >= 1")])
def test_bad_options_name_the_option_the_value_and_what_is_allowed(option, value, allowed):
    with pytest.raises(StrategyError, match=rf"rl: {option} = .* is not allowed; {option} must be {allowed}"):
        rl(**{option: value})


def test_an_option_of_the_wrong_type_names_the_type_and_every_option():
    with pytest.raises(StrategyError, match=r"rl: option lr = True is not float \| None; the options of rl are lr "
                                            r"\(float \| None, default None\), baseline_decay \(float, default 0.9\)"):
        rl(lr=True)


def test_unknown_options_and_describe():
    with pytest.raises(StrategyError, match=r"rl: unknown option.*population; the options of rl are lr \(float"):
        rl(population=16)
    with pytest.raises(StrategyError, match="not both"):
        rl(config=ReinforceConfig(), lr=0.1)
    described = rl(constraints=["latency_ms<=0.2"], reward="soft", beta=-0.2).describe()
    assert {k: described[k] for k in ("strategy", "lr", "baseline_decay", "reward", "alpha", "beta", "optimizer",
                                      "turned_down_weight", "reward_accuracy", "reward_latency")} == {
        "strategy": "rl", "lr": 1.0, "baseline_decay": 0.9, "reward": "soft", "alpha": -0.07, "beta": -0.2,
        "optimizer": "sgd", "turned_down_weight": 0.3, "reward_accuracy": "accuracy", "reward_latency": "latency_ms"}
    assert rl(optimizer="adam").describe()["lr"] == 0.05


def test_the_policy_concentrates_on_the_better_choice():
    """A toy accuracy that only the resolution gene (3 choices) moves much: after 200 evaluations the best
    resolution has most of the probability (uniform: 1/3)."""
    for seed in range(3):
        strategy = rl(seed=seed)
        run(strategy, lambda g: {"accuracy": 0.5 + 0.1 * (g[:, 0] == 2) + 0.01 * g[:, 1]}, [20] * 10)
        assert strategy.policy.probabilities()[0][2] > 0.9, seed


def test_genes_a_row_does_not_use_get_no_gradient():
    strategy = rl()
    genes = SPACE.sample_genes(np.random.default_rng(1), 30)
    depth = SPACE.stage_offsets[1] + 1
    genes[:, depth] = 0  # stage 1 one block deep: the kernel and expand genes of its blocks 1 and 2 are unused
    genes = SPACE.canonical_genes(genes)
    strategy.tell(genes, {"accuracy": np.random.default_rng(2).random(30)})
    unused = ~SPACE.active_mask(genes).any(axis=0)
    assert {SPACE.genes[g].name for g in np.flatnonzero(unused)} >= {"s1.b1.kernel", "s1.b2.expand"}
    for g, (start, size) in enumerate(zip(strategy.policy.offsets, strategy.policy.sizes, strict=True)):
        logits = strategy.policy.params[start:start + size]
        assert np.all(logits == 0) == unused[g] or SPACE.genes[g].name == "s1.depth", SPACE.genes[g].name


def test_failed_rows_get_the_lowest_reward_of_the_batch():
    genes = np.repeat(SPACE.sample_genes(np.random.default_rng(0), 1), 3, axis=0)
    genes[:, 0] = [0, 1, 2]  # three subnets that differ in the resolution only
    strategy = rl()
    strategy.tell(genes, {"accuracy": np.array([np.nan, 0.5, 0.6])})  # the NaN row counts as 0.5
    logits = strategy.policy.params[:3]
    assert logits[0] == pytest.approx(logits[1]) and logits[1] < 0 < logits[2]
    nothing = rl()
    nothing.tell(genes, {"accuracy": np.full(3, np.nan)})  # nothing to compare with: nothing learned
    assert not nothing.policy.params.any() and nothing.baseline is None


@pytest.mark.parametrize("weight", [0.0, 0.3])
def test_draws_the_screen_turns_down_are_learned_from(weight):
    """A screen that rejects resolution choice 0: its logit falls after one batch, unless their weight is 0."""
    strategy = rl(screen=lambda g: g[:, 0] != 0, turned_down_weight=weight)
    genes = strategy.ask(16)
    assert (genes[:, 0] != 0).all()
    strategy.tell(genes, {"accuracy": 0.5 + 0.01 * genes[:, 1] + 0.003 * genes[:, 3]})
    if weight:
        assert strategy.policy.params[0] < -0.1
    else:
        assert strategy.policy.params[0] == pytest.approx(0.0, abs=1e-12)


def test_rl_finds_better_subnets_than_random_search_at_an_equal_budget():
    """The stand-in accuracy (log MACs) under latency_ms<=0.2 on the ORT table, screened as in test_strategies:
    after 2,000 evaluations the controller's best subnet beats random search's on each of 3 seeds, and its last
    200 are far better on average (it has learned, not been lucky)."""
    limit = Constraint.parse("latency_ms<=0.2")
    for seed in range(3):
        best, late = {}, {}
        for name in ("random", "rl"):
            trace = run(factory(name, small=False)(seed), evaluate, [50] * 40)
            accuracy = np.concatenate([c["accuracy"] for _, c in trace])
            assert limit.satisfied(np.concatenate([c["latency_ms"] for _, c in trace])).all()
            best[name], late[name] = accuracy.max(), accuracy[-200:].mean()
        assert best["rl"] > best["random"], (seed, best)
        assert late["rl"] > late["random"] + 0.01, (seed, late)


def test_the_hard_reward_puts_most_later_samples_under_the_target():
    """No screen and a tight limit (latency_ms<=0.1: 4-14% of the first, uniform batch meets it): after 1,250
    evaluations at least 80% of the last 250 do."""
    limit = Constraint.parse("latency_ms<=0.1")
    for seed in range(3):
        trace = run(rl(constraints=[str(limit)], seed=seed, reward="hard"), evaluate, [50] * 25)
        met = [limit.satisfied(c["latency_ms"]).mean() for _, c in trace]
        assert met[0] < 0.2 and np.mean(met[-5:]) >= 0.8, (seed, met[0], met[-5:])


def test_a_config_object_works_like_the_options():
    config = ReinforceConfig(lr=0.5, reward="soft")
    objectives = parse_objectives(["accuracy"])
    a = ReinforceSearch(SPACE, objectives, seed=4, config=config)
    b = ReinforceSearch(SPACE, objectives, seed=4, lr=0.5, reward="soft")
    trace = run(a, evaluate, [8, 8, 8])
    assert all(np.array_equal(g, h) for (g, _), (h, _) in zip(trace, run(b, evaluate, [8, 8, 8]), strict=True))


def test_the_lstm_policy_backpropagates_the_exact_gradient():
    """Against central differences of sum_i w_i log pi(row_i) + entropy * (mean summed step entropy)."""
    rng = np.random.default_rng(0)
    policy = LSTMPolicy(SPACE, 5, rng)
    policy.params += rng.normal(0, 0.3, policy.params.shape)
    genes = policy.sample(rng, 6)
    assert np.array_equal(genes, SPACE.canonical_genes(genes))  # unused genes are not drawn: 0
    weights, active = rng.normal(size=6), SPACE.active_mask(genes)

    def objective(bonus):
        entropy = 0.0
        if bonus:
            policy.gradient(genes, active, np.zeros(6), 0.0)  # records the rows' entropy
            entropy = policy.entropy()
        return weights @ policy.log_prob(genes) + bonus * entropy

    for bonus in (0.0, 0.7):
        grad = policy.gradient(genes, active, weights, bonus)
        for k in np.concatenate([rng.choice(len(grad), 20, replace=False), np.flatnonzero(grad)[::97]]):
            saved = policy.params[k]
            policy.params[k] = saved + 1e-6
            up = objective(bonus)
            policy.params[k] = saved - 1e-6
            down = objective(bonus)
            policy.params[k] = saved
            assert (up - down) / 2e-6 == pytest.approx(grad[k], abs=1e-6), (bonus, k)


def test_the_lstm_policy_passes_the_conformance_suite_and_learns():
    check_strategy(factory("rl", policy="lstm", hidden=16), evaluate, [8] * 6)
    strategy = rl(policy="lstm", hidden=16)
    run(strategy, lambda g: {"accuracy": 0.5 + 0.1 * (g[:, 0] == 2) + 0.01 * g[:, 1]}, [20] * 10)
    assert (strategy.ask(50)[:, 0] == 2).mean() > 0.8  # uniform: 1/3
