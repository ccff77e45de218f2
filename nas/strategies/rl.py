"""Reinforcement-learning search (`rl`): a REINFORCE controller (Williams 1992) over the space's genes, rewarded
as MnasNet is (Tan et al. 2019): ACC * (LAT / T) ** w. A factorized policy (one softmax per gene) or an LSTM
controller; a moving-average baseline and spread; SGD or Adam. numpy only, no torch. The method, the reward's
cases and the handling of draws the screen turns down are in docs/strategies.md."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any

import numpy as np

from nas.objectives import METRICS, Constraint, Objective
from nas.optim import Adam
from nas.strategies.base import Columns, Strategy, StrategyError
from search_spaces import SearchSpace

#: MnasNet's two settings of (alpha, beta).
REWARDS: dict[str, tuple[float, float]] = {"soft": (-0.07, -0.07), "hard": (0.0, -1.0)}
POLICIES = ("factorized", "lstm")
OPTIMIZERS = ("adam", "sgd")
#: Rows drawn per round of proposals at least: a concentrated policy draws mostly rows told before or turned
#: down by the screen, and the base class's bounded retries would otherwise ask for them one at a time.
MIN_DRAWS = 64
#: The step size of each optimizer when `lr` is not given: the best of those tried on the stand-in search of
#: tests/nas/test_rl.py (sgd 0.5-2, adam 0.05-0.1; the step is in units of the normalised advantage).
DEFAULT_LR = {"sgd": 1.0, "adam": 0.05}


def mnasnet_reward(accuracy: np.ndarray | float, latency: np.ndarray | float, target: float, alpha: float,
                   beta: float) -> np.ndarray:
    """ACC * (LAT / T) ** w, w = alpha where LAT <= T else beta (NaN where either input is NaN)."""
    acc = np.asarray(accuracy, dtype=np.float64)
    ratio = np.asarray(latency, dtype=np.float64) / target
    with np.errstate(invalid="ignore", divide="ignore"):
        return acc * ratio ** np.where(ratio <= 1.0, alpha, beta)


class FactorizedPolicy:
    """Independent softmaxes, one per gene, over a flat vector of logits (all zero: uniform)."""

    def __init__(self, gene_sizes: np.ndarray) -> None:
        self.sizes = np.asarray(gene_sizes, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])
        self.params = np.zeros(int(self.sizes.sum()))

    def probabilities(self) -> list[np.ndarray]:
        out = []
        for start, size in zip(self.offsets, self.sizes, strict=True):
            z = self.params[start:start + size]
            e = np.exp(z - z.max())
            out.append(e / e.sum())
        return out

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """n rows (n, G), each gene drawn from its softmax (one uniform number per gene and row)."""
        u = rng.random((n, len(self.sizes)))
        rows = np.empty((n, len(self.sizes)), dtype=np.int64)
        for g, p in enumerate(self.probabilities()):
            rows[:, g] = np.minimum(np.searchsorted(np.cumsum(p), u[:, g], side="right"), len(p) - 1)
        return rows

    def gradient(self, genes: np.ndarray, active: np.ndarray, weights: np.ndarray, entropy: float) -> np.ndarray:
        """d/dparams of sum_i weights_i * log pi(genes_i), over each row's active genes only, + entropy * H(pi)
        (H: the summed entropy of the gene softmaxes)."""
        grad = np.zeros_like(self.params)
        for g, p in enumerate(self.probabilities()):
            w = weights * active[:, g]
            part = np.bincount(genes[:, g], weights=w, minlength=len(p)) - w.sum() * p
            if entropy:  # dH/dz_k = -p_k (log p_k + H)
                logp = np.log(np.maximum(p, 1e-300))
                part -= entropy * p * (logp - (p * logp).sum())
            grad[self.offsets[g]:self.offsets[g] + len(p)] = part
        return grad

    def entropy(self) -> float:
        """Summed entropy of the gene softmaxes (nats)."""
        return float(sum(-(p * np.log(np.maximum(p, 1e-300))).sum() for p in self.probabilities()))


class LSTMPolicy:
    """An LSTM controller (Zoph and Le 2017, as in MnasNet): one step per gene in the space's order; the input at
    step t embeds the choice made at step t - 1 (a learned start vector at step 0), the output is a softmax over
    gene t's choices. A gene the row does not use (known from the genes before it: a stage's family and depth come
    before its blocks) is not drawn but set to 0 and fed on as such, so draws are canonical and a row's probability
    is the product over its active genes, as in the factorized policy."""

    def __init__(self, space: SearchSpace, hidden: int, rng: np.random.Generator) -> None:
        self.space, self.hidden = space, hidden
        sizes = [int(k) for k in space.gene_sizes]
        shapes: dict[str, tuple[int, ...]] = {"start": (hidden,), "W": (4 * hidden, 2 * hidden), "b": (4 * hidden,)}
        for t, k in enumerate(sizes):
            shapes |= {f"out{t}": (hidden, k), f"bias{t}": (k,)}
            if t:
                shapes[f"embed{t}"] = (sizes[t - 1], hidden)
        self.params = np.zeros(sum(int(np.prod(shape)) for shape in shapes.values()))
        self._slices: dict[str, tuple[slice, tuple[int, ...]]] = {}
        at = 0
        for name, shape in shapes.items():
            self._slices[name] = (slice(at, at + int(np.prod(shape))), shape)
            at += int(np.prod(shape))
        self.p = self.views(self.params)
        for name, view in self.p.items():
            if not name.startswith("bias") and name != "b":
                view[...] = rng.uniform(-0.1, 0.1, view.shape)
        self._entropy = float(np.log(space.gene_sizes).sum())  # of the last batch learned from (uniform at first)

    def _cell(self, x: np.ndarray, h: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, ...]:
        z = np.concatenate([x, h], axis=1) @ self.p["W"].T + self.p["b"]
        n = self.hidden
        i, f, o = (1 / (1 + np.exp(-z[:, k * n:(k + 1) * n])) for k in range(3))
        g = np.tanh(z[:, 3 * n:])
        c_new = f * c + i * g
        return o * np.tanh(c_new), c_new, i, f, o, g

    def _run(self, n: int, choose: Callable[[int, np.ndarray, np.ndarray], np.ndarray]
             ) -> tuple[np.ndarray, list[tuple[np.ndarray, ...]]]:
        """Step through the genes for n rows; `choose(t, probabilities, rows)` gives gene t's values."""
        rows = np.zeros((n, len(self.space.genes)), dtype=np.int64)
        h, c = np.zeros((n, self.hidden)), np.zeros((n, self.hidden))
        x = np.tile(self.p["start"], (n, 1))
        caches: list[tuple[np.ndarray, ...]] = []
        for t in range(len(self.space.genes)):
            h_prev, c_prev = h, c
            h, c, i, f, o, g = self._cell(x, h_prev, c_prev)
            logits = h @ self.p[f"out{t}"] + self.p[f"bias{t}"]
            e = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs = e / e.sum(axis=1, keepdims=True)
            rows[:, t] = choose(t, probs, rows)
            caches.append((x, h_prev, c_prev, h, c, i, f, o, g, probs))
            if t + 1 < len(self.space.genes):
                x = self.p[f"embed{t + 1}"][rows[:, t]]
        return rows, caches

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        u = rng.random((n, len(self.space.genes)))

        def draw(t: int, probs: np.ndarray, rows: np.ndarray) -> np.ndarray:
            picked = np.minimum((u[:, t, None] > np.cumsum(probs, axis=1)).sum(axis=1), probs.shape[1] - 1)
            return np.where(self.space.active_mask(rows)[:, t], picked, 0)

        return self._run(n, draw)[0]

    def log_prob(self, genes: np.ndarray) -> np.ndarray:
        """log pi of each canonical row (over its active genes)."""
        _, caches = self._run(len(genes), lambda t, probs, rows: genes[:, t])
        active = self.space.active_mask(genes)
        picked = np.stack([cache[-1][np.arange(len(genes)), genes[:, t]] for t, cache in enumerate(caches)], axis=1)
        return np.where(active, np.log(picked), 0.0).sum(axis=1)

    def gradient(self, genes: np.ndarray, active: np.ndarray, weights: np.ndarray, entropy: float) -> np.ndarray:
        """d/dparams of sum_i weights_i * log pi(genes_i) + entropy * (mean over the rows of the summed entropy of
        their active steps' softmaxes), by backpropagation through the steps."""
        n, hid = len(genes), self.hidden
        _, caches = self._run(n, lambda t, probs, rows: genes[:, t])
        grad = np.zeros_like(self.params)
        d = self.views(grad)
        dh_next, dc_next, total_entropy = np.zeros((n, hid)), np.zeros((n, hid)), 0.0
        for t in reversed(range(len(caches))):
            x, h_prev, c_prev, h, c, i, f, o, g, probs = caches[t]
            live = active[:, t].astype(np.float64)
            dlogits = (weights * live)[:, None] * (np.eye(probs.shape[1])[genes[:, t]] - probs)
            logp = np.log(np.maximum(probs, 1e-300))
            step_entropy = -(probs * logp).sum(axis=1)
            total_entropy += float((live * step_entropy).sum()) / n
            if entropy:  # dH/dz_k = -p_k (log p_k + H)
                dlogits -= (entropy * live / n)[:, None] * probs * (logp + step_entropy[:, None])
            d[f"out{t}"] += h.T @ dlogits
            d[f"bias{t}"] += dlogits.sum(axis=0)
            dh = dlogits @ self.p[f"out{t}"].T + dh_next
            tanh_c = np.tanh(c)
            dc = dh * o * (1 - tanh_c ** 2) + dc_next
            dz = np.concatenate([dc * g * i * (1 - i), dc * c_prev * f * (1 - f), dh * tanh_c * o * (1 - o),
                                 dc * i * (1 - g ** 2)], axis=1)
            d["W"] += dz.T @ np.concatenate([x, h_prev], axis=1)
            d["b"] += dz.sum(axis=0)
            dxh = dz @ self.p["W"]
            dh_next, dc_next = dxh[:, hid:], dc * f
            if t:
                np.add.at(d[f"embed{t}"], genes[:, t - 1], dxh[:, :hid])
            else:
                d["start"] += dxh[:, :hid].sum(axis=0)
        self._entropy = total_entropy
        return grad

    def views(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """Each named weight as a view into a flat vector laid out as `params`."""
        return {name: flat[where].reshape(shape) for name, (where, shape) in self._slices.items()}

    def entropy(self) -> float:
        """Mean summed entropy of the active steps over the rows last learned from (nats)."""
        return self._entropy


@dataclass(frozen=True)
class ReinforceConfig:
    """The controller's settings (`rl` options); see docs/strategies.md.

    Args:
        lr: step size of the logits (default: 1.0 for sgd, 0.05 for adam).
        baseline_decay: d of the moving-average baseline and spread, in [0, 1).
        entropy: weight of the policy's entropy in the objective (0: none).
        reward: `hard` or `soft` (MnasNet's alpha, beta); `alpha` / `beta` override either.
        target: T of the reward (default: the bound of the first cost constraint, else the median told).
        turned_down_weight: how much a draw the screen turns down counts, relative to a told row standing for as
            many draws, learned from with the lowest reward (0: learn from told rows only).
        optimizer: `sgd` or `adam`.
        policy: `factorized` (one softmax per gene) or `lstm` (an LSTM controller).
        hidden: the LSTM's hidden size.
    """

    lr: float | None = None
    baseline_decay: float = 0.9
    entropy: float = 0.0
    reward: str = "hard"
    alpha: float | None = None
    beta: float | None = None
    target: float | None = None
    turned_down_weight: float = 0.3
    optimizer: str = "sgd"
    policy: str = "factorized"
    hidden: int = 32

    def __post_init__(self) -> None:
        def bad(option: str, allowed: str) -> StrategyError:
            return StrategyError(f"rl: {option} = {getattr(self, option)!r} is not allowed; {option} must be {allowed}")

        def number(value: Any, low: float = -np.inf) -> bool:
            return isinstance(value, Real) and not isinstance(value, bool) and low < float(value) < np.inf

        checks = [("lr", self.lr is None or number(self.lr, 0), "a number > 0 (or unset: 1.0 for sgd, 0.05 for adam)"),
                  ("baseline_decay", number(self.baseline_decay) and 0 <= self.baseline_decay < 1, "in [0, 1)"),
                  ("entropy", number(self.entropy) and self.entropy >= 0, "a number >= 0"),
                  ("reward", self.reward in REWARDS, f"one of {', '.join(REWARDS)}"),
                  ("alpha", self.alpha is None or number(self.alpha), "a finite number (or unset: the reward's)"),
                  ("beta", self.beta is None or number(self.beta), "a finite number (or unset: the reward's)"),
                  ("target", self.target is None or number(self.target, 0),
                   "a number > 0 (or unset: a cost constraint's bound, else the median told)"),
                  ("turned_down_weight", number(self.turned_down_weight) and 0 <= self.turned_down_weight <= 1,
                   "in [0, 1]"),
                  ("optimizer", self.optimizer in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"),
                  ("policy", self.policy in POLICIES, f"one of {', '.join(POLICIES)}"),
                  ("hidden", isinstance(self.hidden, int) and not isinstance(self.hidden, bool) and self.hidden >= 1,
                   "a whole number >= 1")]
        for option, ok, allowed in checks:
            if not ok:
                raise bad(option, allowed)

    @property
    def step_size(self) -> float:
        return float(DEFAULT_LR[self.optimizer] if self.lr is None else self.lr)

    @property
    def weights(self) -> tuple[float, float]:
        """(alpha, beta) of the reward."""
        alpha, beta = REWARDS[self.reward]
        return (float(alpha if self.alpha is None else self.alpha), float(beta if self.beta is None else self.beta))


class ReinforceSearch(Strategy):
    """REINFORCE over the space's genes with the MnasNet reward. Options: the fields of `ReinforceConfig`, as
    keywords or as `config=`."""

    name = "rl"
    config_class = ReinforceConfig
    config: ReinforceConfig

    def __init__(self, space: SearchSpace, objectives: Sequence[Objective], constraints: Sequence[Constraint] = (),
                 **kwargs: Any) -> None:
        super().__init__(space, objectives, constraints, **kwargs)
        self.alpha, self.beta = self.config.weights
        self._resolve_reward()
        self.policy: FactorizedPolicy | LSTMPolicy = (
            LSTMPolicy(space, self.config.hidden, self.rng) if self.config.policy == "lstm"
            else FactorizedPolicy(space.gene_sizes))
        self._adam = Adam([self.policy.params], self.config.step_size) if self.config.optimizer == "adam" else None
        self.baseline: float | None = None  # moving average of the reward
        self.spread: float | None = None  # moving average of (reward - baseline) ** 2
        self._drawn = 0  # rows drawn since the last tell
        self._turned_down: list[np.ndarray] = []  # ... and those of them the screen turned down

    def _resolve_reward(self) -> None:
        """Which metric is ACC, which is LAT and where T comes from; see docs/strategies.md."""
        maximised = [o for o in self.objectives if o.direction == "max"]
        if not maximised and len(self.objectives) > 1:
            raise StrategyError(f"{self.name}: the MnasNet reward needs an objective to maximise (e.g. accuracy); "
                                f"got {', '.join(map(str, self.objectives))}")
        self.quality = maximised[0] if maximised else self.objectives[0]
        cost_limits = [c for c in self.constraints if c.op in ("<=", "<") and METRICS[c.metric] == "min"]
        cost_objectives = [i for i, o in enumerate(self.objectives)
                           if o.direction == "min" and METRICS[o.metric] == "min" and o is not self.quality]
        self.latency: str | None = None
        self._latency_limit: Constraint | None = None
        self._median_of: int | None = None  # index of the objective whose told median is T
        if maximised and cost_limits:
            self._latency_limit = cost_limits[0]
            self.latency = cost_limits[0].metric
        elif maximised and cost_objectives:
            self._median_of = cost_objectives[0]
            self.latency = self.objectives[cost_objectives[0]].metric
        if self.config.target is not None and self.latency is None:
            raise StrategyError(f"{self.name}: target = {self.config.target:g} needs a cost to compare with it: a <= "
                                f"or < constraint on a cost metric, or a cost objective beside an objective maximised")
        self._unpriced = [c for c in self.constraints if c is not self._latency_limit]

    def _target_now(self) -> float:
        if self.config.target is not None:
            return float(self.config.target)
        if self._latency_limit is not None:
            return self._latency_limit.bound
        assert self._median_of is not None
        told = self.scores[:, self._median_of]  # a minimised objective: its score is its value
        told = told[np.isfinite(told)]
        return float(np.median(told)) if told.size else float("nan")

    def rewards(self, columns: Columns) -> np.ndarray:
        """The reward of each row of an evaluated batch (NaN where it cannot be formed)."""
        quality = self.quality.sign * -np.asarray(columns[self.quality.metric], dtype=np.float64)
        if self.latency is None:
            return quality
        target = self._target_now()
        if not (np.isfinite(target) and target > 0):
            return np.full(len(quality), np.nan)
        return mnasnet_reward(quality, columns[self.latency], target, self.alpha, self.beta)

    # --------------------------------------------------------------------------------- the strategy

    def ask(self, n: int = 1) -> np.ndarray:
        try:
            return super().ask(n)
        except StrategyError as err:
            raise StrategyError(f"{err}. The controller may have converged: {self.told} architectures told, policy "
                                f"entropy {self.policy.entropy():.1f} nats; a larger entropy bonus keeps it "
                                f"exploring") from None

    def _propose(self, n: int) -> np.ndarray:
        rows = self.space.canonical_genes(self.policy.sample(self.rng, max(n, MIN_DRAWS)))
        self._drawn += len(rows)
        if self.screen is not None:  # the draws the screen turns down are learned from at the next tell
            self._turned_down.append(rows[~np.asarray(self.screen(rows), dtype=bool)])
        return rows

    def _learn(self, genes: np.ndarray, columns: Columns) -> None:
        reward = self.rewards(columns)
        valid = np.isfinite(reward) & np.isfinite(self.violations[-len(genes):])
        for c in self._unpriced:
            if c.metric in columns:
                valid &= c.satisfied(columns[c.metric])
        turned_down = np.concatenate([np.zeros((0, len(self.space.genes)), dtype=np.int64), *self._turned_down])
        passed, self._drawn, self._turned_down = self._drawn - len(turned_down), 0, []
        floor = [float(reward[valid].min())] if valid.any() else []
        floor += [self.baseline] if self.baseline is not None else []
        if not floor:
            return  # nothing told so far could be scored: no baseline, no gradient
        # the told rows stand for all the draws that passed the screen: a turned-down draw weighs told / passed
        down_weight = self.config.turned_down_weight * len(genes) / max(passed, 1)
        weight = np.concatenate([np.ones(len(genes)), np.full(len(turned_down), down_weight)])
        weight /= weight.sum()
        reward = np.concatenate([np.where(valid, reward, min(floor)), np.full(len(turned_down), min(floor))])
        self._step(np.concatenate([genes, turned_down]), reward, weight)

    def _step(self, genes: np.ndarray, reward: np.ndarray, weight: np.ndarray) -> None:
        """One REINFORCE step on rows with rewards (weights summing to 1); moves the baseline and spread."""
        mean = float(weight @ reward)
        if self.baseline is None:
            self.baseline = mean
        deviation = reward - self.baseline
        d = self.config.baseline_decay
        square = float(weight @ deviation ** 2)
        self.spread = square if self.spread is None else d * self.spread + (1 - d) * square
        advantage = deviation / np.sqrt(self.spread) if self.spread > 0 else np.zeros_like(deviation)
        self.baseline = d * self.baseline + (1 - d) * mean
        grad = self.policy.gradient(genes, self.space.active_mask(genes), weight * advantage, self.config.entropy)
        if self._adam is not None:
            self._adam.step([grad], ascend=True)
        else:  # plain gradient ascent
            self.policy.params += self.config.step_size * grad

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "lr": self.config.step_size, "alpha": self.alpha,
                "beta": self.beta, "reward_accuracy": self.quality.metric, "reward_latency": self.latency}
