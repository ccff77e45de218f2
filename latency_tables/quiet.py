"""Third-party notices kept off a command's output unless asked for (`hwnas -v`).

The first conversion or measurement imports TensorFlow's and LiteRT's C++ runtimes, torchao and torch.export, which
tell the user things that are no problem of the run: absl's "All log messages before absl::InitializeLog()",
oneDNN's custom-operations notice, XNNPACK's "Created TensorFlow Lite XNNPACK delegate" (C++ writing to file
descriptor 2, out of Python's reach), torchao failing to load binaries built for another Python, and torch's
`_pytree` deprecation (Python loggers). `third_party_quiet` sends file descriptor 2 to a temporary file for a block
while Python's `sys.stderr` (our log lines, error messages, progress bars) still reaches the terminal, raises
those loggers' levels, ignores warnings attributed to those packages, and sets their environment; everything is
put back on exit, also on an error, when the captured text is added to the error as a note so nothing is hidden.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from typing import IO, Any, cast

#: Loggers whose warnings are notices about the installation, not the run: raised to ERROR in a quiet block.
QUIET_LOGGERS = ("torchao", "torch.utils._pytree", "torch._export", "absl", "tensorflow", "litert_torch")
#: Packages whose warnings (`warnings.warn`, attributed to the calling module) a quiet block ignores.
QUIET_WARNING_MODULES = r"(torchao|torch\.(export|onnx|_export|utils\._pytree|ao)|tensorflow|litert_torch|" \
                        r"ai_edge_litert|ai_edge_quantizer|onnxruntime|onnx)(\.|$)"
#: Environment the C++ runtimes read when they load: their info and warning logs off.
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "GLOG_minloglevel": "3"}
#: How much of the captured output a failing block's error note keeps (its end: what led to the failure).
NOTE_CHARS = 20_000


@contextlib.contextmanager
def third_party_quiet(verbose: bool = False) -> Iterator[None]:
    """Third-party notices silenced for the block (see the module docstring); `verbose` leaves everything as is."""
    if verbose:
        yield
        return
    with tempfile.TemporaryFile() as captured:
        try:
            with scoped_env(QUIET_ENV), _fd2_to(captured), _loggers_at_error(QUIET_LOGGERS), \
                    warnings.catch_warnings():
                warnings.filterwarnings("ignore", module=QUIET_WARNING_MODULES)
                yield
        except BaseException as err:
            text = _tail(captured, NOTE_CHARS).rstrip("\n")
            if text.strip():
                err.add_note(f"(output of third-party libraries before the error, shown with hwnas -v)\n{text}")
            raise


@contextlib.contextmanager
def scoped_env(values: Mapping[str, str]) -> Iterator[None]:
    """Environment variables set for the block, then put back as they were (set or unset)."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _loggers_at_error(names: tuple[str, ...]) -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


class _Forward(io.TextIOBase):
    """`sys.stderr` during a quiet block: writes to the terminal's descriptor (a copy of fd 2 from before the
    block); afterwards to the stream `sys.stderr` was, so a handler that took it inside the block keeps working."""

    def __init__(self, fd: int, original: Any) -> None:
        super().__init__()
        self._original = original
        self._target: Any = io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), line_buffering=True,
                                             encoding=getattr(original, "encoding", None) or "utf-8",
                                             errors="backslashreplace")

    def write(self, text: str) -> int:
        return int(self._target.write(text))

    def flush(self) -> None:
        self._target.flush()

    def fileno(self) -> int:
        return int(self._target.fileno())

    def isatty(self) -> bool:
        return bool(self._target.isatty())

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return str(self._target.encoding)

    def writable(self) -> bool:
        return True

    def retarget(self) -> None:
        """From now on write where `sys.stderr` wrote before the block."""
        self._target.flush()
        self._target.close()  # the wrapper only: the descriptor is closed by `_fd2_to`
        self._target = self._original


def _writes_to_fd2(stream: Any) -> bool:
    try:
        return bool(stream.fileno() == 2)
    except (AttributeError, OSError, ValueError):  # pytest's capsys, a StringIO: nothing of ours reaches fd 2
        return False


def _flush(*streams: Any) -> None:
    for stream in streams:
        with contextlib.suppress(AttributeError, OSError, ValueError):
            stream.flush()


@contextlib.contextmanager
def _fd2_to(file: IO[bytes]) -> Iterator[None]:
    """File descriptor 2 (what C++ and child processes write) goes to `file` for the block; `sys.stderr` keeps
    writing where it did."""
    original = sys.stderr
    _flush(sys.stdout, original)
    terminal = os.dup(2)
    forward = _Forward(terminal, original) if _writes_to_fd2(original) else None
    os.dup2(file.fileno(), 2)
    if forward is not None:
        sys.stderr = cast(Any, forward)
    try:
        yield
    finally:
        _flush(sys.stdout, sys.stderr, original)
        if forward is not None:
            sys.stderr = original
            forward.retarget()
        os.dup2(terminal, 2)
        os.close(terminal)


def _tail(file: IO[bytes], chars: int) -> str:
    """The last `chars` characters written to `file` (decoded leniently)."""
    file.flush()
    size = file.seek(0, os.SEEK_END)
    file.seek(max(0, size - 4 * chars))
    return file.read().decode("utf-8", errors="replace")[-chars:]
