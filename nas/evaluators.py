"""Evaluators: what a search knows about a subnet. `CostEvaluator` prices a batch of a space's gene rows at
numpy speed (analytic counts, and latency on each named lookup table); no torch.

The columns it gives are the metric names of `nas.objectives` (`params`, `macs`, `flops`, `memory_access`,
`peak_activation` and their `_bytes`, `latency_ms`), plus `latency_ms@TABLE_ID` per table, so that one
search can report the same subnet on several devices while optimising one of them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

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
        genes = self.space.canonical_genes(genes)
        out: dict[str, np.ndarray] = dict(self.analytic.estimate_genes(self.space, genes))
        estimated = np.zeros(len(genes), dtype=bool)
        for i, table in enumerate(self.tables):
            prediction = table.predict(self.space, genes, self.estimate_missing)
            out[f"latency_ms@{table.table_id}"] = prediction.latency_ms
            if i == 0:
                out["latency_ms"] = prediction.latency_ms
                estimated = prediction.estimated
        if self.tables:
            out["latency_estimated"] = estimated
        return out


def supernet_space(run_dir: str | Path) -> tuple[SearchSpace, dict[str, Any]]:
    """The space and checkpoint metadata of a trained supernet's run directory, without torch (the weights are
    neither read nor checked here; `supernets.training.load_supernet` does that)."""
    from search_spaces import get_space

    run_dir = Path(run_dir)
    for name in ("checkpoint", "checkpoint.old"):
        path = run_dir / name / "supernet.json"
        if path.is_file():
            break
    else:
        raise HwnasError(f"no supernet checkpoint in {run_dir} (expected {run_dir / 'checkpoint' / 'supernet.json'}); "
                         f"train one with `hwnas supernet train --run-dir {run_dir}`")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        stored = meta["space"]
        space = get_space(stored["name"], in_channels=stored["in_channels"], num_classes=stored["num_classes"])
    except (ValueError, KeyError, TypeError) as err:
        raise HwnasError(f"{path} cannot be read ({err})") from None
    if space.to_dict() != stored:
        raise HwnasError(f"the supernet in {run_dir} was trained on another definition of space {space.name!r} than "
                         f"this hwnas has")
    return space, meta


class SupernetEvaluator:
    """Validation accuracy of subnets taken from a trained supernet (`hwnas supernet train` run directory),
    each after BatchNorm recalibration on `recal_images` training images (the recipe's setting by default),
    on the first `val_images` validation images (all by default). Results are cached by architecture key, in
    memory and, with `cache_path`, in a JSON file tied to the supernet's weights (sha256), written atomically:
    a search that resumes does not evaluate a subnet twice. Needs torch (imported when constructed)."""

    def __init__(self, run_dir: str | Path, *, data: Any = None, val_images: int | None = None,
                 recal_images: int | None = None, cache_path: str | Path | None = None,
                 threads: int | None = None) -> None:
        import torch

        from supernets.config import TrainConfig
        from supernets.data import Split, load_dataset
        from supernets.training import load_supernet

        self.net, meta = load_supernet(run_dir)
        self.space = self.net.space
        config = TrainConfig.from_dict(meta["config"])
        if data is None:
            data = load_dataset(config.dataset, config.data_path, val_fraction=config.val_fraction, seed=config.seed)
        if val_images is not None:
            if val_images < 1:
                raise HwnasError(f"val_images must be at least 1 (got {val_images})")
            data = replace(data, val=Split(data.val.images[:val_images], data.val.labels[:val_images]))
        self.data, self.seed = data, config.seed
        self.recal_images = recal_images if recal_images is not None else config.bn_recal_images
        self.weights_sha256 = str(meta.get("weights_sha256", ""))
        self.settings = {"weights_sha256": self.weights_sha256, "val_images": len(data.val),
                         "recal_images": self.recal_images, "dataset": data.name}
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self.cache: dict[str, float] = self._read_cache()
        self.evaluated = 0  # subnets evaluated (not taken from the cache) by this evaluator
        self._threads = threads or config.threads or torch.get_num_threads()

    def _read_cache(self) -> dict[str, float]:
        if self.cache_path is None or not self.cache_path.is_file():
            return {}
        try:
            stored = json.loads(self.cache_path.read_text(encoding="utf-8"))
            accuracy = {str(k): float(v) for k, v in stored["accuracy"].items()}
            settings = stored["settings"]
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise HwnasError(f"accuracy cache {self.cache_path} is corrupt ({err}); move it away to start a new "
                             f"one") from None
        if settings != self.settings:
            raise HwnasError(f"accuracy cache {self.cache_path} was made with {settings}, not {self.settings} "
                             f"(another supernet or evaluation setting); give another cache path")
        return accuracy

    def _write_cache(self) -> None:
        if self.cache_path is None:
            return
        from latency_tables.table import atomic_write

        atomic_write(self.cache_path, json.dumps({"settings": self.settings, "accuracy": self.cache}, indent=1))

    def accuracy(self, genes: np.ndarray) -> np.ndarray:
        """Accuracy (a fraction) of each gene row's subnet."""
        import torch

        from supernets.evaluation import evaluate_subnet

        genes = self.space.canonical_genes(genes)
        out = np.empty(len(genes))
        fresh = False
        previous = torch.get_num_threads()
        torch.set_num_threads(self._threads)
        try:
            for i, row in enumerate(genes):
                arch = self.space.from_genes(row)
                if arch.key not in self.cache:
                    self.cache[arch.key] = evaluate_subnet(self.net, arch, self.data, self.recal_images,
                                                           self.seed)[0]
                    self.evaluated += 1
                    fresh = True
                out[i] = self.cache[arch.key]
        finally:
            torch.set_num_threads(previous)
        if fresh:
            self._write_cache()
        return out

    def columns(self, genes: np.ndarray) -> dict[str, np.ndarray]:
        return {"accuracy": self.accuracy(genes)}
