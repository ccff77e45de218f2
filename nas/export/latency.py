"""Latency of an export measured on this machine's runtimes, the tables' predictions beside it, and the verdict on a
latency constraint (by prediction and, what counts, by measurement)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from latency_tables.keys import arch_keys
from latency_tables.runtimes import Protocol, RuntimeMissing, get_runtime
from latency_tables.table import LatencyTable, default_device, shipped_tables
from nas.export.spec import (
    METRICS_FILE,
    Progress,
    SubnetError,
    SubnetSpec,
    checked_file,
    label,
    model_file,
    read_metrics,
    say,
    write_metrics,
)
from nas.objectives import Constraint
from search_spaces import ArchConfig
from search_spaces.errors import HwnasError
from search_spaces.files import pinned_to_cpu


def _protocol_for(runtime: str, precision: str, protocol: Protocol | None, tables: Sequence[LatencyTable]) -> Protocol:
    """The given protocol, else that of a table for the same runtime and precision (like for like), else default."""
    if protocol is not None:
        return protocol
    for table in tables:
        profile = table.profile
        if (profile.runtime, profile.precision) == (runtime, precision):
            return Protocol.from_dict(table.meta["protocol"])
    return Protocol()


def measure(directory: Path, spec: SubnetSpec, models: Sequence[tuple[str, str]], protocol: Protocol | None,
             tables: Sequence[LatencyTable], progress: Progress | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for runtime, precision in models:
        rt = get_runtime(runtime)
        path = checked_file(directory, spec, model_file(runtime, precision), f" (the {runtime} {precision} model)")
        used = _protocol_for(runtime, precision, protocol, tables)
        say(progress, f"measuring {path.name} on {runtime} ({used.threads} thread(s), {used.warmup} warm-up, "
                       f"{used.repeats} x {used.runs} runs)")
        with pinned_to_cpu(used.pin_cpu) as pinned:
            try:
                m = rt.measure(path, used)
            except RuntimeMissing:
                raise
            except Exception as err:  # noqa: BLE001 - the runtime's own error types
                raise SubnetError(f"{path} cannot be run by {runtime} ({type(err).__name__}: {err})") from None
        out[label(runtime, precision)] = {
            "runtime": runtime, "precision": precision, "runtime_version": rt.version(), "file": path.name,
            "median_ms": m.median_ms, "iqr_ms": m.iqr_ms, "runs": m.runs, "threads": used.threads,
            "pinned_cpu": used.pin_cpu if pinned else None, "protocol": used.to_dict()}
    return out


def latency_constraint(constraint: str | Constraint | None) -> Constraint | None:
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
    c = latency_constraint(constraint)
    assert c is not None
    return {"constraint": str(c), "bound_ms": c.bound, "predicted_ms": predicted_ms, "measured_ms": measured_ms,
            "meets_constraint_predicted": None if predicted_ms is None else bool(c.satisfied(predicted_ms)),
            "meets_constraint_measured": bool(c.satisfied(measured_ms))}


def predictions(arch: ArchConfig, tables: Sequence[LatencyTable]) -> dict[str, Any]:
    """Each table's predicted latency of `arch`. A pruned architecture (explicit widths, off the grid the tables
    measured) has its missing keys estimated, flagged `estimated`; a grid architecture needs every key measured."""
    keys = arch_keys(arch)
    out = {}
    for table in tables:
        p = table.profile
        out[table.table_id] = {"latency_ms": float(table.predict_arch(arch, estimate_missing=arch.explicit)),
                               "estimated": any(k not in table.rows for k in keys), "runtime": p.runtime,
                               "precision": p.precision, "threads": p.threads, "device": p.device}
    return out


def latency_report(arch: ArchConfig, measured: dict[str, Any], tables: Sequence[LatencyTable],
                    constraint: Constraint | None) -> dict[str, Any]:
    """Measured and predicted latency, the comparison of each table with the measurement on its runtime, and the
    constraint verdict (against the first table, the one a search constrains, or the first measurement)."""
    predicted = predictions(arch, tables)
    device = default_device()
    comparison = {}
    for table in tables:
        p = table.profile
        m = measured.get(label(p.runtime, p.precision))
        if m is None:
            continue
        pred = predicted[table.table_id]["latency_ms"]
        comparison[table.table_id] = {
            "measured": label(p.runtime, p.precision), "predicted_ms": pred, "measured_ms": m["median_ms"],
            "relative_error": (pred - m["median_ms"]) / m["median_ms"],
            "same_threads": p.threads == m["threads"], "same_device": p.device == device}
    report: dict[str, Any] = {"device": device, "measured": measured, "predicted": predicted,
                              "comparison": comparison}
    if constraint is not None:
        if tables:
            first = tables[0]
            name = label(first.profile.runtime, first.profile.precision)
            if name not in measured:
                raise HwnasError(f"constraint {constraint} is on table {first.table_id} ({name}), but no {name} "
                                 f"model was measured; measure it (runtimes) or put a table for a measured runtime "
                                 f"first")
            verdict = latency_verdict(constraint, predicted[first.table_id]["latency_ms"], measured[name]["median_ms"])
            verdict["table_id"] = first.table_id
        else:
            if not measured:
                raise HwnasError(f"constraint {constraint} needs a measured runtime model")
            name = next(iter(measured))
            verdict = latency_verdict(constraint, None, measured[name]["median_ms"])
            verdict["table_id"] = None
        verdict["measured"] = name
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
    say(progress, f"measuring {spec.key} on {p.runtime} {p.precision} as table {table.table_id} does")
    with pinned_to_cpu(used.pin_cpu):
        m = measure_target(p.runtime, p.precision, spec.arch, used)
    predicted = float(table.predict_arch(spec.arch))
    report: dict[str, Any] = {"table_id": table.table_id, "runtime": p.runtime, "precision": p.precision,
                              "predicted_ms": predicted, "measured_ms": m.median_ms, "iqr_ms": m.iqr_ms,
                              "relative_error": (predicted - m.median_ms) / m.median_ms, "threads": used.threads}
    c = latency_constraint(constraint)
    if c is not None:
        report["constraint"] = {**latency_verdict(c, predicted, m.median_ms), "table_id": table.table_id,
                                "measured": label(p.runtime, p.precision)}
    if record:
        metrics = read_metrics(directory)
        latency = metrics.setdefault("latency", {})
        latency["measured_like_table"] = report
        if "constraint" in report:
            latency["constraint"] = report["constraint"]
        write_metrics(directory, metrics)
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
        raise SubnetError(f"{directory} holds no {', '.join(label(*m) for m in missing)} model (it has "
                          f"{', '.join(label(*m) for m in spec.models) or 'none'})")
    if tables is None:
        tables = _find_tables(spec.provenance.table_ids, spec.space)
    for table in tables:
        table.check(space=spec.space)
    c = latency_constraint(constraint)
    predictions(spec.arch, tables)  # a table lacking a key fails before anything is measured
    measured = measure(directory, spec, models, protocol, tables, progress)
    report = latency_report(spec.arch, measured, tables, c)
    if metrics is not None:
        metrics["latency"] = report
        write_metrics(directory, metrics)
    return report


# ------------------------------------------------------------------------------------------------ metrics
