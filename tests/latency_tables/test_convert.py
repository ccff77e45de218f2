"""Converted pieces and networks agree with PyTorch (fp32 exactly enough; quantized by top-1 agreement)."""

import numpy as np
import pytest

from latency_tables.convert import agreement, calibration_inputs, export_for, input_shape, target_module
from latency_tables.keys import SpaceIndex
from latency_tables.runtimes import Protocol, get_runtime


def one_key_per_family(space):
    keys, seen = [], set()
    for key in SpaceIndex(space).keys:
        tag = (key.kind, key.family, key.stride)
        if tag not in seen:
            seen.add(tag)
            keys.append(key)
    return keys


@pytest.mark.runtime
@pytest.mark.parametrize("runtime", ["ort", "litert", "torch"])
def test_fp32_pieces_agree_with_pytorch(tiny_space, runtime, tmp_path):
    keys = one_key_per_family(tiny_space)
    assert {k.family for k in keys} == {"stem", "head", "mbv3", "fused", "effnet", "shufflev2", "mbv2"}
    rt = get_runtime(runtime)
    for i, key in enumerate(keys):
        path = export_for(runtime, "fp32", key, tmp_path / f"{i}{rt.suffix}")
        report = agreement(runtime, path, target_module(key), calibration_inputs(key.input_shape, 3, seed=9))
        assert report["max_abs_diff"] <= 1e-4, (key.to_str(), report)
        m = rt.measure(path, Protocol(warmup=1, runs=5))
        assert m.median_ms > 0 and m.runs == 5


@pytest.mark.parametrize("runtime, precision, floor", [("ort", "int8", 0.9), ("litert", "int8", 0.9),
                                                       ("litert", "fp16", 0.95)])
@pytest.mark.runtime
def test_quantized_networks_keep_their_top1(tiny_space, runtime, precision, floor, tmp_path):
    arch = tiny_space.sample(np.random.default_rng(4))
    calib = calibration_inputs(input_shape(arch), 16, seed=1)
    path = export_for(runtime, precision, arch, tmp_path / f"net{get_runtime(runtime).suffix}", calibration=calib)
    report = agreement(runtime, path, target_module(arch), calib)
    assert report["top1_agreement"] >= floor, report
    assert report["max_abs_diff"] > 0  # quantization does change the outputs


@pytest.mark.runtime
def test_int8_onnx_pieces_pass_uint8_between_them_like_a_whole_network(tiny_space, tmp_path):
    """Inside an int8 network the tensors between blocks stay uint8: a piece takes and gives uint8 (the stem takes
    the float image, the head gives float logits), so it pays no quantize/dequantize the network does not."""
    import onnx

    rt = get_runtime("ort")
    for i, key in enumerate(one_key_per_family(tiny_space)):
        path = export_for("ort", "int8", key, tmp_path / f"{i}.onnx")
        graph = onnx.load(str(path)).graph
        types = [graph.input[0].type.tensor_type.elem_type, graph.output[0].type.tensor_type.elem_type]
        want = [onnx.TensorProto.FLOAT if key.kind == "stem" else onnx.TensorProto.UINT8,
                onnx.TensorProto.FLOAT if key.kind == "head" else onnx.TensorProto.UINT8]
        assert types == want, key.to_str()
        session = rt.load(path, 1)
        inputs = calibration_inputs(key.input_shape, 4, seed=0)  # the quantizer calibrated on these
        report = agreement("ort", path, target_module(key), inputs)
        # The uint8 ends are (de)quantized with the scales stored in the model: the outputs still match.
        assert report["max_abs_diff"] < 0.5, (key.to_str(), report)
        assert (session.input_quant is None) == (key.kind == "stem"), key.to_str()
        assert rt.measure(path, Protocol(warmup=1, runs=5)).median_ms > 0


@pytest.mark.runtime
def test_the_kit_runner_feeds_uint8_to_an_int8_onnx_piece(tiny_space, tmp_path):
    from latency_tables import kit_runner

    key = next(k for k in SpaceIndex(tiny_space).keys if k.kind == "block")
    path = export_for("ort", "int8", key, tmp_path / "piece.onnx")
    run, x, version = kit_runner.load_session("ort", str(path), 1)
    assert x.dtype == np.uint8 and x.shape == tuple(key.input_shape) and version.startswith("onnxruntime")
    assert x.min() < 64 and x.max() > 192  # spread over the type's range
    assert run(x).dtype == np.uint8


def litert_ops(path) -> tuple[list[str], tuple[str, str]]:
    """The op names of a .tflite file in execution order (without the delegate's nodes), and its input and
    output dtypes."""
    from latency_tables.runtimes import litert_interpreter_class

    interpreter = litert_interpreter_class()[0](model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    ends = (interpreter.get_input_details()[0], interpreter.get_output_details()[0])
    ops = [op["op_name"] for op in interpreter._get_ops_details() if op["op_name"] != "DELEGATE"]
    return ops, (ends[0]["dtype"].__name__, ends[1]["dtype"].__name__)


@pytest.mark.slow  # 20 s; test_runtime_conformance converts and runs an int8 LiteRT piece in the default run
@pytest.mark.runtime
def test_int8_tflite_pieces_run_in_int8_like_a_whole_network(tiny_space, tmp_path):
    """Inside an int8 TFLite network the tensors between blocks are int8, a residual add runs as an int8 ADD and
    the stem's h-swish as an int8 HARD_SWISH (the next convolution quantizes it). Each piece does the same: it
    takes and gives int8 and has no DEQUANTIZE at its end, so it costs what it costs inside a network. (Before
    strict export a residual piece took floats and added in float, and the stem ended in float.)"""
    from dataclasses import replace

    keys = one_key_per_family(tiny_space)
    residual = next(k for k in SpaceIndex(tiny_space).keys
                    if k.family == "mbv2" and k.stride == 1 and k.in_channels == k.out_channels)
    stem = replace(next(k for k in keys if k.kind == "stem"), act="hswish")  # the small space's stem
    for i, key in enumerate([*keys, residual, stem]):
        path = export_for("litert", "int8", key, tmp_path / f"{i}.tflite")
        ops, dtypes = litert_ops(path)
        assert dtypes == ("int8", "int8"), (key.to_str(), ops)
        assert ops[-1] != "DEQUANTIZE", (key.to_str(), ops)
        inputs = calibration_inputs(key.input_shape, 4, seed=0)
        assert agreement("litert", path, target_module(key), inputs)["max_abs_diff"] < 0.5, key.to_str()
        if key == residual:
            assert ops.count("ADD") == 1 and "DEQUANTIZE" not in ops, ops
        if key == stem:
            assert ops[-1] == "HARD_SWISH" and "DEQUANTIZE" not in ops, ops
