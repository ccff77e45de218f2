"""Validate a finished latency table: measure random subnets it was not fitted on, end to end, and compare.

Validation measures and reports; it stores its summary (in meta.json) and measurements (`validation-s<seed>.csv`)
only when asked, beside the table or in a copy of it elsewhere. A table shipped inside the installed package
(`latency_tables/data/`) is never written: its validation is the one measured where it was built.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from latency_tables.build import (
    accuracy_summary,
    correction_on,
    measured_like,
    read_networks,
    remeasured_drift,
    table_lock,
    unique_archs,
    utc_now,
    utc_stamp,
)
from latency_tables.runtimes import Protocol
from latency_tables.table import LatencyTable, TableError, is_shipped, kendall_tau
from search_spaces import SearchSpace, get_space
from search_spaces.errors import HwnasError
from search_spaces.files import atomic_write_bytes

#: The files that make a table directory complete enough to load, predict and validate again.
TABLE_FILES = ("table.csv", "networks.csv", "meta.json")
#: Whole-network timings of the latest recalibration (`recalibrate_table`), beside the table.
RECALIBRATION_CSV = "recalibration.csv"


def validate_table(path: str | Path, samples: int = 100, seed: int = 1, progress: bool = True, jobs: int = 1, *,
                   save: bool = False, out: str | Path | None = None, pin_cpu: int | None = None,
                   drift_check: int = 0, repeat: int = 0) -> dict[str, Any]:
    """Measure `samples` random subnets (none used to fit the correction) end to end, compare them with the
    prediction and return the summary.

    With `save`, the summary goes into meta.json and the measurements into `validation-s<seed>.csv`: beside the
    table, or with `out` in a copy of the table there (made unless `out` holds this table already). A shipped
    table is never written: saving its validation needs an `out` outside the package. Without `save`, nothing
    is written anywhere but a temporary directory.

    `pin_cpu` times on that CPU instead of the one in the table's protocol (the same kind of core: on a shared
    machine, the one nothing else is pinned to). `drift_check` first times that many of the table's keys again
    and records their median ratio now / then (`key_drift`): a validation on a machine that runs slower or
    faster than when the table was built (load, clock) measures that, not the table. `repeat` then times the first
    that many subnets again and records how far the two timings agree (`repeat`): a machine whose whole-network
    timings do not repeat to +-10% cannot show a table within +-10% either (docs/latency-tables.md)."""
    path = Path(path)
    table = LatencyTable.load(path)
    space = get_space(table.space_name)
    if table.meta.get("space_definition") not in (None, space.to_dict()):
        raise TableError(f"table {path} was built for another definition of space {space.name!r}")
    target = _save_target(path, save, out)
    archs = unique_archs(space, samples, seed, exclude=read_networks(path / "networks.csv"))
    genes = np.stack([space.to_genes(a) for a in archs])
    csv_name, load_before = f"validation-s{seed}.csv", _load_1min()
    drift = key_drift(table, drift_check, pin_cpu) if drift_check > 0 else None
    if target is None:
        with tempfile.TemporaryDirectory(prefix="hwnas-validate-") as tmp:
            measured = measured_like(table, Path(tmp) / csv_name, archs, progress, "validate", jobs, pin_cpu)
        summary = validation_summary(table, space, genes, measured, seed)
        _repeat(summary, table, archs, measured, repeat, jobs, pin_cpu)
        return _conditions(summary, load_before, pin_cpu, drift)
    with table_lock(target):
        if target != path:
            _copy_table(path, target)
        stored = LatencyTable.load(target)
        measured = measured_like(stored, target / csv_name, archs, progress, "validate", jobs, pin_cpu)
        summary = validation_summary(stored, space, genes, measured, seed)
        _repeat(summary, stored, archs, measured, repeat, jobs, pin_cpu)
        _conditions(summary, load_before, pin_cpu, drift)
        stored.save_meta()  # the summary is the dict the meta holds: it is stored with the load
    return summary


def _repeat(summary: dict[str, Any], table: LatencyTable, archs: list[Any], measured: np.ndarray, n: int,
            jobs: int, pin_cpu: int | None) -> None:
    """Time the first `n` validated subnets again (into a temporary file) and record in `summary['repeat']` the
    share of them whose two timings agree within +-10%, and the median ratio second / first."""
    if n <= 0:
        return
    with tempfile.TemporaryDirectory(prefix="hwnas-repeat-") as tmp:
        again = measured_like(table, Path(tmp) / "repeat.csv", archs[:n], False, "repeat", jobs, pin_cpu)
    ratio = again / np.asarray(measured[:n], dtype=float)
    summary["repeat"] = {"subnets": len(ratio), "within_10": float(np.mean(np.abs(ratio - 1) <= 0.10)),
                         "median_ratio": round(float(np.median(ratio)), 4)}


def recalibrate_table(path: str | Path, out: str | Path | None = None, *, progress: bool = True, jobs: int = 1,
                      pin_cpu: int | None = None, drift_check: int = 24) -> dict[str, Any]:
    """Time the networks the table's correction was fitted on again now, and fit the correction on those timings;
    the keys are untouched. Returns the new correction.

    Why: on a shared machine, whole networks run faster or slower from one day to the next while the keys do not
    (docs/latency-tables.md: the same 100 ImageNet-scale subnets ran 0.92-0.96x their build-time timings a week
    later, their keys 1.00x). The correction is where whole networks meet the keys, so it is what to measure again
    before trusting predictions on another day: it takes as many network timings as the build's fit (30).

    The table (or with `out`, a copy of it there, which a shipped table needs) gets the new correction, the one it
    replaces appended to `meta['corrections']`, and the timings in `recalibration.csv` (resumable: an interrupted
    recalibration times only what is missing; a finished one started again times every network afresh, the
    earlier file kept as `recalibration-<UTC time>.csv`). Validations stored before are moved, with their
    measurements, into `superseded-<UTC time>/`: they judged the old correction with timings of another session.
    `drift_check` first times that many keys again (recorded as `key_drift`): the keys should not have moved."""
    path = Path(path)
    target = Path(out) if out is not None else path
    if is_shipped(target):
        raise TableError(f"{target} is inside the installed hwnas package's shipped tables, which are never "
                         f"rewritten; recalibrate a copy elsewhere with --out DIR (e.g. --out runs/lut/{path.name})")
    table = LatencyTable.load(path)
    if table.meta.get("status") != "complete" or "correction" not in table.meta:
        raise TableError(f"{path} is not a finished table with a correction; finish it with hwnas lut build")
    space = get_space(table.space_name)
    with table_lock(target):
        if target != path:
            _copy_table(path, target)
        stored = LatencyTable.load(target)
        meta, csv_path = stored.meta, target / RECALIBRATION_CSV
        before = dict(meta["correction"])
        if meta.get("recalibration", {}).get("status") != "running":  # else: an interrupted one, resumed
            if csv_path.exists():  # a finished one: kept, a new one timed
                os.replace(csv_path, target / f"recalibration-{utc_stamp()}.csv")
            _supersede_validations(target, meta)
            meta["recalibration"] = {"status": "running", "started": utc_now()}
            stored.save_meta()
        load_before = _load_1min()
        drift = key_drift(stored, drift_check, pin_cpu) if drift_check > 0 else None
        archs = unique_archs(space, int(before["networks"]), int(before.get("seed", 0)))
        measured = measured_like(stored, csv_path, archs, progress, "recalibrate", jobs, pin_cpu)
        fit = {**correction_on(stored, space, archs, measured, weights="per_mparam_ms" in before),
               "seed": int(before.get("seed", 0)), "recalibrated": utc_now()}
        meta["corrections"] = [*meta.get("corrections", []), before]
        meta["correction"] = fit
        meta["recalibration"] = _conditions({"status": "complete", "started": meta["recalibration"]["started"],
                                             "finished": utc_now(), "networks": len(archs)}, load_before, pin_cpu,
                                            drift)
        stored.save_meta()
    return fit


def _supersede_validations(target: Path, meta: dict[str, Any]) -> None:
    """Move the stored validations of `target` (meta and `validation-s*.csv`) into `superseded-<UTC time>/`."""
    files = sorted(target.glob("validation-s*.csv"))
    found = {k: meta.pop(k) for k in ("validation", "validations") if k in meta}
    if not (files or found):
        return
    old = target / f"superseded-{utc_stamp()}"
    old.mkdir()
    atomic_write_bytes(old / "validations.json", (json.dumps(found, indent=2, sort_keys=True) + "\n").encode())
    for f in files:
        os.replace(f, old / f.name)


def _load_1min() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def key_drift(table: LatencyTable, sample: int, pin_cpu: int | None = None) -> dict[str, float]:
    """Median ratio (now / table) of `sample` of the table's keys timed again under its protocol (a seeded choice,
    the build's drift check), with how many were timed."""
    protocol = Protocol.from_dict(table.meta["protocol"])
    if pin_cpu is not None:
        protocol = dataclasses.replace(protocol, pin_cpu=pin_cpu)
    ratio = remeasured_drift(table.rows, table.profile.runtime, table.profile.precision, protocol, sample)
    return {"ratio": round(ratio, 4), "keys": min(sample, len(table.rows))}


def _conditions(summary: dict[str, Any], load_before: float | None, pin_cpu: int | None,
                drift: dict[str, float] | None) -> dict[str, Any]:
    """Record what the measurement ran under: the machine's 1-minute load average before and after it (1-thread
    timings depend on what else runs), the CPU timed on when it was not the protocol's, and the keys' drift."""
    load_after = _load_1min()
    if load_before is not None and load_after is not None:
        summary["load_1min"] = [round(load_before, 2), round(load_after, 2)]
    if pin_cpu is not None:
        summary["pin_cpu"] = pin_cpu
    if drift is not None:
        summary["key_drift"] = drift
    return summary


def _save_target(path: Path, save: bool, out: str | Path | None) -> Path | None:
    """Where a validation is stored (None: nowhere); a `TableError` for a place inside the package's tables."""
    if not save:
        return None
    target = Path(out) if out is not None else path
    if is_shipped(target):
        where = "" if out is not None else f" (table {path} is one)"
        raise TableError(f"{target} is inside the installed hwnas package's shipped tables{where}, which are never "
                         f"rewritten; store this validation in a copy of the table elsewhere with --out DIR "
                         f"(e.g. --out runs/lut/{path.name}), or validate without --save")
    return target


def _copy_table(path: Path, target: Path) -> None:
    """Copy the table at `path` into `target`, unless `target` holds this table already (same table.csv)."""
    if (target / "meta.json").exists():
        same = (target / "table.csv").is_file() and \
            (target / "table.csv").read_bytes() == (path / "table.csv").read_bytes()
        if not same:
            raise TableError(f"{target} holds another table; pick an empty or new --out directory (nothing was "
                             f"overwritten)")
        return
    if any(p.name != ".hwnas-lock" for p in target.iterdir()):
        raise TableError(f"{target} exists and is not a latency table; pick an empty or new --out directory")
    for name in TABLE_FILES:  # meta.json last: a copy cut off midway has none, and is not taken for a table
        if (path / name).is_file():
            atomic_write_bytes(target / name, (path / name).read_bytes())


def validation_summary(table: LatencyTable, space: SearchSpace, genes: np.ndarray, measured: np.ndarray,
                       seed: int) -> dict[str, Any]:
    """Compare the table's prediction for gene rows with their measured latencies; store it in the table's
    meta (not yet saved) as its latest validation and as that seed's (`validations`), and return it. Also ranks
    the subnets by MACs alone, to show what the table adds."""
    from latency_tables.analytic import AnalyticCostModel

    predicted = table.predict(space, genes).latency_ms
    macs = AnalyticCostModel().estimate_genes(space, genes)["macs"]
    summary = {**accuracy_summary(predicted, measured), "macs_kendall_tau": kendall_tau(macs, measured),
               "samples": len(measured), "seed": seed, "within_10_ci95": share_interval(measured, predicted),
               "measured_ms_range": [float(measured.min()), float(measured.max())],
               "date": utc_now()}
    earlier = table.meta.get("validation")  # a table validated before per-seed records were kept keeps its own
    table.meta.setdefault("validations", {str(earlier["seed"]): earlier} if earlier else {})[str(seed)] = summary
    table.meta["validation"] = summary
    return summary


#: The two-sided 95% normal quantile.
Z95 = 1.959963984540054


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a share of `successes` in `trials` (95% by default): unlike share +- z * SE, it
    stays inside [0, 1] and is not empty at 0 or 100% (100 of 100 still allows a true share of 96.3%)."""
    if isinstance(successes, bool) or isinstance(trials, bool) or not 0 <= successes <= trials or trials < 1:
        raise HwnasError(f"a share's interval needs 0 <= successes <= trials and trials >= 1; got {successes} "
                         f"of {trials}")
    share, z2 = successes / trials, z * z
    centre = (share + z2 / (2 * trials)) / (1 + z2 / trials)
    half = z / (1 + z2 / trials) * math.sqrt(share * (1 - share) / trials + z2 / (4 * trials * trials))
    return max(0.0, centre - half), min(1.0, centre + half)


def share_interval(measured: np.ndarray, predicted: np.ndarray, tolerance: float = 0.10) -> list[float]:
    """95% Wilson interval of the share of predictions within +-`tolerance` of the measurement."""
    within = int(np.sum(np.abs((predicted - measured) / measured) <= tolerance))  # as `accuracy_summary` counts
    return [round(v, 6) for v in wilson_interval(within, len(measured))]


def within_10_interval(summary: dict[str, Any]) -> tuple[float, float]:
    """The 95% interval of a validation summary's within-+-10% share (computed from its count when an older
    summary did not store it)."""
    if "within_10_ci95" in summary:
        low, high = summary["within_10_ci95"]
        return float(low), float(high)
    return wilson_interval(round(summary["within_10"] * summary["samples"]), int(summary["samples"]))


def describe_share(summary: dict[str, Any]) -> str:
    """E.g. '96.0% within +-10% (95% CI 90.2-98.4%, 100 subnets)'."""
    low, high = within_10_interval(summary)
    return (f"{summary['within_10']:.1%} within +-10% (95% CI {100 * low:.1f}-{100 * high:.1f}%, "
            f"{summary['samples']} subnets)")
