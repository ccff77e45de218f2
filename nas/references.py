"""Hand-designed references on the same data and runtime: scale, train alone, export, compare with the picks.

The claim hardware-aware search has to back: its pick is faster than the hand-designed network people would
otherwise ship at the same accuracy, and at least as accurate at the same latency, measured on the same data
and runtime. `compare_with_references` checks both for rows shaped like `RUN/references/summary.json`'s, and
states every accuracy with its 95% Wilson interval (MNIST nearly saturates: 1,000 validation images give
about +-0.9 points at 98%).

Scaling (`SCALING_RULE`, one rule for every reference): the published ImageNet network (`search_spaces.reference`)
takes the data's resolution, channels and classes; its stem (with its max pool) and first stride-2 blocks keep
their stride until the total stride reaches 8, the `small` space's (stem 2 x 2 x 2), and later stride-2 blocks
become stride 1; every width (stem, block outputs, head and hidden layer; the expanded and SE widths follow from
them by the families' rules) is multiplied by `width` and rounded by `make_divisible(., 8)`. The default width 0.5
puts the references' MACs at 28 px, 1 channel, 10 classes (shufflenet_v2_x0_5 1.41 M, mobilenet_v3_small 2.50 M,
mobilenet_v2 9.43 M, efficientnet_b0 14.71 M; mobilenet_v3_large 7.14 M, shufflenet_v2_x1_0 5.15 M) among the
small space's subnets at 28 px (300 random subnets: 1.5 to 38 M, median 7.0 M).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search_spaces import REFERENCES, ArchConfig, HeadConfig, reference
from search_spaces.errors import HwnasError
from search_spaces.families import make_divisible
from search_spaces.files import atomic_write_text

if TYPE_CHECKING:
    from latency_tables.table import LatencyTable
    from supernets.config import TrainConfig
    from supernets.data import Dataset

SUMMARY_VERSION = 1
REFERENCE_FILE = "reference.json"
#: Where `train_reference` keeps the tables' copies with the references' keys measured on demand.
MEASURED_TABLES = ".measured-tables"

#: The speed-up over the fastest reference of equal or lower accuracy that the acceptance asks for.
REQUIRED_SPEEDUP = 1.5


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion `correct / n` (95% for z = 1.96)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise HwnasError(f"wilson_interval: n must be a whole number of at least 1; got {n!r}")
    if isinstance(correct, bool) or not isinstance(correct, int) or not 0 <= correct <= n:
        raise HwnasError(f"wilson_interval: correct must be a whole number from 0 to n={n}; got {correct!r}")
    if not z > 0:
        raise HwnasError(f"wilson_interval: z must be positive; got {z!r}")
    p = correct / n
    z2 = z * z
    denominator = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


# ------------------------------------------------------------------------------------------------- scaling

#: The total stride of the `small` space (stem 2 x stage 2 x stage 2): a reference keeps its first strides up to it.
TARGET_STRIDE = 8
DEFAULT_WIDTH = 0.5

SCALING_RULE = (
    "The published ImageNet network takes the data's resolution, channels and classes; its stem, max pool and "
    f"first stride-2 blocks keep their stride until the total stride reaches {TARGET_STRIDE} (the small space's), "
    "later stride-2 blocks become stride 1, and every width (stem, blocks, and through them the expanded and "
    "SE widths, head, hidden) is multiplied by the width factor and rounded with make_divisible(., 8)."
)


def scale_reference(name: str, *, resolution: int, in_channels: int, num_classes: int,
                    width: float = DEFAULT_WIDTH) -> ArchConfig:
    """`search_spaces.reference(name)` scaled to the data by `SCALING_RULE`, the same rule for every reference."""
    if name not in REFERENCES:
        raise HwnasError(f"unknown reference network {name!r}; known: {', '.join(REFERENCES)}")
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width <= 4:
        raise HwnasError(f"reference width factor must be a number in (0, 4]; got {width!r}")
    arch = reference(name)

    def scaled(channels: int) -> int:
        return make_divisible(channels * width)

    stride = arch.stem.stride * (2 if arch.stem.maxpool else 1)
    if stride > TARGET_STRIDE:
        raise HwnasError(f"reference {name}: its stem alone strides {stride}, more than {TARGET_STRIDE}")
    stages = []
    for stage in arch.stages:
        blocks = []
        for block in stage:
            keep = block.stride == 1 or stride * block.stride <= TARGET_STRIDE
            stride *= block.stride if keep else 1
            blocks.append(replace(block, out_channels=scaled(block.out_channels), stride=block.stride if keep else 1))
        stages.append(tuple(blocks))
    head = HeadConfig(scaled(arch.head.channels), scaled(arch.head.hidden) if arch.head.hidden else 0, arch.head.act)
    return ArchConfig(resolution=resolution, in_channels=in_channels, num_classes=num_classes,
                      stem=replace(arch.stem, channels=scaled(arch.stem.channels)), stages=tuple(stages), head=head)


def reference_resolution(native: int, space: str) -> int:
    """The input resolution of the references for data of `native` pixels searched in `space`: the data's own when
    the space has it, else the space's largest (scikit-learn's 8 px digits -> 32)."""
    from search_spaces import get_space

    resolutions = get_space(space).resolutions
    return native if native in resolutions else max(resolutions)


def total_stride(arch: ArchConfig) -> int:
    """The network's total stride: the stem's (with its max pool) times every block's."""
    stride = arch.stem.stride * (2 if arch.stem.maxpool else 1)
    for stage in arch.stages:
        for block in stage:
            stride *= block.stride
    return stride


# -------------------------------------------------------------------------------------------------- training


def _priced_tables(arch: ArchConfig, tables: Sequence[LatencyTable], out_root: Path, log: Callable[[str], None]
                   ) -> tuple[list[LatencyTable], dict[str, str]]:
    """Each table's copy with `arch`'s keys measured on demand (so predictions are real), or, where this machine
    cannot measure them, the reason the table gives no prediction (table id -> reason)."""
    from latency_tables.ondemand import measured_or_source

    priced, unpriced = [], {}
    for table in tables:
        if all(k in table.rows for k in _keys(arch)):
            priced.append(table)
            continue
        copy, why = measured_or_source(table, [arch], out_root / MEASURED_TABLES / table.table_id, progress=False)
        if why:
            unpriced[table.table_id] = f"the table lacks this network's keys and they cannot be measured here: {why}"
            log(f"{table.table_id}: no prediction ({why})")
        else:
            priced.append(copy)
    return priced, unpriced


def _keys(arch: ArchConfig) -> list[Any]:
    from latency_tables.keys import arch_keys

    return list(arch_keys(arch))


def train_reference(name: str, data: Dataset, config: TrainConfig, out_root: Path, *,
                    tables: Sequence[LatencyTable], epochs: int | None = None, seed: int = 0, progress: bool = False,
                    log: Callable[[str], None] = print, width: float = DEFAULT_WIDTH, resolution: int | None = None,
                    space: str | None = None, runtimes: Sequence[tuple[str, str]] | None = None) -> Path:
    """Train the reference `name`, scaled to `data` (`scale_reference`; resolution: the data's own unless given),
    alone with `config`'s recipe (`train_alone`: `config.total_epochs` epochs unless given, lr of the first
    phase), and export it to `out_root/<key>/` with `reference.json` beside it; a finished export is reused.

    The export is measured on each of `runtimes` (default `nas.export`'s: ORT and LiteRT fp32), 1 thread, and
    predicted by each of `tables` on a copy with the network's keys measured on demand in
    `out_root/.measured-tables/<table id>/`; a table whose keys cannot be measured here gives no prediction and
    `reference.json` says why (`unpriced`). `space` (default: the first table's, else "small") is the space name
    the spec records, the run's, so that its tables accept it."""
    import torch

    from nas.export import ExportOptions, Provenance, SubnetSpec, export_model
    from nas.export.writer import _hwnas_version
    from supernets.training import train_alone

    out_root = Path(out_root)
    native = int(data.train.images.shape[-1])
    arch = scale_reference(name, resolution=resolution or native, in_channels=data.in_channels,
                           num_classes=data.num_classes, width=width)
    directory = out_root / arch.key
    if (directory / REFERENCE_FILE).is_file():
        log(f"{name}: reusing {directory}")
        return directory
    epochs = config.total_epochs if epochs is None else epochs
    lr = config.phases[0].lr
    log(f"{name}: training {arch.key} alone ({epochs} epochs, lr {lr}, {_macs(arch) / 1e6:.2f} M MACs)")
    started = time.perf_counter()
    model = train_alone(arch, data, config, epochs=epochs, lr=lr, seed=seed, progress=progress)
    seconds = time.perf_counter() - started
    priced, unpriced = _priced_tables(arch, tables, out_root, log)
    space_name = space or (tables[0].space_name if tables else "small")
    provenance = Provenance(None, data.name, seed, 0, tuple(t.table_id for t in priced), _hwnas_version(),
                            str(torch.__version__))
    spec = SubnetSpec(arch, space_name, data.mean, data.std, provenance)
    info = {"name": name, "scaling": SCALING_RULE, "width": width, "epochs": epochs, "lr": lr, "seed": seed,
            "seconds": round(seconds, 1), "unpriced": unpriced}

    def reference_file(metrics: dict[str, Any], directory: Path) -> dict[str, str]:
        return {REFERENCE_FILE: json.dumps(info, indent=2) + "\n"}

    options = ExportOptions(runtimes=None if runtimes is None else tuple(runtimes), tables=tuple(priced), threads=1,
                            overwrite=True)
    path = export_model(model, spec, data, out_root, options, extra_metrics={"reference": info},
                        progress=log if progress else None, extra_files=reference_file)
    log(f"{name}: exported {path} ({seconds:.0f} s of training)")
    return path


def _macs(arch: ArchConfig) -> int:
    from latency_tables.counting import count_arch

    return int(count_arch(arch)[1])


# --------------------------------------------------------------------------------------------------- summary


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HwnasError(f"{path} is missing: {what}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise HwnasError(f"{path} is not readable JSON ({type(err).__name__}: {err})") from None
    if not isinstance(data, dict):
        raise HwnasError(f"{path} must hold a JSON object; got {type(data).__name__}")
    return data


def _latency_rows(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """metrics.json's `latency` section as summary rows' `latency`: "<runtime>:<precision>" -> measured median,
    and the prediction of a table for the same runtime and precision (None without one)."""
    section = metrics.get("latency") or {}
    predicted = section.get("predicted") or {}
    out: dict[str, dict[str, Any]] = {}
    for entry in (section.get("measured") or {}).values():
        runtime, precision = str(entry["runtime"]), str(entry["precision"])
        table = next((tid for tid, p in predicted.items()
                      if (p.get("runtime"), p.get("precision")) == (runtime, precision)), None)
        out[f"{runtime}:{precision}"] = {
            "measured_ms": float(entry["median_ms"]),
            "predicted_ms": None if table is None else float(predicted[table]["latency_ms"]),
            "table_id": table}
    return out


def _weight_bytes(arch: ArchConfig) -> int:
    """Bytes of the fp32 weights (BatchNorm folded into its convolution, as the runtimes run them)."""
    from latency_tables.counting import layer_ops

    return 4 * sum(op.weights for op in layer_ops(arch))


def reference_row(directory: Path, name: str, variant: str) -> dict[str, Any]:
    """A summary.json row from an export directory: an fp32 export (metrics.json, and reference.json when it is a
    trained reference) or a compressed one (compress.json's accuracy after compression, sizes and ratios)."""
    from nas.compress.pipeline import COMPRESS_FILE

    directory = Path(directory)
    if variant not in ("fp32", "compressed"):
        raise HwnasError(f"reference row variant {variant!r} is not allowed; allowed: fp32, compressed")
    metrics = _read_json(directory / "metrics.json", "not a finished export (export it with nas.export)")
    arch = ArchConfig.from_str(str(metrics["arch"]))
    images = int(metrics["accuracy"]["images"])
    if variant == "compressed":
        summary = _read_json(directory / COMPRESS_FILE, "not a compressed export (nas.compress)")
        accuracy = float(summary["accuracy_after"])
        params, macs = int(summary["params_after"]), int(summary["macs_after"])
        size = int(round(float(summary["bytes_after"])))
        latency = _latency_rows(metrics)
        predicted = (summary.get("latency") or {}).get("predicted_ms")
        for key, entry in latency.items():  # the budget runtime's model is priced by the compression's own tables
            if key.split(":")[0] == summary.get("runtime") and entry["predicted_ms"] is None and predicted:
                entry.update(predicted_ms=float(predicted), table_id=summary.get("table"))
    else:
        accuracy = float(metrics["accuracy"]["top1"])
        params, macs, size = int(metrics["cost"]["params"]), int(metrics["cost"]["macs"]), _weight_bytes(arch)
        latency = _latency_rows(metrics)
    correct = int(round(accuracy * images))
    info = metrics.get("extra", {}).get("reference") or {}
    if (directory / REFERENCE_FILE).is_file():
        info = _read_json(directory / REFERENCE_FILE, "")
    return {"name": name, "variant": variant, "arch": arch.to_str(), "key": str(metrics["key"]),
            "accuracy": accuracy, "accuracy_ci95": list(wilson_interval(correct, images)), "val_images": images,
            "correct": correct, "params": params, "macs": macs, "size_bytes": size,
            "latency": latency, "directory": str(directory),
            "epochs": info.get("epochs"), "seconds": info.get("seconds")}


def write_summary(path: Path, rows: Sequence[dict[str, Any]], *, dataset: str, val_images: int, source: str,
                  machine: str | None = None) -> Path:
    """Write `RUN/references/summary.json` atomically (docs: the run directory's contract); `machine` defaults
    to this machine's CPU model."""
    from latency_tables.table import cpu_model

    if not (source == "trained" or source.startswith("shipped:")):
        raise HwnasError(f"summary source {source!r} is not allowed; allowed: 'trained' or 'shipped:<path>'")
    data = {"version": SUMMARY_VERSION, "dataset": dataset, "val_images": int(val_images),
            "machine": machine or cpu_model(), "source": source, "scaling": SCALING_RULE, "rows": list(rows)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    return path


_ROW_FIELDS = ("name", "variant", "accuracy", "latency")


def load_summary(path: Path) -> dict[str, Any]:
    """A references summary.json, checked: a missing, corrupt or wrong-version file is a `HwnasError` naming it."""
    path = Path(path)
    data = _read_json(path, "write it with `hwnas run` (its references stage) or nas.references.write_summary")
    if data.get("version") != SUMMARY_VERSION:
        raise HwnasError(f"{path}: references summary version {data.get('version')!r}; this hwnas reads version "
                         f"{SUMMARY_VERSION}")
    rows = data.get("rows")
    if not isinstance(rows, list):
        raise HwnasError(f"{path}: 'rows' must be a list of reference rows")
    for i, row in enumerate(rows):
        missing = [f for f in _ROW_FIELDS if not isinstance(row, dict) or f not in row]
        if missing:
            raise HwnasError(f"{path}: row {i} lacks {', '.join(missing)}")
        if not isinstance(row["accuracy"], (int, float)) or not isinstance(row["latency"], dict):
            raise HwnasError(f"{path}: row {i} ({row['name']}) needs a numeric accuracy and a latency object")
    return data


# ---------------------------------------------------------------------------------------------- comparison


def _interval(row: dict[str, Any]) -> tuple[float, float]:
    """A row's 95% interval: `accuracy_ci95` when given, else Wilson's from correct / val_images, else none."""
    ci = row.get("accuracy_ci95")
    if ci is not None:
        return float(ci[0]), float(ci[1])
    if row.get("correct") is not None and row.get("val_images"):
        return wilson_interval(int(row["correct"]), int(row["val_images"]))
    acc = float(row["accuracy"])
    return acc, acc


def _measured_on(row: dict[str, Any], runtime: str) -> tuple[str, float] | None:
    """(latency key, measured ms) of a row on `runtime`: "ort:fp32" that key only; a bare runtime ("ort") the
    row's fastest measurement on it at any precision (a compressed model runs at its plan's)."""
    latency = row.get("latency") or {}
    found = [(key, float(entry["measured_ms"])) for key, entry in latency.items()
             if (key == runtime or key.split(":")[0] == runtime) and (entry or {}).get("measured_ms") is not None]
    return min(found, key=lambda item: item[1]) if found else None


def _measured(row: dict[str, Any], runtime: str) -> float | None:
    found = _measured_on(row, runtime)
    return None if found is None else found[1]


def _label(row: dict[str, Any]) -> str:
    return f"{row['name']} (compressed)" if row.get("variant") == "compressed" else str(row["name"])


def _accuracy_text(row: dict[str, Any]) -> str:
    low, high = _interval(row)
    return f"{100 * float(row['accuracy']):.1f}% +- {100 * (high - low) / 2:.1f}"


def _faster_than(cand: dict[str, Any], cand_ms: float, refs: list[tuple[dict[str, Any], float]]) -> dict | None:
    """Condition (a): the fastest reference of equal or lower accuracy, and the candidate's speed-up over it."""
    pool = [(ref, ms) for ref, ms in refs if float(ref["accuracy"]) <= float(cand["accuracy"])]
    if not pool:
        return None
    ref, ms = min(pool, key=lambda item: (item[1], -float(item[0]["accuracy"]), _label(item[0])))
    speedup = ms / cand_ms
    return {"reference": _label(ref), "accuracy": float(ref["accuracy"]), "measured_ms": ms,
            "speedup": speedup, "met": speedup >= REQUIRED_SPEEDUP}


def _as_accurate_as(cand: dict[str, Any], cand_ms: float, refs: list[tuple[dict[str, Any], float]]) -> dict | None:
    """Condition (b): the most accurate reference of equal or higher latency; met at equal or higher accuracy."""
    pool = [(ref, ms) for ref, ms in refs if ms >= cand_ms]
    if not pool:
        return None
    ref, ms = max(pool, key=lambda item: (float(item[0]["accuracy"]), -item[1], _label(item[0])))
    cand_low, cand_high = _interval(cand)
    ref_low, ref_high = _interval(ref)
    return {"reference": _label(ref), "accuracy": float(ref["accuracy"]), "measured_ms": ms,
            "difference_points": 100 * (float(cand["accuracy"]) - float(ref["accuracy"])),
            "within_uncertainty": cand_low <= ref_high and ref_low <= cand_high,
            "met": float(cand["accuracy"]) >= float(ref["accuracy"])}


def _sentences(cand: dict[str, Any], row: dict[str, Any], runtime: str,
               refs_by_label: dict[str, dict[str, Any]]) -> str:
    who = f"The {'compressed pick' if cand.get('variant') == 'compressed' else 'pick'} {cand['name']}"
    mine = _accuracy_text(cand)
    parts = []
    faster, accurate = row["faster_than"], row["as_accurate_as"]
    if faster is None and accurate is None and refs_by_label:
        return (f"{who} ({mine}, {row['measured_ms']:.4g} ms) is less accurate and slower than every reference "
                f"measured on {runtime} (no reference qualifies for either condition): not met.")
    if faster is None:
        parts.append(f"{who} ({mine}) is less accurate than every reference measured on {runtime}: "
                     f"no reference qualifies for the speed-up condition.")
    else:
        ref_text = _accuracy_text(refs_by_label[faster["reference"]])
        speed = (f"{faster['speedup']:.2f}x faster" if faster["speedup"] >= 1 else
                 f"{1 / faster['speedup']:.2f}x slower (speed-up {faster['speedup']:.2f}x)")
        parts.append(f"{who} is {speed} on {runtime} than {faster['reference']} "
                     f"({ref_text}) at {mine}: {'met' if faster['met'] else 'not met'} "
                     f"(at least {REQUIRED_SPEEDUP}x asked).")
    if accurate is None:
        parts.append(f"{who} ({row['measured_ms']:.4g} ms) is slower than every reference measured on {runtime}: "
                     f"no reference qualifies for the accuracy condition.")
    else:
        ref_text = _accuracy_text(refs_by_label[accurate["reference"]])
        verdict = "met" if accurate["met"] else "not met"
        inside = "inside" if accurate["within_uncertainty"] else "outside"
        parts.append(f"{who} ({mine}, {row['measured_ms']:.4g} ms) against {accurate['reference']} ({ref_text}, "
                     f"{accurate['measured_ms']:.4g} ms), the most accurate reference at equal or higher latency: "
                     f"{accurate['difference_points']:+.1f} points, {inside} the 95% intervals: {verdict}.")
    return " ".join(parts)


def compare_with_references(candidates: list[dict], references: list[dict], runtime: str) -> dict:
    """Check the acceptance on `runtime` for each candidate (summary.json-shaped rows) against the references.

    (a) among references with accuracy <= the candidate's, the fastest measured one: the candidate's speed-up
    over it must be >= 1.5; (b) among references with measured latency >= the candidate's, the most accurate:
    the candidate must be at least as accurate ("within_uncertainty": the two 95% intervals overlap). A
    condition no reference qualifies for is vacuous (None). The best candidate has the most conditions met,
    then the lowest latency; "met" is true when at least one condition applies to it and every one that
    applies is met. `runtime` is a latency key ("ort:fp32") or a bare runtime ("ort": each row's fastest
    precision on it, so a compressed pick runs at its plan's; `measured_on` says which). Rows not measured on
    `runtime` are left out (said in "text").
    """
    refs = [(ref, ms) for ref in references if (ms := _measured(ref, runtime)) is not None]
    refs_by_label = {_label(ref): ref for ref, _ in refs}
    rows: list[dict[str, Any]] = []
    texts: list[str] = []
    for cand in candidates:
        cand_ms = _measured(cand, runtime)
        if cand_ms is None:
            texts.append(f"{cand['name']} has no measured latency on {runtime}: left out.")
            continue
        row = {"name": cand["name"], "variant": cand.get("variant", "fp32"), "accuracy": float(cand["accuracy"]),
               "accuracy_ci95": list(_interval(cand)), "measured_ms": cand_ms,
               "measured_on": _measured_on(cand, runtime)[0],  # type: ignore[index]
               "faster_than": _faster_than(cand, cand_ms, refs), "as_accurate_as": _as_accurate_as(cand, cand_ms, refs)}
        rows.append(row)
        texts.append(_sentences(cand, row, runtime, refs_by_label))
    if not refs:
        texts.insert(0, f"No reference is measured on {runtime}: nothing to compare with.")
    best, met = _best(rows)
    if best is not None:
        texts.append(f"Best candidate on {runtime}: {best['name']}; acceptance {'met' if met else 'not met'}.")
    return {"runtime": runtime, "met": met, "best": best["name"] if best else None, "rows": rows,
            "text": "\n".join(texts)}


def _best(rows: Sequence[dict[str, Any]]) -> tuple[dict[str, Any] | None, bool]:
    def conditions(row: dict[str, Any]) -> list[dict[str, Any]]:
        return [c for c in (row["faster_than"], row["as_accurate_as"]) if c is not None]

    if not rows:
        return None, False
    best = max(rows, key=lambda r: (sum(c["met"] for c in conditions(r)), -r["measured_ms"]))
    applied = conditions(best)
    return best, bool(applied) and all(c["met"] for c in applied)
