"""The `Cost` of an architecture: counts defined once, units in the names."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from search_spaces.errors import HwnasError

#: Bytes per tensor element for the precisions hwnas prices.
DTYPE_BYTES: dict[str, int] = {"fp32": 4, "fp16": 2, "int8": 1}


def dtype_bytes(dtype: str) -> int:
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise HwnasError(f"unknown dtype {dtype!r}; allowed: {', '.join(DTYPE_BYTES)}") from None


def flops_from_macs(macs: Any) -> Any:
    """FLOPs = 2 x MACs (one multiply and one add per multiply-accumulate). The only place this is said."""
    return 2 * macs


@dataclass(frozen=True)
class Cost:
    """Costs of one architecture. Element counts are exact integers; bytes follow from `dtype`.

    params: trainable parameters (BatchNorm scale and shift included, as torch counts them).
    macs: multiply-accumulates of convolutions and linear layers (see docs/costs.md for what is counted).
    memory_access: elements read and written, per layer, with BatchNorm folded into the convolution.
    peak_activation: the most activation elements alive at once when layers run one after another.
    latency_ms: predicted latency per lookup-table id (empty for analytic costs).
    """

    params: int
    macs: int
    memory_access: int
    peak_activation: int
    dtype: str = "fp32"
    latency_ms: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        dtype_bytes(self.dtype)
        object.__setattr__(self, "latency_ms", MappingProxyType(dict(self.latency_ms)))

    @property
    def flops(self) -> int:
        return int(flops_from_macs(self.macs))

    @property
    def memory_access_bytes(self) -> int:
        return self.memory_access * dtype_bytes(self.dtype)

    @property
    def peak_activation_bytes(self) -> int:
        return self.peak_activation * dtype_bytes(self.dtype)

    def to_dict(self) -> dict[str, Any]:
        """Plain data with the DESIGN.md field names (what `hwnas arch cost --json` prints)."""
        return {
            "params": self.params,
            "macs": self.macs,
            "flops": self.flops,
            "memory_access": self.memory_access,
            "memory_access_bytes": self.memory_access_bytes,
            "peak_activation": self.peak_activation,
            "peak_activation_bytes": self.peak_activation_bytes,
            "dtype": self.dtype,
            "latency_ms": dict(self.latency_ms),
        }
