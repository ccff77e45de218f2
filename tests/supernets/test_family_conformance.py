"""Every registered block family, through every layer: the static block, the analytic trace, FlopCounterMode, the
materialised elastic block and the layer ids agree. Parametrised over `search_spaces.FAMILIES`, so a new family is
covered without editing this file."""

from dataclasses import replace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from latency_tables.counting import TRACERS, layer_ids, layer_ops, trace_arch
from search_spaces import FAMILIES, KINDS, ArchConfig, BlockConfig, HeadConfig, SearchSpace, StageSpec, StemConfig
from search_spaces.plans import GROUPERS
from supernets.elastic_layers import ElasticBlock
from supernets.kinds import BLOCK_KINDS
from supernets.layers import layer_modules
from supernets.supernet import Supernet

IN_CHANNELS = 16  # the stem's width: what the block receives
STEM = StemConfig(IN_CHANNELS, 3, 1, "relu")
HEAD = HeadConfig(32, 24, "relu")  # with a hidden layer, so every head layer id is covered


def explicit(block: BlockConfig, in_ch: int) -> BlockConfig:
    """`block` with every width it has stated off the grid: middle -5, squeeze -1, no skip, a lopsided branch."""
    fam, widths = FAMILIES[block.family], {}
    if fam.kind == "shuffle" or block.expand != 1.0:
        widths["mid"] = block.mid_channels(in_ch) - 5
    if block.se_ratio:
        widths["squeeze"] = max(1, block.squeeze_channels(in_ch) - 1)
    if block.has_residual(in_ch):
        widths["noskip"] = True
    if fam.kind == "shuffle" and not block.is_split_unit(in_ch):
        widths["branch"] = block.branch_channels + 2
    return replace(block, **widths)


def cases():
    for fam in FAMILIES.values():
        variants = ("grid", "explicit") + (("expand1",) if fam.has_expand else ())
        for stride in fam.strides:
            for se in fam.se_ratios:
                for variant in variants:
                    yield pytest.param(fam, stride, se, variant, id=f"{fam.name}-s{stride}-se{se:g}-{variant}")


def tiny_arch(fam, stride: int, se: float, variant: str) -> ArchConfig:
    out = IN_CHANNELS if stride == 1 else 24  # stride 1 keeps the width: the residual / split path
    expand = 3.0 if fam.has_expand and variant != "expand1" else 1.0
    block = BlockConfig(fam.name, fam.kernels[0], expand, out, stride, se if fam.se_is_knob else None,
                        fam.activations[-1] if fam.act_is_knob else None)
    if variant == "explicit":
        block = explicit(block, IN_CHANNELS)
    return ArchConfig(16, 3, 10, STEM, ((block,),), HEAD)


def tiny_space(arch: ArchConfig) -> SearchSpace:
    """A one-stage space holding `arch`'s grid parent, with a wider width so explicit widths fit the slot."""
    block = arch.stages[0][0]
    stage = StageSpec((block.family,), (block.out_channels, block.out_channels + 8), (1,), block.stride,
                      (block.kernel,), (block.expand,), act=block.activation, se=block.se_ratio)
    return SearchSpace("conformance", (arch.resolution,), arch.in_channels, arch.num_classes, STEM, (stage,), HEAD)


@torch.no_grad()
def seeded(net: torch.nn.Module) -> torch.nn.Module:
    """Random weights and BatchNorm statistics (no zero-initialised branch hides a layer), in eval mode."""
    gen = torch.Generator().manual_seed(0)
    for p in net.parameters():
        p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return net.eval()


@pytest.mark.parametrize("fam, stride, se, variant", list(cases()))
def test_static_block_trace_flops_and_elastic_block_agree(fam, stride, se, variant):
    arch = tiny_arch(fam, stride, se, variant)
    net = seeded(Supernet(tiny_space(arch)))
    model = net.materialize(arch).eval()
    # (d) the trace's layer ids are the static module's layer submodule paths, in order
    assert [name for name, _ in layer_modules(model)] == layer_ids(arch)
    # (a) parameters: the whole network and each layer
    assert sum(p.numel() for p in model.parameters()) == sum(op.params for op in trace_arch(arch))
    for op in layer_ops(arch):
        assert sum(p.numel() for p in model.get_submodule(op.name).parameters()) == op.params, op.name
    # (b) MACs: FlopCounterMode's FLOPs / 2 = the trace's MACs
    x = torch.randn(2, arch.in_channels, arch.resolution, arch.resolution)
    with FlopCounterMode(display=False) as counter:
        model(x[:1])
    assert counter.get_total_flops() // 2 == sum(op.macs for op in trace_arch(arch))
    # (c) the materialised block computes what the supernet's elastic block computes
    with torch.no_grad():
        h = net.stem(x)
        assert torch.allclose(model.s0.b0(h), net.stages[0][fam.name][0](h, arch.stages[0][0]), atol=1e-5)
        if not arch.stages[0][0].explicit:
            assert torch.allclose(model(x), net(x, arch), atol=1e-5)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_kind_has_a_static_block_an_elastic_block_and_a_tracer(family):
    kind = FAMILIES[family].kind
    assert kind in KINDS and kind in BLOCK_KINDS and kind in TRACERS and kind in GROUPERS
    assert callable(BLOCK_KINDS[kind].static) and issubclass(BLOCK_KINDS[kind].elastic, ElasticBlock)


def test_every_kind_is_implemented_by_every_layer():
    assert set(BLOCK_KINDS) == set(KINDS) == set(TRACERS) == set(GROUPERS)
