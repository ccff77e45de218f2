"""`AnalyticCostModel`: exact counts for one architecture, or for a batch of a space's genes at numpy speed.

A block's counts depend only on its choices, its input width and its input size, and a space has few
of those combinations (its lookup-table keys, `latency_tables.keys.SpaceIndex`). The batch path counts
each key once (with the same trace as the single-architecture path) and then gathers and sums with numpy
indexing.

Simulated bit-widths (`w4a8`, `search_spaces.plans.simulated_bits`) are refused here, naming the layer: a `Cost`
prices bytes at precisions a runtime runs; the size and BitOPs of a simulated plan are `nas.compress.bits`'s
`layer_costs` (whose plans list those layers in `BitWidthPlan.simulated`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from latency_tables.cost import Cost, dtype_bytes, flops_from_macs
from latency_tables.counting import Summary, analytic_cost, block_summary, head_summary, stem_ops, summarize
from latency_tables.keys import LutKey, SpaceIndex
from search_spaces import ArchConfig, SearchSpace
from search_spaces.errors import HwnasError
from search_spaces.plans import simulated_bits

_FIELDS = ("params", "macs", "memory_access", "peak_activation")


class _SpaceTables:
    """Summaries (params, macs, mem, peak) per key of a space's `SpaceIndex`, gathered by gene rows."""

    def __init__(self, space: SearchSpace) -> None:
        self.index = SpaceIndex(space)
        self.values = np.array([key_summary(key) for key in self.index.keys] + [(0, 0, 0, 0)], dtype=np.int64)

    def count(self, genes: np.ndarray) -> np.ndarray:
        """(n, 4) summaries for canonical gene rows: sums of params, MACs, memory access; the largest peak."""
        parts = self.values[self.index.ids(genes)]  # id -1 picks the all-zero row
        return np.concatenate([parts[:, :, :3].sum(axis=1), parts[:, :, 3:].max(axis=1)], axis=1)


def key_summary(key: LutKey) -> Summary:
    """(params, macs, memory_access, peak_activation) of the piece a key names."""
    if key.kind == "stem":
        return summarize(stem_ops(key.stem_config(), key.in_channels, key.height)[0])
    if key.kind == "head":
        head, classes = key.head_config()
        return head_summary(key.in_channels, head.channels, head.hidden, classes, key.height)
    return block_summary(key.block_config(), key.in_channels, key.height)


def _refuse_simulated(precision: Mapping[str, str]) -> None:
    for layer, value in precision.items():
        if simulated_bits(value) is not None:
            raise HwnasError(f"{layer} is at simulated precision {value!r}, which no runtime runs: analytic costs "
                             f"price fp32, fp16 and int8 only; the size and BitOPs of simulated layers come from "
                             f"nas.compress.bits.layer_costs")


class AnalyticCostModel:
    """Exact params, MACs, FLOPs, memory access and peak activation, priced at `dtype` for bytes."""

    def __init__(self, dtype: str = "fp32") -> None:
        _refuse_simulated({"the network": dtype})
        dtype_bytes(dtype)
        self.dtype = dtype
        self._tables: dict[SearchSpace, _SpaceTables] = {}

    def estimate(self, arch: ArchConfig, precision: Mapping[str, str] | None = None) -> Cost:
        """The `Cost` of `arch`; `precision` (layer id -> precision) prices named layers at another precision."""
        if isinstance(precision, Mapping):
            _refuse_simulated(precision)
        return analytic_cost(arch, self.dtype, precision)

    def estimate_many(self, archs: Iterable[ArchConfig]) -> list[Cost]:
        return [self.estimate(a) for a in archs]

    def estimate_genes(self, space: SearchSpace, genes: np.ndarray) -> dict[str, np.ndarray]:
        """Column arrays (`params`, `macs`, `flops`, `memory_access`, `peak_activation`, `*_bytes`) for gene rows."""
        if space not in self._tables:
            self._tables[space] = _SpaceTables(space)
        counts = self._tables[space].count(space.canonical_genes(genes))
        out = {name: counts[:, i] for i, name in enumerate(_FIELDS)}
        out["flops"] = flops_from_macs(out["macs"])
        width = dtype_bytes(self.dtype)
        out["memory_access_bytes"] = out["memory_access"] * width
        out["peak_activation_bytes"] = out["peak_activation"] * width
        return out
