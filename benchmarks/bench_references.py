"""The search against hand-designed references (issue 16), on ONNX Runtime and LiteRT on this machine, 1 thread.

Acceptance: the search's pick (after compression) is at least 1.5x faster, measured, than the best hand-designed
reference of equal or lower accuracy, and at least as accurate as the reference of equal or higher latency
(`nas.references.compare_with_references`). Every accuracy is stated with its 95% Wilson interval on the
validation split.

Candidates: a finished run directory's exported picks (RUN/subnets/*/metrics.json) and compressed picks
(RUN/compressed/*/compress.json + metrics.json), each named by its key. References: RUN/references/summary.json
(what `hwnas run` wrote, trained or copied from configs/references-mnist5k.json), another summary (`--references`),
or, with `--train`, the references trained alone here with the run's recipe (its supernet's training config) and
exported into RUN/references/<name>/, their summary written to RUN/references/summary.json. The references'
latency is compared on each runtime as a pick's: fp32 references against fp32 picks, and a compressed model at
the precision its plan runs (the runtime's fastest measured model of each row).

Usage: .venv/bin/python benchmarks/bench_references.py [--run RUN] [--references SUMMARY] [--train]
       [--names mobilenet_v2,...] [--epochs N] [--dataset cifar10 --data-path DIR] [--note TEXT] [--no-write]

On harder data: train a run on CIFAR-10 (a config with `data: {dataset: cifar10, data_path: DIR}`), then
`bench_references.py --run RUN --train --dataset cifar10 --data-path DIR`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from nas.references import (  # noqa: E402
    REQUIRED_SPEEDUP,
    compare_with_references,
    load_summary,
    reference_resolution,
    reference_row,
    train_reference,
    write_summary,
)
from nas.report.run import recorded_path  # noqa: E402
from search_spaces.errors import HwnasError  # noqa: E402

NAMES = ("mobilenet_v2", "mobilenet_v3_small", "shufflenet_v2_x0_5", "efficientnet_b0")
RUNTIMES = ("ort", "litert")
TITLE = "References (issue 16)"


def candidates(run: Path) -> tuple[list[dict[str, Any]], set[str]]:
    """The run's exported and compressed picks as summary rows, and the datasets they were measured on."""
    rows, datasets = [], set()
    for variant, folder in (("fp32", "subnets"), ("compressed", "compressed")):
        for directory in sorted(p for p in (run / folder).glob("*") if (p / "metrics.json").is_file()):
            rows.append(reference_row(directory, directory.name, variant))
            datasets.add(json.loads((directory / "metrics.json").read_text())["accuracy"]["dataset"])
    if not rows:
        raise HwnasError(f"{run} has no exported picks (RUN/subnets/*/metrics.json); run `hwnas run` to its export "
                         f"stage first")
    return rows, datasets


def _stage_outputs(run: Path, stage: str) -> dict[str, Any]:
    stages = json.loads((run / "stages.json").read_text()).get("stages", {})
    return dict((stages.get(stage) or {}).get("outputs") or {})


def train_here(run: Path, names: list[str], epochs: int | None, dataset: str | None, data_path: str | None) -> Path:
    """Train and export the references into RUN/references/ with the run's recipe and tables; their summary."""
    from latency_tables.table import LatencyTable
    from supernets.data import load_dataset
    from supernets.threads import torch_threads
    from supernets.training import run_config

    config = run_config(recorded_path(run, _stage_outputs(run, "supernet")["run_dir"]))
    tables = [LatencyTable.load(recorded_path(run, t)) for t in _stage_outputs(run, "tables").get("tables", [])]
    name = dataset or config.dataset
    data = load_dataset(name, data_path if dataset else (data_path or config.data_path),
                        val_fraction=config.val_fraction, seed=config.seed)
    space = tables[0].space_name if tables else config.space
    resolution = reference_resolution(int(data.train.images.shape[-1]), space)
    out, rows = run / "references", []
    for ref in names:
        with torch_threads(1):
            directory = train_reference(ref, data, config, out / ref, tables=tables, epochs=epochs, seed=config.seed,
                                        resolution=resolution, space=space)
        rows.append(reference_row(directory, ref, "fp32"))
    return write_summary(out / "summary.json", rows, dataset=data.name, val_images=len(data.val), source="trained")


def reference_dirs(rows: list[dict[str, Any]], roots: list[Path]) -> None:
    """Give each reference row without a directory the exported directory of its key under one of `roots`."""
    for row in rows:
        if not row.get("directory"):
            found = [root / row["key"] for root in roots if (root / row["key"] / "metrics.json").is_file()]
            found += [p for root in roots for p in root.glob(f"*/{row['key']}") if (p / "metrics.json").is_file()]
            if found:
                row["directory"] = str(found[0])


def side_by_side(rows: list[dict[str, Any]], repeats: int) -> int:
    """Time every model file of every row that has a directory again, round-robin per runtime in one run (the
    runtime's `measure_many`: each file's lowest round median of `repeats` rounds, 1 thread, pinned), and put
    those figures in the rows (`side_by_side`: true); returns how many files were timed."""
    from latency_tables.runtimes import Protocol, get_runtime

    protocol = Protocol(threads=1, warmup=10, runs=50, repeats=repeats, pin_cpu=1)
    jobs: dict[str, list[tuple[dict[str, Any], str, Path]]] = {}
    for row in rows:
        if not row.get("directory"):
            continue
        metrics = json.loads((Path(row["directory"]) / "metrics.json").read_text())
        for m in metrics.get("latency", {}).get("measured", {}).values():
            label = f"{m['runtime']}:{m['precision']}"
            if label in row["latency"]:
                jobs.setdefault(m["runtime"], []).append((row, label, Path(row["directory"]) / m["file"]))
    for runtime, items in jobs.items():
        measured = get_runtime(runtime).measure_many([path for _, _, path in items], protocol)
        for (row, label, _), m in zip(items, measured, strict=True):
            row["latency"][label] = {**row["latency"][label], "measured_ms": m.median_ms, "side_by_side": True}
    return sum(len(items) for items in jobs.values())


def _ci(row: dict[str, Any]) -> str:
    low, high = row["accuracy_ci95"]
    return f"{100 * row['accuracy']:.1f}% [{100 * low:.1f}, {100 * high:.1f}]"


def _latency(row: dict[str, Any], runtime: str) -> str:
    cells = []
    for key, entry in sorted(row["latency"].items()):
        if key.split(":")[0] == runtime:
            predicted = entry.get("predicted_ms")
            cells.append(f"{entry['measured_ms']:.4f} ({key.split(':')[1]}"
                         + (f", table {predicted:.4f})" if predicted is not None else ")"))
    return "; ".join(cells) or "-"


def table(rows: list[dict[str, Any]], kind: str) -> list[str]:
    lines = []
    for row in rows:
        lines.append(f"| {kind} | {row['name']} | {row['variant']} | {_ci(row)} | {_latency(row, 'ort')} | "
                     f"{_latency(row, 'litert')} | {row['macs'] / 1e6:.2f} M | {row['params'] / 1e3:.0f} k |")
    return lines


def why(result: dict[str, Any]) -> list[str]:
    """What is missing for each unmet condition of the best candidate, in numbers."""
    best = next((r for r in result["rows"] if r["name"] == result["best"]), None)
    if best is None:
        return []
    notes = []
    faster = best["faster_than"]
    if faster is not None and not faster["met"]:
        notes.append(f"{best['name']} would need to run in {faster['measured_ms'] / REQUIRED_SPEEDUP:.4f} ms "
                     f"({REQUIRED_SPEEDUP}x below {faster['reference']}'s {faster['measured_ms']:.4f} ms); it runs in "
                     f"{best['measured_ms']:.4f} ms.")
    accurate = best["as_accurate_as"]
    if accurate is not None and not accurate["met"]:
        notes.append(f"{best['name']} is {-accurate['difference_points']:.1f} points below {accurate['reference']}, "
                     + ("inside the two 95% intervals: on this validation split the difference is not resolved."
                        if accurate["within_uncertainty"] else "outside the two 95% intervals: a real difference."))
    return notes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/quickstart", help="a finished run directory")
    parser.add_argument("--references", default=None, help="a references summary (default RUN/references/summary"
                                                            ".json)")
    parser.add_argument("--train", action="store_true", help="train and export the references here")
    parser.add_argument("--names", default=",".join(NAMES), help="references to train (with --train)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: the recipe's)")
    parser.add_argument("--dataset", default=None, help="dataset to train the references on (e.g. cifar10)")
    parser.add_argument("--data-path", default=None, help="directory of that dataset")
    parser.add_argument("--note", default="", help="a paragraph put first in the section (what the run is)")
    parser.add_argument("--no-write", action="store_true", help="print only; do not write docs/benchmarks.md")
    parser.add_argument("--reference-dirs", action="append", default=[],
                        help="where the references' exports are, for a summary without directories (repeatable; "
                             "default: runs/references-mnist5k and RUN/references)")
    parser.add_argument("--recorded", action="store_true",
                        help="compare the latencies recorded when each model was exported instead of timing every "
                             "model again side by side in this run (the default)")
    parser.add_argument("--repeats", type=int, default=7, help="rounds of the side-by-side timing (default 7)")
    args = parser.parse_args()
    run = Path(args.run)
    try:
        picks, datasets = candidates(run)
        if args.train:
            summary_path = train_here(run, args.names.split(","), args.epochs, args.dataset, args.data_path)
        else:
            summary_path = Path(args.references) if args.references else run / "references" / "summary.json"
        summary = load_summary(summary_path)
        if datasets != {summary["dataset"]}:
            raise HwnasError(f"the picks of {run} were measured on {', '.join(sorted(datasets))}, the references of "
                             f"{summary_path} on {summary['dataset']}: compare like with like (--train on the "
                             f"run's data)")
    except HwnasError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    refs = summary["rows"]
    timing = "as recorded at each model's export (different times and machine load)"
    if not args.recorded:
        roots = [Path(d) for d in args.reference_dirs] or [ROOT / "runs" / "references-mnist5k", run / "references"]
        reference_dirs(refs, roots)
        missing = [r["name"] for r in refs if not r.get("directory")]
        timed = side_by_side(picks + refs, args.repeats)
        timing = (f"timed again side by side in this run ({timed} model files, round-robin per runtime, each file's "
                  f"best of {args.repeats} rounds of 50 runs, 1 thread, pinned)"
                  + (f"; {', '.join(missing)} as recorded (no export found)" if missing else ""))
    lines = [args.note, ""] if args.note else []
    lines += [f"Run `{run}`; references `{summary_path}` ({summary['source']}, measured on {summary['machine']}), "
             f"{summary['dataset']}, {summary['val_images']} validation images. Scaling: {summary['scaling']}",
             "", "Accuracy: top-1 on the validation split with its 95% Wilson interval. Latency: measured median "
             f"ms, 1 thread (precision; the table's prediction where one priced it), {timing}.", "",
             "| | name | variant | accuracy [95% CI] | ORT ms | LiteRT ms | MACs | params |",
             "|---|---|---|---|---|---|---|---|", *table(picks, "pick"), *table(refs, "reference"), ""]
    for runtime in RUNTIMES:
        result = compare_with_references(picks, refs, runtime)
        lines += [f"**{runtime}** (fp32 references and picks; compressed models at their plan's precision): "
                  f"acceptance **{'met' if result['met'] else 'not met'}** (best candidate {result['best']}).", ""]
        lines += [f"- {sentence}" for sentence in result["text"].splitlines()]
        notes = why(result)
        if notes:
            lines += ["", "Why not met: " + " ".join(notes)]
        lines.append("")
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        shown = [a for i, a in enumerate(sys.argv[1:]) if a != "--note" and (i == 0 or sys.argv[i] != "--note")]
        command = "python benchmarks/bench_references.py " + " ".join(shown) + (" --note ..." if args.note else "")
        write_section(TITLE, command.strip(), body, threads="1 thread per runtime")
    return 0


if __name__ == "__main__":
    sys.exit(main())
