"""`compress_subnet`: one exported subnet made smaller and faster for a budget (latency on a table's runtime, model
size, MACs or BitOPs), by the library's pieces end to end, and exported as a new subnet directory.

The methods, all on one greedy pruning path (`nas.compress.allocate.prune_path`: NetAdapt-style steps against the
budget's metric, each step dropping the channels with the lowest importance where it pays most) and one exact
per-block precision allocation (`nas.compress.bits.allocate_bits`, HAWQ-V3's integer program by dynamic
programming over measured per-layer sensitivity, priced on the runtime's per-precision tables):

- `prune`: the path's point where the fp32 network meets the budget (`allocate_budget`).
- `quantize`: no pruning; the precision allocation on the parent.
- `sequential` (prune, then quantise, then distil): the path's first point where the fastest precisions can reach
  the budget, then the precision allocation on it.
- `joint`: pruning and precision chosen together. Every point of the path from the sequential one to the prune-only
  one is a candidate (up to `candidates`, evenly spaced, both ends included); each gets its own exact precision
  allocation to the budget, and the pruned, fake-quantised network is compared with the parent on calibration
  images (mean KL divergence of the outputs). The candidate that changes the parent least wins. The sequential
  and prune-only plans are candidates, so joint is never worse than either on this measure before fine-tuning;
  in the spirit of APQ (Wang et al., CVPR 2020: joint architecture, pruning and quantisation search) and
  HALP/NetAdapt's latency-table pricing, with the precision part solved exactly instead of searched.

Latency keys the tables lack (off-grid widths of a pruned network, in every precision's table) are measured on
demand into copies under `out/.measured-tables/` (`latency_tables.ondemand`), and the choice is made again on the
measured copies until it rests on no estimate (at most `MEASURE_ROUNDS` rounds); where this machine cannot measure,
the estimates stay and are flagged.

The chosen network is then fine-tuned with Hinton distillation (`finetune`; teacher: the frozen parent, the
supernet's largest subnet or an exported subnet; `alpha=0`: labels only), with quantisation-aware training
(straight-through fake quantisation) when precisions are lowered and `qat` allows it; `quantize` trains only when
post-training quantisation loses more than `tolerance` (`qat="auto"`). A plan quantised without QAT gets empirical
bias correction where it brings the simulation closer to the float model. The precision guard
(`nas.compress.guard.guard_plan`) then checks the simulated plan on the validation split: a drop past `tolerance`
raises the most sensitive layers to fp32, and a collapse it cannot repair is an error naming the layers.

The result is exported with `export_model`: the budget's runtime at the plan's precisions, the other runtime's
model in fp32 (`other_runtime`; metrics say so). `compress.json` (written with the export, so both appear or
neither) holds accuracy before and after on the same validation split, label loyalty (top-1 agreement with the
parent) and probability loyalty (mean over images of 1 - sqrt(JS divergence, base 2) between the two output
distributions), parameter, MACs and byte ratios, predicted and measured latency, speed-up, and what each stage
chose. A bit-width plan's "after" figures are its torch simulation (`fake_quantized_layers`).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from latency_tables.keys import arch_keys
from latency_tables.runtimes import RUNTIMES, Protocol, RuntimeMissing, get_runtime
from latency_tables.table import LatencyTable
from search_spaces import ArchConfig, HwnasError
from search_spaces.plans import BitWidthPlan, PrunePlan

#: What `compress_subnet` can do.
METHODS = ("prune", "quantize", "sequential", "joint")
#: What a budget may bound.
BUDGET_METRICS = ("latency_ms", "size_bytes", "macs", "bitops")
#: When the fine-tune trains with the plan's precisions fake-quantised.
QAT_MODES = ("auto", "always", "never")
#: The summary file written beside the exported files.
COMPRESS_FILE = "compress.json"
#: Rounds of "choose, measure the keys it estimated, choose again on the measured tables".
MEASURE_ROUNDS = 8
#: Tries at measuring keys when the table's drift check finds this machine busy.
MEASURE_ATTEMPTS = 3

Log = Callable[[str], None]


@dataclass(frozen=True)
class CompressConfig:
    """How a subnet is compressed.

    Args:
        method: one of `METHODS`.
        budget: the bound on `metric` (ms for `latency_ms`, on `table`'s runtime, precision and device).
        table: the latency table the budget is on; its runtime gets the compressed model.
        teacher: None (the parent itself), "largest" (the supernet in `supernet`'s largest subnet) or an exported
            subnet's directory. `alpha` weighs the teacher's soft targets (0: labels only, no teacher).
        images: training images (chosen by `seed`) that score channels, measure quantisation sensitivity and
            compare joint candidates.
        recal_images: other training images on which each pruned candidate's BatchNorm statistics are
            recalibrated before it is measured (a pruned network's outputs are meaningless without; Li et al.,
            "EagleEye: Fast Sub-net Evaluation for Efficient Neural Network Pruning", ECCV 2020).
        max_steps: batches per fine-tune epoch (None: the whole training split).
        qat: "auto" (fake-quantised fine-tune whenever precisions are lowered and the method fine-tunes; for
            `quantize`, only when post-training quantisation loses more than `tolerance`), "always", "never".
        tolerance: the accuracy drop (fraction) the precision guard allows a simulated plan against its float model.
        strict: a plan that loses more than `tolerance` is an error instead of being raised to higher precision.
        candidates: how many points of the pruning path `joint` compares.
        other_runtime: also export the other runtime's model (fp32) when its converter is installed.
        size_budget: a second bound, on weight bytes (`size_bytes<=`), beside a latency budget: the precision
            allocation then minimises sensitivity + lambda x bytes under the latency budget, with the least lambda
            (bisection) that brings the size within it (Lagrangian relaxation; each step solved exactly).
        gradual: epochs over which the pruned share ramps from 0 to the plan (cubic; 0: pruned from the start).
        min_accuracy: the accuracy floor: a result below it (validation top-1, simulated for a bit-width plan) is
            an error and nothing is exported.
        simulated: simulated integer bit-widths (e.g. ("w8a8", "w4a8")) for accelerators hwnas cannot run, instead
            of the runtime's menu: for size_bytes or bitops budgets; the result is labelled simulated and no
            runtime model is written (its spec and weights are, with the simulated plan).
        parity_images: validation images the export's parity check uses (None: all).
    """

    method: str
    budget: float
    table: LatencyTable
    metric: str = "latency_ms"
    criterion: str = "l1"
    round_to: int = 8
    epochs: int = 1
    teacher: str | None = None
    supernet: str | None = None
    alpha: float = 0.9
    temperature: float = 4.0
    feature_weight: float = 0.0
    seed: int = 0
    images: int = 128
    recal_images: int = 500
    max_steps: int | None = None
    lr: float = 0.01
    qat: str = "auto"
    tolerance: float = 0.015
    strict: bool = False
    candidates: int = 8
    other_runtime: bool = True
    simulated: tuple[str, ...] = ()
    size_budget: float | None = None
    gradual: int = 0
    min_accuracy: float | None = None
    protocol: Protocol | None = None
    parity_images: int | None = None
    overwrite: bool = False
    measure_keys: bool = True

    def __post_init__(self) -> None:
        from nas.compress.importance import IMPORTANCE

        checks = [("method", self.method in METHODS, f"one of {', '.join(METHODS)}"),
                  ("metric", self.metric in BUDGET_METRICS, f"one of {', '.join(BUDGET_METRICS)}"),
                  ("budget", self.budget > 0 and math.isfinite(self.budget), "a positive number"),
                  ("criterion", self.criterion in IMPORTANCE, f"one of {', '.join(IMPORTANCE)}"),
                  ("round_to", self.round_to >= 1, ">= 1"), ("epochs", self.epochs >= 1, ">= 1"),
                  ("images", self.images >= 1, ">= 1"), ("recal_images", self.recal_images >= 1, ">= 1"),
                  ("alpha", 0.0 <= self.alpha <= 1.0, "in [0, 1]"),
                  ("qat", self.qat in QAT_MODES, f"one of {', '.join(QAT_MODES)}"),
                  ("tolerance", 0.0 <= self.tolerance < 1.0, "in [0, 1)"),
                  ("candidates", self.candidates >= 2, ">= 2"),
                  ("gradual", 0 <= self.gradual <= self.epochs, f"0 to epochs ({self.epochs})"),
                  ("min_accuracy", self.min_accuracy is None or 0 <= self.min_accuracy <= 1, "None or in [0, 1]")]
        for name, ok, allowed in checks:
            if not ok:
                raise HwnasError(f"compress {name} is {getattr(self, name)!r}; allowed: {allowed}")
        if not isinstance(self.table, LatencyTable):
            raise HwnasError(f"compress table must be a LatencyTable; got {type(self.table).__name__}")
        if self.simulated and (self.metric not in ("size_bytes", "bitops") or self.method == "prune"):
            raise HwnasError(f"simulated bit-widths ({', '.join(self.simulated)}) have no measured latency: they take "
                             f"a size_bytes or bitops budget and a method that quantises; got {self.metric} with "
                             f"{self.method}")
        if self.size_budget is not None and (self.metric != "latency_ms" or self.method == "prune"
                                             or not self.size_budget > 0 or not math.isfinite(self.size_budget)):
            raise HwnasError(f"a second budget size_bytes<={self.size_budget} goes with a latency_ms budget and a "
                             f"method that quantises (quantize, sequential, joint) and must be a positive number; "
                             f"got {self.metric} with {self.method}")
        if self.metric == "macs" and self.method != "prune":
            raise HwnasError(f"a macs budget does not change with precision, so method {self.method} cannot use it; "
                             f"allowed: method prune with macs, or a latency_ms, size_bytes or bitops budget")

    @property
    def runtime(self) -> str:
        return str(self.table.profile.runtime)

    @property
    def menu_runtime(self) -> str:
        """Whose precision menu the allocation chooses from: the runtime's, or `simulated`."""
        from nas.compress.bits import SIMULATED_RUNTIME

        return SIMULATED_RUNTIME if self.simulated else self.runtime

    @property
    def budget_text(self) -> str:
        size = f" and size_bytes<={self.size_budget:g}" if self.size_budget is not None else ""
        return f"{self.metric}<={self.budget:g}{size}"


def _arch(model: nn.Module) -> ArchConfig:
    """The architecture of a static model (`build_model`)."""
    arch = getattr(model, "arch", None)
    if not isinstance(arch, ArchConfig):
        raise HwnasError(f"a static model of an architecture (build_model) is needed; got {type(model).__name__}")
    return arch


def _sample(data: Any, n: int, seed: int, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` training images (seeded choice) as a normalised batch and their labels."""
    from supernets.data import to_tensor

    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(data.train), size=min(n, len(data.train)), replace=False))
    x = to_tensor(data.train.images[idx], resolution, data.mean, data.std)
    return x, torch.from_numpy(data.train.labels[idx])


def _teacher(config: CompressConfig, parent: nn.Module, data: Any) -> nn.Module | None:
    """The teacher `config` names (None without distillation); by default the supernet's largest subnet (BN
    recalibrated) when `config.supernet` is given, else a frozen copy of the parent."""
    from nas.compress.distill import LARGEST, frozen, load_teacher, static_arch

    if config.alpha == 0:
        return None
    teacher = config.teacher or (LARGEST if config.supernet else None)
    if teacher is None:
        return frozen(copy.deepcopy(parent))
    return load_teacher(teacher, static_arch(parent, "student"), run_dir=config.supernet, data=data)


# ------------------------------------------------------------------------------------------- pricing


@dataclass
class _Pricing:
    """The budget's pricing: the runtime's precision menu and (for latency) a table per precision, with keys
    measured on demand into copies of the source tables (`sources`; the architectures measured so far in
    `measured_archs`, so that each copy holds them all)."""

    config: CompressConfig
    menu: tuple[str, ...]
    tables: dict[str, LatencyTable]
    sources: dict[str, LatencyTable] = field(default_factory=dict)
    measured_archs: dict[str, list[ArchConfig]] = field(default_factory=dict)
    measured: int = 0
    switch: Any = None  # nas.compress.switch.SwitchCost, fitted on the parent (latency budgets that mix precisions)
    switch_source: Any = None  # (parent, images, out_root, log) to fit it from, until it is fitted
    repriced: bool = False  # keys were measured after the last choice: its prediction differs from its allocation's

    def fit_switch(self, parent: nn.Module, x: torch.Tensor, out_root: Path, log: Log) -> None:
        """Measure what a change of precision costs on the runtime (`fit_switch_cost`), where the menu mixes."""
        from nas.compress.switch import fit_switch_cost

        if self.config.metric != "latency_ms" or not {"fp32", "int8"} <= set(self.tables):
            return
        calibration = [x[i:i + 1].numpy() for i in range(min(64, len(x)))]
        self.switch = fit_switch_cost(parent, calibration, self.config.runtime, self.tables, _protocol(self.config),
                                      out_root / ".measured-tables", log=log)

    def switch_cost(self, arch: ArchConfig) -> Any:
        """`allocate_bits`'s switch_cost for `arch` (0 where nothing mixes); fitted on first use, so that a budget
        refused before any allocation leaves nothing written."""
        if self.switch_source is not None:
            source, self.switch_source = self.switch_source, None
            self.fit_switch(*source)
        return self.switch.for_arch(arch) if self.switch is not None else 0.0

    @classmethod
    def of(cls, config: CompressConfig, space: str) -> _Pricing:
        from nas.compress.bits import runtime_menu, runtime_tables

        menu = runtime_menu(config.menu_runtime, ("fp32", *config.simulated) if config.simulated else None)
        if config.method == "prune":  # one precision: the budget table's
            menu = (str(config.table.profile.precision),) if config.metric == "latency_ms" else ("fp32",)
        tables: dict[str, LatencyTable] = {}
        if config.metric == "latency_ms":
            if config.method != "prune":
                tables = runtime_tables(space, config.runtime)
            tables[str(config.table.profile.precision)] = config.table
        return cls(config, menu, tables, dict(tables))

    @property
    def base(self) -> str:
        """The precision of the unquantised network: the budget table's for `prune`, else fp32."""
        return self.menu[0] if self.config.method == "prune" else "fp32"

    def base_cost(self, arch: ArchConfig) -> float:
        return float(self.costs(arch)[:, self.menu.index(self.base)].sum())

    @property
    def path_table(self) -> LatencyTable | None:
        """The table the pruning path walks on: the budget's own for `prune`, else the fp32 one."""
        if self.config.metric != "latency_ms":
            return None
        return self.config.table if self.config.method == "prune" else self.tables["fp32"]

    def costs(self, arch: ArchConfig) -> np.ndarray:
        """(pieces x menu) cost of `arch` in the budget's metric (latency estimated where a key is missing)."""
        from nas.compress.bits import latency_costs, layer_costs

        if self.config.metric == "latency_ms":
            return latency_costs(arch, self.tables, self.menu)[0]
        return layer_costs(arch, self.menu, self.config.metric)

    def fastest(self, arch: ArchConfig) -> float:
        """The least cost of `arch` over per-piece precisions (ignoring switches, as the allocation's bound)."""
        return float(self.costs(arch).min(axis=1).sum())

    def missing(self, arch: ArchConfig, precisions: tuple[str, ...]) -> dict[str, int]:
        """How many keys of `arch` each precision's table lacks."""
        keys = arch_keys(arch)
        found = {p: sum(k not in self.tables[p].rows for k in keys) for p in precisions if p in self.tables}
        return {p: n for p, n in found.items() if n}

    def measure(self, arch: ArchConfig, precisions: tuple[str, ...], out_root: Path, log: Log) -> bool:
        """Measure the keys of `arch` the tables of `precisions` lack into their copies; False when this machine
        cannot (the reason is logged)."""
        from latency_tables.ondemand import measured_or_source

        for precision, n in self.missing(arch, precisions).items():
            source, before = self.sources[precision], self.tables[precision]
            archs = self.measured_archs.setdefault(precision, [])
            archs.append(arch)
            log(f"measuring {n} {precision} table key(s) the plan needs on {source.table_id}")
            for attempt in range(MEASURE_ATTEMPTS):  # a busy moment fails the drift check; the next may pass
                table, reason = measured_or_source(source, archs, out_root / ".measured-tables" / source.table_id,
                                                   progress=False)
                if not reason or "now measure" not in reason:
                    break
                log(f"attempt {attempt + 1} of {MEASURE_ATTEMPTS}: {reason.split(':')[0]}")
            if reason:
                log(f"table keys stay estimated: {reason}")
                return False
            self.measured += len(table.rows) - len(before.rows)
            self.tables[precision] = table
            if before is self.config.table:
                self.config = dataclasses.replace(self.config, table=table)
        return True


# ------------------------------------------------------------------------------------------- choosing


@dataclass
class _Candidate:
    """A pruning point (None: the parent) with its precision allocation (None: fp32) and how far the pruned,
    simulated network moves from the parent on the calibration images (mean KL, nats)."""

    step: int
    plan: PrunePlan | None
    arch: ArchConfig
    bits: Any = None
    damage: float | None = None

    def summary(self, pricing: _Pricing) -> dict[str, Any]:
        out: dict[str, Any] = {"step": self.step, "arch": self.arch.to_str(), "damage_kl": self.damage,
                               "unquantised_cost": pricing.base_cost(self.arch)}
        if self.bits is not None:
            out |= {"pieces": dict(self.bits.pieces), "cost": self.bits.budget_cost}
        return out


def _weight_bits(precision: str) -> int:
    """Weight bits of a precision."""
    from nas.compress.bits import BITS

    return BITS[precision][0]


def _weight_bytes(arch: ArchConfig, precision: str) -> float:
    """Weight bytes of `arch` with every layer at `precision`."""
    from nas.compress.bits import layer_costs

    return float(layer_costs(arch, (precision,), "size_bytes").sum())


def _size_weighted(arch: ArchConfig, sensitivity: Mapping[str, Mapping[str, float]], menu: tuple[str, ...],
                   weight: float) -> dict[str, dict[str, float]]:
    """`sensitivity` + `weight` x each layer's weight bytes at each precision (the Lagrangian of a size bound)."""
    weights = _layer_weights(arch)
    return {layer: {p: float(sensitivity.get(layer, {}).get(p, 0.0)) + weight * n * _weight_bits(p) / 8
                    for p in menu} for layer, n in weights.items()}


def _layer_weights(arch: ArchConfig) -> dict[str, int]:
    """Stored weights of each layer (BatchNorm folded), as `layer_costs` counts them."""
    from latency_tables.counting import layer_ops

    return {op.name: op.weights for op in layer_ops(arch)}


@torch.no_grad()
def _log_probs(model: nn.Module, x: torch.Tensor, plan: BitWidthPlan | None = None) -> torch.Tensor:
    """Log-softmax outputs of `model` (with `plan` fake-quantised, ranges from these images) on `x`."""
    from nas.compress.sensitivity import fake_quantized_layers, output_ranges

    model.eval()
    if plan is None:
        return F.log_softmax(model(x).double(), dim=1)
    ranges = output_ranges(model, x, runtime=True)  # the tensors a runtime quantises, as it calibrates them
    with fake_quantized_layers(model, plan.precisions(_arch(model)), ranges) as simulated:
        return F.log_softmax(simulated(x).double(), dim=1)


def _damage(reference: torch.Tensor, model: nn.Module, x: torch.Tensor, plan: BitWidthPlan | None) -> float:
    """Mean KL(parent || model) over the images `x` (`reference` holds the parent's log-probabilities)."""
    out = _log_probs(model, x, plan)
    return max(float(F.kl_div(out, reference, log_target=True, reduction="batchmean")), 0.0)


class _Chooser:
    """Chooses the pruning point and precisions for one method; sensitivities and pruned models are cached by
    pruning plan across the measuring rounds."""

    def __init__(self, parent: nn.Module, config: CompressConfig, x: torch.Tensor, y: torch.Tensor,
                 recal: torch.Tensor, scores: Mapping[str, np.ndarray] | None, log: Log) -> None:
        self.parent, self.config, self.x, self.y, self.scores, self.log = parent, config, x, y, scores, log
        self.recal = recal
        self.arch = _arch(parent)
        self.reference = _log_probs(parent, x)
        self._models: dict[str, nn.Module] = {}
        self._sensitivity: dict[str, Any] = {}

    def model(self, plan: PrunePlan | None) -> nn.Module:
        from nas.export.prune import prune_model
        from supernets.evaluation import recalibrate_bn

        key = plan.key if plan is not None else ""
        if key not in self._models:  # a pruned network's BatchNorm statistics are its own (EagleEye's adaptive BN)
            with torch.no_grad():
                self._models[key] = recalibrate_bn(prune_model(self.parent, plan), self.recal) if plan is not None \
                    else self.parent
        return self._models[key]

    def bits(self, candidate: _Candidate, pricing: _Pricing) -> Any:
        """The exact precision allocation of `candidate` to the budget (`allocate_bits`)."""
        from nas.compress.bits import allocate_bits
        from nas.compress.sensitivity import measured_sensitivity, precision_scores

        key = candidate.plan.key if candidate.plan is not None else ""
        if key not in self._sensitivity:
            lowered = [p for p in pricing.menu if p != "fp32"]
            self._sensitivity[key] = precision_scores(measured_sensitivity(self.model(candidate.plan), self.x, self.y,
                                                                           lowered, runtime=True))
        sensitivity = self._sensitivity[key]

        def solve(weight: float) -> Any:
            scores = sensitivity if weight == 0 else _size_weighted(candidate.arch, sensitivity, pricing.menu, weight)
            return allocate_bits(candidate.arch, scores, self.config.budget, metric=self.config.metric,
                                 runtime=self.config.menu_runtime, tables=pricing.tables or None,
                                 precisions=pricing.menu if self.config.simulated else None,
                                 switch_cost=pricing.switch_cost(candidate.arch))

        alloc = solve(0.0)
        size = self.config.size_budget
        if size is None or alloc.predicted["size_bytes"] <= size:
            return alloc
        low, high = 0.0, 1e-6
        while solve(high).predicted["size_bytes"] > size:
            high *= 10
            if high > 1e6:  # size outweighs every sensitivity and still does not fit
                raise HwnasError(f"step {candidate.step}: size_bytes<={size:g} cannot be met within "
                                 f"{self.config.metric}<={self.config.budget:g}")
        for _ in range(30):  # the least weight on size that fits it
            mid = (low + high) / 2
            low, high = (low, mid) if solve(mid).predicted["size_bytes"] <= size else (mid, high)
        return solve(high)

    def path(self, pricing: _Pricing) -> list[_Candidate]:
        from nas.compress.allocate import prune_path

        assert self.scores is not None
        # with a size bound the walk may need to go past the point where fp32 meets the latency budget
        until = self.config.budget if self.config.size_budget is None else 1e-12
        points = prune_path(self.arch, self.scores, self.config.metric, until, table=pricing.path_table,
                            round_to=self.config.round_to)
        path = [_Candidate(p.step, p.plan if p.step else None, p.arch) for p in points]
        for i, c in enumerate(path):  # past the first point that meets every bound at the least-sensitive
            if self._settled(c, pricing):  # precisions that meet them, pruning more only loses accuracy
                return path[:i + 1]
        return path

    def _settled(self, c: _Candidate, pricing: _Pricing) -> bool:
        """Whether `c` meets the budget in fp32 (no size bound), or with every piece at its smallest precision
        meets both the latency and the size bound."""
        costs = pricing.costs(c.arch)
        if self.config.size_budget is None:
            return float(costs[:, pricing.menu.index(pricing.base)].sum()) <= self.config.budget
        least = min(pricing.menu, key=_weight_bits)
        return float(costs[:, pricing.menu.index(least)].sum()) <= self.config.budget and \
            _weight_bytes(c.arch, least) <= self.config.size_budget

    def choose(self, pricing: _Pricing) -> tuple[_Candidate, list[_Candidate]]:
        """The chosen candidate and every candidate compared (for the record)."""
        method, budget = self.config.method, self.config.budget
        if method == "prune":
            from nas.compress.allocate import allocate_budget

            assert self.scores is not None
            alloc = allocate_budget(self.arch, self.scores, self.config.metric, budget, table=pricing.path_table,
                                    round_to=self.config.round_to)
            chosen = _Candidate(alloc.steps, alloc.plan if alloc.steps else None, alloc.arch)
            return chosen, [chosen]
        if method == "quantize":
            chosen = _Candidate(0, None, self.arch)
            self._reachable([chosen], pricing)
            chosen.bits = self.bits(chosen, pricing)
            return chosen, [chosen]
        feasible = self._reachable(self.path(pricing), pricing)
        # sequential: the least pruning whose allocation meets the budget(s); joint starts there
        first = self._first_allocated(feasible, pricing)
        if first is None:
            raise HwnasError(f"{method}: no pruning point reaches {self.config.budget_text} with any precision "
                             f"allocation (the changes of precision included); give a larger budget")
        if method == "sequential":
            return feasible[first], [feasible[first]]
        rest = feasible[first:]
        spots = np.linspace(0, len(rest) - 1, min(self.config.candidates, len(rest)))
        compared: list[_Candidate] = []
        for c in (rest[i] for i in sorted({round(float(i)) for i in spots})):
            if c.bits is None and not self._allocated(c, pricing):
                continue
            c.damage = _damage(self.reference, self.model(c.plan), self.x, c.bits.plan)
            compared.append(c)
            self.log(f"joint candidate: step {c.step}, {dict(c.bits.pieces)} -> KL {c.damage:.5f}")
        if not compared:
            raise HwnasError(f"joint: no pruning point reaches {self.config.budget_text} with any precision "
                             f"allocation; give a larger budget")
        return min(compared, key=lambda c: (c.damage, -c.step)), compared

    def _first_allocated(self, path: list[_Candidate], pricing: _Pricing) -> int | None:
        """The first point of `path` with an allocation that meets the budget(s): galloping, then bisection (the
        points further down the path are cheaper, so feasibility holds from some point on)."""
        if self._allocated(path[0], pricing):
            return 0
        probes = sorted({min(2**k, len(path) - 1) for k in range(len(path).bit_length() + 1)} - {0})  # 1, 2, .., end
        low = 0
        for probe in probes:
            if self._allocated(path[probe], pricing):
                break
            low = probe
        else:
            return None
        high = probe
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (low, mid) if self._allocated(path[mid], pricing) else (mid, high)
        return high

    def _allocated(self, c: _Candidate, pricing: _Pricing) -> bool:
        """Give `c` its precision allocation; False when none meets the budget(s) (switches included)."""
        try:
            c.bits = self.bits(c, pricing)
        except HwnasError as err:
            self.log(f"step {c.step} of the pruning path cannot meet {self.config.budget_text} ({err})")
            return False
        return True

    def _reachable(self, candidates: list[_Candidate], pricing: _Pricing) -> list[_Candidate]:
        size = self.config.size_budget
        least = min(pricing.menu, key=_weight_bits)
        feasible = [c for c in candidates if pricing.fastest(c.arch) <= self.config.budget
                    and (size is None or _weight_bytes(c.arch, least) <= size)]
        if not feasible:
            smallest = min(pricing.fastest(c.arch) for c in candidates)
            raise HwnasError(f"{self.config.method}: {self.config.budget_text} cannot be reached on "
                             f"{self.config.runtime}: the smallest reachable "
                             f"{'(every group at its fewest channels, ' if self.config.method != 'quantize' else '('}"
                             f"each block at its fastest precision) is {smallest:.6g}")
        return feasible


def _choose_measured(chooser: _Chooser, pricing: _Pricing, out_root: Path, log: Log
                     ) -> tuple[_Candidate, list[_Candidate]]:
    """The choice, with the latency keys it rests on measured on demand and the choice made again on the
    measured tables, until it needs no estimate (at most `MEASURE_ROUNDS` rounds)."""
    chosen, compared = chooser.choose(pricing)
    if pricing.config.metric != "latency_ms" or not pricing.config.measure_keys:
        return chosen, compared
    def used(c: _Candidate) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c.bits.pieces.values())) if c.bits is not None else \
            (str(pricing.config.table.profile.precision),)

    for _ in range(MEASURE_ROUNDS):
        if not pricing.missing(chosen.arch, used(chosen)):
            return chosen, compared
        before = pricing.measured
        complete = pricing.measure(chosen.arch, used(chosen), out_root, log)
        if pricing.measured > before:  # some keys were measured: choose again on them
            chooser.config = pricing.config
            chosen, compared = chooser.choose(pricing)
        if not complete:
            return chosen, compared
    # the last choice's keys are measured too, so that its prediction (and the verdict on it) rests on measurements
    before = pricing.measured
    pricing.measure(chosen.arch, used(chosen), out_root, log)
    chooser.config = pricing.config
    pricing.repriced = pricing.measured > before
    return chosen, compared


# ------------------------------------------------------------------------------------------- training


def _qat(config: CompressConfig, model: nn.Module, bits: BitWidthPlan | None, data: Any, x_cal: torch.Tensor,
         tunes: bool, log: Log) -> bool:
    """Whether the fine-tune trains with `bits` fake-quantised (see `CompressConfig.qat`)."""
    if bits is None or not set(bits.precisions(_arch(model)).values()) - {"fp32"} or config.qat == "never":
        return False
    if config.qat == "always" or tunes:
        return True
    acc = fidelity(_outputs(model, data, None, x_cal), _outputs(model, data, bits, x_cal), data.val.labels)
    drop = acc["accuracy_before"] - acc["accuracy_after"]
    log(f"post-training quantisation: {acc['accuracy_before']:.2%} -> {acc['accuracy_after']:.2%}"
        + (f"; more than {config.tolerance:.1%} lost, so quantisation-aware training" if drop > config.tolerance
           else ""))
    return drop > config.tolerance


def _finetune(model: nn.Module, data: Any, config: CompressConfig, plan: PrunePlan | None, bits: BitWidthPlan | None,
              teacher: nn.Module | None, x_cal: torch.Tensor, out_root: Path, log: Log, progress: bool,
              scores: Mapping[str, np.ndarray] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Fine-tune `model` (the pruned network; with `scores`, the unpruned parent, masked gradually towards `plan`
    over `config.gradual` epochs and pruned at the end)."""
    from nas.compress.finetune import FinetuneConfig, finetune

    tune = FinetuneConfig(epochs=config.epochs, lr=config.lr, seed=config.seed, max_steps=config.max_steps,
                          alpha=config.alpha if teacher is not None else 0.0, temperature=config.temperature,
                          feature_weight=config.feature_weight if teacher is not None else 0.0,
                          prune_epochs=config.gradual if scores is not None else 0)
    # one work directory per plan, fine-tune and teacher: the same command run again resumes a cut-off fine-tune
    ident = [plan.key if plan else None, bits.key if bits else None, tune.to_dict(), config.teacher]
    run_id = hashlib.sha256(json.dumps(ident, default=str).encode()).hexdigest()[:12]
    work = out_root / f".{_arch(model).key}.{run_id}.finetune"
    result = finetune(model, data, work, tune, teacher=teacher, bits=bits, calibration=x_cal if bits else None,
                      plan=plan if scores is not None else None, scores=scores, progress=progress, log=log)
    shutil.rmtree(work, ignore_errors=True)
    return result.model, {"finetune": tune.to_dict(), "history": result.history, "qat": bits is not None,
                          "teacher": (config.teacher or ("largest" if config.supernet else "parent"))
                          if teacher is not None else None, "gradual": tune.prune_epochs}


def _bias_corrected(model: nn.Module, bits: BitWidthPlan, x_cal: torch.Tensor, log: Log) -> tuple[nn.Module, bool]:
    """`model` with empirical bias correction for `bits`, where that brings its simulation closer to its float
    outputs on the calibration images."""
    from nas.compress.guard import bias_correct

    reference = _log_probs(model, x_cal)
    corrected = bias_correct(model, bits, x_cal)
    before, after = _damage(reference, model, x_cal, bits), _damage(reference, corrected, x_cal, bits)
    log(f"bias correction: KL to float {before:.5f} -> {after:.5f}" + ("" if after < before else " (not kept)"))
    return (corrected, True) if after < before else (model, False)


@dataclass
class _Result:
    model: nn.Module
    prune_plan: PrunePlan | None
    bits: BitWidthPlan | None
    info: dict[str, Any]
    config: CompressConfig
    predicted: float
    predicted_ms: float | None
    images: torch.Tensor  # the calibration images every stage used


def _compressed(parent: nn.Module, spec: Any, data: Any, config: CompressConfig, out_root: Path, log: Log,
                progress: bool) -> _Result:
    """The compressed model, its plans, what each stage found, and the config as it ends (its table holds the
    keys measured on demand)."""
    from nas.compress.importance import channel_importance

    torch.manual_seed(config.seed)
    teacher = _teacher(config, parent, data)  # a teacher that does not fit is refused before any work
    arch = _arch(parent)
    x, y = _sample(data, config.images, config.seed, arch.resolution)
    scores = None
    if config.method != "quantize":
        scores = channel_importance(parent, config.criterion, list(zip(x.split(32), y.split(32), strict=True)))
    pricing = _Pricing.of(config, spec.space)
    pricing.switch_source = (parent, x, out_root, log)  # fitted when the first allocation needs it
    recal, _ = _sample(data, config.recal_images, config.seed + 1, arch.resolution)
    chooser = _Chooser(parent, config, x, y, recal, scores, log)
    chosen, compared = _choose_measured(chooser, pricing, out_root, log)
    config = pricing.config
    bits = chosen.bits.plan if chosen.bits is not None else None
    if bits is not None and not set(bits.precisions(chosen.arch).values()) - {"fp32"}:
        bits = None  # every block stays fp32: nothing to quantise
    log(f"{config.method}: step {chosen.step} of the pruning path, {config.metric} "
        f"{pricing.base_cost(chosen.arch):.6g} in {pricing.base}"
        + (f", {chosen.bits.budget_cost:.6g} at {dict(chosen.bits.pieces)}" if bits is not None else "")
        + f" (budget {config.budget:g})")
    model = chooser.model(chosen.plan)
    info: dict[str, Any] = {"switch_cost": pricing.switch.to_dict() if pricing.switch is not None else None,
                            "choice": {**chosen.summary(pricing), "measured_keys": pricing.measured,
                                       "estimated": bool(pricing.missing(chosen.arch, pricing.menu)),
                                       "repriced": pricing.repriced},
                            "candidates": [c.summary(pricing) for c in compared]}
    tunes = chosen.plan is not None
    qat = _qat(config, model, bits, data, x, tunes, log)
    if tunes or qat:
        gradual = config.gradual > 0 and chosen.plan is not None
        model, info["finetune"] = _finetune(parent if gradual else model, data, config, chosen.plan,
                                            bits if qat else None, teacher, x, out_root, log, progress,
                                            scores if gradual else None)
    if bits is not None:
        if not qat:
            model, info["bias_corrected"] = _bias_corrected(model, bits, x, log)
        bits = _guarded(model, bits, data, x, config, log, info)
    predicted, predicted_ms = _predicted(chosen.arch, bits, pricing, config)
    return _Result(model, chosen.plan, bits, info, config, predicted, predicted_ms, x)


def _guarded(model: nn.Module, bits: BitWidthPlan, data: Any, x_cal: torch.Tensor, config: CompressConfig, log: Log,
             info: dict[str, Any]) -> BitWidthPlan | None:
    from nas.compress.guard import guard_plan

    guard = guard_plan(model, bits, data, x_cal, tolerance=config.tolerance, strict=config.strict, log=log)
    info["guard"] = guard.to_dict()
    plan = guard.plan
    return plan if set(plan.precisions(_arch(model)).values()) - {"fp32"} else None


def _predicted(arch: ArchConfig, bits: BitWidthPlan | None, pricing: _Pricing, config: CompressConfig
               ) -> tuple[float, float | None]:
    """The plan's cost in the budget's metric, and its latency on the budget's table when the metric is latency.
    A piece with any layer raised to fp32 by the guard is priced at fp32 (the conservative side)."""
    from latency_tables.analytic import AnalyticCostModel
    from nas.compress.bits import arch_pieces

    if config.metric == "macs":
        return float(AnalyticCostModel("fp32").estimate(arch).macs), None
    costs = pricing.costs(arch)
    chosen = []
    for _, layers in arch_pieces(arch):
        used = {bits.precision_of(n) if bits else "fp32" for n in layers}
        chosen.append(pricing.base if "fp32" in used or len(used) != 1 else used.pop())
    total = float(sum(costs[i, pricing.menu.index(p)] for i, p in enumerate(chosen)))
    if config.metric == "latency_ms" and pricing.switch is not None:
        total += pricing.switch.total(arch, chosen)
    return total, total if config.metric == "latency_ms" else None


# ------------------------------------------------------------------------------------------- reporting


@torch.no_grad()
def _outputs(model: nn.Module, data: Any, plan: BitWidthPlan | None, x_cal: torch.Tensor) -> torch.Tensor:
    """Softmax outputs of `model` (with `plan` simulated in torch) on the validation split."""
    from nas.compress.sensitivity import fake_quantized_layers, output_ranges
    from supernets.data import to_tensor

    model.eval()
    x = to_tensor(data.val.images, _arch(model).resolution, data.mean, data.std)
    if plan is None:
        return torch.softmax(model(x).double(), dim=1)
    ranges = output_ranges(model, x_cal, runtime=True)
    with fake_quantized_layers(model, plan.precisions(_arch(model)), ranges) as simulated:
        return torch.softmax(simulated(x).double(), dim=1)


def fidelity(before: torch.Tensor, after: torch.Tensor, labels: np.ndarray) -> dict[str, float]:
    """Accuracy of both output distributions, label loyalty and probability loyalty (see the module docstring)."""
    mix = (before + after) / 2

    def kl(p: torch.Tensor) -> torch.Tensor:
        return torch.where(p > 0, p * torch.log2(p.clamp_min(1e-300) / mix.clamp_min(1e-300)), 0.0).sum(dim=1)

    js = ((kl(before) + kl(after)) / 2).clamp(0.0, 1.0)
    y = torch.from_numpy(labels)
    return {"accuracy_before": float((before.argmax(1) == y).double().mean()),
            "accuracy_after": float((after.argmax(1) == y).double().mean()),
            "label_loyalty": float((before.argmax(1) == after.argmax(1)).double().mean()),
            "probability_loyalty": float((1 - js.sqrt()).mean())}


def _sizes(parent: nn.Module, model: nn.Module, plan: BitWidthPlan | None) -> dict[str, Any]:
    """Parameters, MACs and weight bytes (at each layer's precision) before and after, and their ratios."""
    from latency_tables.analytic import AnalyticCostModel
    from nas.compress.bits import layer_costs

    arch_p, arch_c = _arch(parent), _arch(model)
    macs = (AnalyticCostModel("fp32").estimate(arch_p).macs, AnalyticCostModel("fp32").estimate(arch_c).macs)
    params = (sum(p.numel() for p in parent.parameters()), sum(p.numel() for p in model.parameters()))
    bytes_before = float(layer_costs(arch_p, ("fp32",), "size_bytes").sum())
    if plan is None:
        bytes_after = float(layer_costs(arch_c, ("fp32",), "size_bytes").sum())
    else:
        weights = _layer_weights(arch_c)
        bytes_after = sum(weights[layer] * _weight_bits(p) / 8 for layer, p in plan.precisions(arch_c).items())
    return {"params_before": params[0], "params_after": params[1], "params_ratio": params[0] / params[1],
            "macs_before": macs[0], "macs_after": macs[1], "macs_ratio": macs[0] / macs[1],
            "bytes_before": bytes_before, "bytes_after": bytes_after, "bytes_ratio": bytes_before / bytes_after}


def _protocol(config: CompressConfig) -> Protocol:
    """How both the parent and the compressed model are timed: the config's protocol, else the table's."""
    return config.protocol or Protocol.from_dict(config.table.meta["protocol"])


def _parent_measured(directory: Path, spec: Any, runtime: str, protocol: Protocol, log: Log) -> float | None:
    """The parent's fp32 model on `runtime` timed now by `protocol` (None when it was not exported)."""
    from nas.export.latency import measure
    from nas.export.spec import label

    if (runtime, "fp32") not in spec.models:
        log(f"the parent has no {runtime} fp32 model: no measured speed-up")
        return None
    return float(measure(directory, spec, [(runtime, "fp32")], protocol, (), log)[label(runtime, "fp32")]["median_ms"])


def _measured_after(metrics: Mapping[str, Any], config: CompressConfig, parent_ms: float | None) -> dict[str, Any]:
    """The compressed model's measured latency on the budget's runtime (from the export's metrics), speed-up and
    (for a latency budget) the verdict."""
    measured = metrics["latency"]["measured"]
    after = next((float(m["median_ms"]) for m in measured.values() if m["runtime"] == config.runtime), None)
    out: dict[str, Any] = {"measured_ms": after}
    if after and parent_ms:
        out["measured_speedup"] = parent_ms / after
    if after is not None and config.metric == "latency_ms":
        out["meets_budget_measured"] = bool(after <= config.budget)
    return out


def side_by_side(parent_dir: Path, directory: Path, model: tuple[str, str], protocol: Protocol) -> dict[str, Any]:
    """The parent's fp32 model and the compressed `model` (runtime, precision) timed round-robin in one run (each
    repeat runs both), so that the speed-up is a ratio measured side by side on this shared, noisy machine."""
    from nas.export.spec import model_file
    from search_spaces.files import pinned_to_cpu

    runtime, precision = model
    rt = get_runtime(runtime)
    with pinned_to_cpu(protocol.pin_cpu):
        before, after = rt.measure_many([parent_dir / model_file(runtime, "fp32"),
                                         directory / model_file(runtime, precision)], protocol)
    return {"parent_ms": before.median_ms, "compressed_ms": after.median_ms,
            "speedup": before.median_ms / after.median_ms}


def _file_sizes(parent_dir: Path, spec: Any, directory: Path, runtimes: tuple[tuple[str, str], ...]
                ) -> dict[str, Any]:
    """Bytes of each runtime model file written, beside the parent's fp32 file of that runtime, and their ratio."""
    from nas.export.spec import model_file

    sizes: dict[str, Any] = {}
    for runtime, precision in runtimes:
        after = (directory / model_file(runtime, precision)).stat().st_size
        before_path = parent_dir / model_file(runtime, "fp32")
        before = before_path.stat().st_size if (runtime, "fp32") in spec.models and before_path.is_file() else None
        sizes[f"{runtime}-{precision}"] = {"file": model_file(runtime, precision), "bytes": after,
                                           "parent_bytes": before, "ratio": before / after if before else None}
    return sizes


def _other_runtime(config: CompressConfig, log: Log) -> str | None:
    """The other converting runtime that gets an fp32 model, when installed."""
    if not config.other_runtime:
        return None
    for name, entry in RUNTIMES.items():
        if name != config.runtime and entry.converter:
            try:
                get_runtime(name).version()
            except RuntimeMissing as err:
                log(f"no {name} model: {err}")
                return None
            return name
    return None


def _summary(parent: nn.Module, spec: Any, result: _Result, data: Any, parent_ms: float | None,
             other: str | None) -> dict[str, Any]:
    """Everything `compress.json` says but the compressed model's measured latency."""
    config, model, bits = result.config, result.model, result.bits
    x_cal = result.images
    fid = fidelity(_outputs(parent, data, None, x_cal), _outputs(model, data, bits, x_cal), data.val.labels)
    parent_cost = float(result.info["candidates"][0]["unquantised_cost"]) if config.method == "quantize" else None
    latency: dict[str, Any] = {"predicted_ms": result.predicted_ms, "parent_measured_ms": parent_ms,
                               "protocol": _protocol(config).to_dict()}
    if config.metric == "latency_ms":
        parent_ms_pred = config.table.predict_arch(spec.arch, estimate_missing=True) \
            if config.table.profile.precision == "fp32" else parent_cost
        latency["parent_predicted_ms"] = parent_ms_pred
        if result.predicted_ms and parent_ms_pred:
            latency["predicted_speedup"] = parent_ms_pred / result.predicted_ms
    models = {config.runtime: "mixed" if bits is not None and len(bits.used(_arch(model))) > 1 else
              (bits.used(_arch(model))[0] if bits is not None else "fp32")}
    if other:
        models[other] = f"fp32 (the bit-width plan is {config.runtime}'s)" if bits is not None else "fp32"
    return {"method": config.method, "parent": spec.key, "metric": config.metric, "budget": config.budget,
            "size_budget": config.size_budget, "runtime": config.runtime,
            "budget_ms": config.budget if config.metric == "latency_ms" else None, "predicted": result.predicted,
            "meets_budget_predicted": bool(result.predicted <= config.budget * (1 + 1e-9)),
            "table": config.table.table_id, "models": models, **fid, **_sizes(parent, model, bits),
            "latency": latency, **result.info}


def compress_subnet(subnet_dir: str | Path, out_root: str | Path, config: CompressConfig, *, data: Any = None,
                    log: Log = print, progress: bool = False) -> Path:
    """Compress the exported subnet in `subnet_dir` by `config` and export it to `out_root/<key>/` (the key of its
    architecture and plans); returns that directory. `data` defaults to the dataset its provenance names;
    `progress` shows the fine-tune's progress bars."""
    from nas.export import ExportOptions, Provenance, SubnetSpec, export_model, load_subnet
    from nas.export.spec import check_data
    from supernets.data import load_dataset

    subnet_dir, out_root = Path(subnet_dir), Path(out_root)
    parent, spec = load_subnet(subnet_dir)
    data = load_dataset(spec.provenance.dataset, seed=spec.provenance.seed) if data is None else data
    check_data(spec.arch, data)
    result = _compressed(parent, spec, data, config, out_root, log, progress)
    config, model, bits = result.config, result.model, result.bits
    used = ("fp32",) if bits is None else bits.used(_arch(model))
    simulated = bits is not None and bool(bits.simulated_in(_arch(model)))
    precision = "simulated" if simulated else used[0] if len(used) == 1 else "mixed"
    other = None if simulated else _other_runtime(config, log)
    # the parent is timed first, so that metrics.json holds every figure but the new model's own measurement
    parent_ms = None if simulated else _parent_measured(subnet_dir, spec, config.runtime, _protocol(config), log)
    summary = {**_summary(parent, spec, result, data, parent_ms, other), "precision": precision,
               "simulated": simulated}
    if config.min_accuracy is not None and summary["accuracy_after"] < config.min_accuracy:
        raise HwnasError(f"the compressed subnet reaches {summary['accuracy_after']:.2%} on the validation split, "
                         f"below the accuracy floor {config.min_accuracy:.2%} (parent "
                         f"{summary['accuracy_before']:.2%}); nothing was exported: give a larger budget, more "
                         f"--epochs, or a lower floor")
    if simulated:  # accuracy, size and BitOPs of a plan no runtime runs: no runtime model is written
        summary["models"] = {}
        log("the plan uses simulated bit-widths: its figures are simulated and no runtime model is written")
    provenance = dataclasses.replace(spec.provenance, dataset=data.name, seed=config.seed,
                                     table_ids=(config.table.table_id,))
    new = SubnetSpec(_arch(model), spec.space, spec.mean, spec.std,
                     Provenance.from_dict(provenance.to_dict()), prune_plan=result.prune_plan, bitwidth_plan=bits)
    like_table = config.metric == "latency_ms" and precision == config.table.profile.precision
    runtimes = () if simulated else ((config.runtime, precision),) + (((other, "fp32"),) if other else ())
    options = ExportOptions(runtimes=runtimes, tables=(config.table,), protocol=_protocol(config),
                            constraint=config.budget_text if like_table else None,
                            parity_images=config.parity_images, overwrite=config.overwrite,
                            float_runtimes=(other,) if other and bits is not None else ())

    def compress_file(metrics: dict[str, Any], directory: Path) -> dict[str, str]:
        summary["key"] = new.key
        summary["latency"].update(_measured_after(metrics, config, parent_ms))
        summary["files"] = _file_sizes(subnet_dir, spec, directory, runtimes)
        if runtimes and parent_ms is not None:
            summary["latency"]["side_by_side"] = side_by_side(subnet_dir, directory, runtimes[0], _protocol(config))
        return {COMPRESS_FILE: json.dumps(summary, indent=2, default=str) + "\n"}

    return export_model(model, new, data, out_root, options, extra_metrics={"compress": summary}, progress=log,
                        extra_files=compress_file)


def compress_once(subnet_dir: Path, out_root: Path, method: str, config: Callable[[], CompressConfig], *,
                  log: Log = print, progress: bool = False) -> Path:
    """`compress_subnet` of `subnet_dir` by `method` into `out_root`, once: the result is recorded in
    `out_root/<subnet name>.<method>.json` and a later call returns the compressed directory it names (while it
    exists) instead of compressing again. `config` builds the configuration only when it is needed."""
    from search_spaces.files import atomic_write_text

    done = out_root / f"{subnet_dir.name}.{method}.json"
    if done.is_file():
        path = Path(json.loads(done.read_text(encoding="utf-8"))["path"])
        if path.is_dir():
            log(f"{subnet_dir.name}: compressed before ({path.name})")
            return path
    path = compress_subnet(subnet_dir, out_root, config(), log=log, progress=progress)
    atomic_write_text(done, json.dumps({"parent": subnet_dir.name, "path": str(path)}) + "\n")
    return path
