"""Torch's thread count, changed only inside a context that restores it (a library user's process is left as
it was)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with `threads` intra-op torch threads (None or < 1: leave the setting alone), then restore."""
    if threads is None or threads < 1:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
