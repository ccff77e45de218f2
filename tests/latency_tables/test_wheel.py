"""The wheel ships the latency tables, so a non-editable install has its default tables."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from latency_tables.table import SHIPPED, shipped_tables

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("search_spaces", "supernets", "latency_tables", "nas")


def test_the_wheel_holds_every_shipped_table(tmp_path):
    source = tmp_path / "src"  # a copy, so the build leaves nothing in the working tree
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__", "models"))
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation",
                          "--no-index", "-q", "-w", str(tmp_path / "dist")], cwd=source, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("hwnas-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    tables = shipped_tables()
    assert len(tables) >= 6
    for table in tables:
        for name in ("table.csv", "meta.json", "networks.csv"):
            assert f"latency_tables/data/{table.name}/{name}" in names
    assert not [n for n in names if "/models/" in n or n.endswith((".onnx", ".tflite"))]
    assert "latency_tables/kit_runner.py" in names and SHIPPED.name == "data"
