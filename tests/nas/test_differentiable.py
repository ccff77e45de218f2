"""The differentiable search: exact expected table latency, the latency term's pull, seeded runs, architectures in
the space, a small search landing on its latency target, and the Strategy adapter's conformance."""

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from latency_tables.expected import LayoutError, SearchLayout, Selection
from latency_tables.table import find_table
from nas.objectives import parse_constraints, parse_objectives
from nas.strategies.base import StrategyError
from nas.strategies.conformance import check_strategy
from nas.strategies.differentiable import Differentiable, DifferentiableSearch, SearchError, expected_latency, one_hot
from search_spaces import SearchSpace, get_space
from supernets.supernet import Supernet
from tests.supernets.test_training import tiny_digits

SPACE = get_space("small")
TABLE = find_table("small", "ort", "fp32")
RANDOM = SPACE.sample_genes(np.random.default_rng(0), 1000)
MEDIAN_MS = float(np.median(TABLE.predict(SPACE, RANDOM).latency_ms))


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return Supernet(SPACE).eval()


@pytest.fixture(scope="module")
def data():
    return tiny_digits(n_train=160, n_val=32)


def tiny(net, data, **options):
    base = dict(target_ms=MEDIAN_MS, epochs=1, batch_size=16, seed=0)
    return DifferentiableSearch(net, data, TABLE, **{**base, **options})


# ------------------------------------------------------------------------------------------ latency


@pytest.mark.parametrize("table", [TABLE, find_table("small", "litert", "int8")], ids=["ort-fp32", "litert-int8"])
def test_expected_latency_of_a_one_hot_distribution_is_the_table_prediction(table):
    layout = SearchLayout(SPACE, table)
    genes = RANDOM[:150]
    predicted = table.predict(SPACE, genes).latency_ms
    for row, want in zip(genes, predicted, strict=True):
        sel = layout.selection_of(row)
        assert np.array_equal(layout.genes_of(sel), row)
        assert float(expected_latency(layout, one_hot(layout, sel))) == pytest.approx(want, rel=1e-12)
        assert layout.latency_ms(sel) == pytest.approx(want, rel=1e-12)


def test_a_skipped_slot_between_blocks_compacts_and_costs_nothing():
    layout = SearchLayout(SPACE, TABLE)
    sel = layout.selection_of(SPACE.to_genes(SPACE.extreme(True)))
    skip = layout.skip(2)
    holed = replace(sel, ops=sel.ops[:2] + ((sel.ops[2][0], skip, sel.ops[2][2]),) + sel.ops[3:])
    arch = layout.arch_of(holed)
    assert arch.depths == (2, 3, 2, 3)
    want = TABLE.predict(SPACE, SPACE.to_genes(arch)[None]).latency_ms[0]
    assert layout.latency_ms(holed) == pytest.approx(want) == float(expected_latency(layout, one_hot(layout, holed)))


def test_the_expected_latency_of_a_mixture_is_the_mean_over_its_architectures():
    """Two resolutions and two first-stage widths at 50/50: the expectation is the mean of the four networks."""
    layout = SearchLayout(SPACE, TABLE)
    base = layout.selection_of(RANDOM[0])
    probs = one_hot(layout, base)
    probs["resolution"] = torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64)
    probs["s0.width"] = torch.tensor([0.5, 0.5], dtype=torch.float64)
    corners = [replace(base, resolution=r, widths=(w,) + base.widths[1:]) for r in (0, 1) for w in (0, 1)]
    assert float(expected_latency(layout, probs)) == pytest.approx(np.mean([layout.latency_ms(s) for s in corners]))


def test_the_latency_term_moves_theta_toward_faster_candidates(net, data):
    for target, sign in ((MEDIAN_MS / 3, 1), (MEDIAN_MS * 3, -1)):  # above the target: faster; below: slower
        for form in ("fbnet", "proxyless"):
            search = tiny(net, data, form=form, target_ms=target)
            expected = expected_latency(search.layout, search._probs(1.0))
            assert sign * (float(expected.detach()) - target) > 0
            search._latency_loss(torch.tensor(0.5), expected).backward()
            grad = search.theta["s2.ops"].grad[1, 0].numpy()  # stage 2, second slot, first family
            latency = search.layout.rest_ms[2][0, 0, 0]  # (resolution 0, width 0, family 0): per candidate
            # gradient descent lowers the logit of the slowest candidate most and raises skip's (above the target)
            slowest, skip = int(np.argmax(latency)), search.layout.skip(2)
            assert np.sign(grad[slowest]) == sign and np.sign(grad[skip]) == -sign, grad
            with torch.no_grad():
                for theta in search.theta.values():
                    if theta.grad is not None:
                        theta -= 0.5 * theta.grad.sign()
            assert abs(search.expected_ms() - target) < abs(float(expected.detach()) - target)


# ------------------------------------------------------------------------------------------ the search


def test_seeded_searches_repeat_and_the_seed_matters(net, data):
    first, second, other = (tiny(net, data, seed=s).run() for s in (3, 3, 4))
    assert first.theta == second.theta and np.array_equal(first.genes, second.genes)
    assert first.expected_trace == second.expected_trace
    assert first.theta != other.theta


def test_the_search_leaves_the_callers_supernet_alone(net, data):
    before = {k: v.clone() for k, v in net.state_dict().items()}
    tiny(net, data, lr_weights=0.1).run()
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


@pytest.mark.parametrize("form", ["fbnet", "proxyless"])
def test_a_small_search_lands_within_10_percent_of_its_target_by_the_table(net, data, form):
    search = tiny(net, data, form=form, epochs=5, batch_size=8, lr_theta=0.1, train_weights=False)  # 80 steps
    result = search.run()
    SPACE.validate(result.arch)
    assert np.array_equal(SPACE.to_genes(result.arch), result.genes)
    assert result.predicted_ms == pytest.approx(TABLE.predict(SPACE, result.genes[None]).latency_ms[0])
    assert abs(result.error) <= 0.10, (result.predicted_ms, MEDIAN_MS, result.adjusted)
    assert abs(result.argmax_predicted_ms / MEDIAN_MS - 1) <= 0.10 and not result.adjusted, "the argmax lands itself"
    assert len(result.history) == 5 and len(result.expected_trace) == 5 * 16


def test_top_gives_distinct_valid_architectures_most_probable_first(net, data):
    search = tiny(net, data)
    result = search.run()
    top = search.top(40)
    assert len(top) == 40 and len({g.tobytes() for g, _ in top}) == 40
    scores = [s for _, s in top]
    assert scores == sorted(scores, reverse=True)
    for genes, _ in top:
        SPACE.validate(SPACE.from_genes(genes))
    # as the temperature goes to 0 the most probable architecture is the argmax of every choice
    assert np.array_equal(search.top(1, tau=1e-4)[0][0], SPACE.to_genes(result.argmax_arch))
    assert np.array_equal(SPACE.to_genes(result.argmax_arch), search.layout.genes_of(search.argmax()))


def test_a_fixed_frame_is_kept(net, data):
    result = tiny(net, data, resolution=24, widths="largest").run()
    assert result.arch.resolution == 24
    assert [stage[0].out_channels for stage in result.arch.stages] == [max(st.widths) for st in SPACE.stages]
    probs = tiny(net, data, resolution="largest", widths=[None, 24, None, None]).probabilities()
    assert probs["resolution"].tolist() == [0, 0, 1] and probs["s1.width"].tolist() == [1, 0]


def test_the_result_is_saved_as_json(net, data, tmp_path):
    result = tiny(net, data).run()
    result.save(tmp_path / "result.json")
    stored = json.loads((tmp_path / "result.json").read_text())
    assert stored["arch"] == result.arch.to_str() and stored["target_ms"] == MEDIAN_MS
    assert stored["theta"]["s0.ops"] == result.theta["s0.ops"]


def test_bad_options_are_refused_with_what_is_allowed(net, data):
    with pytest.raises(SearchError, match="unknown loss form 'darts'; allowed: fbnet, proxyless"):
        tiny(net, data, form="darts")
    with pytest.raises(SearchError, match="target_ms must be a positive number"):
        tiny(net, data, target_ms=0.0)
    with pytest.raises(LayoutError, match=r"resolution 40 is outside the space; allowed: 24, 28, 32"):
        tiny(net, data, resolution=40)
    with pytest.raises(LayoutError, match="widths gives 2 value"):
        tiny(net, data, widths=[16, 24])
    st = SPACE.stages
    gappy = SearchSpace("gappy", SPACE.resolutions, 1, 10, SPACE.stem,
                        (replace(st[0], depths=(1, 3)), *st[1:]), SPACE.head)
    with pytest.raises(LayoutError, match=r"stage 0 allows depths \(1, 3\); the differentiable search needs every"):
        SearchLayout(gappy, TABLE)


# ------------------------------------------------------------------------------------------ the strategy


def strategy_factory(net, data, **options):
    constraints = parse_constraints([f"latency_ms<={MEDIAN_MS * 1.2:.4f}"])
    limit = constraints[0]

    def screen(genes):
        return limit.satisfied(TABLE.predict(SPACE, genes).latency_ms)

    base = dict(supernet=net, data=data, table=TABLE, target_ms=MEDIAN_MS, epochs=1, batch_size=16, screen=screen)
    return lambda seed: Differentiable(SPACE, parse_objectives(["accuracy"]), constraints, seed=seed,
                                       **{**base, **options})


def evaluate(genes):
    return {"accuracy": np.full(len(genes), 0.9), "latency_ms": TABLE.predict(SPACE, genes).latency_ms}


def test_the_strategy_passes_the_conformance_suite(net):
    check_strategy(strategy_factory(net, tiny_digits(n_train=40, n_val=8)), evaluate, [4, 4, 4])


def test_the_strategy_asks_for_the_derived_architecture_first(net, data):
    strategy = strategy_factory(net, data, screen=None)(0)
    first = strategy.ask(3)
    assert strategy.result is not None and np.array_equal(first[0], strategy.result.genes)
    strategy.tell(first, evaluate(first))
    later = strategy.ask(5)
    assert not {r.tobytes() for r in later} & {r.tobytes() for r in first}
    assert strategy.describe()["derived"] == strategy.result.arch.to_str()


def test_the_strategy_needs_a_supernet_a_table_and_a_target(net, data):
    objectives = parse_objectives(["accuracy"])
    with pytest.raises(StrategyError, match="needs a trained supernet"):
        Differentiable(SPACE, objectives, table=TABLE, target_ms=0.2)
    with pytest.raises(StrategyError, match="needs the latency table"):
        Differentiable(SPACE, objectives, supernet=net, target_ms=0.2)
    with pytest.raises(StrategyError, match="needs a latency target"):
        Differentiable(SPACE, objectives, parse_constraints(["params<=300k"]), supernet=net, table=TABLE)
    strategy = Differentiable(SPACE, objectives, parse_constraints(["latency_ms<=0.3", "latency_ms<0.25"]),
                              supernet=net, table=TABLE)
    assert strategy.target_ms == 0.25
    with pytest.raises(StrategyError, match="needs data="):
        strategy.ask(1)
    with pytest.raises(StrategyError, match="differentiable: unknown option.*bogus; the options of differentiable "
                                            r"are target_ms \(float \| None, default None\), form \(str"):
        Differentiable(SPACE, objectives, supernet=net, data=data, table=TABLE, target_ms=0.2, bogus=1)


def test_importing_the_module_does_not_import_torch():
    code = "import sys, nas.strategies.differentiable; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def test_selection_is_a_plain_value():
    sel = Selection(0, (0,), (0,), ((1, 2),))
    assert sel == Selection(0, (0,), (0,), ((1, 2),)) and hash(sel) == hash(Selection(0, (0,), (0,), ((1, 2),)))
