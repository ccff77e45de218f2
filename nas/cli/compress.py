"""`hwnas compress`: prune and/or quantise an exported subnet to a latency budget on a table's runtime."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from nas.cli.common import add_command, log_for, resolve_table
from search_spaces import HwnasError


def _budget(texts: list[str] | None) -> float:
    """The bound of the one `latency_ms<=X` constraint."""
    from nas.objectives import parse_constraints

    constraints = parse_constraints(texts or [])
    if len(constraints) != 1 or constraints[0].metric != "latency_ms" or constraints[0].op not in ("<=", "<"):
        raise HwnasError(f"--constraint must be one latency budget 'latency_ms<=X'; got "
                         f"{', '.join(texts or []) or 'none'}")
    return float(constraints[0].bound)


def summary_lines(path: Path, summary: dict[str, Any]) -> list[str]:
    """What a person reads after `hwnas compress`."""
    lat = summary["latency"]

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f} ms"

    speedup = lat.get("measured_speedup")
    return [f"compressed {summary['parent']} by {summary['method']} to {summary['key']} ({summary['precision']})",
            f"  accuracy {summary['accuracy_before']:.2%} -> {summary['accuracy_after']:.2%}; label loyalty "
            f"{summary['label_loyalty']:.3f}, probability loyalty {summary['probability_loyalty']:.3f}",
            f"  latency on {summary['table']}: predicted {ms(lat['predicted_ms'])} (budget {summary['budget_ms']} ms), "
            f"measured {ms(lat['measured_ms'])} (parent {ms(lat['parent_measured_ms'])}"
            + (f", {speedup:.2f}x" if speedup else "") + ")",
            f"  params {summary['params_before']} -> {summary['params_after']} ({summary['params_ratio']:.2f}x), "
            f"weights {summary['bytes_before']:.0f} -> {summary['bytes_after']:.0f} bytes "
            f"({summary['bytes_ratio']:.2f}x)",
            f"written to {path}"]


def cmd_compress(args: argparse.Namespace) -> None:
    from nas.compress.pipeline import COMPRESS_FILE, CompressConfig, compress_subnet
    from nas.export import SubnetSpec

    log = log_for(args)
    spec = SubnetSpec.load(args.subnet)  # names a missing directory or spec before anything is loaded
    config = CompressConfig(method=args.method, budget_ms=_budget(args.constraint),
                            table=resolve_table(args.table, spec.space), criterion=args.criterion,
                            round_to=args.round_to, epochs=args.epochs, teacher=args.teacher, supernet=args.supernet,
                            seed=args.seed, max_steps=args.max_steps, overwrite=args.overwrite,
                            measure_keys=not args.estimate_only)
    out = Path(args.out) if args.out else Path(args.subnet).resolve().parent
    path = compress_subnet(args.subnet, out, config, log=log, progress=not args.no_progress)
    summary = json.loads((path / COMPRESS_FILE).read_text(encoding="utf-8"))
    print(json.dumps({"path": str(path), **summary}, indent=2, default=str) if args.json
          else "\n".join(summary_lines(path, summary)))


def register(groups: Any) -> None:
    """Add the `compress` command to the top-level parser."""
    sub = add_command(groups, "compress", cmd_compress, "prune and/or quantise an exported subnet to a latency "
                      "budget on a table's runtime, fine-tune it with distillation, and export it as a new subnet")
    sub.add_argument("subnet", help="an exported subnet directory (spec.json, model.safetensors, ...)")
    sub.add_argument("--constraint", action="append", metavar="latency_ms<=X", required=True,
                     help="the latency budget on --table")
    sub.add_argument("--table", required=True, metavar="RUNTIME:PRECISION|DIR",
                     help="the latency table the budget is on (its runtime gets the compressed model)")
    sub.add_argument("--method", required=True, help="prune, quantize or sequential (prune, then quantize)")
    sub.add_argument("--epochs", type=int, default=1, help="fine-tune epochs (default %(default)s)")
    sub.add_argument("--max-steps", type=int, help="batches per fine-tune epoch (default: the whole split)")
    sub.add_argument("--teacher", help="'largest' (with --supernet) or an exported subnet directory (default: "
                                       "the uncompressed subnet)")
    sub.add_argument("--supernet", help="the supernet run directory of --teacher largest")
    sub.add_argument("--criterion", default="l1", help="channel importance: l1, bn or taylor (default %(default)s)")
    sub.add_argument("--round-to", type=int, default=8, help="kept channels a multiple of this (default %(default)s)")
    sub.add_argument("--seed", type=int, default=0, help="seed of image choice and fine-tune (default %(default)s)")
    sub.add_argument("--out", help="output root (default: the subnet directory's parent)")
    sub.add_argument("--overwrite", action="store_true", help="replace an earlier compressed export")
    sub.add_argument("--estimate-only", action="store_true",
                     help="price the pruned widths with the table's estimates (flagged) instead of measuring the "
                          "keys the plan needs on this machine first (the default, into OUT/.measured-tables/)")
    sub.add_argument("--no-progress", action="store_true", help="no progress bars")
