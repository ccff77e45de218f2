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
    """Bytes per element of `dtype`, or an error naming the precisions hwnas prices."""
    return DTYPE_BYTES[check_precision(dtype, "dtype")]


def check_precision(value: Any, what: str) -> str:
    """`value` if it is a precision hwnas prices; a `HwnasError` naming `what` and the allowed ones otherwise."""
    if not isinstance(value, str) or value not in DTYPE_BYTES:
        raise HwnasError(f"unknown {what} {value!r}; allowed: {', '.join(DTYPE_BYTES)}")
    return value


def flops_from_macs(macs: Any) -> Any:
    """FLOPs = 2 x MACs (one multiply and one add per multiply-accumulate). The only place this is said."""
    return 2 * macs


@dataclass(frozen=True)
class Cost:
    """Costs of one architecture. Element counts are exact integers; bytes follow each layer's precision.

    params: trainable parameters (BatchNorm scale and shift included, as torch counts them).
    macs: multiply-accumulates of convolutions and linear layers (see docs/costs.md for what is counted).
    memory_access: elements read and written, per layer, with BatchNorm folded into the convolution.
    peak_activation: the most activation elements alive at once when layers run one after another.
    dtype: the network's precision, that of every layer `precision` does not name.
    latency_ms: predicted latency per lookup-table id (empty for analytic costs).
    precision: layer id -> precision ("fp32", "fp16", "int8"); empty when every layer runs at `dtype`.
    mixed_bytes: (memory access, peak activation) in bytes, each op at its layer's precision; given exactly when
        some layer's precision differs from `dtype` (otherwise bytes are elements x bytes of `dtype`).
    """

    params: int
    macs: int
    memory_access: int
    peak_activation: int
    dtype: str = "fp32"
    latency_ms: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    precision: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    mixed_bytes: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        dtype_bytes(self.dtype)
        object.__setattr__(self, "latency_ms", MappingProxyType(dict(self.latency_ms)))
        for layer, value in self.precision.items():
            check_precision(value, f"precision of layer {layer!r}")
        object.__setattr__(self, "precision", MappingProxyType(dict(self.precision)))
        if self.mixed and self.mixed_bytes is None:
            raise HwnasError("a Cost whose layers differ in precision needs mixed_bytes (priced per layer)")
        if not self.mixed and self.mixed_bytes is not None:
            raise HwnasError(f"mixed_bytes are for layers at other precisions than {self.dtype}; none is")

    @property
    def mixed(self) -> bool:
        """Whether some layer runs at another precision than `dtype`."""
        return any(p != self.dtype for p in self.precision.values())

    def precision_of(self, layer_id: str) -> str:
        """The precision layer `layer_id` runs at."""
        return self.precision.get(layer_id, self.dtype)

    @property
    def flops(self) -> int:
        return int(flops_from_macs(self.macs))

    @property
    def memory_access_bytes(self) -> int:
        if self.mixed_bytes is not None:
            return self.mixed_bytes[0]
        return self.memory_access * dtype_bytes(self.dtype)

    @property
    def peak_activation_bytes(self) -> int:
        if self.mixed_bytes is not None:
            return self.mixed_bytes[1]
        return self.peak_activation * dtype_bytes(self.dtype)

    def to_dict(self) -> dict[str, Any]:
        """Plain data with the DESIGN.md field names (what `hwnas arch cost --json` prints); `precision` (layer id
        -> precision) only when layers differ from `dtype`."""
        data = {
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
        if self.mixed:
            data["precision"] = dict(self.precision)
        return data
