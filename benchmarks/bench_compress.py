"""Compression acceptance figures (issue 15), on ONNX Runtime (and LiteRT for one pick) on this machine, 1 thread:

1. `compress_subnet` runs (`grid`), each cached in the work directory by (subject, runtime, method, budget, size
   bound, distillation) so a rerun skips finished ones: every subject by `joint` at 0.65 x its predicted fp32
   latency with weights <= 0.2 x fp32 (the headline); on the first subject `joint` and `sequential` at 0.8, 0.65
   and 0.5, `joint` without distillation (`CompressConfig(alpha=0)`), `prune` for the Torch-Pruning comparison
   (also on the ShuffleNet-like subject), and the headline run on LiteRT; every speed-up is the parent and the
   compressed model timed round-robin in one run (`compress.json` `latency.side_by_side`, re-measured here for
   runs that lack it);
2. every subject's uniform int8 export (PyTorch fp32 top-1 against the runtime's int8 top-1);
3. Torch-Pruning side by side with hwnas's pruning (`torch_pruning_side`): same subnet, same MACs, same fine-tune,
   both ONNX models timed round-robin with the parent by the table's protocol;
4. the sensitivity estimators' Kendall tau against the real per-layer drop (validation accuracy with that layer
   alone fake-quantised, ranges calibrated on training images), at int8 and one simulated precision.

Subjects: the quickstart search's exported picks (`--search-dir`) and two reference-like subnets
(MobileNetV2 and ShuffleNetV2 from `search_spaces.reference`, cut to the quickstart's scale), trained alone with
the supernet run's recipe (`supernets.training.train_alone`) and exported into the work directory (reused).

Usage: .venv/bin/python benchmarks/bench_compress.py [--quick] [--epochs N] [--search-dir DIR] [--supernet DIR]
       [--work-dir DIR] [--no-write]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import pin_one_core, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: Latency budgets as fractions of the subject's predicted fp32 latency on the table (1.5x needs <= 0.67).
BUDGETS = (0.8, 0.65, 0.5)
#: The headline runs' second bound: weight bytes as a fraction of the subject's fp32 weights (>= 4x smaller files).
HEADLINE_SIZE = 0.2
#: Reference networks and (stages kept, blocks kept per stage): cut to ~0.1 ms at 32 px, 1 channel, 10 classes.
REFERENCE_LIKE = {"mobilenet_v2": (4, 2), "shufflenet_v2_x0_5": (3, 3)}
SPACE = "small"
Log = Callable[[str], None]


@dataclass(frozen=True)
class Subject:
    """An exported subnet the benchmark compresses."""

    name: str
    directory: Path


@dataclass(frozen=True)
class Cell:
    """One `compress_subnet` run of the acceptance table."""

    subject: Subject
    runtime: str
    method: str
    budget: float
    distill: bool
    size: float | None = None

    @property
    def cell_id(self) -> str:
        size = f"-s{self.size:g}" if self.size is not None else ""
        return (f"{self.subject.name}/{self.runtime}-{self.method}-b{self.budget:g}{size}-"
                f"{'kd' if self.distill else 'nokd'}")


# ------------------------------------------------------------------------------------------------- subjects


def picks(search_dir: Path) -> list[Subject]:
    """The exported picks of a search run (`<search_dir>/subnets/<key>/spec.json`)."""
    found = sorted(p.parent for p in (search_dir / "subnets").glob("*/spec.json"))
    return [Subject(f"pick-{p.name}", p) for p in found]


def reference_like(name: str, resolution: int, in_channels: int, num_classes: int) -> Any:
    """`reference(name)` at the data's scale: the first stages and blocks of `REFERENCE_LIKE`, a 16-channel stem
    without max pool and a 256-channel head."""
    from search_spaces import reference

    ref = reference(name)
    stages, depth = REFERENCE_LIKE[name]
    return dataclasses.replace(ref, resolution=resolution, in_channels=in_channels, num_classes=num_classes,
                               stem=dataclasses.replace(ref.stem, channels=16, maxpool=False),
                               stages=tuple(stage[:depth] for stage in ref.stages[:stages]),
                               head=dataclasses.replace(ref.head, channels=256, hidden=0))


def trained_references(work: Path, data: Any, recipe: Any, epochs: int, protocol: Any, log: Log) -> list[Subject]:
    """Each reference-like subnet trained alone for `epochs` and exported (ORT fp32) under `work/references/`;
    an earlier export is reused."""
    import torch

    from nas.export import ExportOptions, Provenance, SubnetSpec, export_model
    from supernets.training import train_alone

    out, subjects = work / "references", []
    for name in REFERENCE_LIKE:
        arch = reference_like(name, 32, data.in_channels, data.num_classes)
        target = out / arch.key
        if not (target / "spec.json").is_file():
            log(f"training {name}-like {arch.to_str()} alone for {epochs} epoch(s)")
            model = train_alone(arch, data, recipe, epochs=epochs, lr=recipe.phases[0].lr, seed=recipe.seed)
            provenance = Provenance(None, data.name, recipe.seed, 0, (), "", str(torch.__version__))
            spec = SubnetSpec(arch, SPACE, data.mean, data.std, provenance)
            export_model(model, spec, data, out, ExportOptions(runtimes=(("ort", "fp32"),), protocol=protocol))
        subjects.append(Subject(f"{name}-like", target))
    return subjects


# ------------------------------------------------------------------------------------------------- tables


def runtime_table(runtime: str) -> Any:
    """This machine's shipped fp32 table of `runtime` for the small space (None when there is none)."""
    from latency_tables.table import TableError, find_table

    try:
        return find_table(SPACE, runtime, "fp32")
    except TableError:
        return None


def subject_table(subject: Subject, table: Any, work: Path, log: Log) -> Any:
    """`table`, or for a subject whose keys it lacks (a reference-like subnet off the space's grid) a copy with
    them measured on demand (`measured_or_source`, under `work/tables/`); the source when that cannot measure."""
    from latency_tables.keys import arch_keys
    from latency_tables.ondemand import measured_or_source
    from nas.export import SubnetSpec

    arch = SubnetSpec.load(subject.directory).arch
    if all(k in table.rows for k in arch_keys(arch)):
        return table
    copy_dir = work / "tables" / subject.name / table.table_id
    measured, reason = measured_or_source(table, [arch], copy_dir, progress=False)
    if reason:
        log(f"{subject.name}: keys stay estimated on {table.table_id}: {reason}")
    return measured


# ------------------------------------------------------------------------------------------------- cells


def grid(subjects: list[Subject], methods: tuple[str, ...], quick: bool, litert: bool) -> list[Cell]:
    """The acceptance table's runs: every subject by `joint` at the middle budget with the size bound (the headline);
    on the first subject `joint` and `sequential` at every budget, `joint` without distillation at the middle one;
    `prune` at the middle budget for the Torch-Pruning comparison (first subject and the ShuffleNet-like one); on
    LiteRT the first pick's headline run."""
    middle, first = BUDGETS[1], subjects[0]
    if quick:
        return [Cell(first, "ort", "joint", middle, True, HEADLINE_SIZE),
                Cell(first, "ort", "sequential", middle, True)]
    cells = [Cell(s, "ort", "joint", middle, True, HEADLINE_SIZE) for s in subjects]
    cells += [Cell(first, "ort", m, b, True) for b in BUDGETS for m in ("joint", "sequential") if m in methods]
    cells += [Cell(first, "ort", "joint", middle, False)]
    cells += [Cell(s, "ort", "prune", middle, True) for s in subjects if s is first or "shufflenet" in s.name]
    first_pick = next((s for s in subjects if s.name.startswith("pick-")), None)
    if litert and first_pick is not None:
        cells += [Cell(first_pick, "litert", "joint", middle, True, HEADLINE_SIZE)]
    return cells


def finished(out_root: Path) -> dict[str, Any] | None:
    """The compress.json of a finished run under `out_root`, with its directory."""
    from nas.compress.pipeline import COMPRESS_FILE

    done = sorted(out_root.glob(f"*/{COMPRESS_FILE}"))
    if not done:
        return None
    return {**json.loads(done[0].read_text(encoding="utf-8")), "directory": str(done[0].parent)}


def run_cell(cell: Cell, table: Any, args: argparse.Namespace, data: Any, log: Log) -> dict[str, Any]:
    """compress.json of the cell (run now, or the cached one), or {"error": ...} when compression failed."""
    from nas.compress.pipeline import CompressConfig, compress_subnet
    from search_spaces import HwnasError

    out_root = Path(args.work_dir) / "results" / cell.cell_id
    cached = finished(out_root)
    if cached is not None:
        return cached
    parent_ms = float(table.predict_arch(_spec(cell.subject).arch, estimate_missing=True))
    started = time.perf_counter()
    try:
        size = None
        if cell.size is not None:
            from nas.compress.bits import layer_costs

            size = cell.size * float(layer_costs(_spec(cell.subject).arch, ("fp32",), "size_bytes").sum())
        config = CompressConfig(cell.method, cell.budget * parent_ms, table, epochs=args.epochs,
                                max_steps=args.max_steps, parity_images=args.parity_images,
                                measure_keys=not args.estimate_only, size_budget=size)
        if not cell.distill:  # alpha 0: labels only, no teacher
            config = dataclasses.replace(config, alpha=0.0)
        compress_subnet(cell.subject.directory, out_root, config, data=data, log=lambda m: log(f"  {m}"))
    except HwnasError as err:
        return {"error": str(err).splitlines()[0]}
    result = finished(out_root)
    assert result is not None
    log(f"{cell.cell_id}: {time.perf_counter() - started:.0f} s")
    return result


def _spec(subject: Subject) -> Any:
    from nas.export import SubnetSpec

    return SubnetSpec.load(subject.directory)


def cell_row(cell: Cell, r: dict[str, Any]) -> str:
    distill = "yes" if cell.distill else "no"
    size = f" + size {cell.size:g}" if cell.size is not None else ""
    head = f"| {cell.subject.name} | {cell.runtime} | {cell.method} | {cell.budget:g}{size} | {distill}"
    if "error" in r:
        return f"{head} | failed: {r['error']} ||||||||"
    lat = r["latency"]
    drop = 100 * (r["accuracy_before"] - r["accuracy_after"])
    both = lat.get("side_by_side") or {}
    measured, parent = both.get("compressed_ms"), both.get("parent_ms")
    speedup = _speedup(r)
    return (f"{head} | {r['budget']:.4f} | {100 * r['accuracy_before']:.1f} | {100 * r['accuracy_after']:.1f} "
            f"| {drop:+.1f} | {r['label_loyalty']:.3f} | {r['bytes_ratio']:.2f}x / {_file_ratio(r):.2f}x "
            f"| {r.get('precision', '')} "
            f"| {_ms(parent)} -> {_ms(measured)} | {f'{speedup:.2f}x' if speedup else 'n/a'} |")


def _file_ratio(r: dict[str, Any]) -> float:
    """The budget runtime's model file against the parent's fp32 file of that runtime (0 when unknown)."""
    found = [f["ratio"] for name, f in r.get("files", {}).items() if name.startswith(f"{r['runtime']}-")
             and f.get("ratio")]
    return float(found[0]) if found else 0.0


def _speedup(r: dict[str, Any]) -> float:
    """The speed-up measured side by side (parent and compressed model round-robin in one run)."""
    both = r["latency"].get("side_by_side") or {}
    return float(both.get("speedup") or 0.0)


def side_by_side_all(results: dict[Cell, dict[str, Any]], log: Log) -> None:
    """Time each finished run's model with its parent round-robin (`side_by_side`) where its compress.json has no
    such figure (runs made before compress measured it), into the result in memory."""
    from latency_tables.runtimes import Protocol
    from nas.compress.pipeline import side_by_side

    for cell, r in results.items():
        if not _ok(r) or r["latency"].get("side_by_side") or r.get("simulated"):
            continue
        protocol = Protocol.from_dict(r["latency"]["protocol"])
        r["latency"]["side_by_side"] = side_by_side(cell.subject.directory, Path(r["directory"]),
                                                    (cell.runtime, r["precision"]), protocol)
        log(f"{cell.cell_id}: {_speedup(r):.2f}x side by side")


def _ms(value: float | None) -> str:
    return f"{value:.4f}" if value is not None else "n/a"


# ------------------------------------------------------------------------------------------------- verdicts


def _ok(r: dict[str, Any]) -> bool:
    return "error" not in r


def _drop(r: dict[str, Any]) -> float:
    return 100 * (r["accuracy_before"] - r["accuracy_after"])


def headline(results: dict[Cell, dict[str, Any]], runtime: str) -> list[str]:
    """Per subject, the run closest to "<= 1 point drop, >= 4x smaller, >= 1.5x measured, loyalty >= 0.98"."""
    lines = []
    for subject in dict.fromkeys(c.subject for c in results if c.runtime == runtime):
        runs = [(c, r) for c, r in results.items() if c.subject == subject and c.runtime == runtime and _ok(r)]
        if not runs:
            lines.append(f"- {subject.name} ({runtime}): **not met** (no run finished)")
            continue

        def score(item: tuple[Cell, dict[str, Any]]) -> float:
            r = item[1]
            faithful = _drop(r) <= 1.0 and r["label_loyalty"] >= 0.98
            return faithful * 10 + min(_file_ratio(r) / 4, 1) + min(_speedup(r), 1.5)

        cell, r = max(runs, key=score)
        speedup = _speedup(r)
        met = _drop(r) <= 1.0 and r["label_loyalty"] >= 0.98 and _file_ratio(r) >= 4 and speedup >= 1.5
        lines.append(f"- {subject.name} ({runtime}): **{'met' if met else 'not met'}** by {cell.method} at budget "
                     f"{cell.budget:g}: drop {_drop(r):+.1f} points, loyalty {r['label_loyalty']:.3f}, "
                     f"model file {_file_ratio(r):.2f}x smaller (weights {r['bytes_ratio']:.2f}x), {speedup:.2f}x "
                     f"measured side by side")
    return lines


def pairs(results: dict[Cell, dict[str, Any]], a: Callable[[Cell], bool], b: Callable[[Cell], bool],
          key: Callable[[Cell], Any]) -> list[tuple[Cell, dict[str, Any], dict[str, Any]]]:
    """Finished runs matched by `key`: (cell of `a`, its result, the `b` result)."""
    others = {key(c): r for c, r in results.items() if b(c) and _ok(r)}
    return [(c, r, others[key(c)]) for c, r in results.items() if a(c) and _ok(r) and key(c) in others]


def comparisons(results: dict[Cell, dict[str, Any]], methods: tuple[str, ...]) -> list[str]:
    """joint vs sequential (accuracy, at a speed-up no more than 5% below sequential's: timing noise) and
    with vs without distillation (accuracy), one line each."""
    lines = []
    if "joint" not in methods:
        lines.append("- joint >= sequential: **not run** (no `joint` in `nas.compress.pipeline.METHODS` yet)")
    else:
        found = pairs(results, lambda c: c.method == "joint" and c.distill, lambda c: c.method == "sequential"
                      and c.distill, lambda c: (c.subject, c.runtime, c.budget, c.size))
        for c, j, s in found:
            met = j["accuracy_after"] >= s["accuracy_after"] and _speedup(j) >= 0.95 * _speedup(s)
            lines.append(f"- joint >= sequential, {c.subject.name} {c.runtime} budget {c.budget:g}: "
                         f"**{'met' if met else 'not met'}** ({100 * j['accuracy_after']:.1f}% at "
                         f"{_speedup(j):.2f}x vs {100 * s['accuracy_after']:.1f}% at {_speedup(s):.2f}x, each "
                         f"speed-up measured side by side with the parent)")
    for c, kd, plain in pairs(results, lambda c: c.distill, lambda c: not c.distill,
                              lambda c: (c.subject, c.runtime, c.method, c.budget, c.size)):
        met = kd["accuracy_after"] >= plain["accuracy_after"]
        lines.append(f"- distillation >= without, {c.subject.name} {c.method} budget {c.budget:g}: "
                     f"**{'met' if met else 'not met'}** ({100 * kd['accuracy_after']:.1f}% vs "
                     f"{100 * plain['accuracy_after']:.1f}%)")
    return lines


# ------------------------------------------------------------------------------------------------- int8 exports


def int8_export(subject: Subject, runtimes: tuple[tuple[str, str], ...], work: Path, data: Any,
                parity_images: int | None) -> dict[str, Any]:
    """The subject's uniform int8 model(s) (calibrated on training images), parity not required: PyTorch fp32
    top-1 and each runtime's int8 top-1 on the validation split (from its metrics.json). Reused when present."""
    from nas.export import ExportOptions, export_model, load_subnet, read_metrics

    out = work / "int8" / subject.name
    model, spec = load_subnet(subject.directory)
    target = out / spec.key
    if not (target / "metrics.json").is_file():
        spec = dataclasses.replace(spec, models=(), files={})
        export_model(model, spec, data, out, ExportOptions(runtimes=runtimes, require_parity=False,
                                                           parity_images=parity_images))
    parity = read_metrics(target)["parity"]
    return {"fp32": parity["torch_top1"], **{name: r["top1"] for name, r in parity["runtimes"].items()},
            "families": sorted({b.family for stage in spec.arch.stages for b in stage})}


# ------------------------------------------------------------------------------------------------- sensitivity


def sensitivity(subject: Subject, data: Any, precisions: tuple[str, ...], work: Path, images: int) -> dict[str, Any]:
    """Kendall tau of measured KL (calibration images), Hessian trace and HAWQ-V3 scores against the real drop
    (validation accuracy, each layer alone fake-quantised with ranges from the calibration images). Cached."""
    import numpy as np
    import torch

    from nas.compress.sensitivity import (
        fake_quantized,
        hawq_scores,
        hessian_trace,
        measured_sensitivity,
        output_ranges,
        rank_agreement,
    )
    from nas.export import load_subnet
    from supernets.data import to_tensor

    cache = work / "sensitivity" / f"{subject.name}-{'-'.join(precisions)}.json"
    if cache.is_file():
        return dict(json.loads(cache.read_text(encoding="utf-8")))
    model, spec = load_subnet(subject.directory)
    r = spec.arch.resolution
    idx = np.sort(np.random.default_rng(0).choice(len(data.train), size=images, replace=False))
    x_cal = to_tensor(data.train.images[idx], r, data.mean, data.std)
    y_cal = torch.from_numpy(data.train.labels[idx])
    x_val, y_val = to_tensor(data.val.images, r, data.mean, data.std), torch.from_numpy(data.val.labels)
    ranges = output_ranges(model, x_cal)
    with torch.no_grad():
        base = float((model(x_val).argmax(1) == y_val).double().mean())
    kl = measured_sensitivity(model, x_cal, y_cal, precisions)
    trace = hessian_trace(model, list(zip(x_cal.split(32), y_cal.split(32), strict=True)), samples=8)
    hawq = hawq_scores(model, trace, precisions)
    out: dict[str, Any] = {"layers": len(ranges), "base_top1": base}
    for precision in precisions:
        drop = {}
        for layer in ranges:
            with fake_quantized(model, layer, precision, ranges[layer]), torch.no_grad():
                drop[layer] = base - float((model(x_val).argmax(1) == y_val).double().mean())
        estimates = {"kl": {k: v[precision].kl for k, v in kl.items()}, "hessian_trace": trace,
                     "hawq": {k: v[precision] for k, v in hawq.items()}}
        out[precision] = {"tau": rank_agreement(estimates, drop), "max_drop": max(drop.values()),
                          "distinct_drops": len(set(drop.values())),
                          "top_kl": sorted(estimates["kl"], key=estimates["kl"].__getitem__, reverse=True)[:3]}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return out


# ------------------------------------------------------------------------------------------------- Torch-Pruning


def torch_pruning(results: dict[Cell, dict[str, Any]], data: Any, work: Path, protocol: Any,
                  log: Log) -> tuple[list[str], list[str]]:
    """Rows and verdicts of Torch-Pruning beside each subject's hwnas `prune` run (ORT, middle budget, distilled):
    its MACs as the target, the same fine-tune and teacher, all three ONNX models timed round-robin."""
    import torch
    from torch_pruning_side import measure_side_by_side, run_side, tp_macs

    from nas.compress.distill import frozen
    from nas.compress.finetune import FinetuneConfig
    from nas.export import load_subnet

    rows, verdicts = [], []
    for cell, r in results.items():
        if (cell.method, cell.runtime, cell.budget, cell.distill) != ("prune", "ort", BUDGETS[1], True) or not _ok(r):
            continue
        parent, spec = load_subnet(cell.subject.directory)
        pruned, _ = load_subnet(r["directory"])
        example = torch.zeros(1, *spec.input_shape[1:])
        parent_macs, hw_macs = tp_macs(parent, example)[0], tp_macs(pruned, example)[0]
        tune = FinetuneConfig(**r["finetune"]["finetune"])  # hwnas's own fine-tune and teacher
        teacher = frozen(copy.deepcopy(parent)) if r["finetune"]["teacher"] == "parent" else None
        side = run_side(parent, data, hw_macs, work / "torch-pruning" / cell.subject.name, tune, teacher, log)
        parent_ms, hw_ms, tp_ms = measure_side_by_side(
            [cell.subject.directory / "model.onnx", Path(r["directory"]) / "model.onnx", Path(side.onnx)], protocol)
        rows.append(f"| {cell.subject.name} | {parent_macs:,} | {hw_macs:,} | {side.macs:,} (ratio {side.ratio:.2f}) "
                    f"| {100 * r['accuracy_after']:.1f} | {100 * side.accuracy:.1f} ({100 * side.ort_top1:.1f} ORT) "
                    f"| {parent_ms:.4f} | {hw_ms:.4f} ({parent_ms / hw_ms:.2f}x) | {tp_ms:.4f} "
                    f"({parent_ms / tp_ms:.2f}x) |")
        met = r["accuracy_after"] >= side.accuracy and hw_ms < tp_ms
        verdicts.append(f"- vs Torch-Pruning, {cell.subject.name}: **{'met' if met else 'not met'}** (hwnas "
                        f"{100 * r['accuracy_after']:.1f}% at {hw_ms:.4f} ms, Torch-Pruning {100 * side.accuracy:.1f}% "
                        f"at {tp_ms:.4f} ms{'; its MACs miss the target' if side.macs > side.target_macs else ''})")
    return rows, verdicts


# ------------------------------------------------------------------------------------------------- report


def int8_lines(int8: dict[Subject, dict[str, Any]], sens: dict[Subject, dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Rows and verdicts of "every family in int8 within 1.5 points of fp32" (a miss names the layers the
    measured KL ranks most sensitive: the guard's candidates)."""
    rows, verdicts = [], []
    for subject, r in int8.items():
        for name, top1 in r.items():
            if name in ("fp32", "families") or not name.endswith("int8"):
                continue
            drop = 100 * (r["fp32"] - top1)
            rows.append(f"| {subject.name} | {', '.join(r['families'])} | {name} | {100 * r['fp32']:.1f} "
                        f"| {100 * top1:.1f} | {drop:+.1f} |")
            layers = ", ".join(sens.get(subject, {}).get("int8", {}).get("top_kl", []))
            verdict, named = ("met", "") if drop <= 1.5 else ("not met", f"; most sensitive by KL: {layers}")
            verdicts.append(f"- int8 within 1.5 points, {subject.name} {name}: **{verdict}** ({drop:+.1f} points"
                            f"{named})")
    return rows, verdicts


def sensitivity_rows(sens: dict[Subject, dict[str, Any]], precisions: tuple[str, ...]) -> list[str]:
    rows = []
    for subject, s in sens.items():
        for p in precisions:
            tau = s[p]["tau"]
            rows.append(f"| {subject.name} | {p} | {s['layers']} | {s[p]['distinct_drops']} | "
                        f"{100 * s[p]['max_drop']:.1f} | {tau['kl']:.3f} | {tau['hessian_trace']:.3f} "
                        f"| {tau['hawq']:.3f} |")
    return rows


def report(args: argparse.Namespace, subjects: list[Subject], results: dict[Cell, dict[str, Any]],
           int8: dict[Subject, dict[str, Any]], tp_rows: list[str], tp_verdicts: list[str],
           sens: dict[Subject, dict[str, Any]], precisions: tuple[str, ...], methods: tuple[str, ...]) -> str:
    """The section's Markdown: settings, the acceptance verdicts, then each table."""
    int8_rows, int8_verdicts = int8_lines(int8, sens)
    verdicts = (headline(results, "ort") + headline(results, "litert") + comparisons(results, methods)
                + int8_verdicts + tp_verdicts)
    quick = " **--quick: one pick, one budget, 1 epoch of 10 steps; not the acceptance figures.**" if args.quick else ""
    return f"""
Subjects: {', '.join(f'`{s.name}`' for s in subjects)} (picks of `{_shown(args.search_dir)}`; reference-like subnets
trained alone for {args.ref_epochs} epochs). Methods: {', '.join(methods)}. Budgets: {', '.join(map(str, BUDGETS))}
of each subject's predicted fp32 latency on the table (`latency_ms<=X`). Fine-tune: {args.epochs} epoch(s)
{f'of {args.max_steps} steps ' if args.max_steps else ''}with Hinton distillation from the frozen parent ("no":
alpha 0, labels only). Accuracies are PyTorch top-1 on the validation split ({'simulated for bit-width plans'});
speed-ups are the parent's fp32 model and the compressed model timed round-robin in one run on their runtime by
the table's protocol (1 thread; `compress.json` `latency.side_by_side`), since this machine is shared and noisy.
The headline runs add a second bound, weights <= {HEADLINE_SIZE:g} of the parent's fp32 weight bytes
(`--constraint size_bytes<=`); "smaller" is weight bytes / the runtime model file against the parent's file (the
file keeps per-channel scales, int32 biases and the graph, so it shrinks less than the weights).{quick}

### Acceptance

{chr(10).join(verdicts)}

### Runs

| subject | runtime | method | budget | distill | budget ms | top-1 before | after | drop (points) | label loyalty \
| smaller (weights / file) | precision | measured ms side by side (parent -> compressed) | speed-up |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(cell_row(c, r) for c, r in results.items())}

### int8 of every family (uniform int8, calibrated on training images)

| subject | families | model | fp32 top-1 (PyTorch) | int8 top-1 (runtime) | drop (points) |
|---|---|---|---|---|---|
{chr(10).join(int8_rows)}

### Torch-Pruning {_tp_version()} side by side (magnitude L1, round_to 8, ShuffleNet units ignored; same MACs, same
fine-tune and teacher; MACs by Torch-Pruning's counter; ONNX Runtime timed round-robin)

| subject | parent MACs | hwnas MACs | Torch-Pruning MACs | hwnas top-1 | Torch-Pruning top-1 | parent ms \
| hwnas ms | Torch-Pruning ms |
|---|---|---|---|---|---|---|---|---|
{chr(10).join(tp_rows)}

### Sensitivity estimators: Kendall tau against the real per-layer drop

Real drop: validation top-1 with one layer fake-quantised (ranges calibrated on 128 training images); estimators
on those 128 images: measured KL, Hessian trace (Hutchinson, 8 samples), HAWQ-V3 (trace x quantisation error).

| subject | precision | layers | distinct drops | largest drop (points) | tau KL | tau Hessian trace | tau HAWQ |
|---|---|---|---|---|---|---|---|
{chr(10).join(sensitivity_rows(sens, precisions))}
"""


def _tp_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch-pruning")
    except PackageNotFoundError:
        return "(not installed)"


# ------------------------------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--search-dir", default=str(ROOT / "runs" / "quickstart-search"),
                        help="search run whose subnets/ hold the picks (bash scripts/quickstart.sh makes it)")
    parser.add_argument("--supernet", default=str(ROOT / "runs" / "quickstart-supernet"),
                        help="supernet run whose recipe trains the reference-like subnets")
    parser.add_argument("--work-dir", default=str(ROOT / "runs" / "bench-compress"))
    parser.add_argument("--epochs", type=int, default=3, help="fine-tune epochs of each compression")
    parser.add_argument("--ref-epochs", type=int, default=10, help="epochs training each reference-like subnet")
    parser.add_argument("--max-steps", type=int, default=None, help="batches per fine-tune epoch (default all)")
    parser.add_argument("--parity-images", type=int, default=None, help="validation images of the parity checks")
    parser.add_argument("--simulated", default="w4a8", help="the simulated precision the sensitivity ranks at")
    parser.add_argument("--estimate-only", action="store_true",
                        help="price off-grid table keys with the tables' estimates instead of measuring them")
    parser.add_argument("--quick", action="store_true",
                        help="one pick, the middle budget, 1 epoch of 10 steps: a check that it all runs")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.max_steps = 1, args.max_steps or 10
        args.parity_images = args.parity_images or 200
    return args


def _shown(path: str) -> str:
    """A search directory as the docs show it: relative to the repository, or by its last two parts."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else "/".join(resolved.parts[-2:])


def recipe_and_data(supernet: Path, log: Log) -> tuple[Any, Any]:
    """The supernet run's recipe and dataset, or configs/mnist5k.yaml's when the run is missing (said)."""
    from supernets.checkpoint_files import checkpoint_dir
    from supernets.config import TrainConfig
    from supernets.data import load_dataset
    from supernets.training import load_run

    if supernet.is_dir() and checkpoint_dir(supernet) is not None:
        run = load_run(supernet)
        return run.config, run.dataset()
    log(f"MISSING: no supernet run in {supernet}; the reference-like subnets use configs/mnist5k.yaml's recipe "
        f"(pass --supernet, or run bash scripts/quickstart.sh)")
    recipe = TrainConfig.load(ROOT / "configs" / "mnist5k.yaml")
    return recipe, load_dataset(recipe.dataset, seed=recipe.seed)


def main() -> None:
    args = parse_args()
    pin_one_core()
    started = time.perf_counter()
    from latency_tables.runtimes import Protocol
    from nas.compress.pipeline import METHODS

    def log(message: str) -> None:
        print(message, flush=True)

    work = Path(args.work_dir)
    found = picks(Path(args.search_dir))
    if not found:
        log(f"MISSING: no exported picks in {args.search_dir}/subnets (run bash scripts/quickstart.sh, or pass "
            f"--search-dir); {'nothing to do in --quick' if args.quick else 'only the reference-like subnets run'}")
        if args.quick:
            raise SystemExit(2)
    recipe, data = recipe_and_data(Path(args.supernet), log)
    ort, litert = runtime_table("ort"), runtime_table("litert")
    protocol = Protocol.from_dict(ort.meta["protocol"])
    subjects = found[:1] if args.quick else found + trained_references(work, data, recipe, args.ref_epochs,
                                                                        protocol, log)
    tables = {(s, rt): subject_table(s, t, work, log) for s in subjects for rt, t in (("ort", ort), ("litert", litert))
              if t is not None}
    results: dict[Cell, dict[str, Any]] = {}
    for cell in grid(subjects, METHODS, args.quick, litert is not None):
        log(f"{cell.cell_id} ...")
        results[cell] = run_cell(cell, tables[cell.subject, cell.runtime], args, data, log)
        log(cell_row(cell, results[cell]))
    side_by_side_all(results, log)
    int8 = {s: int8_export(s, (("ort", "int8"),) + ((("litert", "int8"),) if i == 0 and litert else ()), work, data,
                           args.parity_images) for i, s in enumerate(subjects)}
    tp_rows, tp_verdicts = torch_pruning(results, data, work, protocol, log)
    precisions = ("int8", args.simulated)
    sens = {s: sensitivity(s, data, precisions, work, 128) for s in subjects}
    body = report(args, subjects, results, int8, tp_rows, tp_verdicts, sens, precisions, METHODS)
    body += f"\nWall time of this run: {(time.perf_counter() - started) / 60:.1f} min (cached results reused).\n"
    print(body)
    if not args.no_write:
        command = "python benchmarks/bench_compress.py" + (" --quick" if args.quick else f" --epochs {args.epochs}")
        write_section("Compression (issue 15)", command, body)


if __name__ == "__main__":
    main()
