"""Mixed-precision models, one precision per layer: ONNX Runtime QDQ (int8 or fp32 per layer) and LiteRT through
ai-edge-quantizer's per-op recipes (int8, fp16 weights or fp32 per layer), on a tiny seeded network with an MBConv
stage, ShuffleNet units (split, concat and shuffle) and an SE block."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from latency_tables.convert import (
    TFLITE_LAYER_OPS,
    agreement,
    calibration_inputs,
    export_model_file,
    node_precisions,
    onnx_layer_id,
    seeded,
    tflite_layer_pattern,
)
from latency_tables.counting import layer_ids
from latency_tables.runtimes import check_layer_precisions
from search_spaces import ArchConfig
from search_spaces.errors import HwnasError
from supernets.models import build_model

ARCH = ArchConfig.from_str("r24_i1_n10|stem_c16_k3_s2_relu6|mbv2_k3_e2_c16_s1,mbv2_k3_e3_c16_s1|"
                           "shufflev2_k3_c24_s2,shufflev2_k3_c24_s1|mbv3_k3_e2_c32_s2_se0.25_hswish|head_c64_relu6")
SHAPE = (1, 1, 24, 24)
IDS = layer_ids(ARCH)
#: Every other layer int8, the rest fp32: the precision changes inside blocks, across the shuffle branches and the
#: SE block.
HALF = {layer: "int8" if i % 2 == 0 else "fp32" for i, layer in enumerate(IDS)}
INT8 = {layer for layer, p in HALF.items() if p == "int8"}


@pytest.fixture(scope="module")
def model():
    return seeded(build_model(ARCH), seed=3)


@pytest.fixture(scope="module")
def calibration():
    return calibration_inputs(SHAPE, 16, seed=1)


def test_nodes_outside_layers_follow_the_nodes_that_feed_them():
    nodes = [("a", ["x"], ["a_out"]), (None, ["a_out"], ["relu"]), ("b", ["relu"], ["b_out"]),
             (None, ["relu", "b_out"], ["add"]), (None, [], ["const"]), (None, ["add", "const"], ["pool"])]
    assert node_precisions(nodes, {"a": "int8", "b": "int8"}) == ["int8", "int8", "int8", "int8", None, "int8"]
    assert node_precisions(nodes, {"a": "int8", "b": "fp32"}) == ["int8", "int8", "fp32", "fp32", None, "fp32"]
    assert node_precisions(nodes, {"a": "fp16", "b": "int8"}) == ["fp16", "fp32", "int8", "fp32", None, "fp32"]


def test_a_layer_precision_the_runtime_cannot_run_is_refused_naming_layer_and_runtime():
    with pytest.raises(HwnasError, match=r"layer s0.b0.dw at fp16 cannot run on ort: .* one of fp32, int8"):
        check_layer_precisions("ort", {"stem": "int8", "s0.b0.dw": "fp16"})
    assert check_layer_precisions("litert", {"stem": "int8", "s0.b0.dw": "fp16"}) == {"stem": "int8",
                                                                                      "s0.b0.dw": "fp16"}
    with pytest.raises(HwnasError, match="runtime 'torch' exports no mixed-precision models"):
        check_layer_precisions("torch", {"stem": "fp32"})
    with pytest.raises(HwnasError, match="needs the precision of each layer"):
        export_model_file("ort", "mixed", build_model(ARCH), SHAPE, Path("unused.onnx"))


# ------------------------------------------------------------------------------------------------ ONNX Runtime


def _weight_sources(path: Path) -> dict[str, str]:
    """Layer id -> op type of the node giving its Conv/Gemm its weights ('' for a plain initializer)."""
    import onnx

    graph = onnx.load(str(path)).graph
    made_by = {out: node.op_type for node in graph.node for out in node.output}
    return {n.name: made_by.get(n.input[1], "") for n in graph.node if n.op_type in ("Conv", "Gemm")}


def _optimized_layers(path: Path, tmp_path: Path, keep_float: bool) -> dict[str, str]:
    """Layer id -> op type of its node in the graph ONNX Runtime runs (all optimisations, as hwnas measures)."""
    import onnx
    import onnxruntime as ort

    from latency_tables.runtimes import _KeepFloatLayers

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3
    (_KeepFloatLayers(ort) if keep_float else ort).InferenceSession(str(path), options,
                                                                     providers=["CPUExecutionProvider"])
    found = {}
    for node in onnx.load(str(tmp_path / "optimized.onnx")).graph.node:
        if node.op_type == "QLinearConv":  # named `<layer id>_token_<n>` by the fusion
            found[node.name.rsplit("_token_", 1)[0]] = node.op_type
        elif node.op_type in ("Conv", "Gemm"):  # a float layer, renamed after its output by the NCHWc transform
            name = re.sub(r"_output_0_nchwc$", "", node.name)
            layer = name if name in HALF else onnx_layer_id(re.sub(r"/[A-Za-z]+$", "/Conv", name))
            found[str(layer)] = node.op_type
    return found


@pytest.mark.runtime
def test_ort_mixed_model_quantizes_exactly_the_int8_layers_and_agrees_with_pytorch(model, calibration, tmp_path):
    path = export_model_file("ort", "mixed", model, SHAPE, tmp_path / "mixed.onnx", calibration, layers=HALF)
    sources = _weight_sources(path)
    assert set(sources) == set(IDS)
    assert {layer for layer, op in sources.items() if op == "DequantizeLinear"} == INT8
    assert {layer for layer, op in sources.items() if op == ""} == set(IDS) - INT8

    # The session keeps every fp32 layer a float Conv/Gemm; ORT's own WeightBiasQuantization would not.
    kept = _optimized_layers(path, tmp_path, keep_float=True)
    assert {layer for layer, op in kept.items() if op == "QLinearConv"} == INT8 - {"classifier"}
    assert {layer for layer, op in kept.items() if op in ("Conv", "Gemm")} == set(IDS) - INT8
    requantized = _optimized_layers(path, tmp_path, keep_float=False)
    assert {layer for layer, op in requantized.items() if op == "QLinearConv"} > INT8

    report = agreement("ort", path, model, calibration_inputs(SHAPE, 50, seed=2))
    assert report["top1_agreement"] >= 0.9 and 0 < report["max_abs_diff"] < 0.1


@pytest.mark.runtime
def test_ort_all_fp32_plan_has_no_qdq(model, calibration, tmp_path):
    import onnx

    path = export_model_file("ort", "mixed", model, SHAPE, tmp_path / "fp32.onnx", calibration,
                             layers=dict.fromkeys(IDS, "fp32"))
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "Conv" in ops and not ops & {"QuantizeLinear", "DequantizeLinear"}
    assert agreement("ort", path, model, calibration_inputs(SHAPE, 5, seed=2))["max_abs_diff"] <= 1e-4


# ------------------------------------------------------------------------------------------------------ LiteRT


def _tflite_weight_types(path: Path) -> dict[str, str]:
    """Layer id -> type of its weights as stored (`FLOAT16` behind a DEQUANTIZE op for fp16 weights)."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as tfl

    model = tfl.read_model(Path(path))
    graph = model.subgraphs[0]
    made_by = {out: op for op in graph.operators for out in op.outputs}
    found = {}
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        if tfl.TFL_OP_CODE_TO_NAME.get(max(code.builtinCode, code.deprecatedBuiltinCode)) not in TFLITE_LAYER_OPS:
            continue
        weights = op.inputs[1]
        if weights in made_by:  # DEQUANTIZE of fp16 weights
            weights = made_by[weights].inputs[0]
        name = tfl.get_tensor_name(graph.tensors[weights])
        (layer,) = [layer for layer in IDS if re.search(tflite_layer_pattern(layer), name)]
        found[layer] = tfl.TENSOR_CODE_TO_TYPE[graph.tensors[weights].type]
    return found


@pytest.mark.runtime
def test_litert_mixed_model_runs_each_layer_at_its_precision(model, calibration, tmp_path):
    pytest.importorskip("ai_edge_quantizer")
    layers = {**HALF, "s0.b0.dw": "fp16", "s1.b0.right.pw1": "fp16"}
    path = export_model_file("litert", "mixed", model, SHAPE, tmp_path / "mixed.tflite", calibration,
                             layers=layers)
    want = {"int8": "INT8", "fp16": "FLOAT16", "fp32": "FLOAT32"}
    assert _tflite_weight_types(path) == {layer: want[p] for layer, p in layers.items()}
    report = agreement("litert", path, model, calibration_inputs(SHAPE, 50, seed=2))
    assert report["top1_agreement"] >= 0.9 and 0 < report["max_abs_diff"] < 0.1
