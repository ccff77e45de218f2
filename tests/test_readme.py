"""Every command in the README runs: the two top commands are CI's and the quickstart's own; each `hwnas ...`
example is run here, as written, in the smoke run's working directory (`smoke_workspace`), and must exit 0."""

from __future__ import annotations

import glob
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    """The command lines of the README's bash blocks (continuation lines joined, comments dropped)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line:
                commands.append(line)
    return commands


def test_the_readme_has_the_two_commands_and_they_are_what_ci_and_the_quickstart_run():
    commands = readme_commands()
    assert commands[:2] == ["bash scripts/quickstart.sh", "bash .ci/run"]
    assert "hwnas run configs/quickstart.yaml" in (ROOT / "scripts" / "quickstart.sh").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert 'pip install -q -e ".[dev,runtimes]" && .venv/bin/python -m pytest -q' in ci
    assert all(c.startswith("hwnas ") for c in commands[2:]), commands[2:]


def _dashboard_serves(args: list[str], cwd: Path) -> str:
    """Start `hwnas dashboard` (on a free port instead of 8080), wait for its URL, stop it."""
    proc = subprocess.Popen([sys.executable, "-m", "nas.cli", *args, "--port", "0"], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "http://127.0.0.1:" in line, line
        return line
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.mark.runtime
def test_every_hwnas_example_in_the_readme_runs(smoke_workspace, monkeypatch, capsys):
    from nas.cli import main

    monkeypatch.chdir(smoke_workspace)
    ran = []
    for command in readme_commands()[2:]:
        words = [w for word in shlex.split(command)[1:] for w in (sorted(glob.glob(word)) if "*" in word else [word])]
        if words[0] == "dashboard":
            assert "optuna-dashboard for" in _dashboard_serves(words, smoke_workspace)
        else:
            code = main(words)
            assert code == 0, f"{command}: exit {code}\n{capsys.readouterr().err}"
        ran.append(words[0])
    out = capsys.readouterr().out
    assert "skipped (done" in out  # the smoke run again: everything done
    assert ran.count("run") == 2 and {"report", "search", "export", "compress", "dashboard"} <= set(ran)
    assert os.path.isdir("runs/smoke-search") and os.path.isdir("runs/smoke-export")
    assert len(glob.glob("runs/smoke-compressed/*/compress.json")) == 1
