"""Accuracy predictor: a small MLP on the space's one-hot encoding (once-for-all's: ReLU hidden layers of 400),
trained on subnets measured with the supernet evaluator, in numpy (a search that uses it needs no torch).

Its labels are the measured accuracy or one of the lower-variance losses (`val_loss`, the validation
cross-entropy; `val_robust_loss`, mean ln(1 + NLL); see `benchmarks/bench_signal.py`). `predict` always returns
an accuracy estimate, higher is better, so that a
search can tell it to a strategy as accuracy: a loss-labelled predictor maps its predicted loss through a
decreasing calibration fitted on its training subnets (the log error against the log loss), which keeps the
loss's ranking exactly; `predict_label` gives the label itself.

Saved pickle-free: `predictor.npz` (the weights, loaded with allow_pickle=False) and `predictor.json` (space,
layer sizes, target scaling, calibration, training figures).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from latency_tables.table import kendall_tau
from nas.optim import Adam
from search_spaces import SearchSpace
from search_spaces.errors import HwnasError

FORMAT = "hwnas accuracy predictor 1"
#: Targets the MLP can regress: the accuracy itself, or its log error `-log(1 - accuracy + 0.005)`, which
#: spreads out the crowded top of the range (most subnets of a trained supernet are within a few points of
#: the best) and shrinks the few very poor subnets that would dominate a squared error on accuracy. On
#: loss labels: the loss itself, or its logarithm (`log_...`, the same spreading).
TARGETS = ("accuracy", "log_error", "val_loss", "log_val_loss", "val_robust_loss", "log_val_robust_loss")
#: The loss labels (lower is better), as `SupernetEvaluator.scores` names them.
LOSS_LABELS = ("val_loss", "val_robust_loss")
#: The label each target is a function of.
LABELS = {t: t.removeprefix("log_") if t != "log_error" else "accuracy" for t in TARGETS}
_EPS = 0.005


def _log_error(accuracy: np.ndarray) -> np.ndarray:
    return -np.log(np.maximum(1.0 - accuracy + _EPS, 1e-6))


def _to_target(label: np.ndarray, target: str) -> np.ndarray:
    if target == "log_error":
        return _log_error(label)
    return np.log(np.maximum(label, 1e-9)) if target.startswith("log_") else label


def _from_target(value: np.ndarray, target: str) -> np.ndarray:
    if target == "log_error":
        return 1.0 + _EPS - np.exp(-value)
    return np.exp(value) if target.startswith("log_") else value


def fit_calibration(loss: np.ndarray, accuracy: np.ndarray) -> tuple[float, float]:
    """`(a, b)` of `log_error(accuracy) ~ a + b * ln(loss)` by least squares, `b` kept below zero so that the
    accuracy it gives falls strictly as the loss grows."""
    x = np.log(np.maximum(np.asarray(loss, dtype=np.float64), 1e-9))
    y = _log_error(np.asarray(accuracy, dtype=np.float64))
    if len(x) < 2 or np.ptp(x) == 0:
        raise HwnasError(f"calibrating accuracy against loss needs 2 or more distinct losses; got {len(np.unique(x))}")
    b, a = np.polyfit(x, y, 1)
    return float(a), float(min(b, -1e-6))


class AccuracyPredictor:
    """MLP encoding -> label (accuracy or validation loss). `fit` trains it (Adam on mean squared error, seeded);
    `predict` (accuracy) and `predict_label` are vectorised."""

    def __init__(self, space: SearchSpace, hidden: Sequence[int] = (400, 400, 400), seed: int = 0,
                 target: str = "log_error") -> None:
        if not hidden or any(h < 1 for h in hidden):
            raise HwnasError(f"hidden layer sizes must be positive; got {tuple(hidden)}")
        if target not in TARGETS:
            raise HwnasError(f"predictor target {target!r} is not one of {', '.join(TARGETS)}")
        self.space, self.hidden, self.seed, self.target = space, tuple(int(h) for h in hidden), seed, target
        rng = np.random.default_rng(seed)
        sizes = [space.encoding_length, *self.hidden, 1]
        self.weights = [rng.standard_normal((a, b)) * np.sqrt(2.0 / a) for a, b in zip(sizes, sizes[1:], strict=False)]
        self.biases = [np.zeros(b) for b in sizes[1:]]
        self.mean, self.std = 0.0, 1.0  # target scaling
        self.calibration: tuple[float, float] | None = None  # loss labels: log error = a + b ln(loss)
        self.figures: dict[str, Any] = {}

    def _inputs(self, genes: np.ndarray) -> np.ndarray:
        return self.space.encode_genes(self.space.canonical_genes(genes)).astype(np.float64)

    def _forward(self, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        activations = [x]
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            x = x @ w + b
            if i < len(self.weights) - 1:
                x = np.maximum(x, 0.0)
            activations.append(x)
        return x[:, 0], activations

    @property
    def label(self) -> str:
        """What the predictor was trained on: `accuracy` or a loss of `LOSS_LABELS`."""
        return LABELS[self.target]

    def predict_label(self, genes: np.ndarray) -> np.ndarray:
        """Predicted label (accuracy, or validation loss) of each gene row."""
        x = self._inputs(genes)
        return _from_target(self._forward(x)[0] * self.std + self.mean, self.target)

    def predict(self, genes: np.ndarray) -> np.ndarray:
        """Predicted accuracy of each gene row (from a loss-labelled predictor: through its calibration, which keeps
        the predicted loss's ranking)."""
        value = self.predict_label(genes)
        if self.label == "accuracy":
            return value
        if self.calibration is None:
            raise HwnasError("this loss-labelled predictor has no accuracy calibration; fit it first")
        a, b = self.calibration
        return 1.0 + _EPS - np.exp(-(a + b * np.log(np.maximum(value, 1e-9))))

    def fit(self, genes: np.ndarray, labels: np.ndarray, *, epochs: int = 300, lr: float = 1e-3,
            batch_size: int = 128, weight_decay: float = 1e-2, accuracy: np.ndarray | None = None) -> dict[str, float]:
        """Train on measured (genes, labels) (accuracies, or validation losses with `accuracy` beside them for the
        calibration); returns the training RMSE (of the label)."""
        measured = np.asarray(labels, dtype=np.float64)
        y = _to_target(measured, self.target)
        if len(y) != len(genes) or len(y) < 2:
            raise HwnasError(f"fit needs at least 2 architectures with one {self.label} each; got {len(genes)} rows "
                             f"and {len(y)} labels")
        if not np.isfinite(y).all():
            raise HwnasError(f"{int((~np.isfinite(y)).sum())} of the {self.label} labels are missing or not finite "
                             f"(rows collected before losses were recorded?); collect them again")
        if self.label != "accuracy":
            if accuracy is None or len(accuracy) != len(y):
                raise HwnasError("a loss-labelled predictor needs the subnets' accuracies too (for its calibration)")
            self.calibration = fit_calibration(measured, np.asarray(accuracy, dtype=np.float64))
        x = self._inputs(genes)
        self.mean, self.std = float(y.mean()), float(y.std()) or 1.0
        target = (y - self.mean) / self.std
        rng = np.random.default_rng(self.seed + 1)
        adam = Adam(self.weights + self.biases, lr)
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
                adam.step(grads_w[::-1] + grads_b[::-1])
        rmse = float(np.sqrt(np.mean((self.predict_label(genes) - measured) ** 2)))
        self.figures = {"train_rmse": rmse, "train_size": len(y), "epochs": epochs, "weight_decay": weight_decay}
        return {"train_rmse": rmse}

    def evaluate(self, genes: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """RMSE and Kendall tau of the predicted labels against measured ones (held-out subnets)."""
        predicted, y = self.predict_label(genes), np.asarray(labels, dtype=np.float64)
        return {"rmse": float(np.sqrt(np.mean((predicted - y) ** 2))), "kendall_tau": kendall_tau(predicted, y),
                "n": len(y)}

    def save(self, directory: str | Path) -> Path:
        """Write predictor.npz and predictor.json into `directory` (atomically); returns the directory."""
        from search_spaces.files import atomic_path, atomic_write_text

        directory = Path(directory)
        arrays = {f"w{i}": w for i, w in enumerate(self.weights)} | {f"b{i}": b for i, b in enumerate(self.biases)}
        with atomic_path(directory / "predictor.npz") as tmp:
            np.savez(tmp, **arrays)
        meta = {"format": FORMAT, "space": self.space.to_dict(), "hidden": list(self.hidden), "seed": self.seed,
                "target": self.target, "mean": self.mean, "std": self.std, "figures": self.figures,
                "calibration": list(self.calibration) if self.calibration is not None else None}
        atomic_write_text(directory / "predictor.json", json.dumps(meta, indent=1))
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
        predictor = cls(space, meta["hidden"], meta["seed"], meta.get("target", "accuracy"))
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
        if meta.get("calibration") is not None:
            a, b = meta["calibration"]
            predictor.calibration = (float(a), float(b))
        return predictor


DATA_COLUMNS = ("key", "accuracy", *LOSS_LABELS, "arch")


def _data_header(line: str) -> tuple[str, ...] | None:
    """The columns of a data file's first line, if it is a data file's header: `key,accuracy,[losses,]arch`
    (files written before losses were recorded have none)."""
    header = tuple(line.split(","))
    middle = header[2:-1]
    if header[:2] != ("key", "accuracy") or header[-1:] != ("arch",) or len(set(middle)) != len(middle) \
            or not set(middle) <= set(LOSS_LABELS):
        return None
    return header


def sample_unique(space: SearchSpace, n: int, seed: int, exclude: Sequence[np.ndarray] = ()) -> np.ndarray:
    """`n` distinct canonical gene rows of `space`, not in `exclude`, uniformly sampled with `seed` in chunks of
    256, so that the rows for a smaller `n` are the first rows for a larger one (a collection can grow)."""
    if n < 0:
        raise HwnasError(f"cannot sample {n} subnets")
    if n + len(exclude) > space.size():
        raise HwnasError(f"space {space.name!r} has only {space.size()} subnets; asked for {n} more than "
                         f"{len(exclude)}")
    rng = np.random.default_rng(seed)
    rows: list[np.ndarray] = []
    seen: set[bytes] = {np.asarray(row, dtype=np.int64).tobytes() for row in exclude}
    for _ in range(max(100, 4 * n // 256 + 4)):
        if len(rows) >= n:
            break
        for row in space.canonical_genes(space.sample_genes(rng, 256)):
            if row.tobytes() not in seen and len(rows) < n:
                seen.add(row.tobytes())
                rows.append(row)
    if len(rows) < n:
        raise HwnasError(f"found only {len(rows)} new distinct subnets of {space.name!r}; asked for {n}")
    return np.stack(rows) if rows else np.zeros((0, len(space.genes)), dtype=np.int64)


def read_data(path: str | Path, space: SearchSpace) -> tuple[np.ndarray, np.ndarray]:
    """The (gene rows, accuracies) of a predictor data file (see `read_data_columns`)."""
    genes, columns = read_data_columns(path, space)
    return genes, columns["accuracy"]


def read_data_columns(path: str | Path, space: SearchSpace) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The gene rows and measured columns (`accuracy` and each of `LOSS_LABELS`, NaN where not recorded) of a
    predictor data file (`key,accuracy,val_loss,val_robust_loss,arch` CSV, or an older one with fewer losses). A
    last line cut off by an interruption is ignored; any other malformed row, or an architecture outside `space`,
    is an error naming it."""
    import csv

    from search_spaces import ArchConfig

    path = Path(path)
    if not path.is_file():
        raise HwnasError(f"no predictor data at {path}; collect it with `hwnas predictor collect`")
    with path.open(encoding="utf-8", newline="") as fh:
        lines = fh.read().splitlines()
    header = _data_header(lines[0]) if lines else None
    if header is None:
        raise HwnasError(f"{path} is not predictor data: its header should be {','.join(DATA_COLUMNS)}")
    genes: list[np.ndarray] = []
    values: dict[str, list[float]] = {name: [] for name in ("accuracy", *LOSS_LABELS)}
    for number, row in enumerate(csv.reader(lines[1:]), start=2):
        try:
            fields = dict(zip(header, row, strict=True))
            arch = ArchConfig.from_str(fields["arch"])
            if arch.key != fields["key"]:
                raise ValueError(f"key {fields['key']} is not the key of the architecture ({arch.key})")
            parsed = {name: float(fields[name]) if fields.get(name) else np.nan for name in values}
            if np.isnan(parsed["accuracy"]):
                raise ValueError("no accuracy")
            gene_row = space.to_genes(arch)
        except (ValueError, HwnasError) as err:
            if number == len(lines):  # the last line of an interrupted append
                break
            raise HwnasError(f"{path} line {number} is malformed ({err}); move the file away or fix the line") from None
        genes.append(gene_row)
        for name, value in parsed.items():
            values[name].append(value)
    stacked = np.stack(genes).astype(np.int64) if genes else np.zeros((0, len(space.genes)), dtype=np.int64)
    return stacked, {name: np.asarray(v, dtype=np.float64) for name, v in values.items()}


def _open_for_append(path: Path, space: SearchSpace) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The rows a data file holds, with the file made ready to append to: created with its header, a torn last
    line dropped, an older file (fewer loss columns) rewritten with every column, empty where not recorded."""
    import csv
    import io

    from search_spaces.files import atomic_write_text

    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(",".join(DATA_COLUMNS) + "\n", encoding="utf-8")
    genes, columns = read_data_columns(path, space)
    with path.open("rb+") as fh:  # drop a torn last line before appending
        text = fh.read()
        if text and not text.endswith(b"\n"):
            fh.truncate(text.rfind(b"\n") + 1)
    if _data_header(path.read_text(encoding="utf-8").split("\n", 1)[0]) != DATA_COLUMNS:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(DATA_COLUMNS)
        for i, row in enumerate(genes):
            writer.writerow(_data_row(space, row, {name: c[i] for name, c in columns.items()}))
        atomic_write_text(path, out.getvalue())
    return genes, columns


def _data_row(space: SearchSpace, genes: np.ndarray, values: dict[str, float]) -> list[str]:
    arch = space.from_genes(genes)
    cells = ["" if np.isnan(values.get(name, np.nan)) else repr(float(values[name])) for name in DATA_COLUMNS[1:-1]]
    return [arch.key, *cells, arch.to_str()]


def collect(space: SearchSpace, measure: Any, n: int, path: str | Path, *, seed: int = 0, chunk: int = 10,
            progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Make the CSV at `path` hold `n` uniformly sampled subnets measured with `measure` (gene rows -> accuracies,
    or -> columns `accuracy` and losses, e.g. `SupernetEvaluator.scores`), one `DATA_COLUMNS` row each, appended
    as they are measured. Rows already there are kept and count towards `n` (an interrupted collection continues;
    a larger `n` grows it with new samples from `seed`). Returns the file's first `n` rows (gene rows,
    accuracies); `read_data_columns` reads the losses too."""
    import csv

    from tqdm import tqdm

    if n < 1:
        raise HwnasError(f"collect at least one subnet (got {n})")
    path = Path(path)
    have_genes, have = _open_for_append(path, space)
    todo = sample_unique(space, max(0, n - len(have_genes)), seed, exclude=list(have_genes))
    genes, values = [have_genes], [have["accuracy"]]
    with tqdm(total=n, initial=min(n, len(have_genes)), desc="predictor data", unit="subnet",
              disable=None if progress else True) as bar, path.open("a", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        for start in range(0, len(todo), chunk):
            rows = todo[start:start + chunk]
            measured = measure(rows)
            measured = {name: np.asarray(v, dtype=np.float64)
                        for name, v in (measured if isinstance(measured, dict) else {"accuracy": measured}).items()}
            acc = measured["accuracy"]
            for i, row in enumerate(rows):
                writer.writerow(_data_row(space, row, {name: float(v[i]) for name, v in measured.items()}))
            fh.flush()
            genes.append(rows)
            values.append(acc)
            bar.update(len(rows))
    return np.concatenate(genes)[:n], np.concatenate(values)[:n]


def train_predictor(space: SearchSpace, genes: np.ndarray, accuracy: np.ndarray, *, holdout: int = 200,
                    hidden: Sequence[int] = (400, 400, 400), epochs: int = 300, lr: float = 1e-3,
                    weight_decay: float = 1e-2, target: str = "log_error", seed: int = 0,
                    losses: dict[str, np.ndarray] | None = None) -> tuple[AccuracyPredictor, dict[str, Any]]:
    """Fit a predictor on all but the last `holdout` rows and report RMSE and Kendall tau on those (against its
    label: `accuracy`, or for a loss target its loss, from `losses` (label -> values); and, for every predictor, its
    accuracy estimate's tau against the measured accuracy); returns the predictor and its figures (also kept in
    `predictor.figures`, saved with it)."""
    if not 0 < holdout < len(genes) - 1:
        raise HwnasError(f"holdout must leave at least 2 training subnets: {len(genes)} collected, holdout {holdout}")
    if target not in TARGETS:
        raise HwnasError(f"predictor target {target!r} is not one of {', '.join(TARGETS)}")
    accuracy = np.asarray(accuracy, dtype=np.float64)
    label = LABELS[target]
    if label != "accuracy" and label not in (losses or {}):
        raise HwnasError(f"target {target!r} needs the subnets' {label} (collect them with this hwnas)")
    labels = np.asarray((losses or {})[label], dtype=np.float64) if label != "accuracy" else accuracy
    predictor = AccuracyPredictor(space, hidden, seed, target)
    fit = predictor.fit(genes[:-holdout], labels[:-holdout], epochs=epochs, lr=lr, weight_decay=weight_decay,
                        accuracy=accuracy[:-holdout])
    held_out = predictor.evaluate(genes[-holdout:], labels[-holdout:])
    held_out["accuracy_kendall_tau"] = kendall_tau(predictor.predict(genes[-holdout:]), accuracy[-holdout:])
    predictor.figures.update({"held_out_rmse": held_out["rmse"], "held_out_kendall_tau": held_out["kendall_tau"],
                              "held_out_accuracy_kendall_tau": held_out["accuracy_kendall_tau"],
                              "held_out_size": holdout, "lr": lr, "label": predictor.label})
    return predictor, {**fit, **{f"held_out_{k}": v for k, v in held_out.items()}, "target": target}


def select_target(space: SearchSpace, genes: np.ndarray, accuracy: np.ndarray, *, label: str, validation: int = 200,
                  losses: dict[str, np.ndarray] | None = None, **options: Any) -> tuple[str, dict[str, float]]:
    """The target for `label` (`accuracy` or a loss of `LOSS_LABELS`) whose predictor, fitted on all but the last
    `validation` rows of `genes` (pass training rows only: the held-out ones must not choose), ranks those rows
    best (Kendall tau against the label); returns it and each candidate's tau. `options` go to `train_predictor`."""
    candidates = [t for t in TARGETS if LABELS[t] == label]
    if not candidates:
        raise HwnasError(f"label {label!r} is not one of {', '.join(sorted(set(LABELS.values())))}")
    taus = {t: train_predictor(space, genes, accuracy, holdout=validation, target=t, losses=losses,
                               **options)[1]["held_out_kendall_tau"] for t in candidates}
    return max(candidates, key=lambda t: taus[t]), taus
