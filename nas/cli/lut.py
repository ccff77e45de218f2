"""`hwnas lut build|validate|show|kit-export|kit-import`: measured latency lookup tables."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from nas.cli.common import add_command, add_group, log_for
from search_spaces import SPACES, get_space


def _protocol(args: argparse.Namespace) -> Any:
    from latency_tables.runtimes import Protocol

    return Protocol(threads=args.threads, warmup=args.warmup, runs=args.runs, pin_cpu=args.pin_cpu)


def _out(args: argparse.Namespace) -> Path:
    from latency_tables.table import DeviceProfile, default_device, table_dirname

    if args.out:
        return Path(args.out)
    profile = DeviceProfile(args.device or default_device(), args.runtime, args.precision, args.threads)
    return Path("runs") / "lut" / table_dirname(args.space, profile)


def _summary_lines(summary: dict[str, Any]) -> list[str]:
    from latency_tables.validation import describe_share

    load, drift, rep = summary.get("load_1min"), summary.get("key_drift"), summary.get("repeat")
    shaky = " - this machine does not repeat its own timings to +-10%" if rep and rep["within_10"] < 0.95 else ""
    return [f"  seed {summary['seed']}: {describe_share(summary)}; MAPE {summary['mape']:.1%}, RMSPE "
            f"{summary['rmspe']:.1%}, within +-5/15%: {summary['within_5']:.0%} / {summary['within_15']:.0%}, "
            f"Kendall tau {summary['kendall_tau']:.3f} (MACs alone: {summary['macs_kendall_tau']:.3f})"
            + (f"; load {load[0]:.2f} -> {load[1]:.2f}" if load else "")
            + (f"; {drift['keys']} keys re-timed at {drift['ratio']:.3f}x the table's" if drift else "")
            + (f"; {rep['subnets']} subnets timed twice agree within +-10% for {rep['within_10']:.0%} (median "
               f"{rep['median_ratio']:.3f}x){shaky}" if rep else "")]


def cmd_lut_build(args: argparse.Namespace) -> None:
    from latency_tables.build import build_table
    from latency_tables.validation import validate_table

    out = _out(args)
    table = build_table(get_space(args.space), args.runtime, args.precision, out, protocol=_protocol(args),
                        device=args.device, fit_networks=args.fit_networks, jobs=args.jobs,
                        progress=not args.no_progress, log=log_for(args), drift_check=args.drift_check,
                        drift_tolerance=args.drift_tolerance)
    if args.validate:
        validate_table(out, args.validate, seed=args.validate_seed, progress=not args.no_progress, jobs=args.jobs,
                       save=True)
        table = type(table).load(out)
    build, fit = table.meta["build"], table.meta["correction"]
    lines = [f"table {out}: {table.meta['keys']} keys for space {args.space!r} on {table.table_id} "
             f"({build['seconds_per_key']:.2f} s per key; {build['key_seconds'] / 60:.1f} min measuring keys)",
             f"  network correction: latency = {fit['scale']:.3f} x sum {fit['per_piece_ms'] * 1000:+.2f} us x pieces "
             f"{fit['offset_ms']:+.4f} ms (fitted on {fit['networks']} networks, MAPE {fit['fit_mape']:.1%})"]
    if "validation" in table.meta:
        lines += _summary_lines(table.meta["validation"])
    print(json.dumps({"table": str(out), **table.meta}, indent=2) if args.json else "\n".join(lines))


def cmd_lut_validate(args: argparse.Namespace) -> None:
    from latency_tables.validation import validate_table

    summary = validate_table(args.table, args.samples, seed=args.seed, progress=not args.no_progress,
                             jobs=args.jobs, save=args.save, out=args.out, pin_cpu=args.pin_cpu,
                             drift_check=args.drift_check, repeat=args.repeat)
    stored = f" (stored in {args.out or args.table})" if args.save else " (not stored; --save stores it)"
    print(json.dumps(summary, indent=2) if args.json else "\n".join([f"table {args.table}{stored}:"] +
                                                                     _summary_lines(summary)))


def cmd_lut_recalibrate(args: argparse.Namespace) -> None:
    from latency_tables.validation import recalibrate_table

    fit = recalibrate_table(args.table, args.out, progress=not args.no_progress, jobs=args.jobs,
                            pin_cpu=args.pin_cpu, drift_check=args.drift_check)
    where = args.out or args.table
    lines = [f"table {where}: correction fitted on {fit['networks']} networks timed now: latency = "
             f"{fit['scale']:.3f} x sum {fit['per_piece_ms'] * 1000:+.2f} us x pieces {fit['offset_ms']:+.4f} ms"
             + (f" {fit['per_mparam_ms'] * 1000:+.2f} us x M weights" if "per_mparam_ms" in fit else "")
             + f" (fit MAPE {fit['fit_mape']:.1%}); validate it now: hwnas lut validate --table {where} --save"]
    print(json.dumps({"table": str(where), "correction": fit}, indent=2) if args.json else "\n".join(lines))


def cmd_lut_show(args: argparse.Namespace) -> None:
    from latency_tables.table import LatencyTable

    table = LatencyTable.load(args.table)
    meta = table.meta
    lines = [f"table {args.table}: id {table.table_id}, space {table.space_name!r}, {len(table.rows)} of "
             f"{meta.get('keys', '?')} keys measured ({meta.get('status', '?')})",
             f"  device {table.profile.device} ({table.profile.cpu_model}), {table.profile.runtime_version}, "
             f"{table.profile.precision}, {table.profile.threads} thread(s); protocol {meta['protocol']}"]
    if "correction" in meta:
        fit = meta["correction"]
        lines.append(f"  correction: scale {fit['scale']:.3f}, per piece {fit.get('per_piece_ms', 0) * 1000:+.2f} us, "
                     f"offset {fit['offset_ms']:+.4f} ms (fitted on {fit['networks']} networks"
                     + (f" timed again on {fit['recalibrated']}, `hwnas lut recalibrate`" if fit.get("recalibrated")
                        else " timed when the table was built") + ")")
    if "validation" in meta:
        lines += _summary_lines(meta["validation"])
    print(json.dumps({"table": str(args.table), "rows": len(table.rows), **meta}, indent=2) if args.json
          else "\n".join(lines))


def cmd_lut_kit_export(args: argparse.Namespace) -> None:
    from latency_tables.kit import export_kit

    manifest = export_kit(get_space(args.space), args.runtime, args.precision, Path(args.out),
                          protocol=_protocol(args), fit_networks=args.fit_networks, validate=args.validate,
                          validate_seed=args.validate_seed, progress=not args.no_progress)
    print(json.dumps({"kit": args.out, "entries": len(manifest["entries"])}, indent=2) if args.json else
          f"kit {args.out}: {len(manifest['entries'])} models for {args.runtime} {args.precision}; copy it to the "
          f"device, run `python3 runner.py` there, bring results.csv back and run `hwnas lut kit-import`")


def cmd_lut_kit_import(args: argparse.Namespace) -> None:
    from latency_tables.kit import import_kit

    table = import_kit(Path(args.kit), Path(args.out) if args.out else None, device=args.device)
    lines = [f"table {table.path}: {len(table.rows)} keys on {table.table_id}"]
    if "validation" in table.meta:
        lines += _summary_lines(table.meta["validation"])
    print(json.dumps({"table": str(table.path), **table.meta}, indent=2) if args.json else "\n".join(lines))


def register(groups: Any) -> None:
    """Add the `lut` group to the top-level parser."""
    from latency_tables.runtimes import PRECISIONS, RUNTIMES

    lut = add_group(groups, "lut", "measured latency lookup tables")

    def retimed(sub: argparse.ArgumentParser, what: str) -> None:
        """The options of a command that times a finished table's models again (validate, recalibrate)."""
        sub.add_argument("--jobs", type=int, default=1, help=f"processes converting the {what} (default 1)")
        sub.add_argument("--pin-cpu", type=int, metavar="CPU",
                         help="time on this CPU instead of the one in the table's protocol (an idle one)")
        sub.add_argument("--drift-check", type=int, default=24, metavar="N",
                         help="first time N of the table's keys again and report how far they moved (default 24; "
                              "0: no)")
        sub.add_argument("--no-progress", action="store_true", help="no progress bars")

    def measured(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--space", default="small", help=f"search space ({', '.join(SPACES)}; default small)")
        sub.add_argument("--runtime", default="ort", choices=list(RUNTIMES), help="runtime (default ort)")
        sub.add_argument("--precision", default="fp32", choices=sorted({p for v in PRECISIONS.values() for p in v}),
                         help="fp32, fp16 (LiteRT) or int8 (default fp32)")
        sub.add_argument("--threads", type=int, default=1, help="runtime threads (default 1)")
        sub.add_argument("--warmup", type=int, default=10, help="warm-up runs per model (default 10)")
        sub.add_argument("--runs", type=int, default=50, help="timed runs per model (default 50)")
        sub.add_argument("--pin-cpu", type=int, help="pin the process to this CPU while measuring")
        sub.add_argument("--fit-networks", type=int, default=20,
                         help="whole networks measured to fit the network-level correction (default 20)")
        sub.add_argument("--validate", type=int, default=0, metavar="N",
                         help="then validate on N other random subnets (default 0: no)")
        sub.add_argument("--validate-seed", type=int, default=1, help="seed of the validation subnets (default 1)")
        sub.add_argument("--no-progress", action="store_true", help="no progress bars")

    build = add_command(lut, "build", cmd_lut_build, "measure every block key a space needs and write the table "
                    "(resumes an interrupted build)")
    measured(build)
    build.add_argument("--device", help="device name in the table id (default: this CPU's model and cores)")
    build.add_argument("--out", help="table directory (default runs/lut/<space>-<table id>)")
    build.add_argument("--jobs", type=int, default=1,
                       help="processes converting models (keys, then networks) before they are measured "
                            "(default 1)")
    build.add_argument("--drift-check", type=int, default=24, metavar="N",
                       help="on resuming, measure N earlier keys again (default 24; 0: no check)")
    build.add_argument("--drift-tolerance", type=float, default=0.10, metavar="FRACTION",
                       help="if their median moved by more than this (default 0.10), measure the whole table again "
                            "(the earlier files are kept in a superseded-<time>/ folder)")
    val = add_command(lut, "validate", cmd_lut_validate,
                  "measure N random subnets end to end and compare with the table's prediction")
    val.add_argument("--table", required=True, help="table directory")
    val.add_argument("--samples", type=int, default=100, help="subnets to measure (default 100)")
    val.add_argument("--seed", type=int, default=1, help="seed of the subnets (default 1)")
    val.add_argument("--save", action="store_true", help="store the validation (meta.json, validation-s<seed>.csv)"
                     " beside the table, or with --out in a copy of it (needed for a shipped table)")
    val.add_argument("--out", help="with --save: a directory for a copy of the table with this validation")
    retimed(val, "subnets")
    val.add_argument("--repeat", type=int, default=20, metavar="N",
                     help="then time the first N subnets again and report how far the machine repeats its own "
                          "timings (default 20; 0: no)")
    rec = add_command(lut, "recalibrate", cmd_lut_recalibrate,
                      "time the table's correction networks again now and refit its correction (keys untouched)")
    rec.add_argument("--table", required=True, help="table directory")
    rec.add_argument("--out", help="a copy of the table to recalibrate (needed for a shipped table)")
    retimed(rec, "networks")
    show = add_command(lut, "show", cmd_lut_show, "describe a table")
    show.add_argument("table", help="table directory")
    kit = add_command(lut, "kit-export", cmd_lut_kit_export,
                  "write converted models, a manifest and a torch-free runner for measuring on another device")
    measured(kit)
    kit.add_argument("--out", required=True, help="kit directory")
    imp = add_command(lut, "kit-import", cmd_lut_kit_import, "turn a kit's results.csv into a table")
    imp.add_argument("kit", help="kit directory holding manifest.json, results.csv and results_meta.json")
    imp.add_argument("--device", help="device name (default: the name the runner recorded)")
    imp.add_argument("--out", help="table directory (default <kit>/table)")
