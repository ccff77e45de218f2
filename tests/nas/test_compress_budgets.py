"""Pruning to any budget metric (latency, size, MACs, BitOPs), the pruning path that allocation walks, simulated
bit-widths in allocation and their refusal at export."""

from __future__ import annotations

import numpy as np
import pytest

from latency_tables.analytic import AnalyticCostModel
from latency_tables.table import find_table
from nas.compress.allocate import (
    PRUNE_METRICS,
    AllocationError,
    allocate_budget,
    allocate_latency,
    prune_cost,
    prune_path,
    width_options,
)
from nas.compress.bits import layer_costs
from nas.export.runtime_models import runtimes_for
from nas.export.spec import Provenance, SubnetSpec
from search_spaces import ArchConfig, get_space
from search_spaces.errors import HwnasError
from search_spaces.plans import BitWidthPlan, PrunePlan, channel_groups

#: stem -> MBConv without a residual -> head (weights and MACs counted by hand below).
TINY = "r28_i1_n10|stem_c16_k3_s2_relu|mbv2_k3_e2_c24_s1|head_c64_relu"


@pytest.fixture(scope="module")
def table():
    return find_table("small", "ort", "fp32")


@pytest.fixture(scope="module")
def arch():
    return get_space("small").sample(np.random.default_rng(0))


def random_scores(arch, seed=0):
    """Seeded importance scores for every prunable group (ties impossible)."""
    rng = np.random.default_rng(seed)
    return {g: rng.random(w) for g, w in channel_groups(arch).items()}


def test_costs_of_a_hand_counted_subnet():
    tiny = ArchConfig.from_str(TINY)
    # weights with the BN folded into a bias: stem 9*16+16, expand 16*32+32, dw 9*32+32, project 32*24+24,
    # head 24*64+64, classifier 64*10+10
    weights = 160 + 544 + 320 + 792 + 1600 + 650
    # MACs: stem 14*14*9*16, expand 14*14*16*32, dw 14*14*9*32, project 14*14*32*24, head 14*14*24*64, fc 64*10
    macs = 28224 + 100352 + 56448 + 150528 + 301056 + 640
    assert prune_cost(tiny, "size_bytes") == 4 * weights == layer_costs(tiny, ("fp32",), "size_bytes").sum()
    assert prune_cost(tiny, "macs") == macs == AnalyticCostModel("fp32").estimate(tiny).macs
    assert prune_cost(tiny, "bitops") == 32 * 32 * macs == layer_costs(tiny, ("fp32",), "bitops").sum()


@pytest.mark.parametrize("metric", PRUNE_METRICS)
def test_every_metric_meets_its_budget_and_says_what_it_cost(arch, table, metric):
    scores = random_scores(arch)
    parent = prune_cost(arch, metric, table)
    result = allocate_budget(arch, scores, metric, 0.6 * parent, table=table)
    assert result.metric == metric and result.budget == 0.6 * parent
    assert result.cost == prune_cost(result.arch, metric, table) <= 0.6 * parent
    assert result.parent_cost == parent and result.arch == result.plan.apply_to(arch) and result.steps > 0
    assert result.latency_ms == table.predict_arch(result.arch, estimate_missing=True)
    assert result.parent_latency_ms == table.predict_arch(arch) and result.table_id == table.table_id
    assert result.budget_ms == (0.6 * parent if metric == "latency_ms" else None)
    for group, kept in result.plan.keep.items():
        assert len(kept) == result.widths[group] and len(kept) % 8 == 0 and len(kept) >= 8
        assert list(kept) == sorted(np.argsort(-scores[group])[:len(kept)].tolist())  # the highest-scored
    summary = result.to_dict()
    assert (summary["metric"], summary["cost"], summary["budget"]) == (metric, result.cost, 0.6 * parent)


@pytest.mark.parametrize("metric", ("size_bytes", "macs", "bitops"))
def test_budgets_without_a_table_leave_the_latency_fields_empty(arch, metric):
    result = allocate_budget(arch, random_scores(arch), metric, 0.5 * prune_cost(arch, metric))
    assert result.cost <= 0.5 * prune_cost(arch, metric)
    assert (result.latency_ms, result.parent_latency_ms, result.budget_ms, result.table_id) == (None,) * 4
    assert result.estimated_keys == () and not result.estimated and result.to_dict()["table"] is None


def test_bitops_and_macs_walk_the_same_path(arch):
    """fp32 BitOPs are MACs x 1024: the same walk, every cost scaled."""
    scores = random_scores(arch, seed=3)
    macs, bitops = prune_path(arch, scores, "macs", 1.0), prune_path(arch, scores, "bitops", 1.0)
    assert [p.widths for p in macs] == [p.widths for p in bitops]
    assert [1024 * p.cost for p in macs] == [p.cost for p in bitops]


def test_allocate_latency_is_the_latency_budget(arch, table):
    scores = random_scores(arch, seed=1)
    budget = 0.7 * table.predict_arch(arch)
    assert allocate_latency(arch, scores, table, budget) == allocate_budget(arch, scores, "latency_ms", budget,
                                                                            table=table)


@pytest.mark.parametrize("metric", ("latency_ms", "size_bytes"))
def test_the_path_runs_from_the_parent_one_width_step_at_a_time_to_the_floor(arch, table, metric):
    scores = random_scores(arch, seed=2)
    path = prune_path(arch, scores, metric, 1e-12, table=table)  # unreachable: the whole walk
    sizes = channel_groups(arch)
    options = {g: width_options(w, 8, 8) for g, w in sizes.items()}
    assert path[0].step == 0 and dict(path[0].widths) == sizes and path[0].plan == PrunePlan(arch.key)
    assert path[0].arch == arch and path[0].cost == prune_cost(arch, metric, table)
    assert [p.step for p in path] == list(range(len(path)))
    assert len(path) - 1 == sum(len(o) - 1 for o in options.values())
    for before, after in zip(path, path[1:], strict=False):
        changed = [g for g in sizes if before.widths[g] != after.widths[g]]
        assert len(changed) == 1
        (group,) = changed
        assert options[group].index(after.widths[group]) == options[group].index(before.widths[group]) + 1
        assert after.arch == after.plan.apply_to(arch) and after.cost == prune_cost(after.arch, metric, table)
    assert dict(path[-1].widths) == {g: o[-1] for g, o in options.items()}  # the floor
    if metric == "size_bytes":  # fewer weights at every step
        assert all(b.cost < a.cost for a, b in zip(path, path[1:], strict=False))
    short = prune_path(arch, scores, metric, path[3].cost, table=table)
    assert short == path[:len(short)] and short[-1].cost <= path[3].cost
    assert all(p.cost > path[3].cost for p in short[:-1])


@pytest.mark.parametrize("metric", PRUNE_METRICS)
def test_an_allocation_is_the_first_path_point_within_its_budget(arch, table, metric):
    scores = random_scores(arch, seed=4)
    path = prune_path(arch, scores, metric, 1e-12, table=table)
    costs = np.array([p.cost for p in path])
    rng = np.random.default_rng(5)
    budgets = [path[0].cost * 1.5, path[7].cost, *rng.uniform(path[len(path) // 2].cost, path[0].cost, size=2)]
    for budget in budgets:
        first = path[int(np.flatnonzero(costs <= budget)[0])]
        found = allocate_budget(arch, scores, metric, float(budget), table=table)
        assert (found.plan, found.arch, found.cost, found.steps) == (first.plan, first.arch, first.cost, first.step)
        assert dict(found.widths) == dict(first.widths)


def test_bad_budgets_are_refused_naming_what_is_allowed(arch, table):
    scores = random_scores(arch)
    floor = prune_cost(PrunePlan(arch.key, {g: range(8) for g, w in channel_groups(arch).items() if w > 8})
                       .apply_to(arch), "size_bytes")
    with pytest.raises(AllocationError, match=rf"size_bytes budget .* cannot be met: the smallest size_bytes "
                                              rf"reachable with round_to=8, min_channels=8 .* is {floor:.6g} bytes"):
        allocate_budget(arch, scores, "size_bytes", 0.99 * floor)
    assert allocate_budget(arch, scores, "size_bytes", floor).cost == floor
    with pytest.raises(AllocationError, match="latency_ms budget needs a latency table"):
        allocate_budget(arch, scores, "latency_ms", 1.0)
    with pytest.raises(AllocationError, match="latency_ms budget needs a latency table"):
        prune_path(arch, scores, "latency_ms", 1.0)
    with pytest.raises(AllocationError, match="unknown pruning metric 'flops'; allowed: latency_ms, size_bytes, "
                                              "macs, bitops"):
        allocate_budget(arch, scores, "flops", 1.0)
    with pytest.raises(AllocationError, match=r"macs budget must be a finite number of MACs > 0; got inf"):
        allocate_budget(arch, scores, "macs", float("inf"))
    with pytest.raises(AllocationError, match=r"bitops path end must be a finite number of BitOPs > 0; got -1"):
        prune_path(arch, scores, "bitops", -1)
    with pytest.raises(AllocationError, match="min_channels must be a whole number >= 1"):
        prune_path(arch, scores, "macs", 1.0, min_channels=0)


# ------------------------------------------------------------------------------ simulated bit-widths


def test_analytic_costs_refuse_simulated_precisions_naming_the_layer():
    tiny = ArchConfig.from_str(TINY)
    assert AnalyticCostModel("fp32").estimate(tiny, {"s0.b0.dw": "int8"}).precision["s0.b0.dw"] == "int8"
    with pytest.raises(HwnasError, match=r"s0.b0.dw is at simulated precision 'w4a8', which no runtime runs: "
                                         r"analytic costs price fp32, fp16 and int8 only"):
        AnalyticCostModel("fp32").estimate(tiny, {"stem": "int8", "s0.b0.dw": "w4a8"})
    with pytest.raises(HwnasError, match=r"the network is at simulated precision 'w2a8'"):
        AnalyticCostModel("w2a8")


def spec_with(arch, plan):
    return SubnetSpec(arch, "small", 0.5, 0.25, Provenance(None, "digits", 0, 0), bitwidth_plan=plan)


def test_export_refuses_a_plan_with_a_simulated_layer_naming_it():
    tiny = ArchConfig.from_str(TINY)
    plan = BitWidthPlan({"s0.b0.expand": "w4a8", "stem": "int8"})
    assert plan.simulated == {"s0.b0.expand"}
    for runtimes in ([("ort", "mixed")], [("litert", "mixed")], [("ort", "int8")]):
        with pytest.raises(HwnasError, match=r"simulates layer s0.b0.expand's precision, which (ort|litert) does not "
                                             r"run natively"):
            runtimes_for(spec_with(tiny, plan), runtimes)
    with pytest.raises(HwnasError, match=r"simulates layer s0.b0.expand's precision \(w4a8\), which no runtime runs "
                                         r"natively"):
        runtimes_for(spec_with(tiny, plan), None)  # the default runtimes: the simulated layer is named first
    assert runtimes_for(spec_with(tiny, BitWidthPlan({"stem": "int8"})), [("ort", "mixed")]) == (("ort", "mixed"),)
