"""`AnalyticCostModel`: exact counts for one architecture, or for a batch of a space's genes at numpy speed.

A block's counts depend only on its choices, its input width and its input size, and a space has few
of those combinations. The batch path counts each combination once (with the same trace as the
single-architecture path) and then gathers and sums with numpy indexing.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import numpy as np

from latency_tables.cost import Cost, dtype_bytes, flops_from_macs
from latency_tables.counting import analytic_cost, block_summary, conv_out, head_summary, stem_ops, summarize
from search_spaces import ArchConfig, SearchSpace

_FIELDS = ("params", "macs", "memory_access", "peak_activation")


class _SpaceTables:
    """Per-stage arrays of block summaries indexed by the genes (last axis: params, macs, mem, peak)."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        sizes, stem = [], []
        for res in space.resolutions:
            ops, size = stem_ops(space.stem, space.in_channels, res)
            stem.append(summarize(ops))
            sizes.append(size)
        self.stem = np.array(stem, dtype=np.int64)
        self.first: list[np.ndarray] = []
        self.rest: list[np.ndarray] = []
        prev_widths: tuple[int, ...] = (space.stem.channels,)
        for st in space.stages:
            shape = (len(sizes), len(st.families), len(st.kernels), len(st.expands))
            first = np.zeros((*shape, len(prev_widths), len(st.widths), 4), dtype=np.int64)
            rest = np.zeros((*shape, len(st.widths), 4), dtype=np.int64)
            for r, f, k, e, w in itertools.product(*(range(n) for n in shape), range(len(st.widths))):
                choice = (st.families[f], st.kernels[k], st.expands[e], st.widths[w])
                out_size = conv_out(sizes[r], st.kernels[k], st.stride)
                rest[r, f, k, e, w] = block_summary(st.block(*choice, 1), st.widths[w], out_size)
                for p, cin in enumerate(prev_widths):
                    first[r, f, k, e, p, w] = block_summary(st.block(*choice, 0), cin, sizes[r])
            self.first.append(first)
            self.rest.append(rest)
            sizes = [conv_out(s, 3, st.stride) for s in sizes]  # the same for every odd kernel
            prev_widths = st.widths
        self.head = np.array(
            [[head_summary(w, space.head.channels, space.head.hidden, space.num_classes, s) for w in prev_widths]
             for s in sizes], dtype=np.int64)

    def count(self, genes: np.ndarray) -> np.ndarray:
        """(n, 4) summaries for canonical gene rows."""
        space, g = self.space, np.atleast_2d(genes)
        r = g[:, 0]
        total = self.stem[r].copy()
        prev = np.zeros(len(g), dtype=np.int64)
        for j, (st, base) in enumerate(zip(space.stages, space.stage_offsets, strict=True)):
            f, w = g[:, base], g[:, base + 2]
            depth = np.asarray(st.depths)[g[:, base + 1]]
            parts = [self.first[j][r, f, g[:, base + 3], g[:, base + 4], prev, w]]
            for i in range(1, st.max_depth):
                part = self.rest[j][r, f, g[:, base + 3 + 2 * i], g[:, base + 4 + 2 * i], w]
                parts.append(part * (depth > i)[:, None])
            total = _add(total, parts)
            prev = w
        return _add(total, [self.head[r, prev]])


def _add(total: np.ndarray, parts: list[np.ndarray]) -> np.ndarray:
    """Sum the additive columns; take the maximum of the peak column."""
    out = total.copy()
    for part in parts:
        out[:, :3] += part[:, :3]
        out[:, 3] = np.maximum(out[:, 3], part[:, 3])
    return out


class AnalyticCostModel:
    """Exact params, MACs, FLOPs, memory access and peak activation, priced at `dtype` for bytes."""

    def __init__(self, dtype: str = "fp32") -> None:
        dtype_bytes(dtype)
        self.dtype = dtype
        self._tables: dict[SearchSpace, _SpaceTables] = {}

    def estimate(self, arch: ArchConfig) -> Cost:
        return analytic_cost(arch, self.dtype)

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
