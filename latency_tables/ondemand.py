"""Measure on demand the lookup-table keys a table lacks (a pruned network's off-grid widths), into a copy.

`measure_missing` converts and times the keys of some architectures that a table has no row for, with the
table's own runtime, precision and protocol and the builder's own functions (`build.convert_all`, the runtime's
`measure_many` in round-robin groups, `table.row_line`, `build.table_lock`), and appends their rows to a COPY of
the table in another directory; the source table is never written. Rows are appended (fsynced) as each group
finishes and converted files are kept until measured, so an interrupted run resumes where it stopped, and a
second run with the same architectures measures nothing. `meta.json` of the copy says, under `on_demand`, which
table it copies and which keys were measured on demand and when.

Measuring is impossible when the table's runtime is not installed here, is another version, or the table was
measured on another device (its keys would not add up with new ones): `CannotMeasure` says which, and
`measured_or_source` hands back the source table with the reason, so the caller prices with estimates flagged as
such (`LatencyTable.predict_archs(..., estimate_missing=True)`).
"""

from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from latency_tables.build import LOCK_NAME, convert_all, drop_partial_line, measure_files, remeasured_drift, table_lock
from latency_tables.keys import LutKey, arch_keys
from latency_tables.runtimes import Protocol, get_runtime
from latency_tables.table import (
    LatencyTable,
    TableError,
    header_line,
    is_shipped,
    on_this_machine,
    read_meta,
    read_rows,
    row_line,
    write_meta,
)
from search_spaces import ArchConfig
from search_spaces.errors import HwnasError
from search_spaces.files import atomic_write_text

#: meta.json section of a copy with keys measured on demand.
ON_DEMAND = "on_demand"
#: Keys timed together in round-robin rounds, as `hwnas lut build` times them.
GROUP = 32
#: Files of a table directory the copy carries besides table.csv and meta.json.
_CARRIED = ("networks.csv", "validation-s*.csv")


class CannotMeasure(HwnasError):
    """A table's keys cannot be measured on this machine (runtime missing or another version, another device)."""


def measure_missing(table: LatencyTable | str | Path, archs: Sequence[ArchConfig], out_dir: str | Path, *,
                    jobs: int = 1, progress: bool = True, drift_check: int = 8,
                    drift_tolerance: float = 0.10) -> LatencyTable:
    """A copy of `table` in `out_dir` holding a measured row for every key of `archs` (`arch_keys`).

    Keys the table (or an earlier run into `out_dir`) lacks are converted by `jobs` processes and measured with
    the table's runtime, precision and protocol; everything else is copied. Resumable; a `CannotMeasure` before
    anything is written when this machine cannot measure the table's keys.

    Before measuring, `drift_check` of the table's own keys are measured again (0: no check), as a resumed
    `hwnas lut build` does: if their median moved by more than `drift_tolerance` (a fraction), this machine no
    longer measures what the table did (other load, clock, runtime) and new rows would not add up with the old
    ones, so nothing is measured (`CannotMeasure`; the copy, if made, keeps what it had)."""
    source = table if isinstance(table, LatencyTable) else LatencyTable.load(table)
    out = _check_out(source, Path(out_dir))
    for arch in archs:
        if not isinstance(arch, ArchConfig):
            raise HwnasError(f"measure_missing takes architectures (ArchConfig); got {type(arch).__name__}")
    runtime, precision, protocol = _measurable(source)
    wanted = list(dict.fromkeys(k for arch in archs for k in arch_keys(arch)))
    with table_lock(out):
        _start_copy(source, out)
        table_csv = out / "table.csv"
        drop_partial_line(table_csv)
        todo = [k for k in wanted if k not in read_rows(table_csv)]
        started, drift = time.perf_counter(), None
        if todo and drift_check > 0 and source.rows:
            drift = _check_drift(source, runtime, precision, protocol, drift_check, drift_tolerance)
        if todo:
            suffix = get_runtime(runtime).suffix
            items = [(key, out / "models" / f"k-{_file_id(key)}{suffix}") for key in todo]
            convert_all(runtime, precision, items, jobs, progress, chunk=16)
            measure_files(table_csv, items, runtime, protocol,
                           lambda key, m: row_line(key, m.median_ms, m.iqr_ms, m.runs), progress, "measure on demand",
                           group=GROUP)
        _record(source, out, len(todo), time.perf_counter() - started, drift)
    return LatencyTable.load(out)


def measured_or_source(table: LatencyTable | str | Path, archs: Sequence[ArchConfig], out_dir: str | Path, *,
                       jobs: int = 1, progress: bool = True) -> tuple[LatencyTable, str]:
    """(`measure_missing`'s copy, "") or, where this machine cannot measure the table's keys, (the source table,
    why): the caller then prices the missing keys with estimates and flags them."""
    source = table if isinstance(table, LatencyTable) else LatencyTable.load(table)
    try:
        return measure_missing(source, archs, out_dir, jobs=jobs, progress=progress), ""
    except CannotMeasure as err:
        return source, str(err)


def on_demand_keys(table: LatencyTable) -> dict[str, str]:
    """Keys (as text) of a copy that were measured on demand, with the UTC time each was recorded; {} for a table
    measured by `hwnas lut build` alone."""
    return dict((table.meta.get(ON_DEMAND) or {}).get("keys", {}))


def _measurable(source: LatencyTable) -> tuple[str, str, Protocol]:
    """(runtime, precision, protocol) of `source` when this machine can measure keys that add up with its rows;
    else a `CannotMeasure` naming what is missing or different."""
    profile = source.profile
    rt = get_runtime(profile.runtime)
    try:
        version = rt.version()
    except HwnasError as err:
        raise CannotMeasure(f"cannot measure keys of table {source.table_id} here: {err}") from None
    if profile.runtime_version and version != profile.runtime_version:
        raise CannotMeasure(f"table {source.table_id} was measured with {profile.runtime_version}, this machine has "
                            f"{version}; keys measured here would not add up with its rows. Install "
                            f"{profile.runtime_version}, or price with estimates (estimate_missing=True)")
    if not on_this_machine(profile):
        raise CannotMeasure(f"table {source.table_id} was measured on device {profile.device!r} (CPU "
                            f"{profile.cpu_model or 'unknown'}), not on this machine; measure its missing keys there "
                            f"(`hwnas lut build` or the device kit), or price with estimates (estimate_missing=True)")
    return profile.runtime, profile.precision, Protocol.from_dict(source.meta["protocol"])


def _check_drift(source: LatencyTable, runtime: str, precision: str, protocol: Protocol, sample: int,
                 tolerance: float) -> float:
    """The median ratio (now / then) of `sample` of the table's keys measured again; a `CannotMeasure` when it is
    further from 1 than `tolerance`."""
    drift = remeasured_drift(source.rows, runtime, precision, protocol, sample)
    if abs(drift - 1) > tolerance:
        raise CannotMeasure(f"{min(sample, len(source.rows))} keys of table {source.table_id} now measure "
                            f"{drift - 1:+.0%} (median) on this machine, more than the {tolerance:.0%} allowed: "
                            f"keys measured now would not add up with its rows. Measure again when the machine is "
                            f"idle, rebuild the table, or price with estimates (estimate_missing=True)")
    return drift


def _check_out(source: LatencyTable, out: Path) -> Path:
    """`out` if a copy of `source` may be written there: not the source itself, not a shipped table."""
    if source.path is not None and out.resolve() == Path(source.path).resolve():
        raise TableError(f"{out} is the source table; keys measured on demand go into a copy: pick another "
                         f"directory")
    if is_shipped(out):
        raise TableError(f"{out} is inside hwnas's shipped tables, which hwnas never writes; pick a directory "
                         f"outside {Path(__file__).parent / 'data'}")
    return out


def _is_carried(name: str) -> bool:
    return name == "table.csv" or any(Path(name).match(pattern) for pattern in _CARRIED)


def _start_copy(source: LatencyTable, out: Path) -> None:
    """Copy `source` into `out` (under the lock), or check that `out` already holds a copy of it."""
    if (out / "meta.json").is_file():
        _check_copy(source, out)
        return
    strays = [p.name for p in out.iterdir() if p.name not in (LOCK_NAME, "models") and not _is_carried(p.name)]
    if strays:
        raise TableError(f"{out} exists and is not a copy of table {source.table_id} (it holds {strays[0]}); pick "
                         f"an empty or new directory")
    if source.path is not None:
        folder = Path(source.path)
        for path in sorted(folder.iterdir()):
            if path.is_file() and _is_carried(path.name):
                atomic_write_text(out / path.name, path.read_text(encoding="utf-8"))
    else:
        atomic_write_text(out / "table.csv", header_line() + "".join(row_line(k, *v) for k, v in source.rows.items()))
    meta = copy.deepcopy(source.meta)
    earlier = meta.get(ON_DEMAND) or {}  # a copy of a copy: its keys were measured on demand too
    meta[ON_DEMAND] = {"source": {"path": str(source.path or ""), "table_id": source.table_id,
                                  "rows": len(source.rows)},
                       "keys": dict(earlier.get("keys", {})), "runs": list(earlier.get("runs", []))}
    write_meta(out, meta)  # last: a meta.json marks a finished copy


def _check_copy(source: LatencyTable, out: Path) -> None:
    """A `TableError` unless `out` is a copy of `source` (same table, its rows all there unchanged)."""
    meta = read_meta(out / "meta.json")
    copied = (meta.get(ON_DEMAND) or {}).get("source", {})
    same = {name: meta.get(name) == source.meta.get(name) for name in ("space", "profile", "protocol")}
    if copied.get("table_id") != source.table_id or not all(same.values()):
        raise TableError(f"{out} holds another table than {source.table_id} (or one not copied by measure_missing); "
                         f"pick another directory for this table's copy")
    rows = read_rows(out / "table.csv")
    changed = [k for k, v in source.rows.items() if k not in rows or not math.isclose(rows[k][0], v[0], rel_tol=1e-5)]
    if changed:
        raise TableError(f"{out} is a copy of an earlier state of table {source.table_id} (e.g. key "
                         f"{changed[0].to_str()} differs); pick another directory")


def _record(source: LatencyTable, out: Path, measured: int, seconds: float, drift: float | None) -> None:
    """Note in the copy's meta.json each key it has beyond the source (with when it was found measured) and this
    run's timing; left as it is when nothing new was measured."""
    meta = read_meta(out / "meta.json")
    section: dict[str, Any] = meta[ON_DEMAND]
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    extra = [k.to_str() for k in read_rows(out / "table.csv") if k not in source.rows]
    new = [k for k in extra if k not in section["keys"]]
    if not (measured or new):
        return
    section["keys"].update({k: now for k in new})
    section["runs"].append({"date": now, "keys_measured": measured, "seconds": round(seconds, 3),
                            "seconds_per_key": round(seconds / measured, 4) if measured else 0.0,
                            "drift": None if drift is None else round(drift, 4)})
    meta["keys_on_demand"] = len(section["keys"])
    write_meta(out, meta)


def _file_id(key: LutKey) -> str:
    """A file name stem for a key's converted model (stable, so a resumed conversion finds its files)."""
    return hashlib.sha256(key.to_str().encode()).hexdigest()[:16]
