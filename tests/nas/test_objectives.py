"""Objectives, constraints, Pareto fronts and hypervolume (nas.objectives)."""

import numpy as np
import pytest

from nas.objectives import (
    Constraint,
    Objective,
    ObjectiveError,
    feasible,
    hypervolume,
    minimised,
    pareto_mask,
    parse_constraints,
    parse_objectives,
)


@pytest.mark.parametrize("text, metric, op, bound", [
    ("latency_ms<=2.5", "latency_ms", "<=", 2.5),
    ("params<=300k", "params", "<=", 300_000),
    (" macs < 1.5M ", "macs", "<", 1_500_000),
    ("flops<2G", "flops", "<", 2e9),
    ("accuracy>=0.97", "accuracy", ">=", 0.97),
    ("peak_activation_bytes>1e3", "peak_activation_bytes", ">", 1000),
])
def test_constraints_parse(text, metric, op, bound):
    c = Constraint.parse(text)
    assert (c.metric, c.op) == (metric, op) and c.bound == pytest.approx(bound)
    assert Constraint.parse(str(c)) == c


@pytest.mark.parametrize("text, said", [
    ("latency<=2", "unknown metric 'latency'; the metrics are accuracy, latency_ms"),
    ("params=>3", "not METRIC OP BOUND"),
    ("params<=abc", "not METRIC OP BOUND"),
    ("params<=3x", "not METRIC OP BOUND"),
    ("params<=1.2.3", "'1.2.3' is not a number"),
])
def test_malformed_constraints_say_what_is_allowed(text, said):
    with pytest.raises(ObjectiveError, match=said.replace("(", r"\(")):
        Constraint.parse(text)


def test_constraints_check_arrays_and_measure_violations():
    values = np.array([1.0, 2.5, 3.0, np.nan])
    latency = Constraint.parse("latency_ms<=2.5")
    assert latency.satisfied(values).tolist() == [True, True, False, False]
    assert Constraint.parse("latency_ms<2.5").satisfied(values).tolist() == [True, False, False, False]
    assert latency.violation(values)[:3].tolist() == pytest.approx([0, 0, 0.2])
    accuracy = Constraint.parse("accuracy>=0.9")
    assert accuracy.violation(np.array([0.95, 0.45])).tolist() == pytest.approx([0, 0.5])
    columns = {"latency_ms": values, "params": np.array([1e5, 4e5, 1e5, 1e5])}
    assert feasible(columns, parse_constraints(["latency_ms<=2.5", "params<=300k"])).tolist() == \
        [True, False, False, False]
    with pytest.raises(ObjectiveError, match="needs 'macs', which was not evaluated"):
        feasible(columns, [Constraint.parse("macs<=1M")])


def test_objectives_take_their_natural_direction_unless_told():
    acc, lat, neg = parse_objectives(["accuracy", "latency_ms", "params:max"])
    assert (acc.direction, lat.direction, neg.direction) == ("max", "min", "max")
    assert acc.sign == -1 and lat.sign == 1
    columns = {"accuracy": np.array([0.9, 0.8]), "latency_ms": np.array([1.0, 2.0]), "params": np.array([3, 4])}
    assert minimised(columns, (acc, lat)).tolist() == [[-0.9, 1.0], [-0.8, 2.0]]
    with pytest.raises(ObjectiveError, match="direction 'up' is not max or min"):
        Objective.parse("accuracy:up")
    with pytest.raises(ObjectiveError, match="name a metric twice"):
        parse_objectives(["accuracy", "accuracy:min"])
    with pytest.raises(ObjectiveError, match="at least one objective"):
        parse_objectives([])


def test_pareto_mask_keeps_the_non_dominated_points():
    points = np.array([[1, 3], [2, 2], [3, 1], [2, 3], [3, 3], [2, 2], [0.5, 5]])
    assert pareto_mask(points).tolist() == [True, True, True, False, False, True, True]


def test_hypervolume_2d_and_3d_exact():
    front = np.array([[1, 3], [2, 2], [3, 1]])
    assert hypervolume(front, [4, 4]) == pytest.approx(3 + 2 + 1)
    # dominated points, duplicates and points beyond the reference add nothing
    extra = np.vstack([front, [[2, 3], [2, 2], [5, 0], [4, 1]]])
    assert hypervolume(extra, [4, 4]) == pytest.approx(6)
    assert hypervolume(np.array([[0, 0, 0]]), [1, 2, 3]) == pytest.approx(6)
    # two boxes [0,2]x[0,1]x[0,1] and [0,1]x[0,2]x[0,1] (ref 2,2,1 with points (0,1,0) and (1,0,0)) overlap in 1
    assert hypervolume(np.array([[0, 1, 0], [1, 0, 0]]), [2, 2, 1]) == pytest.approx(2 + 2 - 1)
    assert hypervolume(np.empty((0, 2)), [1, 1]) == 0.0


def test_hypervolume_agrees_with_monte_carlo_in_three_and_four_objectives():
    rng = np.random.default_rng(0)
    for m in (3, 4):
        points = rng.random((25, m))
        ref = np.full(m, 1.0)
        samples = rng.random((200_000, m))
        covered = np.zeros(len(samples), dtype=bool)
        for p in points:
            covered |= np.all(samples >= p, axis=1)
        assert hypervolume(points, ref) == pytest.approx(covered.mean(), abs=0.005)
