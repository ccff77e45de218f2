"""The picks of a search exported and re-measured (`hwnas export`, `hwnas search`, `hwnas run`'s export stage),
and the picks file read back."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

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


def csv_value(text: str) -> Any:
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


def read_picks(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a picks.csv (`nas.search.write_picks`), numbers and flags read back as what they were."""
    path = Path(path)
    if not path.is_file():
        raise HwnasError(f"{path} is missing: the search has not written its picks")
    with open(path, encoding="utf-8", newline="") as fh:
        return [{k: (csv_value(v) if k not in ("arch", "key", "evaluator") else v) for k, v in row.items()}
                for row in csv.DictReader(fh)]
