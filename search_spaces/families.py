"""Block families: each registered once, with the knobs it supports and its channel arithmetic.

The torch blocks (supernets) and the analytic counters (latency_tables) both take their channel widths
from here, so a family's widths are defined in one place.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from search_spaces.errors import ArchError

#: Activations a block, stem or head may use (the SE gates are fixed per family, not chosen).
ACTIVATIONS: tuple[str, ...] = ("relu", "relu6", "hswish", "swish")


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round `value` to the nearest multiple of `divisor`, never below 90% of it (MobileNet/TF rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


@dataclass(frozen=True)
class Family:
    """What a block family supports. A knob with one allowed value is fixed and not written in strings."""

    name: str
    summary: str
    kernels: tuple[int, ...]
    strides: tuple[int, ...]
    activations: tuple[str, ...]
    se_ratios: tuple[float, ...]
    has_expand: bool
    # Which width the SE squeeze is a fraction of, and the divisor it is rounded to (1 = floor, min 1).
    se_base: str = "mid"
    se_divisor: int = 8
    se_gate: str = "hsigmoid"
    se_inner_act: str = "relu"
    even_channels: bool = False
    #: Which implementation builds it: the torch blocks (static and elastic) and the analytic tracer are
    #: registered per kind (`inverted_residual`, `fused`, `shuffle`), so a family of an existing kind is this
    #: one entry and a new kind adds one file per layer.
    kind: str = "inverted_residual"
    #: A two-branch unit (ShuffleNet): split into halves at stride 1 with equal widths, branches concatenated and
    #: shuffled, no residual; its middle width is the transformed branch's inner width. Otherwise a residual block.
    branched: bool = False
    #: What the family's block computes, by revision: bump it whenever its computation (and so its measured
    #: latency) changes. Latency tables and supernet checkpoints record the revisions they were made at; a table
    #: build re-measures the keys of a family whose revision moved. Torch-free, so pricing can read it.
    revision: int = 1

    @property
    def act_is_knob(self) -> bool:
        return len(self.activations) > 1

    @property
    def se_is_knob(self) -> bool:
        return len(self.se_ratios) > 1

    def mid_channels(self, in_channels: int, expand: float) -> int:
        """Width after the expansion layer; equal to the input when there is no expansion layer."""
        if not self.has_expand or expand == 1.0:
            return in_channels
        return make_divisible(in_channels * expand, 8)

    def se_channels(self, in_channels: int, mid_channels: int, se_ratio: float) -> int:
        """Squeeze width of the SE module: MobileNetV3 squeezes the expanded width, EfficientNet the input."""
        base = mid_channels if self.se_base == "mid" else in_channels
        squeezed = math.floor(base * se_ratio)
        if self.se_divisor > 1:
            return make_divisible(squeezed, self.se_divisor)
        return max(1, squeezed)


_KERNELS = (3, 5, 7)
_STRIDES = (1, 2)

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "mbv2",
            "MobileNetV2 inverted residual: [1x1 expand] -> kxk depthwise -> 1x1 linear project, ReLU6",
            _KERNELS, _STRIDES, ("relu6",), (0.0,), has_expand=True,
        ),
        Family(
            "mbv3",
            "MobileNetV3 bneck: inverted residual with optional SE (hard-sigmoid gate) and ReLU or h-swish",
            _KERNELS, _STRIDES, ("relu", "hswish"), (0.0, 0.25), has_expand=True,
        ),
        Family(
            "effnet",
            "EfficientNet MBConv: inverted residual with SE (sigmoid gate, squeeze = input/4) and swish",
            _KERNELS, _STRIDES, ("swish",), (0.25,), has_expand=True,
            se_base="in", se_divisor=1, se_gate="sigmoid", se_inner_act="swish",
        ),
        Family(
            "fused",
            "EfficientNetV2 fused MBConv: kxk expand conv -> 1x1 project (one kxk conv when expand is 1), swish",
            _KERNELS, _STRIDES, ("swish",), (0.0,), has_expand=True, kind="fused",
        ),
        Family(
            "shufflev2",
            "ShuffleNetV2 unit: channel split + shuffle (stride 1, in == out), two-branch unit otherwise, ReLU",
            _KERNELS, _STRIDES, ("relu",), (0.0,), has_expand=False, even_channels=True, kind="shuffle", branched=True,
            # 2: the split takes the odd channels and keeps the even ones in place (was `chunk(2)`)
            revision=2,
        ),
    )
}

MAX_EXPAND = 8.0
MAX_CHANNELS = 8192


#: Implementation kinds a family may name; each layer (static blocks, elastic blocks, analytic tracer) registers
#: one implementation per kind, and a conformance test checks that every kind has all of them.
KINDS: tuple[str, ...] = ("inverted_residual", "fused", "shuffle")


def block_revisions() -> dict[str, int]:
    """The revision of every registered family (what tables and checkpoints record)."""
    return {name: fam.revision for name, fam in sorted(FAMILIES.items())}


def changed_families(recorded: dict[str, int], families: Iterable[str] | None = None) -> list[str]:
    """The families (of `families`; default every family either side names) whose revision in `recorded` is not
    this hwnas's; a family missing from either side is at revision 1. Shared by latency tables and checkpoints."""
    now = block_revisions()
    names = set(now) | set(recorded) if families is None else set(families)
    return sorted(f for f in names if recorded.get(f, 1) != now.get(f, 1))


def get_family(name: str) -> Family:
    """The registered family called `name`, or an error listing the known ones."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ArchError(f"unknown block family {name!r}; known families: {', '.join(FAMILIES)}") from None
