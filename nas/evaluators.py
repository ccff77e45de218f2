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
    """The space and checkpoint metadata of a trained supernet's run directory (its newest complete checkpoint, as
    `supernets.checkpoint_files.checkpoint_dir` finds it), without torch (the weights are neither read nor checked
    here; `supernets.training.load_supernet` does that)."""
    from search_spaces import get_space
    from supernets.checkpoint_files import read_meta

    run_dir = Path(run_dir)
    meta = read_meta(run_dir)
    stored = meta["space"]
    try:
        space = get_space(stored["name"], in_channels=stored["in_channels"], num_classes=stored["num_classes"])
    except (KeyError, TypeError) as err:
        raise HwnasError(f"the supernet checkpoint in {run_dir} names no readable space ({err!r})") from None
    if space.to_dict() != stored:
        raise HwnasError(f"the supernet in {run_dir} was trained on another definition of space {space.name!r} than "
                         f"this hwnas has")
    return space, meta


#: The lower-is-better signals an evaluation gives beside accuracy (`supernets.evaluation.SIGNALS`): the
#: validation cross-entropy and the robust cross-entropy, mean ln(1 + NLL).
LOSS_SIGNALS = ("val_loss", "val_robust_loss")


class SupernetEvaluator:
    """Validation accuracy, cross-entropy (`val_loss`) and robust cross-entropy (`val_robust_loss`, mean
    ln(1 + NLL)) of subnets taken from a trained supernet, each after BatchNorm recalibration on `recal_images`
    training images, on `data`'s validation split, all from one forward pass (the losses are the lower-variance
    signals: `benchmarks/bench_signal.py`). Results are cached by architecture key, in memory and, with `cache_path`,
    in a JSON file tied to the supernet's weights (sha256), written atomically: a search that resumes does not
    evaluate a subnet twice. A cache written before losses were kept still serves accuracies; a loss it lacks is
    measured (with the accuracy again, which evaluation repeats exactly). `from_run` loads all of it from a run
    directory; the constructor reads nothing, and a write keeps the entries the file holds (refusing a file made
    with other settings). Torch runs with `threads` threads during an evaluation (None: as it is)."""

    def __init__(self, net: Any, data: Any, *, recal_images: int, seed: int, weights_sha256: str = "",
                 cache: dict[str, float] | None = None, cache_path: str | Path | None = None,
                 threads: int | None = None, losses: dict[str, dict[str, float]] | None = None) -> None:
        self.net, self.space, self.data, self.seed = net, net.space, data, seed
        self.recal_images, self.weights_sha256, self.threads = recal_images, weights_sha256, threads
        self.settings = cache_settings(weights_sha256, data, recal_images)
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self.cache: dict[str, float] = dict(cache or {})  # key -> accuracy
        self.losses = {name: dict((losses or {}).get(name, {})) for name in LOSS_SIGNALS}  # signal -> key -> loss
        self.evaluated = 0  # subnets evaluated (not taken from the cache) by this evaluator

    @classmethod
    def from_run(cls, run_dir: str | Path, *, data: Any = None, val_images: int | None = None,
                 recal_images: int | None = None, cache_path: str | Path | None = None,
                 threads: int | None = None) -> SupernetEvaluator:
        """The evaluator of a `hwnas supernet train` run directory: its supernet and dataset (or `data`), the
        first `val_images` validation images (all by default), the recipe's BN recalibration images unless
        `recal_images`, the recipe's threads unless `threads`, and the results cached in `cache_path`."""
        from supernets.data import Split
        from supernets.training import load_run

        if val_images is not None and val_images < 1:
            raise HwnasError(f"val_images must be at least 1 (got {val_images})")
        run = load_run(run_dir)
        data = data if data is not None else run.dataset()
        if val_images is not None:
            data = replace(data, val=Split(data.val.images[:val_images], data.val.labels[:val_images]))
        recal = recal_images if recal_images is not None else run.config.bn_recal_images
        cache, losses = read_cache_file(cache_path, cache_settings(run.weights_sha256, data, recal))
        return cls(run.net, data, recal_images=recal, seed=run.config.seed, weights_sha256=run.weights_sha256,
                   cache=cache, cache_path=cache_path, threads=threads or run.config.threads or None, losses=losses)

    def _write_cache(self) -> None:
        """Write the cache file: its entries (made with these settings, else a `HwnasError`) and this evaluator's."""
        if self.cache_path is None:
            return
        from search_spaces.files import atomic_write_text

        stored, stored_losses = read_cache_file(self.cache_path, self.settings)
        self.cache = {**stored, **self.cache}
        self.losses = {name: {**stored_losses[name], **self.losses[name]} for name in LOSS_SIGNALS}
        atomic_write_text(self.cache_path, json.dumps({"settings": self.settings, "accuracy": self.cache,
                                                       **self.losses}, indent=1))

    def scores(self, genes: np.ndarray, *, need_loss: bool = True) -> dict[str, np.ndarray]:
        """`accuracy` (a fraction), `val_loss` (mean cross-entropy of the true class, nats) and `val_robust_loss`
        of each gene row's subnet. With `need_loss=False`, a cached accuracy whose losses are not cached is not
        measured again (its losses are NaN)."""
        from supernets.evaluation import evaluate_subnet_score
        from supernets.threads import torch_threads

        genes = self.space.canonical_genes(genes)
        out = {name: np.empty(len(genes)) for name in ("accuracy", *LOSS_SIGNALS)}
        fresh = False
        with torch_threads(self.threads):
            for i, row in enumerate(genes):
                arch = self.space.from_genes(row)
                if arch.key not in self.cache or (need_loss and any(arch.key not in self.losses[name]
                                                                    for name in LOSS_SIGNALS)):
                    self._store(arch.key, evaluate_subnet_score(self.net, arch, self.data, self.recal_images,
                                                                self.seed))
                    fresh = True
                out["accuracy"][i] = self.cache[arch.key]
                for name in LOSS_SIGNALS:
                    out[name][i] = self.losses[name].get(arch.key, np.nan)
        if fresh:
            self._write_cache()
        return out

    def _store(self, key: str, score: Any) -> None:
        """Cache one evaluation's `SubnetScore`."""
        self.cache[key] = score.accuracy
        self.losses["val_loss"][key], self.losses["val_robust_loss"][key] = score.loss, score.robust_loss
        self.evaluated += 1

    def outcomes(self, genes: np.ndarray) -> list[Any]:
        """Per-image outcomes (`supernets.evaluation.ImageOutcomes`) of each gene row's subnet, measured now (not
        cached per image); their scores over the whole split go into the cache like any evaluation's."""
        from supernets.evaluation import evaluate_subnet_outcomes
        from supernets.threads import torch_threads

        out = []
        with torch_threads(self.threads):
            for row in self.space.canonical_genes(genes):
                arch = self.space.from_genes(row)
                outcomes = evaluate_subnet_outcomes(self.net, arch, self.data, self.recal_images, self.seed)[0]
                self._store(arch.key, outcomes.score())
                out.append(outcomes)
        if out:
            self._write_cache()
        return out

    def accuracy(self, genes: np.ndarray) -> np.ndarray:
        """Accuracy (a fraction) of each gene row's subnet."""
        return self.scores(genes, need_loss=False)["accuracy"]

    def val_loss(self, genes: np.ndarray) -> np.ndarray:
        """Validation cross-entropy (nats) of each gene row's subnet."""
        return self.scores(genes)["val_loss"]

    def val_robust_loss(self, genes: np.ndarray) -> np.ndarray:
        """Robust validation cross-entropy (mean ln(1 + NLL)) of each gene row's subnet."""
        return self.scores(genes)["val_robust_loss"]

    def columns(self, genes: np.ndarray) -> dict[str, np.ndarray]:
        return self.scores(genes)


def cache_settings(weights_sha256: str, data: Any, recal_images: int) -> dict[str, Any]:
    """What an accuracy cache is valid for: the weights, the validation images, the recalibration."""
    return {"weights_sha256": weights_sha256, "val_images": len(data.val), "recal_images": recal_images,
            "dataset": data.name}


def read_cache(path: str | Path | None, settings: dict[str, Any]) -> dict[str, float]:
    """The accuracies cached in `path` (see `read_cache_file`)."""
    return read_cache_file(path, settings)[0]


def read_cache_file(path: str | Path | None,
                    settings: dict[str, Any]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """The accuracies and (per signal of `LOSS_SIGNALS`) validation losses cached in `path` (none if there is no
    file; no losses in a file written before they were kept); a `HwnasError` when the file is corrupt or was made
    with other `settings`."""
    if path is None or not Path(path).is_file():
        return {}, {name: {} for name in LOSS_SIGNALS}
    try:
        stored = json.loads(Path(path).read_text(encoding="utf-8"))
        accuracy = {str(k): float(v) for k, v in stored["accuracy"].items()}
        losses = {name: {str(k): float(v) for k, v in stored.get(name, {}).items()} for name in LOSS_SIGNALS}
        made_with = stored["settings"]
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise HwnasError(f"accuracy cache {path} is corrupt ({err}); move it away to start a new one") from None
    if made_with != settings:
        raise HwnasError(f"accuracy cache {path} was made with {made_with}, not {settings} (another supernet or "
                         f"evaluation setting); give another cache path")
    return accuracy, losses
