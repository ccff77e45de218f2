"""Shared test fixtures and markers.

- `trained_supernet` (session scope): the run directory of a supernet trained once per test session with
  `tests.supernets.tiny.tiny_config()` on `tiny_digits()` (the `small` space, 1 input channel, 10 classes; one
  `full` and one `depth` epoch, so it has a teacher and a 2-row log). Read it, never write into it: a test that
  changes a run directory copies it first (`shutil.copytree(trained_supernet, tmp_path / "run")`).
- `smoke_workspace` (session scope): a working directory in which `hwnas run configs/smoke.yaml --run-dir
  runs/smoke` has run every stage (configs/ and latency_tables/ linked from the repository), as the README's
  examples expect; the end-to-end pipeline test checks it, the README test runs the README's commands in it.
- marker `runtime`: a test that needs the runtime extra (onnxruntime, onnx, ai_edge_litert or tflite_runtime,
  litert_torch); skipped with the missing package named where the extra is not installed.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

#: Modules the `runtime` marker needs; each entry is satisfied by any one of its alternatives.
RUNTIME_MODULES = (("onnxruntime",), ("onnx",), ("ai_edge_litert", "tflite_runtime"), ("litert_torch",))


def missing_runtime_modules(find=importlib.util.find_spec) -> list[str]:
    """The runtime modules (or alternatives, joined by ' or ') that cannot be found."""
    missing = []
    for alternatives in RUNTIME_MODULES:
        if not any(_importable(name, find) for name in alternatives):
            missing.append(" or ".join(alternatives))
    return missing


def _importable(name: str, find) -> bool:
    try:
        return find(name) is not None
    except (ImportError, ValueError):
        return False


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "runtime: needs the runtimes extra (pip install -e \".[runtimes]\")")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    missing = missing_runtime_modules()
    if not missing:
        return
    skip = pytest.mark.skip(reason=f"needs {', '.join(missing)}: pip install -e \".[runtimes]\"")
    for item in items:
        if item.get_closest_marker("runtime") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def trained_supernet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A tiny trained supernet's run directory (see the module docstring); shared, so read-only."""
    from supernets.training import SupernetTrainer
    from tests.supernets.tiny import quiet, tiny_config, tiny_digits

    path = tmp_path_factory.mktemp("trained_supernet")
    SupernetTrainer(tiny_config(), path, data=tiny_digits(), progress=False, log=quiet).run()
    before = _digest(path)
    yield path
    assert _digest(path) == before, "a test wrote into the shared trained_supernet run directory (copy it first)"


def _digest(root: Path) -> dict[str, str]:
    from search_spaces.files import sha256_file

    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def smoke_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding `configs` and `latency_tables` (links to the repository's) and `runs/smoke`, the run
    directory of configs/smoke.yaml with every stage done (about 2 minutes, once per session). Returns the
    directory; the lines the run logged are in `smoke.log` there."""
    import os

    from nas.pipeline import run_pipeline

    root = Path(__file__).resolve().parents[1]
    work = tmp_path_factory.mktemp("smoke_workspace")
    for name in ("configs", "latency_tables"):  # what the README's examples name, read only
        (work / name).symlink_to(root / name)
    lines: list[str] = []
    here = Path.cwd()
    os.chdir(work)
    try:
        run_pipeline("configs/smoke.yaml", run_dir="runs/smoke", log=lines.append)
    finally:
        os.chdir(here)
    (work / "smoke.log").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return work
