"""Bit-width allocation: a precision per lookup-table piece (stem, each block, head) from the runtime's menu, with
the least summed sensitivity under a budget on latency, model size or BitOPs. Torch-free.

A piece's layers share one precision because the measured tables are keyed per piece: the piece's latency at a
precision is its key's median in the table of that runtime and precision (`runtime_tables`), so nothing assumes
int8 is faster; some blocks of the shipped small-space tables are slower in int8, and the allocator keeps them at
fp32 when that is better. Each table's network-level correction is spread over the pieces (scale x median +
per-piece term + offset / pieces), so a plan with every piece at one precision costs exactly what that table's
`predict_arch` says. A key a table lacks is estimated (`LatencyTable.estimate_key`) and listed in `estimated`.
Model size is each layer's stored weights (BatchNorm folded) x bytes of its precision; BitOPs are each layer's
MACs x weight bits x activation bits.

The problem is HAWQ-V3's integer program (Yao et al., "HAWQ-V3: Dyadic Neural Network Quantization", ICML 2021:
minimise the summed sensitivity subject to a latency, size or BitOPs budget), solved exactly by dynamic
programming over the pieces in network order instead of an ILP solver. The state is (piece, its precision,
budget used in buckets), so a cost for switching precision between neighbours (the quantize / dequantize at the
boundary, including the network's fp32 input and output) can be charged: `switch_cost`. Costs are bucketed
(`resolution`; by default the budget's slack in 2000 buckets): rounded down they relax the budget, and that
optimum is returned when its real cost fits (then it is the true optimum); otherwise the rounded-up optimum,
which always fits, with `optimality_gap` bounding how much more sensitive it may be than the true optimum.
Budgets are kept up to float rounding (1e-9 relative).

Simulated integer bit-widths (`w4a8`: 4-bit weights, 8-bit activations; `search_spaces.plans.SIMULATED_PRECISIONS`)
are for size or BitOPs budgets of accelerators hwnas cannot run: `runtime="simulated"` with a menu of them (and
fp32), no tables. No runtime runs them, so they have no measured latency: a `latency_ms` budget with one is refused.
The plan lists every layer at one in `BitWidthPlan.simulated`, and export refuses it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from latency_tables.counting import layer_ops
from latency_tables.keys import arch_keys
from latency_tables.runtimes import RUNTIMES, runtime_spec
from latency_tables.table import LatencyTable, find_table
from search_spaces import ArchConfig
from search_spaces.errors import HwnasError
from search_spaces.plans import PRECISIONS, SIMULATED_PRECISIONS, BitWidthPlan, simulated_bits

METRICS = ("latency_ms", "size_bytes", "bitops")
#: (weight bits, activation bits) per precision, for size and BitOPs: native ones, then every simulated `w<b>a<b>`.
BITS: dict[str, tuple[int, int]] = {"fp32": (32, 32), "fp16": (16, 16), "int8": (8, 8),
                                    **{p: b for p in SIMULATED_PRECISIONS if (b := simulated_bits(p)) is not None}}
#: The runtime name of simulated precisions: no runtime runs them, so no tables and no latency.
SIMULATED_RUNTIME = "simulated"
#: What `runtime="simulated"` may choose from when no `precisions` are given.
DEFAULT_SIMULATED_MENU = ("fp32", "w8a8", "w4a8", "w2a8")
#: Most buckets the budget may be cut into (the DP's memory is pieces x precisions x buckets bytes).
MAX_BUCKETS = 200_000
DEFAULT_BUCKETS = 2_000

SwitchCost = float | Callable[[int, str, str], float]


def arch_pieces(arch: ArchConfig) -> list[tuple[str, list[str]]]:
    """The pieces of `arch` in `arch_keys` order (`stem`, `s0.b0`, ..., `head`) with their layer ids."""
    pieces: dict[str, list[str]] = {"stem": []}
    pieces |= {f"s{site.stage}.b{site.position}": [] for site in arch.sites()}
    pieces["head"] = []
    for op in layer_ops(arch):
        name = op.name
        piece = "stem" if name == "stem" else "head" if name in ("head", "hidden", "classifier") else \
            ".".join(name.split(".")[:2])
        pieces[piece].append(name)
    return list(pieces.items())


def boundary_elements(arch: ArchConfig) -> list[int]:
    """Elements of the tensor at each boundary between pieces (batch 1): before piece b for b < pieces, the
    network's output last. What a quantize / dequantize there touches: e.g. `switch_cost=lambda b, before,
    after: ms_per_element * elements[b]`."""
    keys = arch_keys(arch)
    return [k.height * k.width * k.in_channels for k in keys] + [arch.num_classes]


def runtime_menu(runtime: str, precisions: Sequence[str] | None = None) -> tuple[str, ...]:
    """The precisions one piece may run at on `runtime` (its table precisions that a mixed model runs per layer),
    or the subset `precisions` of them. For `runtime="simulated"`: fp32 and the simulated precisions given
    (`DEFAULT_SIMULATED_MENU` when none are), most bits first."""
    if runtime == SIMULATED_RUNTIME:
        return _simulated_menu(precisions)
    simulated = [p for p in precisions or () if simulated_bits(p) is not None]
    if simulated:
        raise HwnasError(f"simulated precision(s) {', '.join(simulated)} are not on {runtime}'s menu (no runtime runs "
                         f"them); allowed: runtime={SIMULATED_RUNTIME!r} with a size_bytes or bitops budget")
    spec = runtime_spec(runtime)
    menu = tuple(p for p in spec.precisions if p in PRECISIONS and (p in spec.layer_precisions
                                                                    or not spec.layer_precisions))
    if precisions is None:
        return menu
    wrong = [p for p in precisions if p not in menu]
    if wrong or not precisions:
        raise HwnasError(f"precision(s) {', '.join(wrong) or 'none given'} not on {runtime}'s menu; allowed: "
                         f"{', '.join(menu)}")
    return tuple(p for p in menu if p in precisions)


def _simulated_menu(precisions: Sequence[str] | None) -> tuple[str, ...]:
    order = ("fp32", *SIMULATED_PRECISIONS)
    if precisions is None:
        return DEFAULT_SIMULATED_MENU
    wrong = [str(p) for p in precisions if p not in order]
    if wrong or not precisions:
        raise HwnasError(f"precision(s) {', '.join(wrong) or 'none given'} not on the {SIMULATED_RUNTIME} menu; "
                         f"allowed: fp32 and simulated w<2-8>a<2-8|16> (e.g. w4a8)")
    return tuple(p for p in order if p in precisions)


def runtime_tables(space: str, runtime: str, precisions: Sequence[str] | None = None,
                   **find: Any) -> dict[str, LatencyTable]:
    """The latency table of each precision on `runtime`'s menu (`find_table`; `find` passes device, threads,
    search)."""
    if runtime == SIMULATED_RUNTIME:
        raise HwnasError(f"runtime {SIMULATED_RUNTIME!r} has no latency tables: no runtime runs simulated "
                         f"precisions; allowed: a runtime with tables ({', '.join(RUNTIMES)})")
    return {p: find_table(space, runtime, p, **find) for p in runtime_menu(runtime, precisions)}


def latency_costs(arch: ArchConfig, tables: Mapping[str, LatencyTable], menu: Sequence[str]
                  ) -> tuple[np.ndarray, list[str]]:
    """(pieces x precisions) latency in ms, each table's correction spread over the pieces, and the keys that
    were estimated (as text)."""
    missing = [p for p in menu if p not in tables]
    if missing:
        raise HwnasError(f"no latency table for precision(s) {', '.join(missing)}; tables given for "
                         f"{', '.join(tables) or 'none'}")
    keys = arch_keys(arch)
    costs = np.zeros((len(keys), len(menu)))
    estimated: set[str] = set()
    for j, precision in enumerate(menu):
        table = tables[precision]
        scale, per_piece, offset = table.correction
        for i, key in enumerate(keys):
            if key in table.rows:
                median = table.rows[key][0]
            else:
                median = table.estimate_key(key)
                estimated.add(f"{precision}:{key.to_str()}")
            costs[i, j] = scale * median + per_piece + offset / len(keys)
    return costs, sorted(estimated)


def layer_costs(arch: ArchConfig, menu: Sequence[str], metric: str) -> np.ndarray:
    """(pieces x precisions) model size in bytes or BitOPs, summed over each piece's layers."""
    ops = {op.name: op for op in layer_ops(arch)}
    pieces = arch_pieces(arch)
    costs = np.zeros((len(pieces), len(menu)))
    for i, (_, layers) in enumerate(pieces):
        for j, precision in enumerate(menu):
            w_bits, a_bits = BITS[precision]
            per_layer = [ops[n].weights * w_bits / 8 if metric == "size_bytes" else ops[n].macs * w_bits * a_bits
                         for n in layers]
            costs[i, j] = sum(per_layer)
    return costs


def _switch_matrix(switch_cost: SwitchCost, names: Sequence[str], menu: Sequence[str]) -> np.ndarray:
    """(boundaries x precisions x precisions): the cost of each change of precision at boundary b (before piece
    b; 0 is the network's fp32 input, len(names) its output)."""
    def cost(boundary: int, before: str, after: str) -> float:
        if before == after:
            return 0.0
        return float(switch_cost(boundary, before, after) if callable(switch_cost) else switch_cost)

    io = "fp32"
    found = np.zeros((len(names) + 1, len(menu), len(menu)))
    for b in range(len(names) + 1):
        for p, before in enumerate(menu):
            for q, after in enumerate(menu):
                found[b, p, q] = cost(b, io if b == 0 else before, io if b == len(names) else after)
    if (found < 0).any() or not np.isfinite(found).all():
        raise HwnasError("switch_cost must be finite and >= 0 for every change of precision")
    return found


@dataclass(frozen=True)
class ChainSolution:
    """The chosen option index per piece, its cost (switches included), its summed sensitivity, and how much
    more sensitive it may be than the true optimum because costs were rounded to buckets (0: proven optimal)."""

    choice: tuple[int, ...]
    cost: float
    sensitivity: float
    gap: float = 0.0


def chain_cost(choice: Sequence[int], cost: np.ndarray, between: np.ndarray) -> float:
    """The cost of `choice`: its pieces' costs plus the switches between neighbours (`between[i]` before piece
    i + 1)."""
    total = sum(cost[i, q] for i, q in enumerate(choice))
    return float(total + sum(between[i, choice[i], choice[i + 1]] for i in range(len(choice) - 1)))


def min_cost_chain(sensitivity: np.ndarray, cost: np.ndarray, between: np.ndarray) -> ChainSolution:
    """The cheapest choice (exact, no rounding; Viterbi over the pieces)."""
    best = cost[0].copy()
    back = np.zeros(cost.shape, dtype=np.int64)
    for i in range(1, len(cost)):
        total = best[:, None] + between[i - 1]
        back[i] = total.argmin(axis=0)
        best = total.min(axis=0) + cost[i]
    choice = [int(best.argmin())]
    for i in range(len(cost) - 1, 0, -1):
        choice.append(int(back[i, choice[-1]]))
    choice.reverse()
    return ChainSolution(tuple(choice), chain_cost(choice, cost, between),
                         float(sum(sensitivity[i, q] for i, q in enumerate(choice))))


def _fits(cost: float, budget: float) -> bool:
    return cost <= budget + 1e-9 * abs(budget) + 1e-12  # float rounding of the sums


def _solution(choice: Sequence[int], sensitivity: np.ndarray, cost: np.ndarray, between: np.ndarray
              ) -> ChainSolution:
    return ChainSolution(tuple(choice), chain_cost(choice, cost, between),
                         float(sum(sensitivity[i, q] for i, q in enumerate(choice))))


def solve_chain(sensitivity: np.ndarray, cost: np.ndarray, budget: float, between: np.ndarray | None = None, *,
                resolution: float | None = None) -> ChainSolution:
    """The choice per piece (rows; columns are options) with the least summed sensitivity whose cost, plus
    `between[i][p, q]` for option p at piece i and q at piece i + 1, is within `budget`; ties go to the cheaper
    plan. An unreachable budget raises a `HwnasError` naming the smallest reachable.

    Two DPs over bucketed costs: rounded down, the budget is relaxed, so that optimum is a lower bound, and the
    true optimum when its real cost fits; otherwise rounded up, every plan found fits, and `gap` says how far
    from the lower bound it may be."""
    sensitivity, cost = np.asarray(sensitivity, float), np.asarray(cost, float)
    n, options = cost.shape
    between = np.zeros((max(n - 1, 0), options, options)) if between is None else np.asarray(between, float)
    cheapest = min_cost_chain(sensitivity, cost, between)
    if not _fits(cheapest.cost, budget):
        raise HwnasError(f"budget {budget:.6g} cannot be reached; the smallest reachable is {cheapest.cost:.6g}")
    base = cost.min(axis=1)
    room = budget - float(base.sum())
    unit = resolution if resolution is not None else (room / DEFAULT_BUCKETS if room > 0 else 1.0)
    if unit <= 0 or room / unit > MAX_BUCKETS:
        raise HwnasError(f"resolution {unit:.6g} cuts the budget into more than {MAX_BUCKETS} buckets (or is <= 0); "
                         f"allowed: a resolution > 0 and >= {room / MAX_BUCKETS:.6g}")
    top = max(0, math.floor(room / unit + 1e-9))
    extra = cost - base[:, None]
    low_choice = _bucket_dp(sensitivity, _buckets(extra, unit, up=False), _buckets(between, unit, up=False), top)
    if low_choice is None:  # cannot happen while the cheapest plan fits; kept as a guard
        return cheapest
    low = _solution(low_choice, sensitivity, cost, between)
    if _fits(low.cost, budget):
        return low
    high_choice = _bucket_dp(sensitivity, _buckets(extra, unit, up=True), _buckets(between, unit, up=True), top)
    high = cheapest if high_choice is None else _solution(high_choice, sensitivity, cost, between)
    return replace(high, gap=max(high.sensitivity - low.sensitivity, 0.0))


def _buckets(values: np.ndarray, unit: float, *, up: bool) -> np.ndarray:
    scaled = np.maximum(values, 0.0) / unit
    return (np.ceil(scaled - 1e-9) if up else np.floor(scaled + 1e-9)).astype(np.int64)


def _bucket_dp(sensitivity: np.ndarray, cost: np.ndarray, between: np.ndarray, top: int) -> tuple[int, ...] | None:
    """value[q, b]: least sensitivity of pieces 0..i with piece i at option q and b buckets used."""
    n, options = cost.shape
    value = np.full((options, top + 1), np.inf)
    for q in range(options):
        if cost[0, q] <= top:
            value[q, cost[0, q]] = sensitivity[0, q]
    back = np.full((n, options, top + 1), -1, dtype=np.int16)
    for i in range(1, n):
        new = np.full_like(value, np.inf)
        for q in range(options):
            for p in range(options):
                shift = int(between[i - 1, p, q] + cost[i, q])
                if shift > top:
                    continue
                candidate = value[p, :top + 1 - shift] + sensitivity[i, q]
                better = candidate < new[q, shift:]
                new[q, shift:][better] = candidate[better]
                back[i, q, shift:][better] = p
        value = new
    best = value.min()
    if not np.isfinite(best):
        return None
    near = value <= best + 1e-12 * max(1.0, abs(best))
    b = int(np.flatnonzero(near.any(axis=0))[0])  # the cheapest of the least sensitive
    q = int(np.flatnonzero(near[:, b])[0])
    choice = [q]
    for i in range(n - 1, 0, -1):
        p = int(back[i, q, b])
        b -= int(between[i - 1, p, q] + cost[i, q])
        q = p
        choice.append(q)
    return tuple(reversed(choice))


@dataclass(frozen=True)
class BitAllocation:
    """A bit-width plan and what it is predicted to cost.

    Args:
        plan: every layer id with its precision.
        pieces: each piece (`stem`, `s0.b0`, ..., `head`) with its precision.
        metric, budget: what was budgeted; `budget_cost` is the plan's cost in that metric, switches included.
        predicted: the plan's summed piece costs per metric (`latency_ms` only when tables were given).
        sensitivity: the plan's summed sensitivity; `optimality_gap` bounds its excess over the true optimum
            (0: proven optimal; see `solve_chain`).
        estimated: latency keys the tables lacked, estimated (`precision:key`).
    """

    plan: BitWidthPlan
    pieces: Mapping[str, str]
    metric: str
    budget: float
    budget_cost: float
    predicted: Mapping[str, float]
    sensitivity: float
    optimality_gap: float = 0.0
    estimated: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {"plan": self.plan.to_dict(), "pieces": dict(self.pieces), "metric": self.metric,
                "budget": self.budget, "budget_cost": self.budget_cost, "predicted": dict(self.predicted),
                "sensitivity": self.sensitivity, "optimality_gap": self.optimality_gap,
                "estimated": list(self.estimated)}


def piece_sensitivity(arch: ArchConfig, sensitivity: Mapping[str, Mapping[str, float]], menu: Sequence[str]
                      ) -> np.ndarray:
    """(pieces x precisions): summed sensitivity of each piece's layers (fp32 0 unless given)."""
    pieces = arch_pieces(arch)
    known = {n for _, layers in pieces for n in layers}
    unknown = sorted(set(sensitivity) - known)
    if unknown:
        raise HwnasError(f"sensitivity names layer(s) {', '.join(unknown)} that {arch.key} does not have; its "
                         f"layers: {', '.join(sorted(known))}")
    found = np.zeros((len(pieces), len(menu)))
    for i, (_, layers) in enumerate(pieces):
        for j, precision in enumerate(menu):
            for layer in layers:
                given = sensitivity.get(layer, {})
                if precision not in given and precision != "fp32":
                    raise HwnasError(f"no sensitivity of layer {layer} at {precision}; give every layer a score "
                                     f"for each precision on the menu ({', '.join(menu)})")
                found[i, j] += float(given.get(precision, 0.0))
    return found


def _refuse_simulated_latency(metric: str, runtime: str, menu: Sequence[str],
                              tables: Mapping[str, LatencyTable] | None) -> None:
    """Simulated precisions have no runtime, so no measured latency and no tables."""
    if runtime != SIMULATED_RUNTIME:
        return
    simulated = ", ".join(p for p in menu if simulated_bits(p) is not None) or "none"
    if metric == "latency_ms":
        menus = "; ".join(f"{name}: {', '.join(spec.layer_precisions)}" for name, spec in RUNTIMES.items()
                          if spec.layer_precisions)
        raise HwnasError(f"a latency_ms budget cannot be allocated over simulated precisions ({simulated}): no "
                         f"runtime runs them, so they have no measured latency; allowed: a size_bytes or bitops "
                         f"budget with runtime={SIMULATED_RUNTIME!r}, or latency_ms on a runtime's own menu ({menus})")
    if tables is not None:
        raise HwnasError(f"runtime {SIMULATED_RUNTIME!r} takes no latency tables (its precisions {simulated} have "
                         f"no measured latency); give tables only with a runtime's own menu")


def allocate_bits(arch: ArchConfig, sensitivity: Mapping[str, Mapping[str, float]], budget: float, *,
                  metric: str = "latency_ms", runtime: str = "ort",
                  tables: Mapping[str, LatencyTable] | None = None, precisions: Sequence[str] | None = None,
                  switch_cost: SwitchCost = 0.0, resolution: float | None = None) -> BitAllocation:
    """A precision per piece of `arch` with the least summed `sensitivity` (layer id -> precision -> score) whose
    `metric` is within `budget` (see the module's docstring). `tables` (precision -> table, `runtime_tables`) are
    needed for `latency_ms`; `switch_cost` is in the budget's unit. `runtime="simulated"` allocates over simulated
    precisions (`runtime_menu`) for `size_bytes` or `bitops` only; layers at one are in the plan's `simulated`."""
    if metric not in METRICS:
        raise HwnasError(f"unknown budget metric {metric!r}; allowed: {', '.join(METRICS)}")
    menu = runtime_menu(runtime, precisions)
    _refuse_simulated_latency(metric, runtime, menu, tables)
    if metric == "latency_ms" and tables is None:
        raise HwnasError("a latency_ms budget needs the runtime's latency tables per precision (runtime_tables)")
    costs = {m: layer_costs(arch, menu, m) for m in ("size_bytes", "bitops")}
    estimated: list[str] = []
    if tables is not None:
        costs["latency_ms"], estimated = latency_costs(arch, tables, menu)
    pieces = arch_pieces(arch)
    names = [name for name, _ in pieces]
    switch = _switch_matrix(switch_cost, names, menu)
    cost = costs[metric].copy()
    cost[0] += switch[0, 0]  # entering from the fp32 input (row 0 holds the cost per first precision)
    cost[-1] += switch[-1][:, 0]  # leaving to the fp32 output
    scores = piece_sensitivity(arch, sensitivity, menu)
    try:
        solution = solve_chain(scores, cost, budget, switch[1:-1], resolution=resolution)
    except HwnasError as err:
        raise HwnasError(f"{metric} budget for {arch.key} on {runtime} ({', '.join(menu)}): {err}") from None
    chosen = {name: menu[q] for name, q in zip(names, solution.choice, strict=True)}
    plan = BitWidthPlan({layer: chosen[name] for name, layers in pieces for layer in layers})
    predicted = {m: float(sum(c[i, q] for i, q in enumerate(solution.choice))) for m, c in costs.items()}
    return BitAllocation(plan, chosen, metric, float(budget), solution.cost, predicted, solution.sensitivity,
                         solution.gap, tuple(estimated))
