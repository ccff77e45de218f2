"""Build and fit a latency table on this machine.

`build_table` enumerates the keys a space needs, converts and measures each (one model file at a time, in a
temporary directory), appends one CSV row per finished key (flushed and fsynced: an interrupted build resumes
where it stopped and never rewrites a finished row), then measures `fit_networks` random whole networks and
fits the network-level correction (`latency_tables.validation` checks a finished table on other subnets).
`refit_correction` fits a finished table's correction again on more networks, measuring only the new ones.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as _dt
import io
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from latency_tables.keys import LutKey, SpaceIndex
from latency_tables.runtimes import Measurement, Protocol, check_precision, get_runtime, runtime_spec
from latency_tables.table import (
    DeviceProfile,
    LatencyTable,
    TableError,
    checked_rows,
    cpu_model,
    current_revisions,
    default_device,
    describe_stale,
    fit_correction,
    header_line,
    kendall_tau,
    read_meta,
    read_rows,
    row_line,
    stale_parts,
    write_meta,
)
from search_spaces import ArchConfig, SearchSpace
from search_spaces.codec import arch_from_str
from search_spaces.files import atomic_write_text

#: From this many fit networks on, the correction also fits a cost per million weights (`table.fit_correction`).
WEIGHTS_TERM_NETWORKS = 20
NETWORK_COLUMNS = ("arch_key", "arch", "latency_ms_median", "latency_ms_iqr", "runs")
Log = Callable[[str], None]


def measure_targets(runtime: str, precision: str, targets: list[LutKey | ArchConfig], protocol: Protocol,
                    seed: int = 0) -> list[Measurement]:
    """Convert pieces or networks for the runtime (in a temporary directory), then measure them as a group
    (`protocol.repeats` round-robin rounds)."""
    from latency_tables.convert import export_for

    rt = get_runtime(runtime)
    with tempfile.TemporaryDirectory(prefix="hwnas-lut-") as tmp:
        paths = [export_for(runtime, precision, t, Path(tmp) / f"model{i}{rt.suffix}", seed)
                 for i, t in enumerate(targets)]
        return rt.measure_many(paths, protocol, seed)


def measure_target(runtime: str, precision: str, target: LutKey | ArchConfig, protocol: Protocol,
                   seed: int = 0) -> Measurement:
    """Convert one piece or network and measure it."""
    return measure_targets(runtime, precision, [target], protocol, seed)[0]


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _append(path: Path, line: str) -> None:
    with path.open("a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def drop_partial_line(path: Path) -> None:
    """An interrupted append can leave an incomplete last line: cut it (finished rows stay as they are)."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as fh:
            fh.truncate(data.rfind(b"\n") + 1)


def read_networks(path: Path) -> dict[str, tuple[str, float, float, int]]:
    """arch key -> (arch string, median ms, IQR ms, runs) from a networks CSV (fit or validation)."""
    if not path.is_file():
        return {}
    reader = csv.DictReader(io.StringIO(path.read_text(encoding="utf-8")))
    if tuple(reader.fieldnames or ()) != NETWORK_COLUMNS:
        raise TableError(f"{path} has columns {reader.fieldnames}; expected {', '.join(NETWORK_COLUMNS)}")
    out = {}
    for line, row in checked_rows(path, reader, NETWORK_COLUMNS):
        try:
            out[row["arch_key"]] = (row["arch"], float(row["latency_ms_median"]), float(row["latency_ms_iqr"]),
                                    int(row["runs"]))
        except (TypeError, ValueError) as err:
            raise TableError(f"{path} line {line} is corrupt: {err}") from None
    return out


def network_line(arch: ArchConfig, m: Measurement) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow([arch.key, arch.to_str(), f"{m.median_ms:.6g}",
                                                   f"{m.iqr_ms:.6g}", m.runs])
    return buf.getvalue()


def utc_now() -> str:
    """Now, UTC, to the second (ISO 8601): the dates tables record."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def utc_stamp() -> str:
    """Now, UTC, as a file-name stamp (`20261201T063333Z`): superseded folders and kept files."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def measure_networks(path: Path, archs: Iterable[ArchConfig], runtime: str, precision: str, protocol: Protocol,
                     *, progress: bool = True, desc: str = "networks", jobs: int = 1
                     ) -> dict[str, tuple[str, float, float, int]]:
    """Measure whole networks end to end into a networks CSV, skipping those already in it (resumable). They are
    converted first (by `jobs` processes, into `models/` beside the CSV, kept until measured), then measured."""
    if not path.is_file():
        atomic_write_text(path, ",".join(NETWORK_COLUMNS) + "\n")
    drop_partial_line(path)
    done = read_networks(path)
    todo = [a for a in archs if a.key not in done]
    if todo:
        models = path.parent / "models"
        items = [(a, models / f"n-{a.key}{get_runtime(runtime).suffix}") for a in todo]
        convert_all(runtime, precision, items, jobs, progress, chunk=2)
        # Groups of 32 as for keys: a network's rounds are then seconds apart, so a burst of load elsewhere spoils
        # one round, not all three (with groups of 8, bursts inflated a few LiteRT networks by 25-40%).
        measure_files(path, items, runtime, protocol, network_line, progress, desc, group=32)
        done = read_networks(path)
    return done


def unique_archs(space: SearchSpace, n: int, seed: int, exclude: Iterable[str] = ()) -> list[ArchConfig]:
    """`n` distinct random members of `space` (seeded), none of whose keys is in `exclude`."""
    rng, seen, out = np.random.default_rng(seed), set(exclude), list[ArchConfig]()
    for _ in range(100 * n + 100):  # a bounded retry budget
        if len(out) == n:
            break
        arch = space.sample(rng)
        if arch.key not in seen:
            seen.add(arch.key)
            out.append(arch)
    if len(out) < n:
        raise TableError(f"could only find {len(out)} distinct subnets of space {space.name!r} (asked for {n})")
    return out


def build_table(space: SearchSpace, runtime: str, precision: str, out: str | Path, *,
                protocol: Protocol | None = None, device: str | None = None, fit_networks: int = 20,
                fit_seed: int = 0, jobs: int = 1, progress: bool = True, log: Log = print,
                drift_check: int = 24, drift_tolerance: float = 0.10) -> LatencyTable:
    """Measure every key `space` needs on `runtime` at `precision` into the table directory `out` (resumable).

    Keys are converted first (by `jobs` processes; files kept in `out/models/` until measured, so a resumed
    build does not convert again), then measured one after another with nothing else running.

    A resumed build first re-measures `drift_check` of the keys measured earlier (0: no check). If their median
    moved by more than `drift_tolerance` (a fraction), the machine is no longer the one the rows were measured
    on (other load, clock, runtime), and old and new rows would not add up: the earlier files are moved to
    `out/superseded-<time>/` and the whole table is measured again."""
    protocol = protocol or Protocol()
    rt = get_runtime(runtime)
    check_precision(runtime, precision)
    profile = DeviceProfile(device or default_device(), runtime, precision, protocol.threads, rt.version(),
                            cpu_model())
    out = Path(out)
    with table_lock(out):
        index = SpaceIndex(space)
        meta = _start_meta(out, space, profile, protocol, len(index.keys), log)
        done = _resume_rows(out, meta, runtime, precision, protocol, drift_check, drift_tolerance, log)
        todo = [k for k in index.keys if k not in done]
        log(f"space {space.name!r} needs {len(index.keys)} keys on {profile.table_id}; {len(done)} measured, "
            f"{len(todo)} to go")
        started = time.perf_counter()
        _measure_keys(index, todo, runtime, precision, protocol, out, jobs, progress)
        key_seconds = time.perf_counter() - started
        build = meta.setdefault("build", {"key_seconds": 0.0, "keys_measured": 0, "network_seconds": 0.0})
        build["key_seconds"] += key_seconds
        build["keys_measured"] += len(todo)
        build["seconds_per_key"] = build["key_seconds"] / max(1, build["keys_measured"])
        meta["keys"] = len(index.keys)
        write_meta(out, meta)

        table = LatencyTable.load(out)
        started = time.perf_counter()
        fit_correction_for(table, space, fit_networks, fit_seed, progress=progress, jobs=jobs)
        table.meta["build"]["network_seconds"] += time.perf_counter() - started
        table.meta["status"] = "complete"
        table.save_meta()
    return table


LOCK_NAME = ".hwnas-lock"


@contextlib.contextmanager
def table_lock(out: Path) -> Iterator[None]:
    """Hold the table directory `out` for the block: an exclusive, non-blocking `flock` on `out/.hwnas-lock`,
    which records the holder (pid, host, start time). A second holder gets a `TableError` naming the first; the
    operating system releases the lock when the holder exits, however it ends."""
    import fcntl
    import socket

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = (out / LOCK_NAME).read_text(encoding="utf-8", errors="replace").strip() or "unknown holder"
            raise TableError(f"{out} is in use by another hwnas run ({holder}); run this again once that one "
                             f"finishes, or pick another --out") from None
        started = utc_now()
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()}, started {started}\n".encode())
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _resume_rows(out: Path, meta: dict[str, Any], runtime: str, precision: str, protocol: Protocol,
                 drift_check: int, drift_tolerance: float, log: Log) -> dict[LutKey, tuple[float, float, int]]:
    """The rows measured so far in `out/table.csv` (made if missing), or none if the machine has drifted since
    (`build_table`'s drift check; the earlier files are then moved aside)."""
    table_csv = out / "table.csv"
    if not table_csv.is_file():
        atomic_write_text(table_csv, header_line())
    drop_partial_line(table_csv)
    done = read_rows(table_csv)
    if done and drift_check > 0:
        drift = remeasured_drift(done, runtime, precision, protocol, drift_check)
        if abs(drift - 1) > drift_tolerance:
            moved = _supersede(out, meta)
            why = (f"the machine has changed since (tolerance {drift_tolerance:.0%})" if drift_tolerance > 0 else
                   "--drift-tolerance 0 asks for a full re-measurement")
            log(f"{out}: {min(drift_check, len(done))} keys measured earlier now measure {drift - 1:+.0%} (median); "
                f"{why}, so the whole table is measured again. The earlier files are in {moved}")
            done = {}
    return done


def _measure_keys(index: SpaceIndex, todo: list[LutKey], runtime: str, precision: str, protocol: Protocol,
                  out: Path, jobs: int, progress: bool) -> None:
    """Measure the keys still to do, appending a row to `out/table.csv` as each group finishes."""
    table_csv = out / "table.csv"
    if not runtime_spec(runtime).converter:  # nothing to convert: the model file is the key itself
        with tqdm(total=len(todo), desc="measure", disable=None if progress else True, leave=False) as bar:
            for group in _chunks(todo, 32):
                for key, m in zip(group, measure_targets(runtime, precision, group, protocol), strict=True):
                    _append(table_csv, row_line(key, m.median_ms, m.iqr_ms, m.runs))
                bar.update(len(group))
    else:
        _convert_then_measure(index, todo, runtime, precision, protocol, out, jobs, progress)


def remeasured_drift(done: dict[LutKey, tuple[float, float, int]], runtime: str, precision: str, protocol: Protocol,
                     sample: int) -> float:
    """Median ratio (now / then) of `sample` already measured keys, measured again (a seeded choice)."""
    keys = sorted(done, key=LutKey.to_str)
    picked = [keys[i] for i in np.random.default_rng(0).choice(len(keys), min(sample, len(keys)), replace=False)]
    now = measure_targets(runtime, precision, picked, protocol)
    return float(np.median([m.median_ms / done[k][0] for k, m in zip(picked, now, strict=True)]))


def _supersede(out: Path, meta: dict[str, Any]) -> Path:
    """Move the measured files of `out` into `out/superseded-<UTC time>/` and restart the table's meta."""
    old = out / f"superseded-{utc_stamp()}"
    old.mkdir()
    write_meta(old, meta)
    for path in [out / "table.csv", out / "networks.csv", *sorted(out.glob("validation-s*.csv"))]:
        if path.is_file():
            os.replace(path, old / path.name)
    for name in ("correction", "validation", "build"):
        meta.pop(name, None)
    meta["status"] = "building"
    meta["date"] = utc_now()
    atomic_write_text(out / "table.csv", header_line())
    write_meta(out, meta)
    return old


def _convert_chunk(runtime: str, precision: str, items: list[tuple[dict[str, Any], str]]) -> int:
    """Convert pieces or networks (given by `convert.spec_of`) to the given paths with one torch thread (files
    written atomically). Runs in a pool worker, or in this process when there is one job: the thread count is
    scoped either way."""
    from latency_tables.convert import export_for, target_from_spec
    from supernets.threads import torch_threads

    with torch_threads(1):
        for spec, path in items:
            export_for(runtime, precision, target_from_spec(spec), Path(path), int(spec.get("seed", 0)))
    return len(items)


def _unpin() -> None:
    """Pool initializer: a converter may use every CPU, even if the process that started it is pinned."""
    if hasattr(os, "sched_setaffinity"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, range(os.cpu_count() or 1))


def convert_all(runtime: str, precision: str, items: Sequence[tuple[LutKey | ArchConfig, Path]], jobs: int,
                progress: bool, chunk: int = 16) -> None:
    """Convert each (piece or network, path) whose file does not exist yet, by `jobs` processes. A file that
    exists is complete (written atomically), so an interrupted conversion resumes."""
    import concurrent.futures as cf
    import multiprocessing

    from latency_tables.convert import spec_of

    for folder in {path.parent for _, path in items}:
        folder.mkdir(parents=True, exist_ok=True)
        for leftover in folder.glob(".*"):  # a conversion cut off mid-write (files are renamed into place whole)
            leftover.unlink()
    chunks = _chunks([(spec_of(t), str(path)) for t, path in items if not path.is_file()], chunk)
    with tqdm(total=sum(map(len, chunks)), desc="convert", disable=None if progress else True,
              leave=False) as bar:
        if jobs > 1 and len(chunks) > 1:
            context = multiprocessing.get_context("spawn")
            with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_unpin) as pool:
                for done in cf.as_completed([pool.submit(_convert_chunk, runtime, precision, c) for c in chunks]):
                    bar.update(done.result())
        else:
            for c in chunks:
                bar.update(_convert_chunk(runtime, precision, c))


def measure_files(csv_path: Path, items: list[tuple[Any, Path]], runtime: str, protocol: Protocol,
                   line: Callable[[Any, Measurement], str], progress: bool, desc: str, group: int) -> None:
    """Measure converted files in groups (round-robin rounds within a group), append a CSV line for each and
    delete its file; remove the models folder once it is empty."""
    rt = get_runtime(runtime)
    with tqdm(total=len(items), desc=desc, disable=None if progress else True, leave=False) as bar:
        for part in _chunks(items, group):
            for (target, path), m in zip(part, rt.measure_many([p for _, p in part], protocol), strict=True):
                _append(csv_path, line(target, m))
                path.unlink()
            bar.update(len(part))
    for folder in {path.parent for _, path in items}:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def _convert_then_measure(index: SpaceIndex, todo: list[LutKey], runtime: str, precision: str, protocol: Protocol,
                          out: Path, jobs: int, progress: bool) -> None:
    ids = {key: i for i, key in enumerate(index.keys)}
    items = [(key, out / "models" / f"k{ids[key]:05d}{get_runtime(runtime).suffix}") for key in todo]
    convert_all(runtime, precision, items, jobs, progress, chunk=16)
    measure_files(out / "table.csv", items, runtime, protocol,
                   lambda key, m: row_line(key, m.median_ms, m.iqr_ms, m.runs), progress, "measure", group=32)


def _drop_stale(out: Path, meta: dict[str, Any], log: Log) -> None:
    """Remove what was measured with an older block or conversion revision (`table.stale_parts`): the stale key
    rows, and the measured networks that use a stale family (all of them when the conversion changed: networks
    are converted by the same code as pieces); the build then measures them again. Files are
    rewritten atomically; the correction and validation summary go until they are measured again."""
    every_key, families = stale_parts(meta)
    if not (every_key or families):
        return
    stale = set(families)

    def rewrite(path: Path, is_stale: Callable[[dict[str, str]], bool]) -> int:
        if not path.is_file():
            return 0
        drop_partial_line(path)
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        rows = list(csv.DictReader(lines))
        keep = [line for line, row in zip(lines[1:], rows, strict=True) if not is_stale(row)]
        atomic_write_text(path, lines[0] + "".join(keep))
        return len(rows) - len(keep)

    keys = rewrite(out / "table.csv", lambda row: every_key or row["family"] in stale)

    def uses_stale(row: dict[str, str]) -> bool:
        return every_key or any(site.block.family in stale for site in arch_from_str(row["arch"]).sites())

    nets = sum(rewrite(path, uses_stale) for path in [out / "networks.csv", *sorted(out.glob("validation-s*.csv"))])
    for name in ("correction", "validation") + ("build",) * every_key:  # build figures: of the keys in the table
        meta.pop(name, None)
    meta["status"] = "building"
    meta["revisions"] = current_revisions(meta["profile"]["runtime"], meta["profile"]["precision"])
    write_meta(out, meta)
    log(f"{out}: {describe_stale(every_key, families)} changed since it was measured; dropped {keys} key "
        f"row(s) and {nets} measured network(s) to measure again")


def _start_meta(out: Path, space: SearchSpace, profile: DeviceProfile, protocol: Protocol,
                keys: int, log: Log = print) -> dict[str, Any]:
    """meta.json of a new build, or of the unfinished (or finished) build in `out` if it is the same table."""
    meta_path = out / "meta.json"
    if meta_path.is_file():
        meta = read_meta(meta_path)
        want = {"space": space.name, "profile": profile.to_dict(), "protocol": protocol.to_dict()}
        wrong = [f"{k}: has {meta.get(k)!r}, asked {v!r}" for k, v in want.items() if meta.get(k) != v]
        if wrong:
            raise TableError(f"{out} holds another table ({'; '.join(wrong)}); pick another output directory, "
                             f"or build with the same settings to resume it")
        if meta.get("space_definition") != space.to_dict():
            raise TableError(f"{out} was built for another definition of space {space.name!r}; pick another "
                             f"output directory")
        _drop_stale(out, meta, log)
        return dict(meta)
    if out.exists() and any(p.name != LOCK_NAME for p in out.iterdir()):
        raise TableError(f"{out} exists and is not a latency table; pick an empty or new directory")
    meta = {"space": space.name, "space_definition": space.to_dict(), "profile": profile.to_dict(),
            "table_id": profile.table_id, "protocol": protocol.to_dict(), "status": "building", "keys": keys,
            "revisions": current_revisions(profile.runtime, profile.precision),
            "date": utc_now(), "format": "hwnas latency table 1"}
    write_meta(out, meta)
    return meta


def measured_like(table: LatencyTable, csv_path: Path, archs: list[ArchConfig], progress: bool, desc: str,
                  jobs: int = 1, pin_cpu: int | None = None) -> np.ndarray:
    """Measured latencies (ms) of whole networks, on the table's runtime under its protocol (on CPU `pin_cpu`
    instead of the protocol's when given), recorded in the networks CSV `csv_path` (resumable)."""
    profile, protocol = table.profile, Protocol.from_dict(table.meta["protocol"])
    if pin_cpu is not None:
        protocol = dataclasses.replace(protocol, pin_cpu=pin_cpu)
    rows = measure_networks(csv_path, archs, profile.runtime, profile.precision, protocol,
                            progress=progress, desc=desc, jobs=jobs)
    return np.array([rows[a.key][1] for a in archs])


def fit_correction_for(table: LatencyTable, space: SearchSpace, networks: int, seed: int = 0,
                       progress: bool = True, jobs: int = 1, pin_cpu: int | None = None) -> dict[str, float]:
    """Measure `networks` random subnets end to end (networks.csv, resumable) and fit the correction."""
    assert table.path is not None
    archs = unique_archs(space, networks, seed)
    measured = measured_like(table, table.path / "networks.csv", archs, progress, "fit networks", jobs, pin_cpu)
    fit = correction_on(table, space, archs, measured, weights=networks >= WEIGHTS_TERM_NETWORKS)
    table.meta["correction"] = {**fit, "seed": seed}
    table.save_meta()
    return table.meta["correction"]


def correction_on(table: LatencyTable, space: SearchSpace, archs: Sequence[ArchConfig], measured: np.ndarray, *,
                  weights: bool) -> dict[str, float]:
    """`fit_correction` of the table's key sums and piece counts for `archs` against their `measured` latencies
    (with the term per million weights when `weights`)."""
    genes = np.stack([space.to_genes(a) for a in archs])
    mparams = table.mparams(space, genes) if weights else None
    return fit_correction(table.raw_sum(space, genes).latency_ms, table.pieces(space, genes), measured, mparams)


def accuracy_summary(predicted: np.ndarray, measured: np.ndarray) -> dict[str, float]:
    """nn-Meter's metrics: MAPE, RMSPE, share within +-5/10/15% (fractions), RMSE (ms), and Kendall tau."""
    rel = (predicted - measured) / measured
    return {"mape": float(np.mean(np.abs(rel))), "rmspe": float(np.sqrt(np.mean(rel ** 2))),
            "within_5": float(np.mean(np.abs(rel) <= 0.05)), "within_10": float(np.mean(np.abs(rel) <= 0.10)),
            "within_15": float(np.mean(np.abs(rel) <= 0.15)),
            "rmse_ms": float(np.sqrt(np.mean((predicted - measured) ** 2))),
            "kendall_tau": kendall_tau(predicted, measured)}


def refit_correction(path: str | Path, networks: int, *, progress: bool = True, jobs: int = 1,
                     pin_cpu: int | None = None, log: Log = print) -> dict[str, float]:
    """Fit a finished table's network-level correction again on the first `networks` subnets of its fit seed
    (e.g. 100 where the build measured 30: only the new ones are measured, into networks.csv), keys untouched.

    Unlike resuming a build, nothing is drift-checked or superseded, so measure the new networks as the old ones
    were (an idle core; `pin_cpu` picks it) and validate afterwards. The validation summaries were computed with
    the old correction and are dropped; validating again on the same seeds reuses their measured subnets."""
    from latency_tables.table import is_shipped
    from search_spaces import get_space

    path = Path(path)
    if is_shipped(path):
        raise TableError(f"{path} is one of the installed package's shipped tables, which are never rewritten; "
                         f"refit a copy of it elsewhere (copy table.csv, networks.csv and meta.json)")
    with table_lock(path):
        table = LatencyTable.load(path)
        space = get_space(table.space_name)
        if table.meta.get("status") != "complete" or "correction" not in table.meta:
            raise TableError(f"{path} is not a finished table with a correction; finish it with hwnas lut build")
        if networks < table.meta["correction"]["networks"]:
            raise TableError(f"{path}'s correction is fitted on {table.meta['correction']['networks']} networks; "
                             f"refit on as many or more (asked for {networks})")
        before = dict(table.meta["correction"])
        table.meta.pop("validation", None)
        table.meta.pop("validations", None)
        fit = fit_correction_for(table, space, networks, int(before.get("seed", 0)), progress, jobs, pin_cpu)
    log(f"{path}: correction refitted on {fit['networks']} networks (was {before['networks']}): scale "
        f"{before['scale']:.4f} -> {fit['scale']:.4f}, fit MAPE {before['fit_mape']:.2%} -> {fit['fit_mape']:.2%}; "
        f"validate it again")
    return fit
