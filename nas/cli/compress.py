"""`hwnas compress`: prune and/or quantise an exported subnet to a latency budget on a table's runtime."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from nas.cli.common import add_command, log_for, resolve_table
from search_spaces import HwnasError


def _budget(texts: list[str] | None) -> tuple[str, float, float | None]:
    """(metric, bound, size bound) of the budget: one constraint, e.g. `latency_ms<=0.1` or `size_bytes<=40000`, or
    a latency budget with a second `size_bytes<=` bound."""
    import re

    from nas.compress.pipeline import BUDGET_METRICS

    bounds: dict[str, float] = {}
    for text in texts or []:
        match = re.fullmatch(r"\s*([a-z_]+)\s*<=?\s*([0-9.eE+-]+)\s*", text)
        bound = float(match.group(2)) if match and re.fullmatch(r"[0-9.]+([eE][+-]?[0-9]+)?", match.group(2)) else None
        if match is None or match.group(1) not in BUDGET_METRICS or match.group(1) in bounds or bound is None:
            bounds = {}
            break
        bounds[match.group(1)] = bound
    if len(bounds) != 1 and sorted(bounds) != ["latency_ms", "size_bytes"]:
        raise HwnasError(f"--constraint must be one budget METRIC<=X with METRIC one of {', '.join(BUDGET_METRICS)} "
                         f"(e.g. latency_ms<=X), or latency_ms<=X with size_bytes<=Y; got "
                         f"{', '.join(texts or []) or 'none'}")
    if len(bounds) == 2:
        return "latency_ms", bounds["latency_ms"], bounds["size_bytes"]
    ((metric, bound),) = bounds.items()
    return metric, bound, None


def summary_lines(path: Path, summary: dict[str, Any]) -> list[str]:
    """What a person reads after `hwnas compress`."""
    lat = summary["latency"]

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f} ms"

    speedup = lat.get("side_by_side", {}).get("speedup") or lat.get("measured_speedup")
    return [f"compressed {summary['parent']} by {summary['method']} to {summary['key']} ({summary['precision']})",
            f"  accuracy {summary['accuracy_before']:.2%} -> {summary['accuracy_after']:.2%}; label loyalty "
            f"{summary['label_loyalty']:.3f}, probability loyalty {summary['probability_loyalty']:.3f}",
            f"  budget {summary['metric']}<={summary['budget']:g}: predicted {summary['predicted']:.6g}"
            + (f"; size_bytes<={summary['size_budget']:g}: {summary['bytes_after']:.0f}"
               if summary.get("size_budget") is not None else ""),
            f"  latency on {summary['table']}: predicted {ms(lat['predicted_ms'])}, "
            f"measured {ms(lat['measured_ms'])} (parent {ms(lat['parent_measured_ms'])}"
            + (f", {speedup:.2f}x side by side" if speedup else "") + ")",
            f"  params {summary['params_before']} -> {summary['params_after']} ({summary['params_ratio']:.2f}x), "
            f"weights {summary['bytes_before']:.0f} -> {summary['bytes_after']:.0f} bytes "
            f"({summary['bytes_ratio']:.2f}x)",
            f"written to {path}"]


def compress_picks(directories: list[Path], out_root: Path, texts: list[str], table_text: str, space: str,
                   args: argparse.Namespace, log: Any) -> list[str]:
    """`hwnas search --compress`: compress each exported pick in `directories` to the budget `texts` on the table
    `table_text` into `out_root`; one summary line per pick (a pick compressed before is reused)."""
    from nas.compress.pipeline import COMPRESS_FILE, CompressConfig, compress_once

    metric, budget, size = _budget(texts)
    config = CompressConfig(method=args.compress, budget=budget, metric=metric, size_budget=size,
                            table=resolve_table(table_text, space),
                            epochs=args.compress_epochs, seed=args.seed)
    lines = [f"compressed by {config.method} to {config.budget_text} into {out_root}/<key>/:"]
    for directory in directories:
        path = compress_once(directory, out_root, config.method, lambda: config, log=log,
                             progress=not args.no_progress)
        summary = json.loads((path / COMPRESS_FILE).read_text(encoding="utf-8"))
        lines += ["  " + line for line in summary_lines(path, summary)]
    return lines


def cmd_compress(args: argparse.Namespace) -> None:
    from nas.compress.pipeline import COMPRESS_FILE, CompressConfig, compress_subnet
    from nas.export import SubnetSpec

    log = log_for(args)
    spec = SubnetSpec.load(args.subnet)  # names a missing directory or spec before anything is loaded
    metric, budget, size = _budget(args.constraint)
    config = CompressConfig(method=args.method, budget=budget, metric=metric, size_budget=size,
                            table=resolve_table(args.table, spec.space), criterion=args.criterion,
                            round_to=args.round_to, epochs=args.epochs, teacher=args.teacher, supernet=args.supernet,
                            alpha=0.0 if args.no_distill else args.alpha, feature_weight=args.feature_weight,
                            qat=args.qat, tolerance=args.tolerance, strict=args.strict, candidates=args.candidates,
                            other_runtime=not args.no_other_runtime, seed=args.seed, max_steps=args.max_steps,
                            simulated=tuple(p for p in (args.simulated or "").split(",") if p),
                            gradual=args.gradual, min_accuracy=args.min_accuracy,
                            overwrite=args.overwrite, measure_keys=not args.estimate_only)
    out = Path(args.out) if args.out else Path(args.subnet).resolve().parent
    path = compress_subnet(args.subnet, out, config, log=log, progress=not args.no_progress)
    summary = json.loads((path / COMPRESS_FILE).read_text(encoding="utf-8"))
    print(json.dumps({"path": str(path), **summary}, indent=2, default=str) if args.json
          else "\n".join(summary_lines(path, summary)))


def register(groups: Any) -> None:
    """Add the `compress` command to the top-level parser."""
    sub = add_command(groups, "compress", cmd_compress, "prune and/or quantise an exported subnet to a budget "
                      "(latency on a table's runtime, size, MACs or BitOPs), fine-tune it with distillation, and "
                      "export it as a new subnet")
    sub.add_argument("subnet", help="an exported subnet directory (spec.json, model.safetensors, ...)")
    sub.add_argument("--constraint", action="append", metavar="METRIC<=X", required=True,
                     help="the budget: latency_ms<=X (on --table), size_bytes<=X (weights), macs<=X or bitops<=X; "
                          "or latency_ms<=X and size_bytes<=Y together (two --constraint)")
    sub.add_argument("--table", required=True, metavar="RUNTIME:PRECISION|DIR",
                     help="the latency table the budget is on (its runtime gets the compressed model)")
    sub.add_argument("--method", required=True,
                     help="joint (pruning and per-block precision chosen together), sequential (prune, then "
                          "quantise, then distil), prune or quantize")
    sub.add_argument("--epochs", type=int, default=1, help="fine-tune epochs (default %(default)s)")
    sub.add_argument("--max-steps", type=int, help="batches per fine-tune epoch (default: the whole split)")
    sub.add_argument("--teacher", help="'largest' (with --supernet) or an exported subnet directory (default: the "
                                       "supernet's largest subnet with --supernet, else the uncompressed subnet)")
    sub.add_argument("--gradual", type=int, default=0, metavar="K",
                     help="ramp the pruned share from 0 to the plan over K fine-tune epochs (default 0: at once)")
    sub.add_argument("--min-accuracy", type=float, metavar="FRACTION",
                     help="accuracy floor: below it (validation top-1) the result is an error and nothing is written")
    sub.add_argument("--supernet", help="the supernet run directory of --teacher largest")
    sub.add_argument("--alpha", type=float, default=0.9,
                     help="weight of the teacher's soft targets (default %(default)s)")
    sub.add_argument("--no-distill", action="store_true", help="fine-tune on labels only (no teacher)")
    sub.add_argument("--feature-weight", type=float, default=0.0,
                     help="weight of stage-feature distillation (default %(default)s: none)")
    sub.add_argument("--qat", default="auto", choices=("auto", "always", "never"),
                     help="quantisation-aware fine-tune: auto (whenever the method fine-tunes a quantised plan, and "
                          "for quantize when post-training quantisation loses more than --tolerance), always, never")
    sub.add_argument("--tolerance", type=float, default=0.015,
                     help="accuracy drop (fraction) a quantised plan may cost before the guard keeps layers at fp32 "
                          "(default %(default)s)")
    sub.add_argument("--strict", action="store_true",
                     help="a plan losing more than --tolerance is an error naming the layers, not raised to fp32")
    sub.add_argument("--candidates", type=int, default=8, help="pruning points joint compares (default %(default)s)")
    sub.add_argument("--simulated", metavar="w8a8,w4a8,...",
                     help="choose among these simulated integer bit-widths (w<2-8>a<2-8|16>) instead of the runtime's "
                          "precisions, for a size_bytes or bitops budget of an accelerator hwnas cannot run: the "
                          "result is labelled simulated and no runtime model is written")
    sub.add_argument("--no-other-runtime", action="store_true",
                     help="export only the budget's runtime (default: the other runtime's model too, in fp32)")
    sub.add_argument("--criterion", default="l1", help="channel importance: l1, bn or taylor (default %(default)s)")
    sub.add_argument("--round-to", type=int, default=8, help="kept channels a multiple of this (default %(default)s)")
    sub.add_argument("--seed", type=int, default=0, help="seed of image choice and fine-tune (default %(default)s)")
    sub.add_argument("--out", help="output root (default: the subnet directory's parent)")
    sub.add_argument("--overwrite", action="store_true", help="replace an earlier compressed export")
    sub.add_argument("--estimate-only", action="store_true",
                     help="price the pruned widths with the table's estimates (flagged) instead of measuring the "
                          "keys the plan needs on this machine first (the default, into OUT/.measured-tables/)")
    sub.add_argument("--no-progress", action="store_true", help="no progress bars")
