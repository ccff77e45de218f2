"""`hwnas dashboard`: optuna-dashboard for a search's study."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from nas.cli.common import add_command
from search_spaces import HwnasError


def cmd_dashboard(args: argparse.Namespace) -> None:
    from nas.study import serve_dashboard

    storage = args.storage or f"sqlite:///{Path(args.run_dir) / 'study.db'}"
    if not args.storage and not (Path(args.run_dir) / "study.db").is_file():
        raise HwnasError(f"no study in {args.run_dir} (no study.db); run `hwnas search --run-dir {args.run_dir}` "
                         f"first, or give --storage URL")
    serve_dashboard(storage, args.host, args.port, announce=lambda url: print(
        f"optuna-dashboard for {storage}: open {url} (Ctrl-C stops it)", flush=True))


def register(groups: Any) -> None:
    """Add the `dashboard` command to the top-level parser."""
    da = add_command(groups, "dashboard", cmd_dashboard, "serve optuna-dashboard for a search's study (history, "
                     "Pareto front, trial attributes) on this machine only")
    da.add_argument("run_dir", nargs="?", default="runs/search", help="search run directory (default %(default)s)")
    da.add_argument("--storage", help="Optuna storage URL (default sqlite:///RUN_DIR/study.db)")
    da.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    da.add_argument("--port", type=int, default=8080, help="port (default %(default)s)")
