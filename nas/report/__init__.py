"""The report of a run directory of `hwnas run`: `RUN/report.html` (self-contained: CSS inline, every figure a PNG
embedded as a data: URI, no script) and `RUN/report.md` (the same, figures linked from `RUN/report/*.png`).

Sections, each present when its inputs are (a stage that has not run is one line saying so): summary and
headline, the accuracy-latency plane per runtime, predicted against measured latency, the hand-designed
references and the verdict of `nas.references.compare_with_references`, each pick's architecture (and its
compressed versions' kept channels and precisions), search progress with the supernet's training curves and the
tables' validation, the table of picks, and provenance. `run.py` reads the directory, `figures.py` draws,
`sections.py` assembles, `document.py` renders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nas.report.run import Run, read_run
from search_spaces.errors import HwnasError
from search_spaces.files import atomic_write_bytes, atomic_write_text

#: Where the figures go, relative to the run directory.
FIGURES = "report"

__all__ = ["build_report", "read_run", "Run"]


def _config(run: Run) -> dict[str, Any]:
    if run.config_text is None:
        return {}
    import yaml

    try:
        data = yaml.safe_load(run.config_text)
    except yaml.YAMLError as err:
        raise HwnasError(f"{run.directory / 'config.yaml'} cannot be read as YAML ({err})") from None
    return data if isinstance(data, dict) else {}


def build_report(run_dir: str | Path) -> tuple[Path, Path]:
    """Write `RUN/report.html`, `RUN/report.md` and `RUN/report/*.png` from what the run's stages wrote; returns
    the paths of the HTML and Markdown files. Each file is written atomically."""
    from nas.report.document import Image, to_html, to_markdown
    from nas.report.sections import all_sections

    run = read_run(run_dir)
    blocks = all_sections(run, _config(run))
    title = f"hwnas report: {run.directory.name}"
    figures = run.directory / FIGURES
    names = set()
    for block in blocks:
        if isinstance(block, Image):
            atomic_write_bytes(figures / block.name, block.png)
            names.add(block.name)
    for stale in figures.glob("*.png"):  # figures of an earlier build that this one no longer has (a pick gone)
        if stale.name not in names:
            stale.unlink()
    html_path, md_path = run.directory / "report.html", run.directory / "report.md"
    atomic_write_text(html_path, to_html(title, blocks))
    atomic_write_text(md_path, to_markdown(title, blocks, FIGURES))
    return html_path, md_path
