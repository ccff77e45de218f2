"""The search's cost evaluator (nas.evaluators.CostEvaluator) against the one-architecture paths."""

import numpy as np
import pytest

from latency_tables.analytic import AnalyticCostModel
from latency_tables.table import TableError, find_table
from nas.evaluators import CostEvaluator
from nas.objectives import feasible, parse_constraints
from search_spaces import get_space


def test_columns_match_the_single_architecture_costs_and_table_predictions():
    space = get_space("small")
    ort, litert = find_table("small", "ort", "fp32"), find_table("small", "litert", "int8")
    evaluator = CostEvaluator(space, [ort, litert])
    genes = space.sample_genes(np.random.default_rng(3), 40)
    columns = evaluator.columns(genes)
    assert set(evaluator.metrics) <= set(columns) and len(columns["macs"]) == 40
    assert np.array_equal(columns["latency_ms"], columns[f"latency_ms@{ort.table_id}"])
    assert not columns["latency_estimated"].any()
    analytic = AnalyticCostModel()
    for i in range(0, 40, 7):
        arch = space.from_genes(genes[i])
        cost = analytic.estimate(arch)
        assert (columns["params"][i], columns["macs"][i], columns["flops"][i]) == (cost.params, cost.macs, cost.flops)
        assert columns["peak_activation_bytes"][i] == cost.peak_activation_bytes
        assert columns["latency_ms"][i] == pytest.approx(ort.predict_arch(arch))
        assert columns[f"latency_ms@{litert.table_id}"][i] == pytest.approx(litert.predict_arch(arch))
    # the columns are what constraints read
    bound = float(np.median(columns["latency_ms"]))
    ok = feasible(columns, parse_constraints([f"latency_ms<={bound}"]))
    assert ok.sum() == (columns["latency_ms"] <= bound).sum() >= 20


def test_a_table_for_another_space_is_refused():
    with pytest.raises(TableError, match="space is 'imagenet', not 'small'"):
        CostEvaluator(get_space("small"), [find_table("imagenet", "ort", "fp32")])


def test_without_tables_there_is_no_latency_column():
    space = get_space("small")
    columns = CostEvaluator(space).columns(space.sample_genes(np.random.default_rng(0), 3))
    assert "latency_ms" not in columns and len(columns["params"]) == 3
