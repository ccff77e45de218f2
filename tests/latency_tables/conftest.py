import pytest

from search_spaces import HeadConfig, SearchSpace, StageSpec, StemConfig
from search_spaces import spaces as spaces_module


def tiny(*, in_channels: int = 1, num_classes: int = 4) -> SearchSpace:
    """Every family, two resolutions, small enough that a whole table builds in seconds."""
    return SearchSpace(
        name="tiny", resolutions=(12, 16), in_channels=in_channels, num_classes=num_classes,
        stem=StemConfig(8, 3, 2, "relu"),
        stages=(StageSpec(("mbv3", "fused"), (8, 16), (1, 2), 2, (3, 5), (2.0,), act="hswish", se=0.25),
                StageSpec(("effnet", "shufflev2", "mbv2"), (16,), (1,), 1, (3,), (3.0,))),
        head=HeadConfig(32, 0, "hswish"),
    )


@pytest.fixture
def tiny_space(monkeypatch):
    """The `tiny` space, registered under its name for the duration of a test (tables name their space)."""
    monkeypatch.setitem(spaces_module.SPACES, "tiny", tiny)
    return tiny()
