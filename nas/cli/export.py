"""`hwnas export`: export subnets of a trained supernet, re-measured on the runtime."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from nas.cli.common import add_command, load_arch, log_for, resolve_tables
from nas.export.picks import csv_value, export_picks
from search_spaces import HwnasError


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
                pick[name] = csv_value(value)
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
