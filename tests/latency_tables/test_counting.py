import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from latency_tables import AnalyticCostModel, Cost, analytic_cost, conv_op, linear_op, trace_arch, trace_block
from search_spaces import REFERENCES, BlockConfig, HwnasError, get_space, reference
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


def sampled_and_references():
    rng = np.random.default_rng(3)
    small, imagenet = get_space("small"), get_space("imagenet")
    return ([reference(n) for n in REFERENCES] + [small.sample(rng) for _ in range(12)]
            + [imagenet.sample(rng) for _ in range(3)])


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
