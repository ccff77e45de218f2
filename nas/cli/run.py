"""`hwnas run CONFIG`: the whole pipeline from one YAML file, resumable from its run directory."""

from __future__ import annotations

import argparse
from typing import Any

from nas.cli.common import add_command


def cmd_run(args: argparse.Namespace) -> None:
    from nas.pipeline import run_pipeline

    run_pipeline(args.config, run_dir=args.run_dir, dry_run=args.dry_run, start=args.start, only=args.only)


def register(groups: Any) -> None:
    """Add the `run` command to the top-level parser."""
    ru = add_command(groups, "run", cmd_run, "run the whole pipeline (data, supernet, tables, search, export, "
                     "compression, references, report) from one YAML config; run it again to resume")
    ru.add_argument("config", help="YAML config (e.g. configs/quickstart.yaml)")
    ru.add_argument("--run-dir", help="run directory (default: the config's run_dir)")
    ru.add_argument("--dry-run", action="store_true", help="print the stages, which would run or be skipped and "
                    "why, and an estimate of each one's time; change nothing")
    ru.add_argument("--from", dest="start", metavar="STAGE", help="run from this stage on, even if done")
    ru.add_argument("--only", metavar="STAGE", help="run only this stage (its inputs must exist)")
