"""Shared by the benchmark scripts: pin to one core, describe the machine, write a section of docs/benchmarks.md."""

from __future__ import annotations

import datetime
import os
import platform
import re
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
HEADER = ("# Benchmarks\n\nFigures measured by the scripts in `benchmarks/`; each section says the command, the "
          "machine and the date. Ratios are measured side by side in one run (the machine is shared and noisy).\n")


def pin_one_core() -> None:
    """Run on one core (and one torch / BLAS thread), as the acceptance figures ask."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})


def machine(threads: str = "pinned to 1") -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        text = Path("/proc/cpuinfo").read_text()
        cpu = re.search(r"model name\s*:\s*(.+)", text).group(1).strip()  # type: ignore[union-attr]
    except (OSError, AttributeError):
        pass
    return f"{cpu}, {os.cpu_count()} cores visible, {threads}; Python {platform.python_version()}, {sys.platform}"


def write_section(title: str, command: str, body: str, threads: str = "pinned to 1") -> None:
    """Replace (or append) the section `title` in docs/benchmarks.md; the rest of the file is kept."""
    text = DOC.read_text() if DOC.exists() else HEADER
    section = (f"## {title}\n\nCommand: `{command}`  \nMachine: {machine(threads)}  \n"
               f"Date: {datetime.date.today().isoformat()}\n\n{body.strip()}\n")
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    DOC.parent.mkdir(parents=True, exist_ok=True)
    tmp = DOC.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(DOC)
