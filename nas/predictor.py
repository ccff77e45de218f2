"""Accuracy predictor: a small MLP on the space's one-hot encoding (once-for-all's: ReLU hidden layers of 400),
trained on subnets measured with the supernet evaluator, in numpy (a search that uses it needs no torch).

Saved pickle-free: `predictor.npz` (the weights, loaded with allow_pickle=False) and `predictor.json` (space,
layer sizes, target scaling, training figures).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from latency_tables.table import kendall_tau
from search_spaces import SearchSpace
from search_spaces.errors import HwnasError

FORMAT = "hwnas accuracy predictor 1"


class AccuracyPredictor:
    """MLP encoding -> accuracy. `fit` trains it (Adam on mean squared error, seeded); `predict` is vectorised."""

    def __init__(self, space: SearchSpace, hidden: Sequence[int] = (400, 400, 400), seed: int = 0) -> None:
        if not hidden or any(h < 1 for h in hidden):
            raise HwnasError(f"hidden layer sizes must be positive; got {tuple(hidden)}")
        self.space, self.hidden, self.seed = space, tuple(int(h) for h in hidden), seed
        rng = np.random.default_rng(seed)
        sizes = [space.encoding_length, *self.hidden, 1]
        self.weights = [rng.standard_normal((a, b)) * np.sqrt(2.0 / a) for a, b in zip(sizes, sizes[1:], strict=False)]
        self.biases = [np.zeros(b) for b in sizes[1:]]
        self.mean, self.std = 0.0, 1.0  # target scaling
        self.figures: dict[str, Any] = {}

    def _forward(self, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        activations = [x]
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            x = x @ w + b
            if i < len(self.weights) - 1:
                x = np.maximum(x, 0.0)
            activations.append(x)
        return x[:, 0], activations

    def predict(self, genes: np.ndarray) -> np.ndarray:
        """Predicted accuracy of each gene row."""
        x = self.space.encode_genes(self.space.canonical_genes(genes)).astype(np.float64)
        return self._forward(x)[0] * self.std + self.mean

    def fit(self, genes: np.ndarray, accuracy: np.ndarray, *, epochs: int = 300, lr: float = 1e-3,
            batch_size: int = 128, weight_decay: float = 1e-4) -> dict[str, float]:
        """Train on measured (genes, accuracy); returns the training RMSE."""
        y = np.asarray(accuracy, dtype=np.float64)
        if len(y) != len(genes) or len(y) < 2:
            raise HwnasError(f"fit needs at least 2 architectures with one accuracy each; got {len(genes)} rows and "
                             f"{len(y)} accuracies")
        x = self.space.encode_genes(self.space.canonical_genes(genes)).astype(np.float64)
        self.mean, self.std = float(y.mean()), float(y.std()) or 1.0
        target = (y - self.mean) / self.std
        rng = np.random.default_rng(self.seed + 1)
        params = self.weights + self.biases
        moments = [np.zeros_like(p) for p in params], [np.zeros_like(p) for p in params]
        step = 0
        for _ in range(epochs):
            order = rng.permutation(len(x))
            for start in range(0, len(x), batch_size):
                idx = order[start:start + batch_size]
                out, acts = self._forward(x[idx])
                grad = (2.0 / len(idx)) * (out - target[idx])[:, None]
                grads_w, grads_b = [], []
                for layer in range(len(self.weights) - 1, -1, -1):
                    grads_w.append(acts[layer].T @ grad + weight_decay * self.weights[layer])
                    grads_b.append(grad.sum(axis=0))
                    if layer:
                        grad = (grad @ self.weights[layer].T) * (acts[layer] > 0)
                grads = grads_w[::-1] + grads_b[::-1]
                step += 1
                for p, g, m, v in zip(params, grads, *moments, strict=True):  # Adam
                    m *= 0.9
                    m += 0.1 * g
                    v *= 0.999
                    v += 0.001 * g * g
                    p -= lr * (m / (1 - 0.9 ** step)) / (np.sqrt(v / (1 - 0.999 ** step)) + 1e-8)
        rmse = float(np.sqrt(np.mean((self.predict(genes) - y) ** 2)))
        self.figures = {"train_rmse": rmse, "train_size": len(y), "epochs": epochs}
        return {"train_rmse": rmse}

    def evaluate(self, genes: np.ndarray, accuracy: np.ndarray) -> dict[str, float]:
        """RMSE and Kendall tau of the predictions against measured accuracies (held-out subnets)."""
        predicted, y = self.predict(genes), np.asarray(accuracy, dtype=np.float64)
        return {"rmse": float(np.sqrt(np.mean((predicted - y) ** 2))), "kendall_tau": kendall_tau(predicted, y),
                "n": len(y)}

    def save(self, directory: str | Path) -> Path:
        """Write predictor.npz and predictor.json into `directory` (atomically); returns the directory."""
        from latency_tables.table import atomic_write

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {f"w{i}": w for i, w in enumerate(self.weights)} | {f"b{i}": b for i, b in enumerate(self.biases)}
        tmp = directory / ".predictor.tmp.npz"
        np.savez(tmp, **arrays)
        tmp.replace(directory / "predictor.npz")
        meta = {"format": FORMAT, "space": self.space.to_dict(), "hidden": list(self.hidden), "seed": self.seed,
                "mean": self.mean, "std": self.std, "figures": self.figures}
        atomic_write(directory / "predictor.json", json.dumps(meta, indent=1))
        return directory

    @classmethod
    def load(cls, directory: str | Path, space: SearchSpace) -> AccuracyPredictor:
        """The predictor saved in `directory`, for `space` (refused if it was trained for another space)."""
        directory = Path(directory)
        try:
            meta = json.loads((directory / "predictor.json").read_text(encoding="utf-8"))
            arrays = np.load(directory / "predictor.npz", allow_pickle=False)
        except FileNotFoundError as err:
            raise HwnasError(f"no accuracy predictor in {directory}: {err.filename} is missing") from None
        except (ValueError, OSError) as err:
            raise HwnasError(f"the accuracy predictor in {directory} is corrupt ({err})") from None
        if meta.get("format") != FORMAT:
            raise HwnasError(f"{directory / 'predictor.json'} is not an hwnas accuracy predictor ({FORMAT!r})")
        if meta["space"] != space.to_dict():
            raise HwnasError(f"the predictor in {directory} was trained for space {meta['space'].get('name')!r} as "
                             f"defined then, not for {space.name!r} as defined now; train one for this space")
        predictor = cls(space, meta["hidden"], meta["seed"])
        n = len(predictor.weights)
        try:
            weights = [arrays[f"w{i}"] for i in range(n)]
            biases = [arrays[f"b{i}"] for i in range(n)]
        except KeyError as err:
            raise HwnasError(f"the accuracy predictor in {directory} is corrupt (no {err})") from None
        if [w.shape for w in weights] != [w.shape for w in predictor.weights]:
            raise HwnasError(f"the accuracy predictor in {directory} is corrupt (weight shapes do not match)")
        predictor.weights, predictor.biases = weights, biases
        predictor.mean, predictor.std, predictor.figures = float(meta["mean"]), float(meta["std"]), meta["figures"]
        return predictor
