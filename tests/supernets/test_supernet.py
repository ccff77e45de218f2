import numpy as np
import pytest
import torch

from search_spaces import ArchConfig, SpaceError, get_space
from supernets.elastic_layers import ElasticConv, centre_crop
from supernets.supernet import Supernet


def warmed(space_name, seed=0):
    """A supernet whose BatchNorm statistics have moved, so parity checks see real statistics."""
    torch.manual_seed(seed)
    space = get_space(space_name)
    net = Supernet(space).train()
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for _ in range(4):
            arch = space.sample(rng)
            net(torch.randn(4, space.in_channels, arch.resolution, arch.resolution), arch)
    return space, net.eval()


@pytest.mark.parametrize("space_name, n", [("small", 20), ("imagenet", 3)])
def test_materialized_subnets_equal_the_supernet(space_name, n):
    space, net = warmed(space_name)
    rng = np.random.default_rng(1)
    archs = [space.extreme(True), space.extreme(False)] + [space.sample(rng) for _ in range(n)]
    families = set()
    for arch in archs:
        x = torch.randn(2, space.in_channels, arch.resolution, arch.resolution)
        with torch.no_grad():
            diff = (net(x, arch) - net.materialize(arch).eval()(x)).abs().max().item()
        assert diff <= 1e-5, arch.to_str()
        families |= {stage[0].family for stage in arch.stages}
    if space_name == "small":
        assert families == {"mbv2", "mbv3", "effnet", "fused", "shufflev2"}


def test_every_family_and_shufflenet_unit_kind_materializes():
    space, net = warmed("small")
    for stage in range(4):
        for fam_idx in range(len(space.stages[stage].families)):
            families = [0, 0, 0, 0]
            families[stage] = fam_idx
            for largest in (True, False):
                arch = space.extreme(largest, tuple(families))
                x = torch.randn(1, 1, arch.resolution, arch.resolution)
                with torch.no_grad():
                    assert torch.allclose(net(x, arch), net.materialize(arch).eval()(x), atol=1e-5)


def test_no_hidden_state_between_calls():
    space, net = warmed("small")
    rng = np.random.default_rng(2)
    a, b = space.sample(rng), space.sample(rng)
    x = torch.randn(2, 1, 32, 32)
    xa = torch.nn.functional.interpolate(x, size=a.resolution)
    xb = torch.nn.functional.interpolate(x, size=b.resolution)
    with torch.no_grad():
        first = net(xa, a)
        net(xb, b)
        assert torch.equal(net(xa, a), first)


def test_elastic_kernel_starts_as_centre_crop_and_learns_its_own_transform():
    conv = ElasticConv(4, 4, (3, 5, 7), depthwise=True)
    assert set(conv.transforms) == {"7to5", "5to3"}
    assert torch.equal(conv.kernel_weight(4, 1, 5), centre_crop(conv.weight, 5))
    assert torch.equal(conv.kernel_weight(4, 1, 3), centre_crop(conv.weight, 3))
    with torch.no_grad():
        conv.transforms["7to5"].add_(0.1)
    assert not torch.equal(conv.kernel_weight(4, 1, 5), centre_crop(conv.weight, 5))
    assert torch.equal(conv.kernel_weight(4, 1, 7), conv.weight)
    with pytest.raises(ValueError, match="kernel 9 is not one of"):
        conv.kernel_weight(4, 1, 9)


def test_importance_sort_keeps_the_largest_subnet_and_orders_channels():
    space, net = warmed("small")
    net.sort_channels()  # the first sort reorders; it must not change what the largest subnet computes
    for families in ((0, 0, 0, 0), (1, 1, 0, 2)):
        arch = space.extreme(True, families)
        x = torch.randn(2, 1, arch.resolution, arch.resolution)
        with torch.no_grad():
            before = net(x, arch)
            net.sort_channels()
            assert torch.allclose(net(x, arch), before, atol=1e-5)
    slot = net.stages[0]["mbv2"][0]
    importance = slot.project.conv.weight.abs().sum((0, 2, 3))
    assert torch.all(importance[:-1] >= importance[1:])


def test_bad_architectures_and_inputs_are_refused():
    space, net = warmed("small")
    with pytest.raises(SpaceError, match="input channels is 3"):
        net(torch.zeros(1, 3, 32, 32), ArchConfig.from_str(space.extreme().to_str().replace("_i1_", "_i3_")))
    with pytest.raises(ValueError, match="does not fit 1 channels at 32px"):
        net(torch.zeros(1, 1, 28, 28), space.extreme(True))


def test_shufflenet_stage_keeps_its_channel_order_across_depth_and_width():
    """A later stage reads the same features at the same positions whatever depth and width a ShuffleNet stage
    runs at: the split units keep the even channels in place and the first unit's output is prefix-consistent."""
    from search_spaces import BlockConfig

    space, net = warmed("small")
    slots = net.stages[1]["shufflev2"]
    x = torch.randn(2, 24, 12, 12)

    def stage(depth, width, kernel=3):
        h = x
        with torch.no_grad():
            for position in range(depth):
                h = slots[position](h, BlockConfig("shufflev2", kernel, 1, width, 2 if position == 0 else 1))
        return h

    full = stage(3, 32)
    for depth in (1, 2):
        assert torch.equal(stage(depth, 32)[:, 0::2], full[:, 0::2]), depth
    # At width 24 the first unit's left branch gives the first 12 of the 16 channels it gives at width 32, at the
    # same (even) positions.
    assert torch.allclose(stage(1, 24)[:, 0::2], full[:, 0:24:2], atol=1e-6)
    # The split units read the same (odd) channels at every width: the kept half stays put at width 24 too.
    assert torch.equal(stage(3, 24)[:, 0::2], full[:, 0:24:2])
    assert not torch.allclose(stage(3, 32)[:, 1::2], stage(1, 32)[:, 1::2])
