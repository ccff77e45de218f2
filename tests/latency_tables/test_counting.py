import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from latency_tables import AnalyticCostModel, Cost, analytic_cost, conv_op, linear_op, trace_arch, trace_block
from latency_tables.counting import TRACERS, layer_ids, layer_ops, priced_bytes
from search_spaces import KINDS, REFERENCES, ArchConfig, BlockConfig, HwnasError, get_space, reference
from supernets import build_block, build_model


def test_worked_memory_access_example_from_references():
    # 224x224x128 -> 112x112x256, k = 3: 6.125 Mi + 0.28125 Mi + 3.0625 Mi = 9.46875 Mi elements.
    op = conv_op("c", 128, 256, 3, 2, 224, 224, bn=False)
    assert (op.in_elems, op.weights, op.out_elems) == (6_422_528, 294_912, 3_211_264)
    assert op.memory_access == 9_928_704 and op.memory_access / 2**20 == 9.46875


def test_single_layer_counts():
    assert conv_op("c", 1, 1, 3, 1, 3, 3, bn=False).macs == 81
    dw = conv_op("dw", 32, 32, 3, 2, 8, 8, groups=32)
    assert (dw.macs, dw.params, dw.weights) == (16 * 32 * 9, 32 * 9 + 64, 32 * 9 + 32)
    fc = linear_op("fc", 1280, 1000)
    assert (fc.params, fc.macs, fc.memory_access) == (1_281_000, 1_280_000, 1280 + 1_281_000 + 1000)


def block_totals(block, cin, size):
    ops = trace_block(block, cin, size, size)
    return (sum(o.params for o in ops), sum(o.macs for o in ops), sum(o.memory_access for o in ops),
            max(o.live for o in ops))


@pytest.mark.parametrize("block, cin, size, expected", [
    # mbv2 16 -> 96 -> 24, stride 2 at 8x8 (worked in the test's comments in docs/costs.md)
    (BlockConfig("mbv2", 3, 6, 24, 2), 16, 8, (5136, 148_992, 21_688, 7680)),
    # mbv3 with SE (squeeze 16) and a residual at 4x4: the SE scale holds the input, body and gate
    (BlockConfig("mbv3", 3, 3, 16, 1, 0.25, "hswish"), 16, 4, (3792, 33_024, 10_560, 1840)),
    # ShuffleNet split unit, 8 channels at 4x4: three convs on half the channels, then concat + shuffle
    (BlockConfig("shufflev2", 3, 1, 8, 1), 8, 4, (92, 1088, 720, 256)),
])
def test_single_block_exact_counts(block, cin, size, expected):
    assert block_totals(block, cin, size) == expected
    module = build_block(block, cin)
    assert sum(p.numel() for p in module.parameters()) == expected[0]
    with FlopCounterMode(display=False) as counter:
        module(torch.zeros(1, cin, size, size))
    assert counter.get_total_flops() == 2 * expected[1]


def conv_linear_traffic(model, x):
    """Per conv/linear layer: input + weights (+ one bias per output, BN folded or own bias) + output."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        total += inputs[0].numel() + module.weight.numel() + output.numel()
        total += module.out_channels if isinstance(module, torch.nn.Conv2d) else module.out_features

    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    handles = [m.register_forward_hook(hook) for m in layers]
    model(x)
    for h in handles:
        h.remove()
    return total


#: Architectures with explicit (pruned) widths in every family, both ShuffleNet unit types and every token.
EXPLICIT = [
    "r28_i1_n10|stem_c16_k3_s2_relu6|mbv2_k3_e2_m37_c24_s1|head_c128_relu6",
    "r32_i3_n10|stem_c16_k3_s2_relu|mbv3_k5_e4_m70_c16_s1_se0.25_q5_hswish_noskip,effnet_k3_e6_c24_s2_q3|"
    "fused_k3_e4_m50_c24_s1_noskip,fused_k3_e1_c24_s1|shufflev2_k3_m20_b18_c48_s2,shufflev2_k5_m10_c48_s1|"
    "head_c64_f32_relu",
    "r28_i1_n10|stem_c16_k3_s2_relu6_mp|shufflev2_k3_m7_b8_c16_s1,mbv2_k3_e3_m13_c16_s1_noskip|head_c32_relu",
]


def sampled_and_references():
    rng = np.random.default_rng(3)
    small, imagenet = get_space("small"), get_space("imagenet")
    return ([reference(n) for n in REFERENCES] + [small.sample(rng) for _ in range(12)]
            + [imagenet.sample(rng) for _ in range(3)] + [ArchConfig.from_str(t) for t in EXPLICIT])


@pytest.mark.parametrize("arch", sampled_and_references(), ids=lambda a: a.key)
def test_counts_equal_the_built_module(arch):
    cost = analytic_cost(arch)
    model = build_model(arch).eval()
    x = torch.zeros(1, arch.in_channels, arch.resolution, arch.resolution)
    assert cost.params == sum(p.numel() for p in model.parameters())
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    assert cost.flops == counter.get_total_flops() and cost.macs * 2 == cost.flops
    with torch.no_grad():
        traffic = conv_linear_traffic(model, x)
    assert traffic == sum(o.memory_access for o in trace_arch(arch) if o.kind in ("conv", "linear"))


def test_batch_costs_equal_single_costs():
    model = AnalyticCostModel("fp16")
    for name in ("small", "imagenet"):
        space = get_space(name)
        genes = space.sample_genes(np.random.default_rng(5), 300)
        batch = model.estimate_genes(space, genes)
        for i in range(0, 300, 7):
            single = model.estimate(space.from_genes(genes[i]))
            assert [int(batch[k][i]) for k in ("params", "macs", "flops", "memory_access", "peak_activation",
                                                "memory_access_bytes", "peak_activation_bytes")] == [
                single.params, single.macs, single.flops, single.memory_access, single.peak_activation,
                single.memory_access_bytes, single.peak_activation_bytes]


def test_cost_units_and_dtype():
    cost = analytic_cost(reference("mobilenet_v2"), "int8")
    assert cost.flops == 2 * cost.macs == 601_548_544
    assert cost.memory_access_bytes == cost.memory_access
    half = AnalyticCostModel("fp16").estimate(reference("mobilenet_v2"))
    assert half.peak_activation_bytes == 2 * cost.peak_activation
    # MobileNetV2's peak is the second block's depthwise: 96 x 112 x 112 in, 96 x 56 x 56 out.
    assert cost.peak_activation == 96 * 112 * 112 + 96 * 56 * 56
    assert set(cost.to_dict()) >= {"params", "macs", "flops", "memory_access", "peak_activation", "latency_ms"}
    with pytest.raises(HwnasError, match="unknown dtype 'fp64'; allowed: fp32, fp16, int8"):
        Cost(1, 1, 1, 1, "fp64")


def test_explicit_middle_width_is_priced_exactly():
    arch = ArchConfig.from_str(EXPLICIT[0])
    # stem 9*16 + 32; expand 16*37 + 74; dw 37*9 + 74; project 37*24 + 48; head 24*128 + 256; classifier 1290
    assert analytic_cost(arch).params == 176 + 666 + 407 + 936 + 3328 + 1290 == 6803
    assert sum(p.numel() for p in build_model(arch).parameters()) == 6803
    grid = analytic_cost(arch.on_grid())  # make_divisible(16 * 2, 8) = 32 middle channels
    assert grid.params == 6803 - 5 * (16 + 2 + 9 + 2 + 24)


def test_explicit_widths_reach_every_layer():
    arch = ArchConfig.from_str(EXPLICIT[1])
    shapes = {op.name: (op.in_elems, op.out_elems, op.weights) for op in layer_ops(arch)}
    assert shapes["s0.b0.expand"][1] == 70 * 16 * 16 and shapes["s0.b0.se.reduce"][1] == 5  # m70, q5 at 16 x 16
    assert shapes["s0.b1.se.reduce"] == (96, 3, 96 * 3 + 3)  # effnet squeezes its 96 middle channels to q3
    assert shapes["s1.b0.expand"][1] == 50 * 8 * 8
    # two-branch unit: left 48 - 18 = 30 channels, right 24 -> m20 -> b18, 8 x 8 in, 4 x 4 out
    assert shapes["s2.b0.left.pw"] == (24 * 4 * 4, 30 * 4 * 4, 24 * 30 + 30)
    assert shapes["s2.b0.right.pw1"] == (24 * 8 * 8, 20 * 8 * 8, 24 * 20 + 20)
    assert shapes["s2.b0.right.pw2"] == (20 * 4 * 4, 18 * 4 * 4, 20 * 18 + 18)
    # split unit: the odd half (24 channels) -> m10 -> 24
    assert shapes["s2.b1.right.pw1"] == (24 * 4 * 4, 10 * 4 * 4, 24 * 10 + 10)
    assert shapes["s2.b1.right.pw2"] == (10 * 4 * 4, 24 * 4 * 4, 10 * 24 + 24)
    names = [op.name for op in trace_arch(arch)]
    assert "s0.b0.add" not in names and "s1.b0.add" not in names and "s1.b1.add" in names  # noskip drops adds


def test_layer_ids_name_every_layer_op():
    arch = ArchConfig.from_str(EXPLICIT[1])
    assert layer_ids(arch) == [
        "stem", "s0.b0.expand", "s0.b0.dw", "s0.b0.se.reduce", "s0.b0.se.expand", "s0.b0.project",
        "s0.b1.expand", "s0.b1.dw", "s0.b1.se.reduce", "s0.b1.se.expand", "s0.b1.project",
        "s1.b0.expand", "s1.b0.project", "s1.b1.conv",
        "s2.b0.left.dw", "s2.b0.left.pw", "s2.b0.right.pw1", "s2.b0.right.dw", "s2.b0.right.pw2",
        "s2.b1.right.pw1", "s2.b1.right.dw", "s2.b1.right.pw2", "head", "hidden", "classifier"]
    others = {op.name: op.priced_as for op in trace_arch(arch) if not op.is_layer}
    assert others == {"s0.b0.se.pool": "s0.b0.dw", "s0.b0.se.scale": "s0.b0.dw", "s0.b1.se.pool": "s0.b1.dw",
                      "s0.b1.se.scale": "s0.b1.dw", "s1.b1.add": "s1.b1.conv",
                      "s2.b0.concat_shuffle": "s2.b0.right.pw2", "s2.b1.concat_shuffle": "s2.b1.right.pw2",
                      "head_pool": "head"}
    assert ArchConfig.from_str(EXPLICIT[2]).stem.maxpool
    assert [op.priced_as for op in trace_arch(ArchConfig.from_str(EXPLICIT[2]))][:2] == ["stem", "stem"]


def test_tracers_are_registered_per_kind():
    assert set(TRACERS) == set(KINDS)


def test_two_layers_priced_at_their_own_precision():
    ops = [conv_op("a", 4, 8, 3, 1, 6, 6), conv_op("b", 8, 2, 1, 1, 6, 6)]
    # a: 144 in + 296 weights + 288 out = 728, live 432; b: 288 + 18 + 72 = 378, live 360
    assert [(o.memory_access, o.live) for o in ops] == [(728, 432), (378, 360)]
    assert priced_bytes(ops, {"a": "fp32", "b": "fp32"}) == (4424, 1728)
    assert priced_bytes(ops, {"a": "fp32", "b": "int8"}) == (4424 - 3 * 378, 1728)
    assert priced_bytes(ops, {"a": "int8", "b": "fp32"}) == (728 + 4 * 378, 4 * 360)
    assert priced_bytes(ops, {"a": "fp16", "b": "int8"}) == (2 * 728 + 378, 2 * 432)


def test_cost_follows_each_layers_precision():
    arch = ArchConfig.from_str("r8_i1_n2|stem_c4_k3_s2_relu|mbv2_k3_e1_c4_s1|head_c8_relu")
    fp32 = analytic_cost(arch)
    cost = analytic_cost(arch, "fp32", {"classifier": "int8"})
    # the classifier reads 8 + (8 * 2 + 2) and writes 2 elements: 28 elements, 3 bytes fewer each
    assert cost.memory_access_bytes == fp32.memory_access_bytes - 3 * 28
    assert cost.peak_activation_bytes == fp32.peak_activation_bytes
    assert (cost.params, cost.macs, cost.memory_access) == (fp32.params, fp32.macs, fp32.memory_access)
    assert cost.precision_of("classifier") == "int8" and cost.precision_of("stem") == "fp32"
    assert cost.to_dict()["precision"]["classifier"] == "int8" and "precision" not in fp32.to_dict()
    # head conv (64 in + 40 weights + 128 out) and the pool it feeds (128 in + 8 out) follow the head
    head = analytic_cost(arch, "fp32", {"head": "fp16"})
    assert head.memory_access_bytes == fp32.memory_access_bytes - 2 * (232 + 136)
    everything = analytic_cost(arch, "fp32", dict.fromkeys(layer_ids(arch), "int8"))
    assert everything.dtype == "int8" and everything.to_dict() == analytic_cost(arch, "int8").to_dict()
    assert AnalyticCostModel("fp32").estimate(arch, {"classifier": "int8"}) == cost


def test_unknown_layer_or_precision_is_an_error_naming_the_allowed_ones():
    arch = ArchConfig.from_str("r8_i1_n2|stem_c4_k3_s2_relu|mbv2_k3_e1_c4_s1|head_c8_relu")
    with pytest.raises(HwnasError) as err:
        analytic_cost(arch, "fp32", {"s0.b0.expand": "int8"})
    assert str(err.value) == ("precision names layer(s) 's0.b0.expand' that this architecture does not have; its "
                              "layers: stem, s0.b0.dw, s0.b0.project, head, classifier")
    with pytest.raises(HwnasError, match="unknown precision of layer 'head' 'int4'; allowed: fp32, fp16, int8"):
        analytic_cost(arch, "fp32", {"head": "int4"})
    with pytest.raises(HwnasError, match="needs mixed_bytes"):
        Cost(1, 1, 1, 1, "fp32", precision={"stem": "int8"})
