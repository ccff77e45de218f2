"""Evaluators: what a search knows about a subnet. `CostEvaluator` prices a batch of a space's gene rows at
numpy speed (analytic counts, and latency on each named lookup table); no torch.

The columns it gives are the metric names of `nas.objectives` (`params`, `macs`, `flops`, `memory_access`,
`peak_activation` and their `_bytes`, `latency_ms`), plus `latency_ms@TABLE_ID` per table, so that one
search can report the same subnet on several devices while optimising one of them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from latency_tables.analytic import AnalyticCostModel
from latency_tables.table import LatencyTable
from search_spaces import SearchSpace
from search_spaces.errors import HwnasError


class CostEvaluator:
    """Costs of gene rows of `space`. `tables` price latency (the first one is `latency_ms`, the one a
    search optimises and constrains); `dtype` prices the byte counts; `estimate_missing` lets a table fill
    keys it lacks from its fitted model (flagged in the `latency_estimated` column) instead of raising."""

    def __init__(self, space: SearchSpace, tables: Sequence[LatencyTable] = (), *, dtype: str = "fp32",
                 estimate_missing: bool = False) -> None:
        for table in tables:
            table.check(space=space.name)
        ids = [t.table_id for t in tables]
        if len(set(ids)) != len(ids):
            raise HwnasError(f"latency tables {', '.join(ids)} name one table twice")
        self.space, self.tables, self.estimate_missing = space, tuple(tables), estimate_missing
        self.analytic = AnalyticCostModel(dtype)

    @property
    def metrics(self) -> tuple[str, ...]:
        """The metric columns `columns` returns."""
        names = ("params", "macs", "flops", "memory_access", "memory_access_bytes", "peak_activation",
                 "peak_activation_bytes")
        return names + (("latency_ms",) if self.tables else ())

    def columns(self, genes: np.ndarray) -> dict[str, np.ndarray]:
        """Metric name -> one value per gene row (rows need not be canonical)."""
        genes = np.atleast_2d(np.asarray(genes))
        out: dict[str, np.ndarray] = dict(self.analytic.estimate_genes(self.space, genes))
        estimated = np.zeros(len(genes), dtype=bool)
        for i, table in enumerate(self.tables):
            prediction = table.predict(self.space, self.space.canonical_genes(genes), self.estimate_missing)
            out[f"latency_ms@{table.table_id}"] = prediction.latency_ms
            if i == 0:
                out["latency_ms"] = prediction.latency_ms
                estimated = prediction.estimated
        if self.tables:
            out["latency_estimated"] = estimated
        return out
