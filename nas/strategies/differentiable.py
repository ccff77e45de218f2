"""Differentiable search (FBNet / ProxylessNAS style, the `differentiable` strategy) over a trained once-for-all
supernet, with the lookup table's expected latency (`latency_tables.expected`) in the loss and a latency target to
land on. The method, its losses and the measurements behind its defaults are in docs/strategies.md. Torch is
imported only when a search is built."""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from latency_tables.expected import SearchLayout, Selection
from latency_tables.table import LatencyTable
from nas.objectives import Constraint, Objective
from nas.strategies.base import Columns, Strategy, StrategyError
from nas.strategies.options import build_config
from search_spaces import ArchConfig, SearchSpace
from search_spaces.files import atomic_write_text

if TYPE_CHECKING:
    import torch

    from supernets.data import Dataset, Split
    from supernets.supernet import Supernet

FORMS = ("fbnet", "proxyless")
LATENCY_TERMS = ("sampled", "expected")


#: Rounds of `top`'s deepening search (16 x 4^9, about 4 million selections, at most).
_TOP_ROUNDS = 10


class SearchError(StrategyError):
    """Bad options for the differentiable search, or a space it cannot search."""


# ----------------------------------------------------------------------------- the expectation, in torch


def expected_latency(layout: SearchLayout, probs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Expected table latency (ms, a differentiable scalar) under independent categoricals `probs`
    (`resolution`: (R,); per stage j `s{j}.width`: (W,), `s{j}.family`: (F,), `s{j}.ops`: (slots, F, C))."""
    import torch

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(a, dtype=probs["resolution"].dtype)

    per_res = t(layout.stem_ms)
    prev = torch.ones(1, dtype=per_res.dtype)
    for j in range(len(layout.space.stages)):
        pw, pf, pc = probs[f"s{j}.width"], probs[f"s{j}.family"], probs[f"s{j}.ops"]
        per_res = per_res + torch.einsum("p,w,f,fc,rpwfc->r", prev, pw, pf, pc[0], t(layout.first_ms[j]))
        if pc.shape[0] > 1:
            per_res = per_res + torch.einsum("w,f,sfc,rwfc->r", pw, pf, pc[1:], t(layout.rest_ms[j]))
        prev = pw
    per_res = per_res + t(layout.head_ms) @ prev
    return layout.offset_ms + probs["resolution"] @ per_res


def one_hot(layout: SearchLayout, sel: Selection, dtype: Any = None) -> dict[str, torch.Tensor]:
    """The probabilities of a distribution certain of `sel` (for checks)."""
    import torch

    dtype = dtype or torch.float64
    out = {"resolution": torch.zeros(len(layout.resolution_mask), dtype=dtype)}
    out["resolution"][sel.resolution] = 1
    for j, mask in enumerate(layout.op_masks):
        out[f"s{j}.width"] = torch.zeros(len(layout.width_masks[j]), dtype=dtype)
        out[f"s{j}.width"][sel.widths[j]] = 1
        out[f"s{j}.family"] = torch.zeros(mask.shape[1], dtype=dtype)
        out[f"s{j}.family"][sel.families[j]] = 1
        ops = torch.zeros(mask.shape, dtype=dtype)
        for i, c in enumerate(sel.ops[j]):
            ops[i, :, c] = 1  # the unchosen families' rows do not matter (their family has probability 0)
        out[f"s{j}.ops"] = ops
    return out


# ------------------------------------------------------------------------------------------ the search


@dataclass
class DifferentiableResult:
    """What a search found. `genes` / `arch` are the derived architecture (after the bounded adjustment, if
    one was needed); `argmax_*` the most probable one before it. Latencies are in ms."""

    arch: ArchConfig
    genes: np.ndarray
    target_ms: float
    predicted_ms: float  # table latency of `arch`
    expected_ms: float  # expected latency at the end (softmax(theta / tau_end))
    argmax_arch: ArchConfig
    argmax_predicted_ms: float
    adjusted: bool
    form: str
    seed: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)  # per epoch
    expected_trace: list[float] = field(default_factory=list)  # after every theta step, under softmax(theta / tau)
    theta: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def error(self) -> float:
        """Relative error of the derived architecture's table latency to the target."""
        return self.predicted_ms / self.target_ms - 1

    def to_dict(self) -> dict[str, Any]:
        return {"arch": self.arch.to_str(), "genes": self.genes.tolist(), "target_ms": self.target_ms,
                "predicted_ms": self.predicted_ms, "expected_ms": self.expected_ms,
                "argmax_arch": self.argmax_arch.to_str(), "argmax_predicted_ms": self.argmax_predicted_ms,
                "adjusted": self.adjusted, "form": self.form, "seed": self.seed, "seconds": self.seconds,
                "history": self.history, "expected_trace": self.expected_trace, "theta": self.theta}

    def save(self, path: str | Path) -> None:
        """Write the result as JSON (atomically)."""
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=1) + "\n")


@dataclass(frozen=True)
class DifferentiableConfig:
    """Options of the differentiable search (docs/strategies.md). `target_ms` (default: the bound of a latency_ms
    <= / < constraint); `form` "fbnet" | "proxyless"; `epochs` (passes over the weights' part of the training set;
    one theta step follows every weight step); `batch_size`; `lr_theta` (Adam), `lr_weights` (SGD, momentum 0.9);
    `train_weights` (False: theta steps only); `arch_fraction` (share of the training set held out for theta);
    `tau_start` -> `tau_end` (exponential per step); `alpha`, `beta` (fbnet), `lam` (proxyless); `latency_term`
    "sampled" | "expected"; `resolution`, `widths` (fix them; "largest" for the largest); `tolerance` and
    `adjust_top` (the final adjustment)."""

    target_ms: float | None = None
    form: str = "fbnet"
    epochs: int = 4
    batch_size: int = 64
    lr_theta: float = 0.05
    lr_weights: float = 0.005
    train_weights: bool = True
    arch_fraction: float = 0.2
    tau_start: float = 5.0
    tau_end: float = 0.02
    alpha: float = 0.2
    beta: float = 0.6
    lam: float = 1.0
    resolution: int | str | None = None
    widths: tuple[int | None, ...] | str | None = None
    latency_term: str = "sampled"
    tolerance: float = 0.05
    adjust_top: int = 100

    def __post_init__(self) -> None:
        if isinstance(self.widths, list):
            object.__setattr__(self, "widths", tuple(self.widths))
        if self.form not in FORMS:
            raise SearchError(f"unknown loss form {self.form!r}; allowed: {', '.join(FORMS)}")
        if self.target_ms is not None and not (math.isfinite(self.target_ms) and self.target_ms > 0):
            raise SearchError(f"target_ms must be a positive number of milliseconds (got {self.target_ms!r})")
        for name in ("epochs", "batch_size", "adjust_top"):
            if getattr(self, name) < 1:
                raise SearchError(f"{name} must be a whole number >= 1 (got {getattr(self, name)!r})")
        for name in ("lr_theta", "tau_start", "tau_end", "alpha", "beta", "lam", "tolerance"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise SearchError(f"{name} must be a positive number (got {getattr(self, name)!r})")
        if not 0 < self.arch_fraction < 1:
            raise SearchError(f"arch_fraction must be between 0 and 1 (got {self.arch_fraction!r})")
        if self.latency_term not in LATENCY_TERMS:
            raise SearchError(f"unknown latency_term {self.latency_term!r}; allowed: {', '.join(LATENCY_TERMS)}")
        if self.lr_weights < 0:
            raise SearchError(f"lr_weights must be >= 0 (got {self.lr_weights!r})")
        if any(isinstance(v, str) and v != "largest" for v in (self.resolution, self.widths)):
            raise SearchError("resolution and widths take a number (a sequence of them), None or 'largest'")


class DifferentiableSearch:
    """FBNet / ProxylessNAS-style search of `net.space` against `table`, aiming at `target_ms` (docs/strategies.md).
    Construction builds the layout and copies the supernet; `run()` searches. The options are a
    `DifferentiableConfig` (`config=`, or its fields as keywords); `seed`; `progress` (tqdm)."""

    def __init__(self, net: Supernet, data: Dataset, table: LatencyTable, *, target_ms: float, seed: int = 0,
                 progress: bool = False, config: DifferentiableConfig | None = None, **options: Any) -> None:
        import torch

        c = config if config is not None else build_config("differentiable", DifferentiableConfig, options)
        if not (math.isfinite(target_ms) and target_ms > 0):
            raise SearchError(f"target_ms must be a positive number of milliseconds (got {target_ms!r})")
        space = net.space
        if data.in_channels != space.in_channels or data.num_classes > space.num_classes:
            raise SearchError(f"dataset {data.name!r} ({data.in_channels} channel(s), {data.num_classes} classes) does "
                              f"not fit space {space.name!r} ({space.in_channels}, {space.num_classes})")
        resolution = max(space.resolutions) if c.resolution == "largest" else c.resolution
        widths = [max(st.widths) for st in space.stages] if c.widths == "largest" else c.widths
        assert not isinstance(resolution, str) and not isinstance(widths, str)  # (the config allows only 'largest')
        self.layout = SearchLayout(space, table, resolution=resolution, widths=widths)
        self.space, self.table, self.data, self.target_ms, self.form = space, table, data, float(target_ms), c.form
        self.epochs, self.batch_size, self.lr_theta, self.lr_weights = c.epochs, c.batch_size, c.lr_theta, c.lr_weights
        self.train_weights, self.arch_fraction = c.train_weights and c.lr_weights > 0, c.arch_fraction
        self.tau_start, self.tau_end, self.alpha, self.beta, self.lam = c.tau_start, c.tau_end, c.alpha, c.beta, c.lam
        self.tolerance, self.adjust_top, self.seed, self.progress = c.tolerance, c.adjust_top, seed, progress
        self.latency_term, self.config = c.latency_term, c
        self.net = copy.deepcopy(net)  # the caller's supernet is never changed
        self.masks = {name: torch.as_tensor(mask) for name, mask in self.layout.masks().items()}
        self.theta = {name: torch.zeros(mask.shape, dtype=torch.float64, requires_grad=True)
                      for name, mask in self.masks.items()}
        self.result: DifferentiableResult | None = None

    # --------------------------------------------------------------------------------- distributions

    def probabilities(self, tau: float = 1.0) -> dict[str, np.ndarray]:
        """softmax(theta / tau) of every choice over its allowed values (0 elsewhere)."""
        return {name: p.detach().numpy() for name, p in self._probs(tau).items()}

    def _probs(self, tau: float) -> dict[str, torch.Tensor]:
        import torch

        return {name: torch.softmax(self._masked(name) / tau, dim=-1) for name in self.theta}

    def _masked(self, name: str) -> torch.Tensor:
        return self.theta[name].masked_fill(~self.masks[name], -math.inf)

    def expected_ms(self, tau: float = 1.0) -> float:
        """Expected table latency (ms) under softmax(theta / tau)."""
        import torch

        with torch.no_grad():
            return float(expected_latency(self.layout, self._probs(tau)))

    def argmax(self) -> Selection:
        """The most probable value of every choice (theta's argmax; the first on ties)."""
        best = {name: self._masked(name).detach().argmax(dim=-1).numpy() for name in self.theta}
        ops = []
        for j in range(len(self.space.stages)):
            f = int(best[f"s{j}.family"])
            ops.append(tuple(int(c) for c in best[f"s{j}.ops"][:, f]))
        return Selection(int(best["resolution"]), tuple(int(best[f"s{j}.width"]) for j in range(len(ops))),
                         tuple(int(best[f"s{j}.family"]) for j in range(len(ops))), tuple(ops))

    def top(self, n: int, tau: float | None = None) -> list[tuple[np.ndarray, float]]:
        """The `n` most probable distinct architectures under softmax(theta / tau) (default tau: `tau_end`, the
        distribution the latency term ends on, whose most probable architecture is `argmax()`), best first, as
        (canonical genes, log-probability of its most probable selection); fewer if the frame has fewer."""
        import torch

        tau = self.tau_end if tau is None else tau
        log_probs = {name: torch.log_softmax(self._masked(name) / tau, dim=-1).detach().numpy()
                     for name in self.theta}
        k = max(2 * n, 16)
        found: dict[bytes, tuple[np.ndarray, float]] = {}
        for _ in range(_TOP_ROUNDS):  # bounded: each round looks 4x deeper into the ranked selections
            found = {}
            selections = self.layout.top_selections(log_probs, k)
            for score, sel in selections:
                genes = self.layout.genes_of(sel)
                found.setdefault(genes.tobytes(), (genes, score))
            if len(found) >= n or len(selections) < k:
                return list(found.values())[:n]
            k *= 4
        raise SearchError(f"the {k // 4:,} most probable selections give only {len(found)} distinct architectures; "
                          f"asked for {n}")

    # ------------------------------------------------------------------------------------------- steps

    def _sample(self, gen: torch.Generator, tau: float, gates: bool
                ) -> tuple[Selection, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """A hard Gumbel-max draw of every choice from softmax(theta / tau). With `gates`, also each choice's relaxed
        draw y = softmax(theta / tau + g) (Gumbel-softmax, same noise g) and the straight-through gate of the drawn
        value (1 forward, y's gradient backward)."""
        import torch

        drawn, gate, relaxed = {}, {}, {}
        for name in self.theta:
            u = torch.rand(self.theta[name].shape, generator=gen, dtype=torch.float64).clamp_(1e-12, 1 - 1e-12)
            logits = self._masked(name) / tau + (-torch.log(-torch.log(u)))
            index = logits.detach().argmax(dim=-1)
            drawn[name] = index.numpy()
            if gates:
                soft = relaxed[name] = torch.softmax(logits, dim=-1)
                hard = torch.zeros_like(soft).scatter_(-1, index.unsqueeze(-1), 1.0)
                gate[name] = (hard - soft.detach() + soft).gather(-1, index.unsqueeze(-1)).squeeze(-1)
        ops, fams = [], []
        for j in range(len(self.space.stages)):
            f = int(drawn[f"s{j}.family"])
            fams.append(f)
            ops.append(tuple(int(c) for c in drawn[f"s{j}.ops"][:, f]))
        sel = Selection(int(drawn["resolution"]), tuple(int(drawn[f"s{j}.width"]) for j in range(len(ops))),
                        tuple(fams), tuple(ops))
        return sel, gate, relaxed

    def _gated_forward(self, x: torch.Tensor, sel: Selection, gate: dict[str, torch.Tensor]) -> torch.Tensor:
        """The supernet on the sampled architecture, each drawn choice's output scaled by its gate."""
        from supernets.training import resized

        arch = self.layout.arch_of(sel)
        net = self.net
        h = net.stem_forward(resized(x, arch.resolution), arch)
        for j, blocks in enumerate(arch.stages):
            slots, skip, pos = net.stages[j][blocks[0].family], self.layout.skip(j), 0  # type: ignore[index]
            ops_gate = gate[f"s{j}.ops"]
            for i, c in enumerate(sel.ops[j]):
                g = ops_gate[i, sel.families[j]].to(h.dtype)
                if c == skip:
                    h = h * g
                else:
                    h = slots[pos](h, blocks[pos]) * g
                    pos += 1
            h = h * (gate[f"s{j}.family"].to(h.dtype) * gate[f"s{j}.width"].to(h.dtype))
        return net.head_forward(h, arch) * gate["resolution"].to(h.dtype)

    def _latency_loss(self, ce: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
        import torch

        ratio = expected / self.target_ms
        if self.form == "fbnet":
            return ce.double() * self.alpha * (1 + torch.log(ratio).abs()) ** self.beta
        return ce.double() + self.lam * (ratio - 1).abs()

    def _tau(self, step: int, total: int) -> float:
        return self.tau_start * (self.tau_end / self.tau_start) ** (step / max(1, total - 1))

    def _splits(self, rng: np.random.Generator) -> tuple[Split, Split]:
        from supernets.data import Split, stratified_split

        train = self.data.train
        weights_idx, arch_idx = stratified_split(train.labels, self.arch_fraction, int(rng.integers(2**31)))
        return (Split(train.images[weights_idx], train.labels[weights_idx]),
                Split(train.images[arch_idx], train.labels[arch_idx]))

    # --------------------------------------------------------------------------------------------- run

    def run(self) -> DifferentiableResult:
        """Search; the result is also kept as `self.result`. Seeded: the same options give the same result."""
        import torch
        import torch.nn.functional as F
        from tqdm import tqdm

        from supernets.data import batches
        from supernets.training import resized

        started = time.perf_counter()
        rng, gen = np.random.default_rng(self.seed), torch.Generator().manual_seed(self.seed)
        weight_split, arch_split = self._splits(rng)
        data, native = self.data, self.data.train.images.shape[-1]
        steps = math.ceil(len(weight_split) / self.batch_size)
        total = self.epochs * steps
        theta_opt = torch.optim.Adam(list(self.theta.values()), lr=self.lr_theta, betas=(0.5, 0.999))
        params = [p for p in self.net.parameters()]
        weight_opt = torch.optim.SGD(params, lr=self.lr_weights, momentum=0.9) if self.train_weights else None
        self.net.train()

        def arch_batches() -> Any:
            # one architecture batch per weight step: enough passes over the architecture split for every step
            passes = math.ceil(total / max(1, math.ceil(len(arch_split) / self.batch_size))) + 1
            for _ in range(passes):
                yield from batches(arch_split, self.batch_size, native, data.mean, data.std, rng)

        arch_iter = arch_batches()
        history: list[dict[str, float]] = []
        trace: list[float] = []
        bar = tqdm(total=total, disable=None if self.progress else True, desc=f"differentiable search ({self.form})",
                   leave=False)
        step = 0
        for epoch in range(self.epochs):
            sums = {"ce": 0.0, "loss": 0.0}
            for x, y in batches(weight_split, self.batch_size, native, data.mean, data.std, rng):
                tau = self._tau(step, total)
                for group in theta_opt.param_groups:  # cosine to 0: theta settles as tau sharpens the latency term
                    group["lr"] = 0.5 * self.lr_theta * (1 + math.cos(math.pi * step / total))
                if weight_opt is not None:
                    for p in params:
                        p.requires_grad_(True)
                    sel, _, _ = self._sample(gen, tau, gates=False)
                    arch = self.layout.arch_of(sel)
                    weight_opt.zero_grad(set_to_none=True)
                    F.cross_entropy(self.net(resized(x, arch.resolution), arch), y).backward()
                    weight_opt.step()
                for p in params:
                    p.requires_grad_(False)
                xa, ya = next(arch_iter)
                sel, gate, relaxed = self._sample(gen, tau, gates=True)
                ce = F.cross_entropy(self._gated_forward(xa, sel, gate), ya)
                probs = relaxed if self.latency_term == "sampled" else self._probs(tau)
                loss = self._latency_loss(ce, expected_latency(self.layout, probs))
                theta_opt.zero_grad(set_to_none=True)
                loss.backward()
                theta_opt.step()
                trace.append(self.expected_ms(tau))
                sums["ce"] += float(ce.detach())
                sums["loss"] += float(loss.detach())
                step += 1
                bar.update(1)
                bar.set_postfix(expected_ms=f"{trace[-1]:.4f}", tau=f"{tau:.3f}")
            argmax_ms = self.layout.latency_ms(self.argmax())
            history.append({"epoch": epoch + 1, "tau": self._tau(step - 1, total), "ce": sums["ce"] / steps,
                            "loss": sums["loss"] / steps, "expected_ms": trace[-1], "argmax_ms": argmax_ms})
        bar.close()
        for p in params:
            p.requires_grad_(True)
        self.net.eval()
        self.result = self._derive(history, trace, time.perf_counter() - started)
        return self.result

    def _derive(self, history: list[dict[str, float]], trace: list[float], seconds: float) -> DifferentiableResult:
        """The argmax architecture, or the bounded adjustment when it misses the target by more than `tolerance`."""
        best = self.argmax()
        argmax_genes = self.layout.genes_of(best)
        argmax_ms = self._table_ms(argmax_genes)
        genes, predicted, adjusted = argmax_genes, argmax_ms, False
        if abs(argmax_ms / self.target_ms - 1) > self.tolerance:
            candidates = [g for g, _ in self.top(self.adjust_top)]
            latencies = np.array([self._table_ms(g) for g in candidates])
            errors = np.abs(latencies / self.target_ms - 1)
            inside = np.flatnonzero(errors <= self.tolerance)
            pick = int(inside[0]) if inside.size else int(np.argmin(errors))
            if errors[pick] < abs(argmax_ms / self.target_ms - 1):
                genes, predicted, adjusted = candidates[pick], float(latencies[pick]), True
        theta = {name: t.detach().numpy().round(6).tolist() for name, t in self.theta.items()}
        return DifferentiableResult(
            self.space.from_genes(genes), genes, self.target_ms, predicted, self.expected_ms(self.tau_end),
            self.space.from_genes(argmax_genes), argmax_ms, adjusted, self.form, self.seed, seconds, history, trace,
            theta)

    def _table_ms(self, genes: np.ndarray) -> float:
        return float(self.table.predict(self.space, genes[None]).latency_ms[0])


# ----------------------------------------------------------------------------------- the strategy adapter


class Differentiable(Strategy):
    """The differentiable search behind ask()/tell(). The first `ask` runs `DifferentiableSearch` once (seeded by
    `seed`); asks then give the derived architecture first, then the most probable other architectures of the
    searched distribution, each once (those the screen turns down are passed over). `tell` changes nothing.

    Inputs beyond `Strategy`'s: `supernet` (a run directory of `hwnas supernet train`, or a `Supernet`; needed),
    `data` (a `Dataset`; default: the run directory's dataset, split as it was trained), `table` (the
    `LatencyTable` or its directory whose latency is targeted; needed). Options: `DifferentiableConfig`. Nothing
    is read until the first ask.
    """

    name = "differentiable"
    needs_torch = True
    config_class = DifferentiableConfig
    config: DifferentiableConfig

    def __init__(self, space: SearchSpace, objectives: Sequence[Objective], constraints: Sequence[Constraint] = (),
                 *, supernet: Any = None, data: Any = None, table: LatencyTable | str | Path | None = None,
                 progress: bool = False, **kwargs: Any) -> None:
        super().__init__(space, objectives, constraints, **kwargs)
        if supernet is None:
            raise StrategyError("strategy 'differentiable' needs a trained supernet: supernet=RUN_DIR (of `hwnas "
                                "supernet train`) or a Supernet object")
        if table is None:
            raise StrategyError("strategy 'differentiable' needs the latency table to aim at: table=LatencyTable or "
                                "its directory")
        self.target_ms = latency_target(self.config, self.constraints)
        self.supernet, self.data, self.table, self.progress = supernet, data, table, progress
        self.search: DifferentiableSearch | None = None
        self._ranked: list[np.ndarray] = []
        self._complete = False  # the ranked list holds every architecture the distribution has
        self._cursor = 0

    def _start(self) -> DifferentiableSearch:
        if self.search is not None:
            return self.search
        net, data = self.supernet, self.data
        if isinstance(net, (str, Path)):
            from supernets.training import load_run

            run = load_run(net)
            net, data = run.net, data if data is not None else run.dataset()
        if data is None:
            raise StrategyError("strategy 'differentiable' with a Supernet object needs data= (a Dataset)")
        if net.space != self.space:
            raise StrategyError(f"the supernet was trained on space {net.space.name!r} ({net.space.size():,} "
                                f"architectures), not the one searched ({self.space.name!r}, {self.space.size():,})")
        table = self.table if isinstance(self.table, LatencyTable) else LatencyTable.load(self.table)
        self.search = DifferentiableSearch(net, data, table, target_ms=self.target_ms, seed=self.seed,
                                           progress=self.progress, config=self.config)
        result = self.search.run()
        self._ranked = [result.genes]
        return self.search

    def _propose(self, n: int) -> np.ndarray:
        search = self._start()
        need = self._cursor + n
        if len(self._ranked) < need and not self._complete:
            derived = self._ranked[0]
            tops = [g for g, _ in search.top(need + 1)]
            self._complete = len(tops) < need + 1
            self._ranked = [derived, *(g for g in tops if not np.array_equal(g, derived))][:need]
        rows = self._ranked[self._cursor:need]
        if not rows:
            raise StrategyError(f"{self.name}: every architecture of the searched distribution has been asked for "
                                f"({len(self._ranked)})")
        self._cursor += len(rows)
        return np.stack(rows)

    def _learn(self, genes: np.ndarray, columns: Columns) -> None:
        """The search is done before the first ask; what is told does not change it."""

    @property
    def result(self) -> DifferentiableResult | None:
        return self.search.result if self.search is not None else None

    def describe(self) -> dict[str, Any]:
        out = {**super().describe(), "target_ms": self.target_ms}
        if self.result is not None:
            out.update(derived=self.result.arch.to_str(), derived_latency_ms=self.result.predicted_ms,
                       adjusted=self.result.adjusted)
        return out


def latency_target(config: DifferentiableConfig, constraints: Sequence[Constraint]) -> float:
    """The latency (ms) to aim at: the option `target_ms`, else the tightest latency_ms <= / < bound."""
    if config.target_ms is not None:
        return float(config.target_ms)
    bounds = [c.bound for c in constraints if c.metric == "latency_ms" and c.op in ("<=", "<")]
    if not bounds:
        raise StrategyError("strategy 'differentiable' needs a latency target: target_ms=..., or a "
                            "latency_ms<=BOUND constraint (its bound is the target)")
    return float(min(bounds))
