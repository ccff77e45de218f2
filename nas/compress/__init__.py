"""Compression of chosen subnets: channel importance (`channel_importance`, torch) and latency-aware allocation of
the channels each group keeps (`allocate`, torch-free), giving a `search_spaces.plans.PrunePlan` that
`nas.export.prune.prune_model` replays on the parent's weights.

The allocator's names are bound here on import (so `nas.compress.allocate` is the function, which shadows its
module of the same name: import the module's other names with `from nas.compress.allocate import ...`); the
importance names are imported on first use (PEP 562), so that the torch-free allocator does not pay for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from nas.compress.allocate import (
    METHODS,
    Allocation,
    AllocationError,
    allocate,
    allocate_latency,
    predicted_latency,
    width_options,
)

if TYPE_CHECKING:
    from nas.compress.importance import IMPORTANCE, channel_importance, group_writers

__all__ = ["IMPORTANCE", "METHODS", "Allocation", "AllocationError", "allocate", "allocate_latency",
           "channel_importance", "group_writers", "predicted_latency", "width_options"]

#: Lazily imported name -> the module that defines it.
_HOMES = {name: "nas.compress.importance" for name in ("IMPORTANCE", "channel_importance", "group_writers")}


def __getattr__(name: str) -> Any:
    """An exported name, imported from its module on first access (then kept as a module attribute)."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
