"""Helpers shared by the `hwnas` command groups: reading architectures, printing, logging, subcommands."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from search_spaces import REFERENCES, ArchConfig, HwnasError, SearchSpace, get_space, reference

#: A command's handler: the parsed arguments in, output printed.
Handler = Callable[[argparse.Namespace], None]


def load_arch(text: str) -> ArchConfig:
    """An architecture from a canonical string, a reference network name, or a path to a JSON/text file."""
    if text in REFERENCES:
        return reference(text)
    if "|" not in text and not text.lstrip().startswith("{"):
        path = Path(text)
        if not path.is_file():
            raise HwnasError(
                f"{text!r} is not an architecture string, a reference network ({', '.join(REFERENCES)}) "
                "or an existing file"
            )
        text = path.read_text(encoding="utf-8")
    return ArchConfig.from_json(text) if text.lstrip().startswith("{") else ArchConfig.from_str(text)


def emit(data: dict[str, Any], as_json: bool, lines: list[str]) -> None:
    """Print `data` as JSON when asked, else the human-readable lines."""
    print(json.dumps(data, indent=2) if as_json else "\n".join(lines))


def log_for(args: argparse.Namespace) -> Callable[[str], None]:
    """Where progress lines go: stderr when stdout carries JSON, else stdout."""
    return (lambda line: print(line, file=sys.stderr)) if args.json else print


def space_of(args: argparse.Namespace, name: str) -> SearchSpace:
    """The named space with the command line's --in-channels / --num-classes."""
    return get_space(name, in_channels=args.in_channels, num_classes=args.num_classes)


def add_command(group: Any, name: str, func: Handler, help_text: str) -> argparse.ArgumentParser:
    """A subcommand of `group` that runs `func` and takes --json."""
    sub: argparse.ArgumentParser = group.add_parser(name, help=help_text, description=help_text)
    sub.add_argument("--json", action="store_true", help="print JSON")
    sub.set_defaults(func=func)
    return sub


def add_group(groups: Any, name: str, help_text: str) -> Any:
    """A command group (`hwnas NAME ...`) whose subcommands are required."""
    return groups.add_parser(name, help=help_text).add_subparsers(dest="command", required=True)


def resolve_table(text: str, space: str) -> Any:
    """A latency table from a directory, or `RUNTIME:PRECISION` for the shipped table of this machine."""
    from latency_tables.table import LatencyTable, find_table

    if Path(text).is_dir():
        return LatencyTable.load(text)
    runtime, sep, precision = text.partition(":")
    if sep and runtime and precision:
        return find_table(space, runtime, precision)
    raise HwnasError(f"--table {text!r} is neither a table directory nor RUNTIME:PRECISION (e.g. ort:fp32, "
                     f"litert:int8)")


def resolve_tables(args: argparse.Namespace, space: str, metrics: list[str]) -> list[Any]:
    """The --table list; when it is empty and `metrics` (of objectives and constraints) use `latency_ms`, this
    machine's shipped ort:fp32 table (said on the log)."""
    tables = [resolve_table(t, space) for t in args.table or []]
    if not tables and "latency_ms" in metrics:
        tables = [resolve_table("ort:fp32", space)]
        log_for(args)(f"latency from the shipped table {tables[0].table_id} (choose one with --table)")
    return tables
