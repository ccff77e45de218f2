"""Adam (Kingma and Ba 2015) on numpy arrays, torch-free: the one optimiser of hwnas's numpy learners (the RL
controller's policy, the accuracy predictor's MLP)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: The moment decays and their complements, written out so the updates are exactly the textbook ones.
_BETA1, _ONE_MINUS_BETA1 = 0.9, 0.1
_BETA2, _ONE_MINUS_BETA2 = 0.999, 0.001
_EPS = 1e-8


class Adam:
    """Adam with the usual 0.9 / 0.999 moments over parameter arrays it updates in place. `step(grads)` moves
    each array against its gradient (minimising a loss); `ascend=True` along it (maximising a reward)."""

    def __init__(self, params: Sequence[np.ndarray], lr: float) -> None:
        self.params, self.lr, self.t = list(params), lr, 0
        self.m = [np.zeros_like(p, dtype=np.float64) for p in self.params]
        self.v = [np.zeros_like(p, dtype=np.float64) for p in self.params]

    def step(self, grads: Sequence[np.ndarray], *, ascend: bool = False) -> None:
        """One update of every parameter array by its gradient (same order as the parameters)."""
        self.t += 1
        first, second = 1 - _BETA1 ** self.t, 1 - _BETA2 ** self.t
        for p, g, m, v in zip(self.params, grads, self.m, self.v, strict=True):
            m *= _BETA1
            m += _ONE_MINUS_BETA1 * g
            v *= _BETA2
            v += _ONE_MINUS_BETA2 * g * g
            update = self.lr * (m / first) / (np.sqrt(v / second) + _EPS)
            if ascend:
                p += update
            else:
                p -= update
