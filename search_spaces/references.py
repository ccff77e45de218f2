"""Published networks written in the architecture language (ImageNet, 224 px, 3 channels, 1000 classes).

Each table is written one row per line of the paper's table, as torchvision writes it; built with
`supernets.build_model` they have exactly torchvision's parameter counts (checked by the tests).
"""

from __future__ import annotations

from collections.abc import Callable

from search_spaces.arch import ArchConfig, BlockConfig, HeadConfig, StemConfig
from search_spaces.errors import ArchError
from search_spaces.families import make_divisible

_IMAGENET = {"resolution": 224, "in_channels": 3, "num_classes": 1000}

#: Published multiply-accumulates (millions) at 224 px, from the papers / torchvision (REFERENCES.md).
PUBLISHED_MACS_M: dict[str, float] = {
    "mobilenet_v2": 300.0,
    "mobilenet_v3_large": 217.0,
    "mobilenet_v3_small": 56.0,
    "shufflenet_v2_x0_5": 41.0,
    "shufflenet_v2_x1_0": 146.0,
    "efficientnet_b0": 390.0,
}

#: Parameter counts of the torchvision builds (weights metadata `num_params`).
TORCHVISION_PARAMS: dict[str, int] = {
    "mobilenet_v2": 3_504_872,
    "mobilenet_v3_large": 5_483_032,
    "mobilenet_v3_small": 2_542_856,
    "shufflenet_v2_x0_5": 1_366_792,
    "shufflenet_v2_x1_0": 2_278_604,
    "efficientnet_b0": 5_288_548,
}


def _repeat(family: str, kernel: int, expand: float, out: int, repeats: int, stride: int) -> tuple[BlockConfig, ...]:
    """A stage of `repeats` blocks; only the first one strides."""
    return tuple(BlockConfig(family, kernel, expand, out, stride if i == 0 else 1) for i in range(repeats))


def mobilenet_v2() -> ArchConfig:
    # Sandler et al. 2018, Table 2:  t (expand), c (out), n (repeats), s (stride)
    rows = [
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ]
    stages = tuple(_repeat("mbv2", 3, t, c, n, s) for t, c, n, s in rows)
    return ArchConfig(**_IMAGENET, stem=StemConfig(32, 3, 2, "relu6"), stages=stages,
                      head=HeadConfig(1280, 0, "relu6"))


def _bneck(in_ch: int, kernel: int, expanded: int, out: int, se: bool, act: str, stride: int) -> BlockConfig:
    """One MobileNetV3 table row; the expanded width becomes a ratio that rounds back to it exactly."""
    ratio = round(expanded / in_ch, 2)
    if (in_ch if ratio == 1 else make_divisible(in_ch * ratio)) != expanded:
        raise ArchError(f"bneck row {in_ch}->{expanded}: ratio {ratio} does not reproduce the expanded width")
    return BlockConfig("mbv3", kernel, ratio, out, stride, 0.25 if se else 0.0, {"RE": "relu", "HS": "hswish"}[act])


def _mobilenet_v3(stage_rows: list[list[tuple]], last_conv: int, hidden: int) -> ArchConfig:
    stages = tuple(tuple(_bneck(*row) for row in rows) for rows in stage_rows)
    return ArchConfig(**_IMAGENET, stem=StemConfig(16, 3, 2, "hswish"), stages=stages,
                      head=HeadConfig(last_conv, hidden, "hswish"))


def mobilenet_v3_large() -> ArchConfig:
    # Howard et al. 2019, Table 1: in, kernel, expanded, out, SE, activation, stride
    return _mobilenet_v3([
        [(16, 3, 16, 16, False, "RE", 1)],
        [(16, 3, 64, 24, False, "RE", 2),
         (24, 3, 72, 24, False, "RE", 1)],
        [(24, 5, 72, 40, True, "RE", 2),
         (40, 5, 120, 40, True, "RE", 1),
         (40, 5, 120, 40, True, "RE", 1)],
        [(40, 3, 240, 80, False, "HS", 2),
         (80, 3, 200, 80, False, "HS", 1),
         (80, 3, 184, 80, False, "HS", 1),
         (80, 3, 184, 80, False, "HS", 1),
         (80, 3, 480, 112, True, "HS", 1),
         (112, 3, 672, 112, True, "HS", 1)],
        [(112, 5, 672, 160, True, "HS", 2),
         (160, 5, 960, 160, True, "HS", 1),
         (160, 5, 960, 160, True, "HS", 1)],
    ], last_conv=960, hidden=1280)


def mobilenet_v3_small() -> ArchConfig:
    # Howard et al. 2019, Table 2: in, kernel, expanded, out, SE, activation, stride
    return _mobilenet_v3([
        [(16, 3, 16, 16, True, "RE", 2)],
        [(16, 3, 72, 24, False, "RE", 2),
         (24, 3, 88, 24, False, "RE", 1)],
        [(24, 5, 96, 40, True, "HS", 2),
         (40, 5, 240, 40, True, "HS", 1),
         (40, 5, 240, 40, True, "HS", 1),
         (40, 5, 120, 48, True, "HS", 1),
         (48, 5, 144, 48, True, "HS", 1)],
        [(48, 5, 288, 96, True, "HS", 2),
         (96, 5, 576, 96, True, "HS", 1),
         (96, 5, 576, 96, True, "HS", 1)],
    ], last_conv=576, hidden=1024)


def _shufflenet_v2(widths: tuple[int, int, int]) -> ArchConfig:
    # Ma et al. 2018, Table 5: stages 2-4 repeat 4, 8, 4 units; conv1 24 channels + max pool; conv5 1024.
    stages = tuple(_repeat("shufflev2", 3, 1, c, n, 2) for c, n in zip(widths, (4, 8, 4), strict=True))
    return ArchConfig(**_IMAGENET, stem=StemConfig(24, 3, 2, "relu", maxpool=True), stages=stages,
                      head=HeadConfig(1024, 0, "relu"))


def shufflenet_v2_x0_5() -> ArchConfig:
    return _shufflenet_v2((48, 96, 192))


def shufflenet_v2_x1_0() -> ArchConfig:
    return _shufflenet_v2((116, 232, 464))


def efficientnet_b0() -> ArchConfig:
    # Tan & Le 2019, Table 1: expand, kernel, stride, out, repeats
    rows = [
        (1, 3, 1, 16, 1),
        (6, 3, 2, 24, 2),
        (6, 5, 2, 40, 2),
        (6, 3, 2, 80, 3),
        (6, 5, 1, 112, 3),
        (6, 5, 2, 192, 4),
        (6, 3, 1, 320, 1),
    ]
    stages = tuple(_repeat("effnet", k, e, c, n, s) for e, k, s, c, n in rows)
    return ArchConfig(**_IMAGENET, stem=StemConfig(32, 3, 2, "swish"), stages=stages,
                      head=HeadConfig(1280, 0, "swish"))


REFERENCES: dict[str, Callable[[], ArchConfig]] = {
    "mobilenet_v2": mobilenet_v2,
    "mobilenet_v3_large": mobilenet_v3_large,
    "mobilenet_v3_small": mobilenet_v3_small,
    "shufflenet_v2_x0_5": shufflenet_v2_x0_5,
    "shufflenet_v2_x1_0": shufflenet_v2_x1_0,
    "efficientnet_b0": efficientnet_b0,
}


def reference(name: str) -> ArchConfig:
    """The published network `name` as an `ArchConfig`."""
    try:
        return REFERENCES[name]()
    except KeyError:
        raise ArchError(f"unknown reference network {name!r}; known: {', '.join(REFERENCES)}") from None
