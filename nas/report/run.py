"""What a run directory holds, read once for the report: stages.json, the study's trials, the picks and their
compressed versions (metrics.json, compress.json, spec.json), the references' summary.json, the supernet's
training log and the latency tables' meta.json. Every file is optional but stages.json; a file that is there but
cannot be read is an `HwnasError` naming it."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from search_spaces.errors import HwnasError

#: The stages of `hwnas run`, in order.
STAGES = ("supernet", "tables", "search", "export", "compress", "references", "report")


def read_json(path: Path) -> Any:
    """The JSON in `path`; an unreadable or malformed file is an HwnasError naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise HwnasError(f"{path} cannot be read as JSON ({type(err).__name__}: {err}); rerun the stage that "
                         f"writes it") from None


def _object(path: Path, required: tuple[str, ...] = ()) -> dict[str, Any]:
    data = read_json(path)
    if not isinstance(data, dict):
        raise HwnasError(f"{path} must hold a JSON object; got {type(data).__name__}")
    missing = [k for k in required if k not in data]
    if missing:
        raise HwnasError(f"{path} lacks {', '.join(missing)}; rerun the stage that writes it")
    return data


def wilson(accuracy: float, images: int | None) -> tuple[float, float]:
    """The 95% Wilson interval of `accuracy` on `images` validation images (the point itself when unknown)."""
    if not images:
        return accuracy, accuracy
    from nas.references import wilson_interval

    return wilson_interval(int(round(accuracy * images)), int(images))


def runtime_of(label: str) -> str:
    """The runtime of a measurement label (`ort:int8`, `ort-fp32` -> `ort`)."""
    return label.replace("-", ":").split(":")[0]


@dataclass
class Model:
    """A pick, a compressed pick or a reference, as the report shows it. `measured` and `predicted` are keyed
    `runtime:precision` (ms); `predicted` holds only what a table predicted for the same runtime and precision."""

    name: str
    kind: str  # pick, compressed, reference
    variant: str  # fp32, compressed
    accuracy: float
    images: int | None
    params: int | None = None
    macs: int | None = None
    size_bytes: float | None = None
    measured: dict[str, float] = field(default_factory=dict)
    predicted: dict[str, float] = field(default_factory=dict)
    key: str = ""
    arch: str | None = None
    parent: str | None = None
    loyalty: tuple[float, float] | None = None  # label, probability
    constraint: dict[str, Any] | None = None
    speedup: float | None = None
    spec: dict[str, Any] | None = None
    ci95: tuple[float, float] | None = None

    @property
    def interval(self) -> tuple[float, float]:
        return self.ci95 if self.ci95 is not None else wilson(self.accuracy, self.images)

    def latency_on(self, runtime: str) -> tuple[str, float] | None:
        """The measurement on `runtime` at the model's own precision: a compressed model's plan precision before
        its fp32 fallback, an fp32 model's fp32."""
        found = sorted((label, ms) for label, ms in self.measured.items() if runtime_of(label) == runtime)
        if not found:
            return None
        compressed = self.variant == "compressed"
        found.sort(key=lambda item: (item[0].endswith("fp32") == compressed, item[0]))
        return found[0]

    def as_reference_row(self, runtimes: list[str]) -> dict[str, Any]:
        """The row `nas.references.compare_with_references` takes, its latency keyed by runtime."""
        latency = {rt: {"measured_ms": m[1]} for rt in runtimes if (m := self.latency_on(rt)) is not None}
        return {"name": self.name, "variant": self.variant, "accuracy": self.accuracy,
                "accuracy_ci95": list(self.interval), "latency": latency}


@dataclass
class Trial:
    number: int
    batch: int
    values: list[float] | None
    feasible: bool
    attrs: dict[str, Any]


@dataclass
class Run:
    directory: Path
    stages: dict[str, Any]
    config_text: str | None = None
    objectives: list[str] = field(default_factory=list)
    constraints: list[str] = field(default_factory=list)
    trials: list[Trial] | None = None
    picks: list[Model] = field(default_factory=list)
    compressed: list[Model] = field(default_factory=list)
    references: list[Model] = field(default_factory=list)
    references_meta: dict[str, Any] | None = None
    train_log: list[dict[str, Any]] | None = None
    tables: list[dict[str, Any]] = field(default_factory=list)  # meta.json of each table

    def stage(self, name: str) -> dict[str, Any] | None:
        """The stage's record when it finished, else None."""
        stage = self.stages.get("stages", {}).get(name)
        return stage if isinstance(stage, dict) and stage.get("status") == "done" else None

    def status_line(self, name: str) -> str:
        stage = self.stages.get("stages", {}).get(name)
        if not isinstance(stage, dict) or stage.get("status") not in ("done", "running", "failed", "skipped"):
            return f"{name}: not run yet"
        seconds = stage.get("seconds")
        took = f" in {seconds:.1f} s" if isinstance(seconds, (int, float)) else ""
        return f"{name}: {stage['status']}{took}"

    @property
    def runtimes(self) -> list[str]:
        """Every runtime something was measured on, ort first."""
        found = {runtime_of(label) for m in self.picks + self.compressed + self.references for label in m.measured}
        return sorted(found, key=lambda r: (r != "ort", r))

    def children(self, pick: Model) -> list[Model]:
        return [c for c in self.compressed if c.parent == pick.key]


def recorded_path(run_dir: Path, text: Any) -> Path:
    """A path recorded in stages.json: absolute, `RUN/...`, relative to the working directory (`runs/NAME/...`,
    as the run recorded it), else the longest tail of it found under the run directory (a run directory moved or
    copied since)."""
    path = Path(str(text))
    if path.is_absolute() or path.exists():
        return path
    parts = path.parts
    if parts and parts[0] == "RUN":
        return run_dir.joinpath(*parts[1:])
    for start in range(len(parts)):
        inside = run_dir.joinpath(*parts[start:])
        if inside.exists():
            return inside
    return run_dir / path


def _outputs(run: Run, stage: str) -> dict[str, Any]:
    record = run.stage(stage)
    outputs = record.get("outputs") if record else None
    return outputs if isinstance(outputs, dict) else {}


def _measured(metrics: dict[str, Any]) -> dict[str, float]:
    measured = (metrics.get("latency") or {}).get("measured") or {}
    return {f"{m['runtime']}:{m['precision']}": float(m["median_ms"]) for m in measured.values()}


def _predicted(metrics: dict[str, Any]) -> dict[str, float]:
    predicted = (metrics.get("latency") or {}).get("predicted") or {}
    return {f"{p['runtime']}:{p['precision']}": float(p["latency_ms"]) for p in predicted.values()}


def _weight_bytes(arch_text: str, precisions: dict[str, str] | None = None) -> float:
    """Weight bytes of an architecture, each layer at its precision (fp32 by default), as compress.json counts."""
    from latency_tables.counting import layer_ops
    from search_spaces import ArchConfig

    bits = {"fp32": 32, "fp16": 16, "int8": 8}
    ops = layer_ops(ArchConfig.from_str(arch_text))
    return sum(op.weights * bits.get((precisions or {}).get(op.name, "fp32"), 32) / 8 for op in ops)


def _export(directory: Path, kind: str) -> Model:
    """A pick (kind `pick`) or compressed pick (`compressed`) from its export directory."""
    where = directory / "metrics.json"
    if not where.is_file():
        raise HwnasError(f"{where} is missing: the export in {directory} is incomplete; rerun its stage")
    metrics = _object(where, ("key", "accuracy"))
    spec = _object(directory / "spec.json", ("arch",)) if (directory / "spec.json").is_file() else None
    try:
        accuracy = metrics["accuracy"]
        cost = metrics.get("cost") or {}
        model = Model(name=str(metrics["key"]), kind=kind, variant="compressed" if kind == "compressed" else "fp32",
                      accuracy=float(accuracy["top1"]), images=accuracy.get("images"), params=cost.get("params"),
                      macs=cost.get("macs"), measured=_measured(metrics), predicted=_predicted(metrics),
                      key=str(metrics["key"]), arch=metrics.get("arch"),
                      constraint=(metrics.get("latency") or {}).get("constraint"), spec=spec)
        if kind == "compressed":
            _add_compression(model, _object(directory / "compress.json", ("parent",)))
        elif model.arch:
            model.size_bytes = _weight_bytes(model.arch)
    except (KeyError, TypeError, ValueError) as err:
        raise HwnasError(f"{where} is not shaped like an hwnas export's metrics ({type(err).__name__}: {err})") \
            from None
    return model


def _add_compression(model: Model, summary: dict[str, Any]) -> None:
    model.parent = str(summary["parent"])
    model.accuracy = float(summary.get("accuracy_after", model.accuracy))
    if "label_loyalty" in summary:
        model.loyalty = (float(summary["label_loyalty"]), float(summary["probability_loyalty"]))
    model.params = summary.get("params_after", model.params)
    model.macs = summary.get("macs_after", model.macs)
    model.size_bytes = summary.get("bytes_after")
    latency = summary.get("latency") or {}
    side = latency.get("side_by_side") or {}
    model.speedup = side.get("speedup", latency.get("measured_speedup"))
    runtime, predicted = summary.get("runtime"), latency.get("predicted_ms")
    measured = model.latency_on(str(runtime)) if runtime else None
    if measured is not None and predicted is not None and summary.get("metric") == "latency_ms":
        model.predicted[measured[0]] = float(predicted)  # the compression's own price of what it measured


def _picks_order(run: Run) -> list[str]:
    """Pick keys in the order picks.csv ranks them (empty when there is none)."""
    path = _outputs(run, "search").get("picks_csv")
    csv_path = recorded_path(run.directory, path) if path else run.directory / "search" / "picks.csv"
    if not csv_path.is_file():
        return []
    try:
        return [row["key"] for row in csv.DictReader(csv_path.read_text(encoding="utf-8").splitlines())]
    except (OSError, UnicodeDecodeError, KeyError, csv.Error) as err:
        raise HwnasError(f"{csv_path} cannot be read as the picks CSV ({type(err).__name__}: {err})") from None


def _read_exports(run: Run) -> None:
    subnets = [_export(recorded_path(run.directory, d), "pick") for d in _outputs(run, "export").get("subnets", [])]
    order = _picks_order(run)
    subnets.sort(key=lambda m: (order.index(m.key) if m.key in order else len(order), m.key))
    run.picks = subnets
    run.compressed = [_export(recorded_path(run.directory, d), "compressed")
                      for d in _outputs(run, "compress").get("compressed", [])]
    for model in run.compressed:
        if model.parent is not None:
            model.name = f"{model.parent} compressed"


def _reference(row: dict[str, Any], where: Path) -> Model:
    try:
        latency = row.get("latency") or {}
        ci = row.get("accuracy_ci95")
        return Model(name=str(row["name"]), kind="reference", variant=str(row.get("variant", "fp32")),
                     accuracy=float(row["accuracy"]), images=row.get("val_images"), params=row.get("params"),
                     macs=row.get("macs"), size_bytes=row.get("size_bytes"), key=str(row.get("key", "")),
                     arch=row.get("arch"), ci95=(float(ci[0]), float(ci[1])) if ci else None,
                     measured={k: float(v["measured_ms"]) for k, v in latency.items()
                               if v.get("measured_ms") is not None},
                     predicted={k: float(v["predicted_ms"]) for k, v in latency.items()
                                if v.get("predicted_ms") is not None})
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise HwnasError(f"{where}: a row is not shaped like a reference ({type(err).__name__}: {err})") from None


def _read_references(run: Run) -> None:
    summary = _outputs(run, "references").get("summary")
    if not summary:
        return
    where = recorded_path(run.directory, summary)
    data = _object(where, ("rows",))
    if not isinstance(data["rows"], list):
        raise HwnasError(f"{where}: 'rows' must be a list of references")
    run.references = [_reference(row, where) for row in data["rows"]]
    run.references_meta = {k: v for k, v in data.items() if k != "rows"}


def _read_supernet(run: Run) -> None:
    directory = _outputs(run, "supernet").get("run_dir")
    if not directory:
        return
    path = recorded_path(run.directory, directory) / "train_log.jsonl"
    if not path.is_file():
        return
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise HwnasError(f"{path} line {number} is not JSON ({err}); the training log is corrupt") from None
        if not isinstance(row, dict) or "epoch" not in row:
            raise HwnasError(f"{path} line {number} is not a training log row (an object with 'epoch')")
        rows.append(row)
    run.train_log = rows


def _read_tables(run: Run) -> None:
    for directory in _outputs(run, "tables").get("tables", []):
        path = recorded_path(run.directory, directory) / "meta.json"
        if path.is_file():
            meta = _object(path)
            run.tables.append({**meta, "path": str(path.parent)})


def _read_study(run: Run) -> None:
    outputs = _outputs(run, "search")
    if not outputs.get("storage"):
        return
    from nas.study import quiet_optuna

    storage, name = str(outputs["storage"]), str(outputs.get("study", "search"))
    if storage.startswith("sqlite:///"):
        db = recorded_path(run.directory, storage[len("sqlite:///"):])
        if not db.is_file():
            raise HwnasError(f"{db} (the search's study) is missing; rerun the search stage")
        storage = f"sqlite:///{db}"
    with quiet_optuna() as optuna:
        try:
            study = optuna.load_study(study_name=name, storage=storage)
            frozen = study.get_trials(deepcopy=False)
        except Exception as err:  # noqa: BLE001 - SQLAlchemy and Optuna errors: name the storage and the cause
            raise HwnasError(f"cannot read study {name!r} in {storage}: {type(err).__name__}: {err}") from None
        complete = optuna.trial.TrialState.COMPLETE
        run.objectives = [str(o) for o in study.user_attrs.get("objectives", [])]
    trials, constraints = [], {}
    for t in frozen:
        limits = getattr(t, "constraints", None) or {}
        # named constraints (`latency_ms<=0.1`); optuna-dashboard's positional copy reads back as `0`, `1`
        constraints.update(dict.fromkeys(k for k in limits if any(op in k for op in "<>")))
        batch = t.user_attrs.get("batch")
        trials.append(Trial(t.number, int(batch) if batch is not None else -1,
                            list(t.values) if t.state == complete and t.values else None,
                            all(math.isfinite(v) and v <= 0 for v in limits.values()), dict(t.user_attrs)))
    run.constraints = list(constraints)
    run.trials = trials


def read_run(run_dir: str | Path) -> Run:
    """Everything the report shows of the run directory `run_dir`."""
    directory = Path(run_dir)
    if not directory.is_dir():
        raise HwnasError(f"run directory {directory} does not exist; give the directory of `hwnas run`")
    stages_file = directory / "stages.json"
    if not stages_file.is_file():
        raise HwnasError(f"{directory} has no stages.json: it is not a run directory of `hwnas run`")
    run = Run(directory, _object(stages_file, ("stages",)))
    if not isinstance(run.stages["stages"], dict):
        raise HwnasError(f"{stages_file}: 'stages' must map stage names to their records")
    config = directory / "config.yaml"
    run.config_text = config.read_text(encoding="utf-8") if config.is_file() else None
    for reader in (_read_supernet, _read_tables, _read_study, _read_exports, _read_references):
        reader(run)
    return run
