"""Measured latency lookup tables: the on-disk format, device profiles and vectorised prediction.

A table is a directory (named after its space and table id) holding `table.csv` (one row per key: the key
columns, `latency_ms_median`, `latency_ms_iqr`, `runs`) and `meta.json` (device, CPU model, runtime and
version, precision, threads, protocol, date, the fitted network-level correction, the validation summary).
Prediction sums the per-key medians of an architecture's keys (`SpaceIndex`), then applies the correction
`latency = scale * sum + per_piece_ms * pieces + offset_ms` fitted on whole networks measured end to end:
each piece timed alone pays the runtime's per-call cost (input and output handling, a few microseconds),
which a whole network pays once. Torch-free.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from latency_tables.keys import KEY_COLUMNS, LutKey, SpaceIndex, arch_keys
from latency_tables.runtimes import RUNTIMES
from search_spaces import ArchConfig, SearchSpace
from search_spaces.errors import HwnasError
from search_spaces.families import block_revisions, changed_families
from search_spaces.files import atomic_write_text

VALUE_COLUMNS = ("latency_ms_median", "latency_ms_iqr", "runs")
COLUMNS = ("key", *KEY_COLUMNS, *VALUE_COLUMNS)


class TableError(HwnasError):
    """A table that is missing, corrupt, or not the one asked for."""


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def default_device() -> str:
    """A device name for this machine: its CPU model and core count, as a slug (e.g. `amd-epyc-2c`)."""
    slug = re.sub(r"[^a-z0-9]+", "-", cpu_model().lower()).strip("-") or "cpu"
    return f"{slug}-{os.cpu_count() or 1}c"


@dataclass(frozen=True)
class DeviceProfile:
    """Where and how a table was measured. `table_id` names it (and keys `Cost.latency_ms`)."""

    device: str
    runtime: str
    precision: str
    threads: int
    runtime_version: str = ""
    cpu_model: str = ""
    batch: int = 1

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.device):
            raise HwnasError(f"device name {self.device!r} must be letters, digits, '.', '_' or '-'")

    @property
    def table_id(self) -> str:
        return f"{self.device}-{self.runtime}-{self.precision}-t{self.threads}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def table_dirname(space: str, profile: DeviceProfile) -> str:
    return f"{space}-{profile.table_id}"


@dataclass(frozen=True)
class Prediction:
    """Predicted latencies (ms) for a batch, and which rows used estimated (unmeasured) keys."""

    latency_ms: np.ndarray
    estimated: np.ndarray


def read_meta(path: Path) -> dict[str, Any]:
    """A table's meta.json as a dict; a `TableError` when it is missing, not UTF-8, not JSON or not an object."""
    path = Path(path)
    if not path.is_file():
        raise TableError(f"{path} is missing; a table directory holds table.csv and meta.json")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TableError(f"{path} is not valid UTF-8 JSON ({err}); restore it or rebuild the table") from None
    if not isinstance(meta, dict):
        raise TableError(f"{path} holds a JSON {type(meta).__name__}, not an object; restore it or rebuild the table")
    return meta


def write_meta(folder: Path, meta: dict[str, Any]) -> None:
    """Write a table's meta.json into `folder` (atomically; keys sorted, so diffs stay small)."""
    atomic_write_text(Path(folder) / "meta.json", json.dumps(meta, indent=2, sort_keys=True) + "\n")


def row_line(key: LutKey, median_ms: float, iqr_ms: float, runs: int) -> str:
    """One CSV line of `table.csv` (with its newline)."""
    buf = io.StringIO()
    row = {"key": key.to_str(), **key.to_row(), "latency_ms_median": f"{median_ms:.6g}",
           "latency_ms_iqr": f"{iqr_ms:.6g}", "runs": runs}
    csv.DictWriter(buf, COLUMNS, lineterminator="\n").writerow(row)
    return buf.getvalue()


def header_line() -> str:
    return ",".join(COLUMNS) + "\n"


def checked_rows(path: Path, reader: csv.DictReader, columns: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) of a CSV whose header was checked; a `TableError` naming the line for a row with more or
    fewer fields than the header (an extra field would otherwise be dropped without a word)."""
    for line, row in enumerate(reader, start=2):
        if None in row or any(value is None for value in row.values()):
            fields = len(columns) + len(row.get(None) or []) if None in row else \
                sum(value is not None for value in row.values())
            raise TableError(f"{path} line {line} is corrupt: it has {fields} fields; expected {len(columns)} "
                             f"({', '.join(columns)})")
        yield line, row


def read_rows(path: Path) -> dict[LutKey, tuple[float, float, int]]:
    """Parse `table.csv`; a `TableError` naming the file, the line and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise TableError(f"{path} does not exist (a table directory holds table.csv and meta.json)")
    text = path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        raise TableError(f"{path} is truncated (its last line is incomplete); rebuild it, or resume the build "
                         f"with `hwnas lut build`, which drops the incomplete row")
    reader = csv.DictReader(io.StringIO(text))
    if tuple(reader.fieldnames or ()) != COLUMNS:
        raise TableError(f"{path} has columns {reader.fieldnames}; expected {', '.join(COLUMNS)}")
    rows: dict[LutKey, tuple[float, float, int]] = {}
    for line, row in checked_rows(path, reader, COLUMNS):
        try:
            key = LutKey.from_row(row)
            if key.to_str() != row["key"]:
                raise HwnasError(f"key {row['key']!r} does not match its columns ({key.to_str()})")
            median, iqr, runs = float(row["latency_ms_median"]), float(row["latency_ms_iqr"]), int(row["runs"])
            if not (math.isfinite(median) and median > 0 and math.isfinite(iqr) and iqr >= 0 and runs > 0):
                raise HwnasError(f"latency {median} ms / IQR {iqr} / runs {runs} is not a valid measurement")
        except (HwnasError, TypeError, ValueError) as err:
            raise TableError(f"{path} line {line} is corrupt: {err}") from None
        if key in rows:
            raise TableError(f"{path} line {line} repeats key {key.to_str()}")
        rows[key] = (median, iqr, runs)
    return rows


@dataclass
class LatencyTable:
    """A measured table. `rows` maps each key to (median ms, IQR ms, runs); `meta` is meta.json."""

    meta: dict[str, Any]
    rows: dict[LutKey, tuple[float, float, int]]
    path: Path | None = None
    _cache: dict[SearchSpace, tuple[SpaceIndex, np.ndarray]] = field(default_factory=dict, repr=False)
    _fits: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _classes: dict[tuple[Any, ...], list[LutKey]] | None = field(default=None, repr=False)

    # ------------------------------------------------------------------------------------------ files

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        path = Path(path)
        if not path.is_dir():
            raise TableError(f"latency table {path} does not exist (expected a directory with table.csv and "
                             f"meta.json; build one with `hwnas lut build`)")
        meta = read_meta(path / "meta.json")
        missing = [k for k in ("space", "profile", "protocol") if k not in meta]
        if missing:
            raise TableError(f"{path / 'meta.json'} lacks {', '.join(missing)}; it is not an hwnas latency table")
        what = describe_stale(*stale_parts(meta))
        if what:
            raise TableError(f"table {path} was measured with an older version of {what} than this hwnas builds; "
                             f"re-measure them: `hwnas lut build` with the settings in its meta.json and --out "
                             f"{path} re-measures just those and keeps the rest (a device-kit table needs a new kit)")
        return cls(meta, read_rows(path / "table.csv"), path)

    def save_meta(self, path: Path | None = None) -> None:
        write_meta(Path(path or self.path or "."), self.meta)

    @property
    def profile(self) -> DeviceProfile:
        return DeviceProfile(**self.meta["profile"])

    @property
    def table_id(self) -> str:
        return self.profile.table_id

    @property
    def space_name(self) -> str:
        return str(self.meta["space"])

    def check(self, *, space: str | None = None, runtime: str | None = None, precision: str | None = None,
              device: str | None = None, threads: int | None = None) -> LatencyTable:
        """Raise a `TableError` naming each field where this table is not what was asked for."""
        profile = self.profile
        have = {"space": self.space_name, "runtime": profile.runtime, "precision": profile.precision,
                "device": profile.device, "threads": profile.threads}
        asked = {"space": space, "runtime": runtime, "precision": precision, "device": device, "threads": threads}
        wrong = [f"{name} is {have[name]!r}, not {want!r}" for name, want in asked.items()
                 if want is not None and have[name] != want]
        if wrong:
            raise TableError(f"table {self.path or self.table_id} is for another setting: {'; '.join(wrong)}. "
                             f"Use a table built for what you asked (`hwnas lut show DIR` describes one), or build "
                             f"it with `hwnas lut build`")
        return self

    # ------------------------------------------------------------------------------------- prediction

    @property
    def correction(self) -> tuple[float, float, float]:
        """(scale, per_piece_ms, offset_ms) of the network-level correction; (1, 0, 0) before one is fitted."""
        fit = self.meta.get("correction") or {}
        return float(fit.get("scale", 1.0)), float(fit.get("per_piece_ms", 0.0)), float(fit.get("offset_ms", 0.0))

    @property
    def per_mparam_ms(self) -> float:
        """The correction's cost per million weights of the whole network (0 in tables fitted without it): a piece
        timed alone runs with its weights already in cache, a whole network streams them in."""
        return float((self.meta.get("correction") or {}).get("per_mparam_ms", 0.0))

    def mparams(self, space: SearchSpace, genes: np.ndarray) -> np.ndarray:
        """Millions of weights of each gene row's network (the correction's weights term)."""
        from latency_tables.analytic import AnalyticCostModel

        return AnalyticCostModel().estimate_genes(space, genes)["params"] / 1e6

    def _values(self, space: SearchSpace) -> tuple[SpaceIndex, np.ndarray]:
        """The space's key index and per-key medians (NaN where the table lacks a key; last entry 0 for -1)."""
        if space not in self._cache:
            index = SpaceIndex(space)
            values = np.array([self.rows[k][0] if k in self.rows else np.nan for k in index.keys] + [0.0])
            self._cache[space] = (index, values)
        return self._cache[space]

    def missing_keys(self, space: SearchSpace) -> list[LutKey]:
        index, values = self._values(space)
        return [k for k, v in zip(index.keys, values[:-1], strict=True) if np.isnan(v)]

    def raw_sum(self, space: SearchSpace, genes: np.ndarray, estimate_missing: bool = False) -> Prediction:
        """Sum of per-key medians for canonical gene rows, before the network-level correction."""
        return self._sum(space, self._values(space)[0].ids(genes), estimate_missing)

    def _sum(self, space: SearchSpace, ids: np.ndarray, estimate_missing: bool) -> Prediction:
        index, values = self._values(space)
        parts = values[ids]
        missing = np.isnan(parts)
        estimated = missing.any(axis=1)
        if estimated.any():
            if not estimate_missing:
                bad = sorted({index.keys[i] for i in ids[missing]})
                raise TableError(
                    f"table {self.table_id} lacks {len(bad)} key(s) these architectures need, e.g. "
                    f"{bad[0].to_str()}; finish the table with `hwnas lut build` (it resumes), or ask for "
                    f"estimates (estimate_missing=True / --estimate-missing)")
            parts = np.where(missing, self._estimates(space)[ids], parts)
        return Prediction(parts.sum(axis=1), estimated)

    def predict(self, space: SearchSpace, genes: np.ndarray, estimate_missing: bool = False) -> Prediction:
        """Predicted end-to-end latency (ms) of canonical gene rows: corrected sum of the keys' medians."""
        ids = self._values(space)[0].ids(genes)  # once: the sum and the piece count both need it
        raw = self._sum(space, ids, estimate_missing)
        scale, per_piece, offset = self.correction
        weights = self.per_mparam_ms * self.mparams(space, genes) if self.per_mparam_ms else 0.0
        return Prediction(scale * raw.latency_ms + per_piece * (ids >= 0).sum(axis=1) + weights + offset,
                          raw.estimated)

    def pieces(self, space: SearchSpace, genes: np.ndarray) -> np.ndarray:
        """How many keys (stem, blocks, head) each gene row's network is made of."""
        return (self._values(space)[0].ids(genes) >= 0).sum(axis=1)

    def predict_archs(self, space: SearchSpace, archs: Sequence[ArchConfig],
                      estimate_missing: bool = False) -> Prediction:
        """Predicted latencies of architectures: through gene rows when all are on `space`'s grid, else (some
        have explicit widths, e.g. pruned) key by key, as `predict_arch`."""
        if any(a.explicit for a in archs):
            priced = [self._price_arch(a, estimate_missing) for a in archs]
            return Prediction(np.array([p[0] for p in priced]), np.array([p[1] for p in priced], dtype=bool))
        genes = np.stack([space.to_genes(a) for a in archs]) if archs else np.zeros((0, len(space.genes)), int)
        return self.predict(space, genes, estimate_missing)

    def predict_arch(self, arch: ArchConfig, estimate_missing: bool = False) -> float:
        """One architecture from its keys (any space). A key the table lacks raises a `TableError`, or with
        `estimate_missing` is estimated (`estimate_key`; `predict_archs` flags such predictions)."""
        return self._price_arch(arch, estimate_missing)[0]

    def _price_arch(self, arch: ArchConfig, estimate_missing: bool) -> tuple[float, bool]:
        """(predicted latency in ms, whether any key was estimated) of one architecture."""
        keys = arch_keys(arch)
        missing = [k for k in keys if k not in self.rows]
        if missing and not estimate_missing:
            raise TableError(f"table {self.table_id} lacks {len(missing)} key(s) of this architecture, e.g. "
                             f"{missing[0].to_str()}; finish the table with `hwnas lut build` (it resumes), or ask "
                             f"for estimates (estimate_missing=True / --estimate-missing)")
        parts = [self.rows[k][0] if k in self.rows else self.estimate_key(k) for k in keys]
        scale, per_piece, offset = self.correction
        weights = 0.0
        if self.per_mparam_ms:
            from latency_tables.analytic import key_summary

            weights = self.per_mparam_ms * sum(key_summary(k)[0] for k in keys) / 1e6
        return scale * sum(parts) + per_piece * len(keys) + weights + offset, bool(missing)

    def estimate_key(self, key: LutKey) -> float:
        """Estimated median (ms) of a key the table lacks. A block with explicit widths (off the search grid, e.g.
        pruned) whose grid block is measured: that measurement, scaled by the ratio of the two blocks' latencies
        under this table's fitted model (`_fitted`), which follows MACs and memory access sub-linearly. Any other
        key: the fitted model's value."""
        from latency_tables.analytic import key_summary

        fitted = np.exp(_features([key_summary(key)]) @ self._fitted(key.kind))[0]
        anchor = self._anchor(key)
        if anchor is None:
            return float(fitted)
        anchor_fitted = np.exp(_features([key_summary(anchor)]) @ self._fitted(key.kind))[0]
        return float(self.rows[anchor][0] * fitted / anchor_fitted)

    def _anchor(self, key: LutKey) -> LutKey | None:
        """The measured key nearest to a missing one: a pruned block's grid block when measured, else a measured key
        of the same shape class (kind, family, kernel, stride, expand ratio, SE, activation, input size; a stem's
        max pool and a head's hidden layer and classes) whose input and output widths are closest on a log scale.
        A pruned network's widths are off the grid; its shape classes are not."""
        grid = replace(key, extra="") if key.kind == "block" else key
        if grid != key and grid in self.rows:
            return grid
        if self._classes is None:
            self._classes = {}
            for k in self.rows:
                self._classes.setdefault(_shape_class(k), []).append(k)
        near = self._classes.get(_shape_class(key), [])
        if not near:
            return None
        return min(near, key=lambda k: (abs(math.log(k.in_channels / key.in_channels))
                                        + abs(math.log(k.out_channels / key.out_channels)), k.extra != "", k))

    def _fitted(self, kind: str) -> np.ndarray:
        """Coefficients of log(latency) ~ 1 + log(1 + MACs) + log(1 + memory access), fitted by least squares on
        this table's measured keys of one kind (stem, block or head)."""
        from latency_tables.analytic import key_summary

        if kind not in self._fits:
            known = [(k, v[0]) for k, v in self.rows.items() if k.kind == kind]
            if len(known) < 3:
                raise TableError(f"table {self.table_id} has {len(known)} measured {kind} key(s); at least 3 are "
                                 f"needed to estimate missing ones")
            x = _features([key_summary(k) for k, _ in known])
            self._fits[kind], *_ = np.linalg.lstsq(x, np.log([v for _, v in known]), rcond=None)
        return self._fits[kind]

    def _estimates(self, space: SearchSpace) -> np.ndarray:
        """Per-key medians of `space` with each key the table lacks estimated (`estimate_key`); last entry 0."""
        index, values = self._values(space)
        known = zip(index.keys, values[:-1], strict=True)
        return np.array([self.estimate_key(k) if np.isnan(v) else v for k, v in known] + [0.0])


def _shape_class(key: LutKey) -> tuple[Any, ...]:
    """What a key keeps when only its channel widths change (a block's `extra` holds explicit widths; a stem's or
    head's holds structure)."""
    return (key.kind, key.family, key.kernel, key.stride, key.expand, key.se, key.act, key.height, key.width,
            "" if key.kind == "block" else key.extra)


def _features(summaries: list[tuple[int, int, int, int]]) -> np.ndarray:
    s = np.asarray(summaries, dtype=float)
    return np.stack([np.ones(len(s)), np.log1p(s[:, 1]), np.log1p(s[:, 2])], axis=1)


def kendall_tau(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall's tau-b between two score vectors (table validation, accuracy predictors)."""
    from scipy.stats import kendalltau

    return float(kendalltau(a, b).statistic)


def fit_correction(raw_ms: Sequence[float] | np.ndarray, pieces: Sequence[int] | np.ndarray,
                   measured_ms: Sequence[float] | np.ndarray,
                   mparams: Sequence[float] | np.ndarray | None = None) -> dict[str, float]:
    """Fit `measured = scale * raw + per_piece_ms * pieces [+ per_mparam_ms * mparams] + offset_ms` over whole
    networks, minimising the relative error (small and large networks count alike); with its fit error. The
    weights term (millions of parameters) is fitted when `mparams` is given."""
    raw, n, measured = np.asarray(raw_ms, float), np.asarray(pieces, float), np.asarray(measured_ms, float)
    columns = [raw, n, np.ones_like(raw)] + ([np.asarray(mparams, float)] if mparams is not None else [])
    if len(raw) < len(columns):
        raise HwnasError(f"fitting the network-level correction on {len(columns)} terms needs at least "
                         f"{len(columns)} measured networks; got {len(raw)}")
    a = np.stack(columns, axis=1)
    if np.linalg.matrix_rank(a[:, :3]) < 3:  # e.g. every network has as many pieces: fold the per-piece term away
        a[:, 1] = 0.0
    coef, *_ = np.linalg.lstsq(a / measured[:, None], np.ones_like(measured), rcond=None)
    fitted = a @ coef
    out = {"scale": float(coef[0]), "per_piece_ms": float(coef[1]), "offset_ms": float(coef[2]),
           "networks": int(len(raw)), "fit_mape": float(np.mean(np.abs(fitted - measured) / measured))}
    if mparams is not None:
        out["per_mparam_ms"] = float(coef[3])
    return out


def current_revisions(runtime: str, precision: str) -> dict[str, Any]:
    """What a table measured now is measured with: block revisions (`Family.revision`, those above 1) and
    the piece conversion's revision (the runtime's registry entry, `RuntimeSpec.revisions`). Stored in meta.json
    as `revisions`; a table without it is at revision 1."""
    spec = RUNTIMES.get(runtime)
    return {"blocks": {f: r for f, r in block_revisions().items() if r != 1},
            "conversion": spec.revision(precision) if spec is not None else 1}


def stale_parts(meta: dict[str, Any]) -> tuple[bool, list[str]]:
    """(every key is stale, families whose blocks are stale) for a table's meta against this hwnas."""
    profile = meta["profile"]
    now = current_revisions(profile["runtime"], profile["precision"])
    had = meta.get("revisions", {})
    return had.get("conversion", 1) != now["conversion"], changed_families(had.get("blocks", {}))


def describe_stale(every_key: bool, families: list[str]) -> str:
    """What `stale_parts` found, in words ("" when nothing is stale)."""
    parts = ["its pieces' conversion"] * every_key + ([f"the {', '.join(families)} blocks"] if families else [])
    return " and ".join(parts)


SHIPPED = Path(__file__).resolve().parent / "data"


class DeviceMismatchWarning(UserWarning):
    """A latency table picked for this machine was measured on another device."""


def shipped_tables() -> list[Path]:
    """The finished table directories in latency_tables/data/ (the ones hwnas ships), sorted."""
    if not SHIPPED.is_dir():
        return []
    return sorted(p for p in SHIPPED.iterdir() if (p / "meta.json").is_file()
                  and read_meta(p / "meta.json").get("status") == "complete")


def is_shipped(path: Path) -> bool:
    """Whether `path` lies inside the installed package's table data (which hwnas never writes)."""
    return Path(path).resolve().is_relative_to(SHIPPED)


def on_this_machine(profile: DeviceProfile) -> bool:
    """Whether a table's profile names this machine: the same device name, or the same recorded CPU model."""
    return profile.device == default_device() or bool(profile.cpu_model) and profile.cpu_model == cpu_model()


def find_table(space: str, runtime: str, precision: str, device: str | None = None, threads: int = 1,
               search: Sequence[Path] | None = None) -> LatencyTable:
    """The table for (space, runtime, precision, device, threads) among `search` (default: the shipped ones).

    Without `device`, a table measured on this machine (`on_this_machine`) is preferred; when only tables of
    other devices match, the first is used and a `DeviceMismatchWarning` names its device and this machine's."""
    candidates = list(search) if search is not None else shipped_tables()
    matching = []
    for path in candidates:
        table = LatencyTable.load(path)
        profile = table.profile
        if (table.space_name, profile.runtime, profile.precision, profile.threads) == (space, runtime, precision,
                                                                                       threads) and \
                (device is None or profile.device == device):
            matching.append(table)
    if device is not None and matching:
        return matching[0]
    for table in matching:
        if on_this_machine(table.profile):
            return table
    if matching:
        table, profile = matching[0], matching[0].profile
        warnings.warn(f"latency table {table.table_id} was measured on device {profile.device!r} "
                      f"(CPU {profile.cpu_model or 'unknown'}), not on this machine ({default_device()!r}, CPU "
                      f"{cpu_model()}); its latencies are that device's. Build one here with `hwnas lut build` "
                      f"or pass the table for this device", DeviceMismatchWarning, stacklevel=2)
        return table
    have = ", ".join(p.name for p in candidates) or "none"
    raise TableError(f"no table for space {space!r} on {runtime} {precision}, {threads} thread(s)"
                     f"{f', device {device!r}' if device else ''}; tables found: {have}. Build one with "
                     f"`hwnas lut build --space {space} --runtime {runtime} --precision {precision}`")
