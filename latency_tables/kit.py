"""The device kit: measure a table on a device that has only the runtime and numpy.

`export_kit` writes every converted piece a space needs plus whole networks (for the network-level
correction and for validation), `manifest.json`, and `runner.py` (a copy of `kit_runner.py`, which imports
neither torch nor hwnas). The runner writes `results.csv` and `results_meta.json` on the device;
`import_kit` turns them into a table (rows, correction, validation summary). Both steps resume.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from latency_tables.build import NETWORK_COLUMNS, network_line, unique_archs
from latency_tables.keys import LutKey, SpaceIndex
from latency_tables.runtimes import RUNTIMES, Measurement, Protocol, check_precision, get_runtime, runtime_spec
from latency_tables.table import (
    DeviceProfile,
    LatencyTable,
    TableError,
    current_revisions,
    fit_correction,
    header_line,
    row_line,
    write_meta,
)
from latency_tables.validation import validation_summary
from search_spaces import SearchSpace, get_space
from search_spaces.codec import arch_from_str
from search_spaces.files import atomic_write_text

RUNNER = Path(__file__).with_name("kit_runner.py")
KIT_FORMAT = "hwnas device kit 1"


def export_kit(space: SearchSpace, runtime: str, precision: str, out: Path, *, protocol: Protocol | None = None,
               fit_networks: int = 20, validate: int = 0, validate_seed: int = 1, fit_seed: int = 0,
               progress: bool = True) -> dict[str, Any]:
    """Write the kit for `space` on `runtime` at `precision` into `out`; return the manifest."""
    from latency_tables.convert import export_for, input_shape

    if not runtime_spec(runtime).kit:
        kits = [name for name, spec in RUNTIMES.items() if spec.kit]
        raise TableError(f"a device kit runs without torch, and the runner does not run {runtime!r}; choose "
                         f"--runtime {' or '.join(kits)}")
    rt = get_runtime(runtime)
    check_precision(runtime, precision)
    protocol = protocol or Protocol()
    fit = unique_archs(space, fit_networks, fit_seed)
    val = unique_archs(space, validate, validate_seed, exclude={a.key for a in fit}) if validate else []
    entries: list[dict[str, Any]] = []
    targets: list[Any] = []
    for i, key in enumerate(SpaceIndex(space).keys):
        entries.append({"id": f"k{i:05d}", "kind": "key", "key": key.to_row()})
        targets.append(key)
    for group, archs in (("fit", fit), ("validation", val)):
        for arch in archs:
            entries.append({"id": f"n-{arch.key}", "kind": "network", "set": group, "arch": arch.to_str()})
            targets.append(arch)
    for entry, target in zip(entries, targets, strict=True):
        entry["file"] = f"models/{entry['id']}{rt.suffix}"
        entry["input_shape"] = list(input_shape(target))
    manifest = {"format": KIT_FORMAT, "space": space.name, "space_definition": space.to_dict(),
                "runtime": runtime, "precision": precision, "protocol": protocol.to_dict(),
                "fit_seed": fit_seed, "validate_seed": validate_seed,
                "revisions": current_revisions(runtime, precision), "entries": entries}
    out.mkdir(parents=True, exist_ok=True)
    old = out / "manifest.json"
    if old.is_file() and json.loads(old.read_text())["entries"] != entries:
        raise TableError(f"{out} holds a kit for other settings; pick another --out")
    atomic_write_text(old, json.dumps(manifest, indent=1) + "\n")
    shutil.copyfile(RUNNER, out / "runner.py")
    pairs = list(zip(entries, targets, strict=True))
    for entry, target in tqdm(pairs, desc="kit", disable=None if progress else True, leave=False):
        path = out / entry["file"]
        if not path.is_file():  # files are written atomically: one that exists is complete
            export_for(runtime, precision, target, path)
    return manifest


def _results(kit: Path) -> dict[str, tuple[float, float, int]]:
    path = kit / "results.csv"
    if not path.is_file():
        raise TableError(f"{path} does not exist; run `python3 runner.py` in the kit on the device first")
    text = path.read_text(encoding="utf-8")
    reader = csv.DictReader(io.StringIO(text[: text.rfind("\n") + 1]))
    if tuple(reader.fieldnames or ()) != ("id", "latency_ms_median", "latency_ms_iqr", "runs"):
        raise TableError(f"{path} has columns {reader.fieldnames}; expected id, latency_ms_median, latency_ms_iqr, "
                         f"runs (the runner's output)")
    out = {}
    for line, row in enumerate(reader, start=2):
        try:
            median, iqr, runs = float(row["latency_ms_median"]), float(row["latency_ms_iqr"]), int(row["runs"])
        except (TypeError, ValueError) as err:
            raise TableError(f"{path} line {line} is corrupt: {err}") from None
        if not median > 0:
            raise TableError(f"{path} line {line}: latency {median} ms is not a measurement")
        out[row["id"]] = (median, iqr, runs)
    return out


def import_kit(kit: Path, out: Path | None = None, device: str | None = None) -> LatencyTable:
    """Turn a kit's results into a table directory (default `<kit>/table`); nothing is written unless every
    model of the manifest has a result."""
    manifest_path = kit / "manifest.json"
    if not manifest_path.is_file():
        raise TableError(f"{manifest_path} does not exist; is {kit} a kit made by `hwnas lut kit-export`?")
    manifest = json.loads(manifest_path.read_text())
    results = _results(kit)
    missing = [e["id"] for e in manifest["entries"] if e["id"] not in results]
    if missing:
        raise TableError(f"{kit / 'results.csv'} lacks {len(missing)} of {len(manifest['entries'])} models "
                         f"(e.g. {', '.join(missing[:3])}); run `python3 runner.py` in the kit again (it resumes)")
    meta_path = kit / "results_meta.json"
    device_meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    protocol = Protocol.from_dict({**manifest["protocol"], **device_meta.get("protocol", {})})
    name = device or device_meta.get("device") or "device"
    profile = DeviceProfile(name, manifest["runtime"], manifest["precision"], protocol.threads,
                            str(device_meta.get("runtime_version", "")), str(device_meta.get("processor", "")))
    out = out or kit / "table"
    if (out / "table.csv").exists():
        raise TableError(f"{out} already holds a table; pick another --out (nothing was overwritten)")
    space = get_space(manifest["space"])
    lines = [header_line()]
    networks: dict[str, list[str]] = {"fit": [], "validation": []}
    for entry in manifest["entries"]:
        median, iqr, runs = results[entry["id"]]
        if entry["kind"] == "key":
            lines.append(row_line(LutKey.from_row(entry["key"]), median, iqr, runs))
        else:
            line = network_line(arch_from_str(entry["arch"]), Measurement(median, iqr, runs))
            networks[entry["set"]].append(line)
    header = ",".join(NETWORK_COLUMNS) + "\n"
    meta = {"space": space.name, "space_definition": manifest["space_definition"], "profile": profile.to_dict(),
            "table_id": profile.table_id, "protocol": protocol.to_dict(), "status": "complete",
            "keys": sum(e["kind"] == "key" for e in manifest["entries"]), "device_info": device_meta,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "format": "hwnas latency table 1", "source": f"device kit {kit}",
            "revisions": manifest.get("revisions", {})}
    atomic_write_text(out / "table.csv", "".join(lines))
    atomic_write_text(out / "networks.csv", header + "".join(networks["fit"]))
    write_meta(out, meta)
    table = LatencyTable.load(out)
    _fit_and_validate(table, space, networks, manifest)
    return table


def _fit_and_validate(table: LatencyTable, space: SearchSpace, networks: dict[str, list[str]],
                      manifest: dict[str, Any]) -> None:
    def parsed(lines: list[str]) -> tuple[np.ndarray, np.ndarray]:
        rows = list(csv.reader(lines))
        genes = np.stack([space.to_genes(arch_from_str(r[1])) for r in rows])
        return genes, np.array([float(r[2]) for r in rows])

    if len(networks["fit"]) >= 3:
        genes, measured = parsed(networks["fit"])
        table.meta["correction"] = {**fit_correction(table.raw_sum(space, genes).latency_ms,
                                                     table.pieces(space, genes), measured),
                                    "seed": manifest["fit_seed"]}
    if networks["validation"]:
        genes, measured = parsed(networks["validation"])
        validation_summary(table, space, genes, measured, manifest["validate_seed"])
        assert table.path is not None
        atomic_write_text(table.path / f"validation-s{manifest['validate_seed']}.csv",
                     ",".join(NETWORK_COLUMNS) + "\n" + "".join(networks["validation"]))
    table.save_meta()
