"""The import direction of DESIGN.md: search_spaces <- supernets <- latency_tables <- nas, no cycles."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["search_spaces", "supernets", "latency_tables", "nas"]
# Files that must not need torch even though their package may use it elsewhere.
TORCH_FREE = ["search_spaces", "latency_tables/counting.py", "latency_tables/analytic.py", "latency_tables/cost.py",
              "nas/compress/allocate.py", "nas/compress/bits.py", "nas/compress/__init__.py"]


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", ORDER)
def test_packages_import_only_lower_layers(package):
    forbidden = set(ORDER[ORDER.index(package) + 1:])
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = imported_roots(path) & forbidden
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}; allowed direction: {' <- '.join(ORDER)}"


def test_torch_free_modules_do_not_import_torch():
    files = []
    for entry in TORCH_FREE:
        target = ROOT / entry
        files += sorted(target.rglob("*.py")) if target.is_dir() else [target]
    assert len(files) >= 8
    for path in files:
        assert "torch" not in imported_roots(path), f"{path.relative_to(ROOT)} imports torch"


def test_costing_an_architecture_loads_no_torch():
    code = ("import sys, search_spaces, latency_tables.analytic as a; "
            "a.AnalyticCostModel().estimate(search_spaces.reference('mobilenet_v2')); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"
