"""File and process helpers every layer may use (no torch, nothing of ours imported).

Writes are atomic and durable: a temporary file beside the target is flushed and fsynced, renamed onto the
target, and the directory is fsynced, so after a crash or power loss the target holds either the old or the new
content, never a torn one. What is published follows the user's umask (`follow_umask`), although temporary files
and directories are created private. Process-wide settings (CPU affinity) change only inside a context that
restores them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (renames, new files) to disk; a no-op where directories cannot be opened."""
    with contextlib.suppress(OSError):
        fd = os.open(str(path), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_file(path: Path) -> None:
    """Flush one file's content to disk."""
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def current_umask() -> int:
    """This process's umask. Linux tells it in /proc/self/status; elsewhere `os.umask` is the only way to read it,
    which sets it, so it is put back at once."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def umask_mode(directory: bool = False) -> int:
    """The mode a new file (0666) or directory (0777) gets under this process's umask."""
    return (0o777 if directory else 0o666) & ~current_umask()


def follow_umask(path: Path) -> None:
    """Give `path`, and everything under it when it is a directory, the modes new files and directories get under
    the umask: temporary ones (`tempfile.mkdtemp` 0700, `mkstemp` 0600) are private, published ones are not."""
    path = Path(path)
    file_mode, dir_mode = umask_mode(), umask_mode(directory=True)
    if path.is_dir():
        for item in path.rglob("*"):
            if not item.is_symlink():
                os.chmod(item, dir_mode if item.is_dir() else file_mode)
    os.chmod(path, dir_mode if path.is_dir() else file_mode)


@contextlib.contextmanager
def atomic_path(path: Path, mode: int | None = None) -> Iterator[Path]:
    """A temporary path beside `path` (same suffix) for the block to write; when the block succeeds the file is
    fsynced, given `mode` (default: what the umask gives a new file) and renamed onto `path` (and the directory
    fsynced). On an error the temporary file is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        fsync_file(Path(tmp))
        os.chmod(tmp, umask_mode() if mode is None else mode)  # mkstemp makes files private
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically and durably (see `atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    """Write UTF-8 `text` to `path` atomically and durably (see `atomic_path`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def pinned_to_cpu(cpu: int | None) -> Iterator[bool]:
    """Pin this process to `cpu` for the block (nn-Meter's protocol), then give it back the CPUs it had. Yields
    whether it is pinned (not when `cpu` is None, pinning is unsupported, or the CPU is not available)."""
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        yield False
        return
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError:
        yield False
        return
    try:
        yield True
    finally:
        os.sched_setaffinity(0, before)
