"""`hwnas arch cost|reference|validate`: architectures in the architecture language."""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from latency_tables import DTYPE_BYTES, AnalyticCostModel
from nas.cli.common import add_command, add_group, emit, load_arch, space_of
from nas.cli.space import space_options
from search_spaces import REFERENCES, reference


def cmd_arch_reference(args: argparse.Namespace) -> None:
    if args.name is None:
        emit({"references": list(REFERENCES)}, args.json, list(REFERENCES))
        return
    arch = reference(args.name)
    emit(arch.to_dict() | {"arch": arch.to_str(), "key": arch.key}, args.json, [arch.to_str()])


def cmd_arch_cost(args: argparse.Namespace) -> None:
    arch = load_arch(args.arch)
    if args.space:
        space_of(args, args.space).validate(arch)
    cost = AnalyticCostModel(args.dtype).estimate(arch)
    if args.table:
        from latency_tables import LatencyTable
        from latency_tables.keys import arch_keys

        tables = [LatencyTable.load(path) for path in args.table]
        cost = replace(cost, latency_ms={t.table_id: round(t.predict_arch(arch, args.estimate_missing), 6)
                                         for t in tables})
        keys = arch_keys(arch)
        estimated = sorted(t.table_id for t in tables if any(k not in t.rows for k in keys))
    else:
        estimated = []
    data = {"arch": arch.to_str(), "key": arch.key} | cost.to_dict() | {"latency_estimated": estimated}
    mib, dtype = 1 << 20, cost.dtype
    lines = [
        f"arch             {arch.to_str()}",
        f"key              {arch.key}",
        f"params           {cost.params:,}",
        f"macs             {cost.macs:,}  ({cost.macs / 1e6:.2f} M multiply-accumulates)",
        f"flops            {cost.flops:,}  (= 2 x MACs)",
        f"memory_access    {cost.memory_access:,} elements  ({cost.memory_access_bytes / mib:.2f} MiB at {dtype})",
        f"peak_activation  {cost.peak_activation:,} elements  ({cost.peak_activation_bytes / mib:.2f} MiB at {dtype})",
    ] + [f"latency_ms       {ms:.4f}  ({_how_priced(table_id in estimated)}, table {table_id})"
         for table_id, ms in cost.latency_ms.items()]
    emit(data, args.json, lines)


def _how_priced(estimated: bool) -> str:
    return "ESTIMATED: some keys are not measured" if estimated else "predicted"


def cmd_arch_validate(args: argparse.Namespace) -> None:
    arch = load_arch(args.arch)
    if args.space:
        space_of(args, args.space).validate(arch)
    where = f" and in space {args.space}" if args.space else ""
    emit({"arch": arch.to_str(), "key": arch.key, "valid": True}, args.json,
         [f"valid{where}: {arch.to_str()} (key {arch.key})"])


def register(groups: Any) -> None:
    """Add the `arch` group to the top-level parser."""
    arch = add_group(groups, "arch", "architectures")
    ref = add_command(arch, "reference", cmd_arch_reference, "print a published network in the architecture language")
    ref.add_argument("name", nargs="?", choices=list(REFERENCES), help="network (omit to list them)")
    for name, func, text in (("cost", cmd_arch_cost, "analytic costs: params, MACs, FLOPs, memory access, peak"),
                             ("validate", cmd_arch_validate, "check an architecture (and its membership of a space)")):
        sub = add_command(arch, name, func, text)
        sub.add_argument("arch", help="architecture string, reference network name, or file (string or JSON)")
        sub.add_argument("--space", metavar="SPACE", help="also check membership of this space")
        space_options(sub, False)
        if name == "cost":
            sub.add_argument("--dtype", default="fp32", choices=list(DTYPE_BYTES), help="element type for bytes")
            sub.add_argument("--table", action="append", metavar="DIR",
                             help="also predict latency with this lookup table (repeatable)")
            sub.add_argument("--estimate-missing", action="store_true",
                             help="price keys the table lacks (e.g. a pruned block's explicit widths) by the table's "
                                  "fitted model, flagged as estimated, instead of refusing")
