"""The one numpy Adam (RL controller and accuracy predictor) and the one Pareto filter (fronts derive from it)."""

import numpy as np
import pytest

from nas.objectives import pareto_mask
from nas.optim import Adam
from nas.strategies.base import pareto_fronts


def test_adam_steps_are_the_textbook_ones():
    params = [np.array([1.0, -2.0]), np.array([[0.5]])]
    adam = Adam(params, lr=0.1)
    adam.step([np.array([2.0, -4.0]), np.array([[0.0]])])
    # first step: m_hat = g, v_hat = g^2, so each parameter moves lr against the gradient's sign (0 stays put)
    assert params[0] == pytest.approx([0.9, -1.9], abs=1e-9) and params[1][0, 0] == 0.5
    after_first = 1.0 - 0.1 * 2.0 / (2.0 + 1e-8)
    assert params[0][0] == after_first
    adam.step([np.array([1.0, 0.0]), np.array([[0.0]])])
    m = (0.9 * 0.1 * 2.0 + 0.1 * 1.0) / (1 - 0.9 ** 2)
    v = (0.999 * 0.001 * 4.0 + 0.001 * 1.0) / (1 - 0.999 ** 2)
    assert params[0][0] == pytest.approx(after_first - 0.1 * m / (np.sqrt(v) + 1e-8), rel=1e-12)


def test_adam_ascends_when_asked():
    theta = np.zeros(3)
    adam = Adam([theta], lr=0.05)
    adam.step([np.array([1.0, -1.0, 0.0])], ascend=True)
    assert theta == pytest.approx([0.05, -0.05, 0.0], abs=1e-9)


def test_the_fronts_are_the_pareto_mask_applied_in_turn():
    rng = np.random.default_rng(3)
    points = np.round(rng.random((40, 2)), 1)
    points[5] = np.nan
    fronts = pareto_fronts(points)
    assert sorted(np.concatenate(fronts).tolist()) == list(range(40))
    assert fronts[0].tolist() == np.flatnonzero(pareto_mask(np.nan_to_num(points, nan=np.inf))).tolist()
    assert 5 in fronts[-1].tolist()
