"""`hwnas report RUN`: rebuild a run directory's report (report.html, report.md)."""

from __future__ import annotations

import argparse
from typing import Any

from nas.cli.common import add_command, emit


def cmd_report(args: argparse.Namespace) -> None:
    from nas.report import build_report

    html, md = build_report(args.run_dir)
    emit({"html": str(html), "md": str(md)}, args.json, [f"report: {html}", f"        {md}"])


def register(groups: Any) -> None:
    """Add the `report` command to the top-level parser."""
    rp = add_command(groups, "report", cmd_report, "rebuild the report of a run directory (report.html with "
                     "pictures, report.md) from what its stages wrote")
    rp.add_argument("run_dir", help="run directory of `hwnas run`")
