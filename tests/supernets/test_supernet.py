import numpy as np
import pytest
import torch

from search_spaces import ArchConfig, SpaceError, get_space
from supernets.elastic_layers import ElasticConv, centre_crop
from supernets.supernet import Supernet


def warmed(space_name, seed=0):
    """A supernet whose BatchNorm statistics have moved and whose BatchNorm scales and shifts are random, so parity
    checks see real statistics and every branch counts (a fresh supernet zeroes the scale ending each residual
    branch, which would hide a branch that materialises wrong)."""
    torch.manual_seed(seed)
    space = get_space(space_name)
    net = Supernet(space).train()
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
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


# A pruned subnet of the small space: explicit middle widths (m), SE squeeze (q), ShuffleNet branch (b) and a dropped
# residual (noskip), on a grid architecture that is in the space.
PRUNED = ("r32_i1_n10|stem_c16_k3_s2_hswish|mbv2_k5_e4_m40_c24_s1,mbv2_k3_e3_c24_s1_noskip|"
          "mbv3_k3_e4_m50_c32_s2_se0.25_q12_relu,mbv3_k5_e2_c32_s1_se0.25_relu|"
          "shufflev2_k3_m15_b22_c40_s2,shufflev2_k5_m9_c40_s1|effnet_k3_e3_m100_c64_s1,effnet_k3_e4_q7_c64_s1|"
          "head_c256_hswish")


def run_supernet(net, x, arch):
    """The supernet's forward without its strict space check (which refuses explicit widths)."""
    h = net.stem(x)
    for index, blocks in enumerate(arch.stages):
        h = net.stage_forward(h, index, blocks)
    return net.head_forward(h, arch)


def pinned(arch):
    """`arch` with every width its blocks resolve to stated explicitly: the same network, so the same arch."""
    from dataclasses import replace

    from search_spaces import get_family

    stages = [list(stage) for stage in arch.stages]
    for site in arch.sites():
        block, shuffle = site.block, get_family(site.block.family).kind == "shuffle"
        widths = {"mid": block.mid_channels(site.in_channels)} if shuffle or block.expand != 1.0 else {}
        if block.se_ratio:
            widths["squeeze"] = block.squeeze_channels(site.in_channels)
        if shuffle:
            widths["branch"] = block.branch_channels
        stages[site.stage][site.position] = replace(block, **widths)
    return replace(arch, stages=tuple(tuple(stage) for stage in stages))


def test_the_grid_widths_stated_explicitly_are_the_grid_subnet_itself():
    space, net = warmed("small")
    rng = np.random.default_rng(3)
    for arch in [space.extreme(True, (0, 0, 2, 1)), space.extreme(False, (1, 2, 1, 2))] + [
            space.sample(rng) for _ in range(4)]:
        explicit = pinned(arch)
        assert explicit == arch and explicit.key == arch.key and not explicit.explicit  # canonical: one key
        x = torch.randn(2, 1, arch.resolution, arch.resolution)
        with torch.no_grad():
            assert torch.equal(net.materialize(explicit).eval()(x), net.materialize(arch).eval()(x)), arch.to_str()


def test_materialize_honours_explicit_widths_and_copies_the_leading_channels():
    space, net = warmed("small")
    arch = ArchConfig.from_str(PRUNED)
    grid = net.materialize(arch.on_grid())
    model = net.materialize(arch).eval()
    # The declared widths are the module's widths.
    assert model.s0.b0.expand[0].weight.shape == (40, 16, 1, 1)
    assert model.s0.b0.project[0].weight.shape == (24, 40, 1, 1)
    assert not model.s0.b1.residual and grid.s0.b1.residual
    assert (model.s1.b0.se.reduce.out_channels, model.s1.b0.se.reduce.in_channels) == (12, 50)
    assert model.s2.b0.left.pw[0].out_channels == 18 and model.s2.b0.right.pw2[0].out_channels == 22
    assert model.s2.b0.right.dw[0].weight.shape == (15, 1, 3, 3)
    assert model.s2.b1.right.pw1[0].weight.shape[:2] == (9, 20)
    assert model.s3.b1.se.reduce.out_channels == 7
    # Each is the leading part of the grid subnet's weights.
    assert torch.equal(model.s0.b0.expand[0].weight, grid.s0.b0.expand[0].weight[:40])
    assert torch.equal(model.s0.b0.project[0].weight, grid.s0.b0.project[0].weight[:, :40])
    assert torch.equal(model.s1.b0.se.expand.weight, grid.s1.b0.se.expand.weight[:50, :12])
    assert torch.equal(model.s2.b0.left.pw[0].weight, grid.s2.b0.left.pw[0].weight[:18])
    right = net.stages[2]["shufflev2"][0].right  # wider than the grid unit's 20 channels: the slot's own weights
    assert torch.equal(model.s2.b0.right.pw2[0].weight, right[2].conv.weight[:22, :15])
    assert torch.equal(model.s2.b0.right.pw2[1].running_mean, right[2].bn.running_mean[:22])
    assert torch.equal(model.s3.b0.dw[1].running_var, grid.s3.b0.dw[1].running_var[:100])
    # And the elastic blocks run the same network.
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        assert (run_supernet(net, x, arch) - model(x)).abs().max().item() <= 1e-5


def test_materialize_refuses_widths_the_supernet_does_not_hold():
    space, net = warmed("small")
    too_wide = PRUNED.replace("mbv2_k5_e4_m40_c24_s1", "mbv2_k5_e4_m65_c24_s1")
    with pytest.raises(SpaceError, match=r"block s0\.b0 \(mbv2\) has middle channels \(m\) 65, .*at most 64"):
        net.materialize(ArchConfig.from_str(too_wide))
    squeeze = PRUNED.replace("_q12_", "_q25_")
    with pytest.raises(SpaceError, match=r"block s1\.b0 \(mbv3\) has SE squeeze channels \(q\) 25, .*at most 24"):
        net.materialize(ArchConfig.from_str(squeeze))
    lopsided = PRUNED.replace("_b22_", "_b14_")  # the left branch would give 26 channels; its weights hold 24
    with pytest.raises(SpaceError, match=r"block s2\.b0 \(shufflev2\) has left branch channels \(out - b\) 26, .*"
                                         r"at most 24"):
        net.materialize(ArchConfig.from_str(lopsided))
    off_space = PRUNED.replace("mbv2_k5_e4_m40_c24_s1", "mbv2_k5_e6_m40_c24_s1")  # its grid block is not in the space
    with pytest.raises(SpaceError, match="expand"):
        net.materialize(ArchConfig.from_str(off_space))
