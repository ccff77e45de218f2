"""One name per layer: the analytic trace's layer ids are the static module's submodule paths and the node names of
the exported ONNX graph (export_onnx renames each layer's node to its id), for one subnet of every registered
family.

TFLite (litert-torch 0.x, one try): tensor names keep the module path as `<class>_<child name>` segments, e.g.
`.../StaticNet_wrapped/torch.nn.modules.container.Sequential_s0/supernets.blocks.InvertedResidual_b0/
supernets.layers.ConvBNAct_expand/torch.nn.modules.conv.Conv2d_0;1`, with fused ops' names joined by `;`: the layer
id is recoverable there too, but this test does not check it."""

from dataclasses import replace

import pytest

from latency_tables.convert import export_onnx, onnx_layer_id, seeded
from latency_tables.counting import layer_ids
from search_spaces import FAMILIES, ArchConfig, BlockConfig, HeadConfig, StemConfig
from supernets import build_model
from supernets.layers import layer_modules


def test_onnx_layer_id_reads_the_exporters_names():
    assert onnx_layer_id("/s0/b0/expand/expand.0/Conv") == "s0.b0.expand"
    assert onnx_layer_id("/s1/b2/right/pw1/pw1.0/Conv_3") == "s1.b2.right.pw1"
    assert onnx_layer_id("/s0/b0/se/reduce/Conv") == "s0.b0.se.reduce"
    assert onnx_layer_id("/stem/stem.0/Conv") == "stem"
    assert onnx_layer_id("/classifier/Gemm") == "classifier"
    assert onnx_layer_id("/s0/b1/Add") is None and onnx_layer_id("/stem_pool/MaxPool") is None


def family_subnet(name: str) -> ArchConfig:
    """Three blocks of family `name`: a stride-2 block with an explicit middle width, a stride-1 block (residual or
    split; expand 1 where the family has an expand ratio), a stride-1 block with SE where the family has a choice."""
    fam = FAMILIES[name]
    act = fam.activations[-1] if fam.act_is_knob else None
    expand = 3.0 if fam.has_expand else 1.0
    first = BlockConfig(name, fam.kernels[0], expand, 24, 2, None, act)
    first = replace(first, mid=first.mid_channels(16) - 3)
    second = BlockConfig(name, fam.kernels[-1], 1.0, 24, 1, None, act)
    third = BlockConfig(name, fam.kernels[0], expand, 24, 1, max(fam.se_ratios) if fam.se_is_knob else None, act)
    return ArchConfig(32, 3, 10, StemConfig(16, 3, 2, "relu", maxpool=True), ((first, second, third),),
                      HeadConfig(64, 32, "relu"))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_trace_module_and_onnx_graph_name_every_layer_alike(family, tmp_path):
    onnx = pytest.importorskip("onnx", reason="the ONNX check needs the onnx package (the runtimes extra)")
    arch = family_subnet(family)
    model = seeded(build_model(arch))
    ids = layer_ids(arch)
    assert [name for name, _ in layer_modules(model)] == ids
    graph = onnx.load(str(export_onnx(model, (1, 3, 32, 32), tmp_path / "subnet.onnx"))).graph
    layer_nodes = [node.name for node in graph.node if node.op_type in ("Conv", "Gemm", "MatMul")]
    assert layer_nodes == ids  # export_onnx names each layer's node by its layer id
