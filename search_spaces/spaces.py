"""The named search spaces hwnas ships. `get_space(name)` is the only way the rest of hwnas names one."""

from __future__ import annotations

from collections.abc import Callable

from search_spaces.arch import HeadConfig, StemConfig
from search_spaces.errors import SpaceError
from search_spaces.space import SearchSpace, StageSpec


def small(*, in_channels: int = 1, num_classes: int = 10) -> SearchSpace:
    """28-32 px inputs (MNIST, CIFAR): all five families mixed across four stages; trains on a laptop CPU."""
    kernels, expands = (3, 5, 7), (2.0, 3.0, 4.0)
    return SearchSpace(
        name="small",
        resolutions=(24, 28, 32),
        in_channels=in_channels,
        num_classes=num_classes,
        stem=StemConfig(16, 3, 2, "hswish"),
        stages=(
            StageSpec(("mbv2", "fused"), (16, 24), (1, 2), 1, kernels, expands, act="relu"),
            StageSpec(("mbv3", "mbv2", "shufflev2"), (24, 32), (1, 2, 3), 2, kernels, expands, act="relu", se=0.25),
            StageSpec(("effnet", "mbv3", "shufflev2"), (40, 48), (1, 2, 3), 2, kernels, expands, act="hswish"),
            StageSpec(("mbv3", "effnet", "fused"), (64, 80), (1, 2, 3), 1, kernels, expands, act="hswish", se=0.25),
        ),
        head=HeadConfig(256, 0, "hswish"),
        description=small.__doc__ or "",
    )


def imagenet(*, in_channels: int = 3, num_classes: int = 1000) -> SearchSpace:
    """160-224 px, once-for-all's MobileNetV3 space (kernel 3/5/7, expand 3/4/6, depth 2/3/4) plus the
    other families per stage and two widths per stage (the larger is once-for-all's width 1.0)."""
    kernels, expands, depths = (3, 5, 7), (3.0, 4.0, 6.0), (2, 3, 4)
    return SearchSpace(
        name="imagenet",
        resolutions=(160, 176, 192, 208, 224),
        in_channels=in_channels,
        num_classes=num_classes,
        stem=StemConfig(16, 3, 2, "hswish"),
        stages=(
            # Once-for-all keeps the first bneck fixed: 3x3 depthwise, no expansion, 16 channels.
            StageSpec(("mbv3",), (16,), (1,), 1, (3,), (1.0,), act="relu"),
            StageSpec(("mbv3", "mbv2", "fused"), (16, 24), depths, 2, kernels, expands, act="relu"),
            StageSpec(("mbv3", "effnet", "fused", "shufflev2"), (32, 40), depths, 2, kernels, expands,
                      act="relu", se=0.25),
            StageSpec(("mbv3", "effnet", "shufflev2"), (64, 80), depths, 2, kernels, expands, act="hswish"),
            StageSpec(("mbv3", "effnet"), (96, 112), depths, 1, kernels, expands, act="hswish", se=0.25),
            StageSpec(("mbv3", "effnet", "shufflev2"), (128, 160), depths, 2, kernels, expands,
                      act="hswish", se=0.25),
        ),
        head=HeadConfig(960, 1280, "hswish"),
        description=imagenet.__doc__ or "",
    )


SPACES: dict[str, Callable[..., SearchSpace]] = {"small": small, "imagenet": imagenet}


def get_space(name: str, *, in_channels: int | None = None, num_classes: int | None = None) -> SearchSpace:
    """The named space, optionally for another number of input channels or classes."""
    try:
        factory = SPACES[name]
    except KeyError:
        raise SpaceError(f"unknown search space {name!r}; known spaces: {', '.join(SPACES)}") from None
    overrides = {k: v for k, v in (("in_channels", in_channels), ("num_classes", num_classes)) if v is not None}
    return factory(**overrides)
