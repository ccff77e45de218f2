"""The compression package: every exported name resolves, and its allocators load no torch."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_exported_name_resolves_and_the_allocators_need_no_torch():
    code = ("import sys, nas.compress as c; t = 'torch' in sys.modules; "
            "missing = [n for n in c.__all__ if not hasattr(c, n)]; print(t, missing, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.split() == ["False", "[]", "True"]  # torch only once a torch name is asked for
