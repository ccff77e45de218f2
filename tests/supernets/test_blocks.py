import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from search_spaces import REFERENCES, ArchConfig, BlockConfig, get_space, reference
from search_spaces.references import PUBLISHED_MACS_M, TORCHVISION_PARAMS
from supernets import FusedMBConv, InvertedResidual, ShuffleV2Unit, SqueezeExcite, build_block, build_model


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def macs(model: torch.nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2


@pytest.mark.parametrize("name", list(REFERENCES))
def test_reference_networks_match_torchvision_and_the_papers(name):
    model = build_model(reference(name)).eval()
    assert n_params(model) == TORCHVISION_PARAMS[name]
    measured = macs(model, torch.zeros(1, 3, 224, 224)) / 1e6
    assert abs(measured - PUBLISHED_MACS_M[name]) / PUBLISHED_MACS_M[name] <= 0.02


def test_inverted_residual_structure_follows_the_papers():
    # MobileNetV2 t=1 block: no expansion conv, depthwise then linear projection, no residual (16 -> 16 at s1
    # would have one; 32 -> 16 does not).
    block = build_block(BlockConfig("mbv2", 3, 1, 16, 1), 32)
    convs = [m for m in block.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.groups) for c in convs] == [(32, 32, 32), (32, 16, 1)]
    assert not block.residual
    # MobileNetV3 SE squeezes the expanded width to make_divisible(72 // 4, 8) = 24 with a hard-sigmoid gate.
    se = next(m for m in build_block(BlockConfig("mbv3", 5, 3, 40, 2, 0.25, "relu"), 24).modules()
              if isinstance(m, SqueezeExcite))
    assert (se.reduce.in_channels, se.reduce.out_channels) == (72, 24)
    assert isinstance(se.gate, torch.nn.Hardsigmoid) and isinstance(se.act, torch.nn.ReLU)
    # EfficientNet SE squeezes the block input: 24 // 4 = 6, swish inside, sigmoid gate.
    se = next(m for m in build_block(BlockConfig("effnet", 3, 6, 24, 1), 24).modules() if isinstance(m, SqueezeExcite))
    assert (se.reduce.in_channels, se.reduce.out_channels) == (144, 6)
    assert isinstance(se.gate, torch.nn.Sigmoid) and isinstance(se.act, torch.nn.SiLU)
    residual = build_block(BlockConfig("effnet", 3, 6, 24, 1), 24)
    assert residual.residual
    # Activation after expansion and depthwise only; the projection is linear.
    block = build_block(BlockConfig("mbv3", 3, 4, 24, 2, 0.0, "hswish"), 16)
    assert [type(block.get_submodule(name)[-1]).__name__ for name in ("expand", "dw", "project")] == [
        "Hardswish", "Hardswish", "BatchNorm2d"]


def test_fused_mbconv_uses_one_conv_when_expand_is_one():
    single = build_block(BlockConfig("fused", 3, 1, 24, 2), 16)
    double = build_block(BlockConfig("fused", 3, 4, 24, 1), 24)
    assert isinstance(single, FusedMBConv) and [c.kernel_size for c in single.modules()
                                                if isinstance(c, torch.nn.Conv2d)] == [(3, 3)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in double.modules()
            if isinstance(c, torch.nn.Conv2d)] == [(24, 96, (3, 3)), (96, 24, (1, 1))]
    assert double.residual and not single.residual


def test_shufflenet_split_keeps_half_the_channels_untouched_and_shuffles():
    unit = build_block(BlockConfig("shufflev2", 3, 1, 8, 1), 8).eval()
    assert isinstance(unit, ShuffleV2Unit) and unit.left is None
    x = torch.randn(2, 8, 5, 5)
    out = unit(x)
    # The odd channels are transformed and the even ones kept; the shuffle puts both back where they were read.
    assert torch.equal(out[:, 0::2], x[:, 0::2])
    assert not torch.allclose(out[:, 1::2], x[:, 1::2])
    work = x[:, 1::2].clone()
    assert torch.equal(out[:, 1::2], unit.right(work))
    down = build_block(BlockConfig("shufflev2", 5, 1, 12, 2), 8)
    assert down.left is not None and down(x).shape == (2, 12, 3, 3)


def test_every_family_builds_and_runs_at_both_strides():
    x = torch.randn(2, 16, 9, 9)
    for family in ("mbv2", "mbv3", "effnet", "fused", "shufflev2"):
        for stride in (1, 2):
            act = "hswish" if family == "mbv3" else None
            block = build_block(BlockConfig(family, 5, 1 if family == "shufflev2" else 3, 24, stride, None, act), 16)
            assert block(x).shape == (2, 24, 9 if stride == 1 else 5, 9 if stride == 1 else 5)
    assert isinstance(build_block(BlockConfig("mbv2", 3, 3, 16, 1), 16), InvertedResidual)


def test_sampled_models_run_and_give_logits_for_the_space():
    space = get_space("small")
    rng = np.random.default_rng(0)
    for _ in range(5):
        arch = space.sample(rng)
        model = build_model(arch).eval()
        out = model(torch.randn(3, 1, arch.resolution, arch.resolution))
        assert out.shape == (3, 10) and torch.isfinite(out).all()
    assert isinstance(build_model(ArchConfig.from_str(arch.to_str())).arch, ArchConfig)


def test_fresh_residual_blocks_start_as_the_identity():
    from search_spaces.codec import block_from_str
    from supernets.blocks import zero_init_residual

    x = torch.randn(2, 16, 8, 8)
    for text in ("mbv2_k3_e4_c16_s1", "mbv3_k5_e3_c16_s1_se0.25_hswish", "effnet_k3_e4_c16_s1", "fused_k3_e2_c16_s1",
                 "fused_k3_e1_c16_s1"):
        block = build_block(block_from_str(text), 16).eval()
        zero_init_residual(block)
        assert torch.equal(block(x), x), text
    # Blocks without a residual are left alone; ShuffleNet split units replace half their channels, so zeroing
    # that half would not make them the identity.
    for text in ("mbv2_k3_e4_c24_s2", "shufflev2_k3_c16_s1"):
        block = build_block(block_from_str(text), 16)
        zero_init_residual(block)
        assert all(m.weight.abs().sum() > 0 for m in block.modules() if isinstance(m, torch.nn.BatchNorm2d)), text


def test_explicit_middle_width_gives_the_stated_parameter_count():
    from latency_tables.counting import analytic_cost
    from supernets.layers import layer_modules

    arch = ArchConfig.from_str("r28_i1_n10|stem_c16_k3_s2_relu6|mbv2_k3_e2_m37_c24_s1|head_c128_relu6")
    # By hand (conv weights + BatchNorm scale and shift; the linear layer's weights + bias):
    #   stem        3x3 conv 1 -> 16:          3*3*1*16 = 144   + BN 2*16 = 32   ->  176
    #   s0.b0.expand 1x1 conv 16 -> 37 (m37):  16*37    = 592   + BN 2*37 = 74   ->  666
    #   s0.b0.dw     3x3 depthwise on 37:      3*3*37   = 333   + BN 2*37 = 74   ->  407
    #   s0.b0.project 1x1 conv 37 -> 24:       37*24    = 888   + BN 2*24 = 48   ->  936
    #   (no residual: 16 -> 24 channels)
    #   head        1x1 conv 24 -> 128:        24*128   = 3072  + BN 2*128 = 256 -> 3328
    #   classifier  linear 128 -> 10:          128*10   = 1280  + bias 10        -> 1290
    #   total 176 + 666 + 407 + 936 + 3328 + 1290 = 6803
    model = build_model(arch)
    assert n_params(model) == 6803
    assert analytic_cost(arch).params == 6803
    per_layer = {name: n_params(layer) for name, layer in layer_modules(model)}
    assert per_layer == {"stem": 176, "s0.b0.expand": 666, "s0.b0.dw": 407, "s0.b0.project": 936, "head": 3328,
                         "classifier": 1290}
    assert not model.s0.b0.residual


def test_block_children_are_named_by_layer_id_and_take_explicit_widths():
    from search_spaces.codec import block_from_str
    from supernets.layers import layer_modules

    def layers(text, in_ch):
        return {name: tuple(m[0].weight.shape if isinstance(m, torch.nn.Sequential) else m.weight.shape)
                for name, m in layer_modules(build_block(block_from_str(text), in_ch))}

    assert layers("mbv3_k3_e4_m50_c24_s1_se0.25_q12_relu_noskip", 24) == {
        "expand": (50, 24, 1, 1), "dw": (50, 1, 3, 3), "se.reduce": (12, 50, 1, 1), "se.expand": (50, 12, 1, 1),
        "project": (24, 50, 1, 1)}
    assert layers("fused_k5_e3_m20_c16_s2", 8) == {"expand": (20, 8, 5, 5), "project": (16, 20, 1, 1)}
    assert layers("fused_k3_e1_c16_s1", 8) == {"conv": (16, 8, 3, 3)}
    # Two-branch unit: left gives out - b = 14 channels, right b = 10 through an inner width of m = 6.
    assert layers("shufflev2_k3_m6_b10_c24_s2", 16) == {
        "left.dw": (16, 1, 3, 3), "left.pw": (14, 16, 1, 1), "right.pw1": (6, 16, 1, 1), "right.dw": (6, 1, 3, 3),
        "right.pw2": (10, 6, 1, 1)}
    # Split unit: the right branch reads the 12 odd channels, inner width 5, and gives the other 12.
    assert layers("shufflev2_k3_m5_c24_s1", 24) == {
        "right.pw1": (5, 12, 1, 1), "right.dw": (5, 1, 3, 3), "right.pw2": (12, 5, 1, 1)}
    assert build_block(block_from_str("shufflev2_k3_m6_b10_c24_s2"), 16)(torch.randn(1, 16, 8, 8)).shape == (
        1, 24, 4, 4)
    skip, noskip = (build_block(block_from_str(t), 24) for t in ("mbv2_k3_e2_c24_s1", "mbv2_k3_e2_c24_s1_noskip"))
    assert skip.residual and not noskip.residual
