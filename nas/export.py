"""Export a chosen subnet as a checkpoint that runs without the supernet, on PyTorch, ONNX Runtime and LiteRT.

`export_subnet` writes `<out_root>/<arch key>/`:

- `spec.json`: the `SubnetSpec`: architecture (canonical string and JSON), space, how an image becomes the model's
  input (resolution, channels, mean, std, layout), provenance (supernet weights sha256, dataset, seed, BN
  recalibration images, table ids, hwnas and torch versions), the compression plans (`prune_plan`,
  `bitwidth_plan`: null until a later stage fills them), the runtime models exported and every file's sha256.
- `model.safetensors`: the static model's weights after BatchNorm recalibration (no pickle).
- `model.onnx`, `model.tflite`: fp32 conversions of that model (batch 1; the TFLite model takes channels-last
  input, as `latency_tables` converts).
- `metrics.json`: validation accuracy (PyTorch), analytic costs, predicted latency per table, measured latency per
  runtime (median, IQR, protocol), predicted vs measured, the parity of each runtime with PyTorch and, when a
  latency constraint is given, whether the subnet meets it by prediction and by measurement.

Everything is written into a hidden temporary directory beside the target and renamed into place when complete,
so a failed export leaves no directory that looks finished. `load_subnet` rebuilds the model from spec.json and
model.safetensors alone. torch and the runtimes are imported only when needed: `import nas.export` is cheap.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from latency_tables.runtimes import RUNTIMES, Protocol, RuntimeMissing, get_runtime
from latency_tables.table import LatencyTable, atomic_write, default_device, shipped_tables
from nas.objectives import Constraint
from search_spaces import ArchConfig
from search_spaces.errors import HwnasError
from search_spaces.files import sha256_file

if TYPE_CHECKING:
    from torch import nn

    from supernets.data import Dataset
    from supernets.supernet import Supernet

SPEC_FORMAT = "hwnas.subnet/1"
METRICS_FORMAT = "hwnas.subnet-metrics/1"
SPEC_FILE, WEIGHTS_FILE, METRICS_FILE = "spec.json", "model.safetensors", "metrics.json"
#: What `export_subnet` converts to by default: (runtime, precision).
DEFAULT_RUNTIMES: tuple[tuple[str, str], ...] = (("ort", "fp32"), ("litert", "fp32"))
#: Precisions each runtime's export supports so far (int8 and fp16 come with the compression stage).
EXPORT_PRECISIONS: dict[str, tuple[str, ...]] = {"ort": ("fp32",), "litert": ("fp32",)}
#: Largest |logit difference| an fp32 runtime model may show against PyTorch.
PARITY_TOLERANCE = 1e-4

Progress = Callable[[str], None]


class SubnetError(HwnasError):
    """An exported subnet directory that is missing, incomplete, corrupt or does not fit its architecture."""


class ParityError(SubnetError):
    """A runtime model whose outputs do not agree with PyTorch's."""


def _say(progress: Progress | None, message: str) -> None:
    if progress is not None:
        progress(message)


def model_file(runtime: str, precision: str) -> str:
    """The file name of a runtime model in an export directory: `model.onnx`, `model.tflite`, `model-int8.onnx`."""
    suffix = get_runtime(runtime).suffix
    return f"model{suffix}" if precision == "fp32" else f"model-{precision}{suffix}"


def _label(runtime: str, precision: str) -> str:
    return f"{runtime}-{precision}"


def _hwnas_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hwnas")
    except PackageNotFoundError:
        return "unknown"


def _check_runtimes(runtimes: Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    pairs = tuple((str(r), str(p)) for r, p in runtimes)
    for runtime, precision in pairs:
        if runtime not in EXPORT_PRECISIONS:
            known = [r for r in RUNTIMES if r in EXPORT_PRECISIONS]
            raise HwnasError(f"cannot export to runtime {runtime!r}; allowed: {', '.join(known)}")
        if precision not in EXPORT_PRECISIONS[runtime]:
            raise HwnasError(f"exporting {runtime} at precision {precision!r} is not supported yet; allowed: "
                             f"{', '.join(EXPORT_PRECISIONS[runtime])}")
    if len(set(pairs)) != len(pairs):
        raise HwnasError(f"runtimes {pairs} name one (runtime, precision) twice")
    return pairs


# ---------------------------------------------------------------------------------------------- the spec


@dataclass(frozen=True)
class Provenance:
    """Where an exported subnet came from."""

    supernet_sha256: str | None
    dataset: str
    seed: int
    recal_images: int
    table_ids: tuple[str, ...] = ()
    hwnas_version: str = ""
    torch_version: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"supernet_sha256": self.supernet_sha256, "dataset": self.dataset, "seed": self.seed,
                "recal_images": self.recal_images, "table_ids": list(self.table_ids),
                "hwnas_version": self.hwnas_version, "torch_version": self.torch_version}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Provenance:
        sha = data.get("supernet_sha256")
        return cls(None if sha is None else str(sha), str(data["dataset"]), int(data["seed"]),
                   int(data["recal_images"]), tuple(str(t) for t in data.get("table_ids", ())),
                   str(data.get("hwnas_version", "")), str(data.get("torch_version", "")))


@dataclass(frozen=True)
class SubnetSpec:
    """What an exported subnet is: architecture, space, input preprocessing, provenance, compression plans (None
    until pruning / bit-width assignment fill them), the runtime models exported, and the sha256 of every file."""

    arch: ArchConfig
    space: str
    mean: float
    std: float
    provenance: Provenance
    models: tuple[tuple[str, str], ...] = ()
    files: Mapping[str, str] = field(default_factory=dict)
    prune_plan: Any = None
    bitwidth_plan: Any = None

    @property
    def key(self) -> str:
        return self.arch.key

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """PyTorch / ONNX input, NCHW at batch 1 (the TFLite model takes the same image channels-last)."""
        return (1, self.arch.in_channels, self.arch.resolution, self.arch.resolution)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": SPEC_FORMAT,
            "key": self.key,
            "arch": self.arch.to_str(),
            "arch_json": self.arch.to_dict(),
            "space": self.space,
            "input": {"shape": list(self.input_shape), "layout": "NCHW", "pixel_scale": 1 / 255, "mean": self.mean,
                      "std": self.std, "resize": "bilinear",
                      "note": "x = (pixels * pixel_scale - mean) / std, resized to the resolution; model.tflite "
                              "takes x channels-last (NHWC)"},
            "provenance": self.provenance.to_dict(),
            "prune_plan": self.prune_plan,
            "bitwidth_plan": self.bitwidth_plan,
            "models": [{"runtime": r, "precision": p, "file": model_file(r, p)} for r, p in self.models],
            "files": dict(sorted(self.files.items())),
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = SPEC_FILE) -> SubnetSpec:
        """Parse and check a spec; a `SubnetError` naming `where` and what is wrong."""
        if not isinstance(data, dict):
            raise SubnetError(f"{where} must hold a JSON object; got {type(data).__name__}")
        if data.get("format") != SPEC_FORMAT:
            raise SubnetError(f"{where}: format {data.get('format')!r}; this hwnas reads {SPEC_FORMAT!r}")
        try:
            arch = ArchConfig.from_str(data["arch"])
            if ArchConfig.from_dict(data["arch_json"]) != arch:
                raise SubnetError(f"{where}: 'arch' and 'arch_json' describe different architectures")
            if data.get("key", arch.key) != arch.key:
                raise SubnetError(f"{where}: key {data['key']!r} is not the architecture's key {arch.key!r}")
            models = tuple((str(m["runtime"]), str(m["precision"])) for m in data.get("models", ()))
            files = {str(k): str(v) for k, v in dict(data.get("files", {})).items()}
            return cls(arch, str(data["space"]), float(data["input"]["mean"]), float(data["input"]["std"]),
                       Provenance.from_dict(data["provenance"]), models, files, data.get("prune_plan"),
                       data.get("bitwidth_plan"))
        except SubnetError:
            raise
        except (HwnasError, KeyError, TypeError, ValueError) as err:
            raise SubnetError(f"{where} is not a valid subnet spec: {type(err).__name__}: {err}") from None

    def save(self, directory: Path) -> Path:
        path = Path(directory) / SPEC_FILE
        atomic_write(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> SubnetSpec:
        path = Path(directory) / SPEC_FILE
        data = _read_json(path, f"{directory} is not a complete exported subnet (expected {SPEC_FILE} and "
                                f"{WEIGHTS_FILE}; export one with nas.export.export_subnet)")
        return cls.from_dict(data, str(path))


def _read_json(path: Path, missing: str) -> Any:
    """The JSON in `path`; a missing or unreadable file is a SubnetError (`missing`: what that means)."""
    if not path.is_file():
        raise SubnetError(f"{path} is missing: {missing}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SubnetError(f"{path} cannot be read as JSON ({err}); export the subnet again") from None


def _checked_file(directory: Path, spec: SubnetSpec, name: str, what: str = "") -> Path:
    """`directory/name`, refused with its name when missing or when its sha256 is not the one spec.json records."""
    path = directory / name
    if not path.is_file():
        raise SubnetError(f"{path} is missing{what}; export the subnet again")
    want = spec.files.get(name)
    if want is not None and sha256_file(path) != want:
        raise SubnetError(f"{path} does not match the sha256 recorded in {directory / SPEC_FILE}: the file is "
                          f"corrupt or was replaced; export the subnet again")
    return path


# ------------------------------------------------------------------------------------------------ loading


def load_subnet(directory: str | Path) -> tuple[nn.Module, SubnetSpec]:
    """The static model of an exported subnet (eval mode) and its spec, from spec.json and model.safetensors
    alone (no supernet). A `SubnetError` names the file when one is missing or corrupt, or when the weights do not
    fit the architecture."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from supernets.models import build_model

    directory = Path(directory)
    if not directory.is_dir():
        raise SubnetError(f"{directory} is not a directory; an exported subnet is a directory holding {SPEC_FILE}, "
                          f"{WEIGHTS_FILE}, {METRICS_FILE} and its runtime models")
    spec = SubnetSpec.load(directory)
    if spec.prune_plan is not None or spec.bitwidth_plan is not None:
        raise SubnetError(f"{directory / SPEC_FILE} has a prune or bit-width plan; this hwnas loads only unpruned "
                          f"full-precision subnets")
    path = _checked_file(directory, spec, WEIGHTS_FILE, " (it holds the subnet's weights)")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise SubnetError(f"{path} cannot be read as safetensors ({err}); export the subnet again") from None
    model = build_model(spec.arch)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split())
        raise SubnetError(f"{path} does not fit the architecture in {directory / SPEC_FILE} ({spec.key}): "
                          f"{detail[:400]}") from None
    return model.eval(), spec


# -------------------------------------------------------------------------------------------------- parity


def _load_session(directory: Path, spec: SubnetSpec, runtime: str, precision: str, threads: int) -> tuple[Any, Path]:
    name = model_file(runtime, precision)
    path = _checked_file(directory, spec, name, f" (the {runtime} {precision} model)")
    rt = get_runtime(runtime)
    rt.version()  # RuntimeMissing, naming what to install, before anything else is tried
    try:
        return rt.load(path, threads), path
    except RuntimeMissing:
        raise
    except Exception as err:  # noqa: BLE001 - each runtime raises its own types for an unreadable model
        raise SubnetError(f"{path} cannot be loaded by {runtime} ({type(err).__name__}: {err}); export the subnet "
                          f"again") from None


def _parity(model: nn.Module, directory: Path, spec: SubnetSpec, data: Dataset, models: Sequence[tuple[str, str]],
            *, images: int | None, tolerance: float, threads: int, batch: int = 250,
            progress: Progress | None = None) -> dict[str, Any]:
    """Compare each runtime model's logits with PyTorch's on the first `images` validation images, one at a time."""
    import numpy as np
    import torch

    from supernets.data import to_tensor

    split = data.val
    n = len(split) if images is None else max(0, min(int(images), len(split)))
    if n == 0:
        raise HwnasError("parity needs at least one validation image")
    sessions = {}
    for runtime, precision in models:
        sessions[_label(runtime, precision)] = _load_session(directory, spec, runtime, precision, threads)
    diffs = {label: 0.0 for label in sessions}
    differ = {label: 0 for label in sessions}
    correct = {label: 0 for label in ("torch", *sessions)}
    _say(progress, f"parity of {', '.join(sessions)} with PyTorch on {n} validation images")
    model.eval()
    for start in range(0, n, batch):
        x = to_tensor(split.images[start:min(n, start + batch)], spec.arch.resolution, spec.mean, spec.std)
        labels = split.labels[start:start + len(x)]
        with torch.inference_mode():
            want = model(x).numpy()
        correct["torch"] += int((want.argmax(1) == labels).sum())
        xs = x.numpy()
        for label, (session, _) in sessions.items():
            got = np.concatenate([session.to_torch(session(session.from_torch(xs[i:i + 1]))).reshape(1, -1)
                                  for i in range(len(xs))])
            if got.shape != want.shape:
                raise ParityError(f"{sessions[label][1]} gives logits of shape {got.shape[1:]}, PyTorch "
                                  f"{want.shape[1:]}")
            diffs[label] = max(diffs[label], float(np.abs(got - want).max()))
            differ[label] += int((got.argmax(1) != want.argmax(1)).sum())
            correct[label] += int((got.argmax(1) == labels).sum())
    report: dict[str, Any] = {"tolerance": tolerance, "images": n, "split": "val", "torch_top1": correct["torch"] / n,
                              "runtimes": {}}
    for label, (_, path) in sessions.items():
        ok = math.isfinite(diffs[label]) and diffs[label] <= tolerance and differ[label] == 0
        report["runtimes"][label] = {"file": path.name, "max_abs_diff": diffs[label],
                                     "top1_agreement": 1 - differ[label] / n, "top1_differ": differ[label],
                                     "top1": correct[label] / n, "passed": ok}
    report["passed"] = all(r["passed"] for r in report["runtimes"].values())
    return report


def parity_failures(report: Mapping[str, Any]) -> list[str]:
    """One line per runtime model that fails parity in a `check_parity` report (empty when all pass)."""
    lines = []
    for label, r in report["runtimes"].items():
        if r["passed"]:
            continue
        parts = []
        if r["top1_differ"]:
            parts.append(f"{r['top1_differ']} of {report['images']} validation images get another top-1 class than "
                         f"PyTorch (agreement {r['top1_agreement']:.2%})")
        if not r["max_abs_diff"] <= report["tolerance"]:
            parts.append(f"largest |logit difference| {r['max_abs_diff']:.3g} > {report['tolerance']:g}")
        lines.append(f"{r['file']} ({label}): {'; '.join(parts)}")
    return lines


def check_parity(directory: str | Path, data: Dataset, *, images: int | None = None,
                 tolerance: float = PARITY_TOLERANCE, threads: int = 1, record: bool = True,
                 raise_on_failure: bool = True, progress: Progress | None = None) -> dict[str, Any]:
    """Whether each runtime model of an export gives PyTorch's top-1 class on every one of the first `images`
    validation images of `data` (all by default) and logits within `tolerance` of PyTorch's. Returns the report
    (per runtime: max_abs_diff, top1_agreement, top1_differ, top1, passed); with `record`, stores it in
    metrics.json as `parity`. Raises a `ParityError` saying what differs unless `raise_on_failure` is False."""
    directory = Path(directory)
    model, spec = load_subnet(directory)
    _check_data(spec.arch, data)
    report = _parity(model, directory, spec, data, spec.models, images=images, tolerance=tolerance, threads=threads,
                     progress=progress)
    if record:
        metrics = read_metrics(directory)
        metrics["parity"] = report
        _write_metrics(directory, metrics)
    if raise_on_failure and not report["passed"]:
        raise ParityError(f"{directory}: runtime models disagree with PyTorch: " + " | ".join(parity_failures(report)))
    return report


def _check_data(arch: ArchConfig, data: Dataset) -> None:
    if (data.in_channels, data.num_classes) != (arch.in_channels, arch.num_classes):
        raise HwnasError(f"dataset {data.name!r} has {data.in_channels} channel(s) and {data.num_classes} classes; "
                         f"the subnet takes {arch.in_channels} channel(s) and gives {arch.num_classes} classes")


# ----------------------------------------------------------------------------------------------- latency


@contextlib.contextmanager
def _pinned(cpu: int | None) -> Iterator[bool]:
    """Pin this process to `cpu` for the block (as the tables were measured), then restore its CPUs. Yields
    whether it is pinned (not when `cpu` is None, unsupported or not available here)."""
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        yield False
        return
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError:
        yield False
        return
    try:
        yield True
    finally:
        os.sched_setaffinity(0, before)


def _protocol_for(runtime: str, precision: str, protocol: Protocol | None, tables: Sequence[LatencyTable]) -> Protocol:
    """The given protocol, else that of a table for the same runtime and precision (like for like), else default."""
    if protocol is not None:
        return protocol
    for table in tables:
        profile = table.profile
        if (profile.runtime, profile.precision) == (runtime, precision):
            return Protocol.from_dict(table.meta["protocol"])
    return Protocol()


def _measure(directory: Path, spec: SubnetSpec, models: Sequence[tuple[str, str]], protocol: Protocol | None,
             tables: Sequence[LatencyTable], progress: Progress | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for runtime, precision in models:
        rt = get_runtime(runtime)
        path = _checked_file(directory, spec, model_file(runtime, precision), f" (the {runtime} {precision} model)")
        used = _protocol_for(runtime, precision, protocol, tables)
        _say(progress, f"measuring {path.name} on {runtime} ({used.threads} thread(s), {used.warmup} warm-up, "
                       f"{used.repeats} x {used.runs} runs)")
        with _pinned(used.pin_cpu) as pinned:
            try:
                m = rt.measure(path, used)
            except RuntimeMissing:
                raise
            except Exception as err:  # noqa: BLE001 - the runtime's own error types
                raise SubnetError(f"{path} cannot be run by {runtime} ({type(err).__name__}: {err})") from None
        out[_label(runtime, precision)] = {
            "runtime": runtime, "precision": precision, "runtime_version": rt.version(), "file": path.name,
            "median_ms": m.median_ms, "iqr_ms": m.iqr_ms, "runs": m.runs, "threads": used.threads,
            "pinned_cpu": used.pin_cpu if pinned else None, "protocol": used.to_dict()}
    return out


def _latency_constraint(constraint: str | Constraint | None) -> Constraint | None:
    if constraint is None:
        return None
    c = Constraint.parse(constraint) if isinstance(constraint, str) else constraint
    if c.metric != "latency_ms":
        raise HwnasError(f"constraint {c}: a re-measured subnet is checked against a latency_ms constraint (e.g. "
                         f"latency_ms<=2.5), not {c.metric}")
    return c


def latency_verdict(constraint: str | Constraint, predicted_ms: float | None, measured_ms: float) -> dict[str, Any]:
    """Whether a subnet meets a latency constraint by the table's prediction and by measurement on the runtime.
    `meets_constraint_measured` is what counts: a subnet the table thought fast enough but that measures slower
    does not meet the constraint."""
    c = _latency_constraint(constraint)
    assert c is not None
    return {"constraint": str(c), "bound_ms": c.bound, "predicted_ms": predicted_ms, "measured_ms": measured_ms,
            "meets_constraint_predicted": None if predicted_ms is None else bool(c.satisfied(predicted_ms)),
            "meets_constraint_measured": bool(c.satisfied(measured_ms))}


def _predictions(arch: ArchConfig, tables: Sequence[LatencyTable]) -> dict[str, Any]:
    out = {}
    for table in tables:
        p = table.profile
        out[table.table_id] = {"latency_ms": float(table.predict_arch(arch)), "runtime": p.runtime,
                               "precision": p.precision, "threads": p.threads, "device": p.device}
    return out


def _latency_report(arch: ArchConfig, measured: dict[str, Any], tables: Sequence[LatencyTable],
                    constraint: Constraint | None) -> dict[str, Any]:
    """Measured and predicted latency, the comparison of each table with the measurement on its runtime, and the
    constraint verdict (against the first table, the one a search constrains, or the first measurement)."""
    predicted = _predictions(arch, tables)
    device = default_device()
    comparison = {}
    for table in tables:
        p = table.profile
        m = measured.get(_label(p.runtime, p.precision))
        if m is None:
            continue
        pred = predicted[table.table_id]["latency_ms"]
        comparison[table.table_id] = {
            "measured": _label(p.runtime, p.precision), "predicted_ms": pred, "measured_ms": m["median_ms"],
            "relative_error": (pred - m["median_ms"]) / m["median_ms"],
            "same_threads": p.threads == m["threads"], "same_device": p.device == device}
    report: dict[str, Any] = {"device": device, "measured": measured, "predicted": predicted,
                              "comparison": comparison}
    if constraint is not None:
        if tables:
            first = tables[0]
            label = _label(first.profile.runtime, first.profile.precision)
            if label not in measured:
                raise HwnasError(f"constraint {constraint} is on table {first.table_id} ({label}), but no {label} "
                                 f"model was measured; measure it (runtimes) or put a table for a measured runtime "
                                 f"first")
            verdict = latency_verdict(constraint, predicted[first.table_id]["latency_ms"], measured[label]["median_ms"])
            verdict["table_id"] = first.table_id
        else:
            if not measured:
                raise HwnasError(f"constraint {constraint} needs a measured runtime model")
            label = next(iter(measured))
            verdict = latency_verdict(constraint, None, measured[label]["median_ms"])
            verdict["table_id"] = None
        verdict["measured"] = label
        report["constraint"] = verdict
    return report


def remeasure_like_table(directory: str | Path, table: LatencyTable, constraint: str | Constraint | None = None,
                         *, record: bool = True, progress: Progress | None = None) -> dict[str, Any]:
    """Measure an export's architecture on `table`'s runtime and precision the way the table measured its networks
    (converted from seeded weights, under the table's protocol): for tables whose precision the export does not
    hold (int8, fp16), where latency depends on the architecture, not on the trained weights. The verdict on
    `constraint` goes into metrics.json's `latency` (as `constraint`, replacing one from another runtime) and
    `latency.measured_like_table`."""
    from latency_tables.build import measure_target

    directory = Path(directory)
    spec = SubnetSpec.load(directory)
    p = table.profile
    table.check(space=spec.space)
    used = Protocol.from_dict(table.meta["protocol"])
    _say(progress, f"measuring {spec.key} on {p.runtime} {p.precision} as table {table.table_id} does")
    with _pinned(used.pin_cpu):
        m = measure_target(p.runtime, p.precision, spec.arch, used)
    predicted = float(table.predict_arch(spec.arch))
    report: dict[str, Any] = {"table_id": table.table_id, "runtime": p.runtime, "precision": p.precision,
                              "predicted_ms": predicted, "measured_ms": m.median_ms, "iqr_ms": m.iqr_ms,
                              "relative_error": (predicted - m.median_ms) / m.median_ms, "threads": used.threads}
    c = _latency_constraint(constraint)
    if c is not None:
        report["constraint"] = {**latency_verdict(c, predicted, m.median_ms), "table_id": table.table_id,
                                "measured": _label(p.runtime, p.precision)}
    if record:
        metrics = read_metrics(directory)
        latency = metrics.setdefault("latency", {})
        latency["measured_like_table"] = report
        if "constraint" in report:
            latency["constraint"] = report["constraint"]
        _write_metrics(directory, metrics)
    return report


def meets_constraint_measured(directory: str | Path) -> bool:
    """The measured verdict recorded in an export's metrics.json (by `export_subnet` or `remeasure` with a
    constraint): what a search must report, not the table's prediction."""
    metrics = read_metrics(directory)
    verdict = metrics.get("latency", {}).get("constraint")
    if verdict is None:
        raise SubnetError(f"{Path(directory) / METRICS_FILE} records no latency constraint; re-measure with one "
                          f"(nas.export.remeasure(..., constraint='latency_ms<=BOUND'))")
    return bool(verdict["meets_constraint_measured"])


def _find_tables(table_ids: Sequence[str], space: str) -> list[LatencyTable]:
    found: dict[str, LatencyTable] = {}
    for path in shipped_tables():
        table = LatencyTable.load(path)
        if table.table_id in table_ids and table.space_name == space:
            found[table.table_id] = table
    missing = [t for t in table_ids if t not in found]
    if missing:
        raise HwnasError(f"tables {', '.join(missing)} (recorded in spec.json) are not among the shipped tables; pass "
                         f"them as tables=")
    return [found[t] for t in table_ids]


def remeasure(directory: str | Path, *, tables: Sequence[LatencyTable] | None = None,
              protocol: Protocol | None = None, runtimes: Sequence[tuple[str, str]] | None = None,
              constraint: str | Constraint | None = None, record: bool = True,
              progress: Progress | None = None) -> dict[str, Any]:
    """Measure an export's runtime models on this machine and compare with the tables' predictions.

    `tables` default to the ones spec.json names (found among the shipped tables); `runtimes` to every model the
    export holds; `protocol` to each matching table's protocol (like for like), else `Protocol()`. With
    `constraint` (e.g. `latency_ms<=2.5`, on the first table's runtime) the report's `constraint` says whether the
    subnet meets it by prediction and by measurement. With `record`, metrics.json's `latency` is replaced
    (atomically). Returns the latency report."""
    directory = Path(directory)
    metrics = read_metrics(directory) if record else None
    spec = SubnetSpec.load(directory)
    models = tuple((str(r), str(p)) for r, p in runtimes) if runtimes is not None else spec.models
    missing = [m for m in models if m not in spec.models]
    if missing:
        raise SubnetError(f"{directory} holds no {', '.join(_label(*m) for m in missing)} model (it has "
                          f"{', '.join(_label(*m) for m in spec.models) or 'none'})")
    if tables is None:
        tables = _find_tables(spec.provenance.table_ids, spec.space)
    for table in tables:
        table.check(space=spec.space)
    c = _latency_constraint(constraint)
    _predictions(spec.arch, tables)  # a table lacking a key fails before anything is measured
    measured = _measure(directory, spec, models, protocol, tables, progress)
    report = _latency_report(spec.arch, measured, tables, c)
    if metrics is not None:
        metrics["latency"] = report
        _write_metrics(directory, metrics)
    return report


# ------------------------------------------------------------------------------------------------ metrics


def read_metrics(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / METRICS_FILE
    data = _read_json(path, f"{directory} is not a complete export (metrics.json is written last); export the "
                            f"subnet again")
    if not isinstance(data, dict) or data.get("format") != METRICS_FORMAT:
        raise SubnetError(f"{path} is not an hwnas subnet metrics file (format {METRICS_FORMAT!r})")
    return data


def _write_metrics(directory: Path, metrics: dict[str, Any]) -> None:
    atomic_write(directory / METRICS_FILE, json.dumps(metrics, indent=2) + "\n")


# ------------------------------------------------------------------------------------------------- export


def export_subnet(net: Supernet, arch: ArchConfig, data: Dataset, out_root: str | Path, *, recal_images: int,
                  seed: int, runtimes: Sequence[tuple[str, str]] = DEFAULT_RUNTIMES,
                  tables: Sequence[LatencyTable] = (), accuracy: float | None = None,
                  protocol: Protocol | None = None, extra_metrics: Mapping[str, Any] | None = None,
                  constraint: str | Constraint | None = None, supernet_sha256: str | None = None,
                  parity_images: int | None = None, parity_tolerance: float = PARITY_TOLERANCE,
                  require_parity: bool = True, overwrite: bool = False,
                  progress: Progress | None = None) -> Path:
    """Export subnet `arch` of `net` to `out_root/<arch.key>/` (see the module's docstring) and return that path.

    The static model is materialized and its BatchNorm statistics recalibrated on `recal_images` training images of
    `data` chosen by `seed` (`supernets.evaluation`); its validation accuracy is measured with PyTorch (`accuracy`,
    when given, is recorded beside it as `search_accuracy`: what the search saw). Each runtime model is converted
    from it, checked for parity on the validation split (the first `parity_images`) and timed under `protocol`
    (default: each matching table's protocol). `tables` give predicted latency (the first one is the one
    `constraint`, e.g. `latency_ms<=2.5`, is checked on). When parity fails and `require_parity` is set, nothing is
    published: the finished directory is kept as `<key>.parity-failed/` and a `ParityError` says what differs.
    An existing export of the same architecture is replaced only with `overwrite`."""
    import torch

    from latency_tables import convert
    from latency_tables.analytic import AnalyticCostModel
    from supernets.evaluation import accuracy as top1
    from supernets.evaluation import recalibrate_bn, recalibration_images

    out_root = Path(out_root)
    models = _check_runtimes(runtimes)
    net.space.validate(arch)
    _check_data(arch, data)
    if recal_images < 1:
        raise HwnasError(f"recal_images must be at least 1 (got {recal_images})")
    for table in tables:
        table.check(space=net.space.name)
    ids = [t.table_id for t in tables]
    if len(set(ids)) != len(ids):
        raise HwnasError(f"latency tables {', '.join(ids)} name one table twice")
    c = _latency_constraint(constraint)
    if c is not None and tables and _label(tables[0].profile.runtime, tables[0].profile.precision) not in \
            {_label(*m) for m in models}:
        raise HwnasError(f"constraint {c} is checked on table {tables[0].table_id}, whose runtime is not exported "
                         f"({', '.join(_label(*m) for m in models)})")
    predicted = _predictions(arch, tables)  # fails on a table lacking a key before any work
    for runtime, _ in models:
        get_runtime(runtime).version()  # RuntimeMissing (naming the extra) before any work
    final = out_root / arch.key
    if final.exists() and not overwrite:
        raise SubnetError(f"{final} already exists; pass overwrite=True to replace it (nothing was changed)")

    _say(progress, f"materializing {arch.key} and recalibrating BatchNorm on {recal_images} training images")
    model = net.materialize(arch)
    recalibrate_bn(model, recalibration_images(data, arch.resolution, recal_images, seed))
    used_recal = min(recal_images, len(data.train))
    spec = SubnetSpec(arch, net.space.name, data.mean, data.std,
                      Provenance(supernet_sha256, data.name, seed, used_recal, tuple(ids), _hwnas_version(),
                                 str(torch.__version__)), models)

    out_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{arch.key}.", suffix=".tmp", dir=out_root))
    try:
        from safetensors.torch import save_file

        state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": SPEC_FORMAT, "arch_key": arch.key})
        for runtime, precision in models:
            name = model_file(runtime, precision)
            _say(progress, f"converting to {runtime} {precision} ({name})")
            if runtime == "ort":
                convert.export_onnx(model, spec.input_shape, tmp / name)
            else:
                convert.export_tflite(model, spec.input_shape, tmp / name, precision)
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        spec = SubnetSpec(spec.arch, spec.space, spec.mean, spec.std, spec.provenance, spec.models, files)
        spec.save(tmp)

        loaded, spec = load_subnet(tmp)  # what is measured and compared is what was written
        _say(progress, "validation accuracy (PyTorch)")
        metrics: dict[str, Any] = {
            "format": METRICS_FORMAT, "key": arch.key, "arch": arch.to_str(),
            "accuracy": {"top1": top1(loaded, data.val, arch.resolution, spec.mean, spec.std), "split": "val",
                         "images": len(data.val), "dataset": data.name, "runtime": "torch"},
            "cost": AnalyticCostModel("fp32").estimate(arch).to_dict()}
        metrics["cost"]["latency_ms"] = {tid: p["latency_ms"] for tid, p in predicted.items()}
        if accuracy is not None:
            metrics["accuracy"]["search_accuracy"] = float(accuracy)
        parity = _parity(loaded, tmp, spec, data, models, images=parity_images, tolerance=parity_tolerance,
                         threads=1, progress=progress)
        metrics["parity"] = parity
        if extra_metrics:
            metrics["extra"] = dict(extra_metrics)
        if require_parity and not parity["passed"]:
            _write_metrics(tmp, metrics)
            failed = out_root / f"{arch.key}.parity-failed"
            shutil.rmtree(failed, ignore_errors=True)
            tmp.rename(failed)
            raise ParityError(f"subnet {arch.key} was not exported: its runtime models disagree with PyTorch: "
                              + " | ".join(parity_failures(parity)) + f". The files are kept in {failed}")
        metrics["latency"] = _latency_report(arch, _measure(tmp, spec, models, protocol, tables, progress), tables, c)
        _write_metrics(tmp, metrics)
        _publish(tmp, final)
        shutil.rmtree(out_root / f"{arch.key}.parity-failed", ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    _say(progress, f"exported {final}")
    return final


def _publish(tmp: Path, final: Path) -> None:
    """Rename the finished directory into place (swapping out an older export, which is removed after)."""
    if not final.exists():
        tmp.rename(final)
        return
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def export_from_run(run_dir: str | Path, arch: ArchConfig, out_root: str | Path, *, data: Dataset | None = None,
                    recal_images: int | None = None, seed: int | None = None, **kwargs: Any) -> Path:
    """`export_subnet` for a trained supernet's run directory: its weights (sha256 recorded), its dataset and
    recipe's BN recalibration images and seed unless given. Other keywords go to `export_subnet`."""
    from supernets.config import TrainConfig
    from supernets.data import load_dataset
    from supernets.training import load_supernet

    net, meta = load_supernet(run_dir)
    config = TrainConfig.from_dict(meta["config"])
    if data is None:
        data = load_dataset(config.dataset, config.data_path, val_fraction=config.val_fraction, seed=config.seed)
    return export_subnet(net, arch, data, out_root, recal_images=recal_images or config.bn_recal_images,
                         seed=config.seed if seed is None else seed,
                         supernet_sha256=meta.get("weights_sha256"), **kwargs)
