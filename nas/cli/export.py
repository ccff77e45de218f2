"""`hwnas export`: export subnets of a trained supernet, re-measured on the runtime."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from nas.cli.common import add_command, load_arch, log_for, resolve_tables
from search_spaces import HwnasError


def export_picks(supernet: str, out_root: Path, picks: list[dict[str, Any]], tables: Any, constraints: Any,
                 log: Any, *, overwrite: bool = False) -> list[str]:
    """Export each pick to out_root/<key>/ (BN recalibrated weights, ONNX + TFLite with parity checks, metrics)
    and re-measure it on the runtime of the first table; a pick whose measured latency breaks the latency
    constraint is marked so (in the pick, its metrics.json and the lines returned). Exports already complete are
    re-measured, not rebuilt (unless `overwrite`)."""
    from nas.export import export_from_run, read_metrics, remeasure, remeasure_like_table
    from search_spaces import ArchConfig

    latency = next((c for c in constraints if c.metric == "latency_ms"), None)
    first = tables[0] if tables else None
    fp32 = first is not None and first.profile.precision == "fp32"
    lines = [f"exported to {out_root}/<key>/ (spec.json, model.safetensors, model.onnx, model.tflite, metrics.json):"]
    for pick in picks:
        arch = ArchConfig.from_str(pick["arch"])
        directory = out_root / arch.key
        if (directory / "metrics.json").is_file() and not overwrite:
            log(f"{arch.key}: exported before; measuring it again")
            remeasure(directory, tables=list(tables), constraint=latency if fp32 else None, progress=log)
        else:
            export_from_run(supernet, arch, out_root, tables=list(tables), accuracy=pick.get("accuracy"),
                            constraint=latency if fp32 else None, overwrite=overwrite, progress=log)
        if first is not None and not fp32:
            remeasure_like_table(directory, first, latency, progress=log)
        metrics = read_metrics(directory)
        verdict = metrics.get("latency", {}).get("constraint")
        parity = metrics.get("parity", {})
        worst = max((r["max_abs_diff"] for r in parity.get("runtimes", {}).values()), default=float("nan"))
        measured = verdict["measured_ms"] if verdict else None
        if verdict is None and first is not None:
            comparison = metrics.get("latency", {}).get("comparison", {}).get(first.table_id)
            like_table = metrics.get("latency", {}).get("measured_like_table")
            measured = comparison["measured_ms"] if comparison else like_table["measured_ms"] if like_table else None
        if measured is not None:  # (an export without a table keeps what an earlier one measured)
            pick["measured_latency_ms"] = measured
        if verdict is not None:
            pick["meets_constraint_measured"] = verdict["meets_constraint_measured"]
        top1 = float(metrics.get("accuracy", {}).get("top1", float("nan")))
        pick["exported_accuracy"] = top1
        lines.append(f"  {arch.key}: {pick_line(top1, pick.get('latency_ms'), measured, metrics, verdict, worst)}")
    return lines


def pick_line(top1: float, predicted: Any, measured: float | None, metrics: dict[str, Any],
              verdict: dict[str, Any] | None, worst: float) -> str:
    """One exported pick in the summary: accuracy, latency predicted and measured (each runtime's when there is no
    table to measure like), the constraint's verdict when there is one, and the largest parity difference."""
    latency = f"{float(predicted):.4f} ms" if predicted not in (None, "") else "-"
    if measured is not None:
        latency += f", measured {measured:.4f} ms"
    else:
        runtimes = metrics.get("latency", {}).get("measured", {})
        latency += ", measured " + (", ".join(f"{name} {m['median_ms']:.4f} ms" for name, m in runtimes.items())
                                    or "-")
    if verdict is not None:
        latency += " " + ("meets " + verdict["constraint"] if verdict["meets_constraint_measured"] else
                          f"BREAKS {verdict['constraint']} when measured: not a subnet that meets it")
    return f"accuracy {top1:.2%}, latency predicted {latency}; parity max |diff| {worst:.1e}"


def _csv_value(text: str) -> Any:
    """A CSV cell as what it was written from: None, a bool, a number, or the text."""
    if text in ("", "None"):
        return None
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def cmd_export(args: argparse.Namespace) -> None:
    import csv

    from nas.evaluators import CostEvaluator, supernet_space
    from nas.objectives import parse_constraints
    from nas.search import picks_csv

    log = log_for(args)
    space = supernet_space(args.supernet)[0]
    constraints = parse_constraints(args.constraint or [])
    tables = resolve_tables(args, space.name, [c.metric for c in constraints])
    costs = CostEvaluator(space, tables, dtype=args.dtype)
    rows: list[dict[str, Any]] = []  # every row of --picks, written back with the exported ones updated
    if args.picks:
        with open(args.picks, encoding="utf-8", newline="") as fh:
            rows = [dict(row) for row in csv.DictReader(fh)]
    picks = rows[: args.top] + [{"arch": space.validate(load_arch(text)).to_str()} for text in args.arch or []]
    if not picks:
        raise HwnasError("nothing to export: give architectures (ARCH ...) or --picks RUN_DIR/search/picks.csv")
    for pick in picks:
        arch = space.validate(load_arch(pick["arch"]))
        pick["key"] = arch.key
        for name, value in list(pick.items()):  # numbers and flags read back from the CSV
            if name not in ("arch", "key", "evaluator") and isinstance(value, str):
                pick[name] = _csv_value(value)
        pick.update({k: v[0].item() for k, v in costs.columns(space.to_genes(arch)[None]).items()})
        if pick.get("accuracy") is None:
            pick.pop("accuracy", None)
    lines = export_picks(args.supernet, Path(args.out), picks, tables, constraints, log, overwrite=args.overwrite)
    if args.picks:
        from search_spaces.files import atomic_write_text

        atomic_write_text(Path(args.picks), picks_csv(rows))
    print(json.dumps({"subnets": str(args.out), "picks": picks}, indent=2, default=str) if args.json
          else "\n".join(lines))


def register(groups: Any) -> None:
    """Add the `export` command to the top-level parser."""
    ex = add_command(groups, "export", cmd_export, "export subnets of a trained supernet to DIR/<key>/ (BN "
                     "recalibrated safetensors, ONNX, TFLite, parity checks, costs, predicted and measured latency)")
    ex.add_argument("arch", nargs="*", help="architectures (strings, reference names or files)")
    ex.add_argument("--supernet", required=True, help="run directory of `hwnas supernet train`")
    ex.add_argument("--picks", help="also export the picks of a search (RUN_DIR/search/picks.csv; updated with "
                                    "the measured latency)")
    ex.add_argument("--top", type=int, default=5, help="how many of --picks (default 5)")
    ex.add_argument("--out", default="runs/search/subnets", help="output root (default %(default)s)")
    ex.add_argument("--table", action="append", metavar="DIR|RUNTIME:PRECISION",
                    help="latency tables to predict with (the first is the constrained one)")
    ex.add_argument("--constraint", action="append", metavar="latency_ms<=BOUND",
                    help="check the measured latency against this limit")
    ex.add_argument("--overwrite", action="store_true", help="export again subnets exported before")
    ex.add_argument("--dtype", default="fp32", help="element type of the byte counts (default fp32)")
