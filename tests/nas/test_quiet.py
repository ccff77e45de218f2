"""A quiet, true first hour: progress bars only on a terminal, third-party notices off unless `hwnas -v`, exported
files that follow the umask, and an export summary without stray separators."""

from __future__ import annotations

import fcntl
import logging
import os
import pty
import select
import stat
import struct
import subprocess
import sys
import termios
import warnings
from pathlib import Path

import pytest

from latency_tables.build import convert_all, measure_files
from latency_tables.keys import SpaceIndex
from latency_tables.quiet import QUIET_ENV, third_party_quiet
from latency_tables.runtimes import Protocol
from nas.export.picks import pick_line
from search_spaces import get_space
from search_spaces.files import atomic_write_text, current_umask, follow_umask, umask_mode

ROOT = Path(__file__).resolve().parents[2]
#: What the first conversion and measurement wrote to stderr on a fresh clone, one fragment per source.
NOISE = ("absl::InitializeLog()", "oneDNN custom operations", "Failed to load", "_pytree", "XNNPACK delegate",
         "converted in training mode")


# ------------------------------------------------------------------------------------------- progress bars


def _convert_and_measure(tmp_path: Path) -> None:
    """Two barred steps of a table build on the torch runtime (no converter: a second or so)."""
    keys = SpaceIndex(get_space("small")).keys[:3]
    items = [(key, tmp_path / f"k{i}.json") for i, key in enumerate(keys)]
    convert_all("torch", "fp32", items, jobs=1, progress=True)
    measure_files(tmp_path / "rows.csv", items, "torch", Protocol(warmup=0, runs=3, repeats=1),
                  lambda key, m: f"{key.to_str()},{m.median_ms}\n", progress=True, desc="measure", group=2)


def test_progress_bars_stay_off_a_log_file(tmp_path, capsys):
    _convert_and_measure(tmp_path)
    err = capsys.readouterr().err
    assert "\r" not in err and "convert" not in err and "measure" not in err
    assert len((tmp_path / "rows.csv").read_text().splitlines()) == 3  # the work was done


def test_progress_bars_show_on_a_terminal(tmp_path, monkeypatch):
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a new pty is 0 columns wide
    terminal = open(follower, "w", encoding="utf-8", closefd=True)  # noqa: SIM115 - closed below
    try:
        monkeypatch.setattr(sys, "stderr", terminal)
        _convert_and_measure(tmp_path)
        terminal.flush()
        shown = b""
        while select.select([leader], [], [], 0.2)[0]:
            shown += os.read(leader, 65536)
    finally:
        terminal.close()
        os.close(leader)
    assert b"\r" in shown and b"convert" in shown and b"measure" in shown


# ------------------------------------------------------------------------------------ third-party notices


def test_quiet_block_keeps_fd2_and_loggers_off_and_python_stderr_on(capfd):
    before_level = logging.getLogger("torchao").level
    before_env = {name: os.environ.get(name) for name in QUIET_ENV}
    with third_party_quiet(verbose=False):
        os.write(2, b"C++ notice\n")
        logging.getLogger("torchao").warning("Failed to load a binary")
        warnings.warn_explicit("a deprecation", DeprecationWarning, "x.py", 1, module="torchao.quantization")
        assert all(os.environ[name] == value for name, value in QUIET_ENV.items())
        print("our own line", file=sys.stderr)
    err = capfd.readouterr().err
    assert err == "our own line\n"
    assert logging.getLogger("torchao").level == before_level
    assert {name: os.environ.get(name) for name in QUIET_ENV} == before_env


def test_verbose_block_shows_everything(capfd):
    with third_party_quiet(verbose=True):
        os.write(2, b"C++ notice\n")
    assert capfd.readouterr().err == "C++ notice\n"


def test_a_failing_block_restores_fd2_and_keeps_what_it_captured(capfd):
    fd2 = os.fstat(2)
    with pytest.raises(ValueError) as caught, third_party_quiet():
        os.write(2, b"the C++ reason\n")
        raise ValueError("conversion failed")
    assert (os.fstat(2).st_ino, os.fstat(2).st_dev) == (fd2.st_ino, fd2.st_dev)
    assert caught.value.__notes__[0].endswith("\nthe C++ reason")
    assert capfd.readouterr().err == ""
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"


def test_python_stderr_reaches_the_terminal_and_fd2_does_not(tmp_path):
    """In a process of its own, with stderr a real file descriptor: `sys.stderr` is forwarded during the block and
    put back after; a logging handler made inside the block still writes after it."""
    code = (
        "import logging, os, sys\n"
        "from latency_tables.quiet import third_party_quiet\n"
        "with third_party_quiet(False):\n"
        "    os.write(2, b'C++ notice\\n')\n"
        "    handler = logging.StreamHandler()\n"
        "    print('inside', file=sys.stderr)\n"
        "    print('tty' if sys.stderr.isatty() else 'file', file=sys.stderr)\n"
        "assert sys.stderr is sys.__stderr__\n"
        "handler.stream.write('handler after\\n'); handler.stream.flush()\n"
        "print('outside', file=sys.stderr)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stderr == "inside\nfile\nhandler after\noutside\n"


def test_bars_still_show_on_a_terminal_in_a_quiet_block():
    """A process on a terminal: the quiet block hides fd 2's notice, not our progress bar (`sys.stderr` is still a
    terminal) nor our lines."""
    code = ("import os, sys\nfrom tqdm import tqdm\nfrom latency_tables.quiet import third_party_quiet\n"
            "with third_party_quiet(False):\n    os.write(2, b'C++ notice\\n')\n"
            "    for _ in tqdm(range(3), desc='bar', disable=None): pass\n    print('line', file=sys.stderr)\n")
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdin=follower, stdout=follower, stderr=follower)
    os.close(follower)
    shown = b""
    try:
        while select.select([leader], [], [], 30)[0]:
            chunk = os.read(leader, 65536)
            if not chunk:
                break
            shown += chunk
    except OSError:  # the terminal closed when the process ended
        pass
    finally:
        os.close(leader)
    assert proc.wait(timeout=60) == 0
    assert b"\rbar: 100%" in shown and shown.endswith(b"line\r\n") and b"C++ notice" not in shown


def _hwnas_export(supernet: Path, out: Path, umask: int, *flags: str) -> subprocess.CompletedProcess[str]:
    """`hwnas [FLAGS] export` of a small subnet in a fresh process (so its first conversion and measurement)."""
    from nas.evaluators import supernet_space

    arch = supernet_space(supernet)[0].extreme(False, (1, 1, 1, 1)).to_str()
    cmd = [sys.executable, "-m", "nas.cli", *flags, "export", arch, "--supernet", str(supernet), "--out", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, umask=umask, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _modes(out: Path) -> tuple[int, set[int]]:
    """The mode of the one exported directory under `out`, and those of its files (all five present)."""
    (exported,) = out.iterdir()
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in exported.iterdir()}
    assert {"model.safetensors", "model.onnx", "model.tflite", "spec.json", "metrics.json"} <= set(modes)
    return stat.S_IMODE(exported.stat().st_mode), set(modes.values())


@pytest.mark.runtime
def test_hwnas_export_is_quiet_and_follows_the_umask(trained_supernet, tmp_path):
    """No third-party notice on stderr by default; the exported directory 0755 and its files 0644 under umask 022
    (the temporary directory and safetensors' file were private)."""
    done = _hwnas_export(trained_supernet, tmp_path / "subnets", 0o022)
    assert done.stderr == ""
    assert "exported to" in done.stdout and "parity max |diff|" in done.stdout
    assert _modes(tmp_path / "subnets") == (0o755, {0o644})


@pytest.mark.runtime
@pytest.mark.slow
def test_hwnas_verbose_export_shows_the_notices(trained_supernet, tmp_path):
    """With -v every third-party notice shows, but the training-mode one (fixed at its cause); modes follow another
    umask."""
    done = _hwnas_export(trained_supernet, tmp_path / "subnets", 0o027, "-v")
    for fragment in NOISE[:-1]:
        assert fragment in done.stderr, fragment
    assert NOISE[-1] not in done.stderr
    assert _modes(tmp_path / "subnets") == (0o750, {0o640})


# --------------------------------------------------------------------------------------------------- umask


def test_umask_is_read_without_being_changed():
    before = os.umask(0o027)
    try:
        assert current_umask() == 0o027
        assert (umask_mode(), umask_mode(directory=True)) == (0o640, 0o750)
        assert current_umask() == 0o027
    finally:
        os.umask(before)


def test_published_files_follow_the_umask(tmp_path):
    before = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")  # written through a private mkstemp file
        private = tmp_path / "private"
        private.mkdir(mode=0o700)
        (private / "w.bin").write_bytes(b"x")
        os.chmod(private / "w.bin", 0o600)
        follow_umask(private)
    finally:
        os.umask(before)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert stat.S_IMODE(private.stat().st_mode) == 0o755
    assert stat.S_IMODE((private / "w.bin").stat().st_mode) == 0o644


# ------------------------------------------------------------------------------------------ export summary


def _metrics() -> dict:
    return {"latency": {"measured": {"ort-fp32": {"median_ms": 0.0471}, "litert-fp32": {"median_ms": 0.0321}}}}


def test_export_line_without_a_constraint_has_no_stray_separator():
    line = pick_line(0.978, 0.0712, 0.0696, _metrics(), None, 1.4e-6)
    assert line == "accuracy 97.80%, latency predicted 0.0712 ms, measured 0.0696 ms; parity max |diff| 1.4e-06"


def test_export_line_with_a_constraint_gives_its_verdict():
    meets = {"constraint": "latency_ms<=0.1", "measured_ms": 0.0696, "meets_constraint_measured": True}
    assert pick_line(0.978, 0.0712, 0.0696, _metrics(), meets, 1.4e-6) == (
        "accuracy 97.80%, latency predicted 0.0712 ms, measured 0.0696 ms meets latency_ms<=0.1; "
        "parity max |diff| 1.4e-06")
    breaks = {**meets, "constraint": "latency_ms<=0.05", "meets_constraint_measured": False}
    assert pick_line(0.978, 0.0712, 0.0696, _metrics(), breaks, 1.4e-6) == (
        "accuracy 97.80%, latency predicted 0.0712 ms, measured 0.0696 ms BREAKS latency_ms<=0.05 when measured: "
        "not a subnet that meets it; parity max |diff| 1.4e-06")


def test_export_line_without_a_table_gives_each_runtime_measured():
    assert pick_line(0.078, None, None, _metrics(), None, 1.4e-6) == (
        "accuracy 7.80%, latency predicted -, measured ort-fp32 0.0471 ms, litert-fp32 0.0321 ms; "
        "parity max |diff| 1.4e-06")


def test_a_failing_command_prints_what_third_parties_wrote_after_its_error(monkeypatch, capfd):
    import nas.cli
    from search_spaces.errors import HwnasError

    def failing(args):
        os.write(2, b"E0000 converter.cc:12] unsupported op\n")
        raise HwnasError("conversion of k00001 failed")

    monkeypatch.setattr(nas.cli.space, "cmd_space_list", failing)
    assert nas.cli.main(["space", "list"]) == 2
    err = capfd.readouterr().err.splitlines()
    assert err[0] == "hwnas: error: conversion of k00001 failed"
    assert err[-1] == "E0000 converter.cc:12] unsupported op"
    assert nas.cli.main(["-v", "space", "list"]) == 2  # shown as it happens, before the error
    assert capfd.readouterr().err.splitlines() == ["E0000 converter.cc:12] unsupported op",
                                                   "hwnas: error: conversion of k00001 failed"]
