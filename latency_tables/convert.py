"""Conversion of lookup-table pieces and whole networks to runtime files, and agreement checks.

PyTorch -> ONNX (fp32; int8 through ONNX Runtime's static QDQ quantization with calibration data) and
PyTorch -> TFLite with `litert-torch` (fp32, fp16 weights, full int8 through its PT2E quantizer): the converters
the runtime registry (`runtimes.RUNTIMES`) names, reached through `export_model_file` (a whole network) and
`export_for` (a lookup-table piece or a seeded network). Every write is atomic (a temporary file renamed into
place). Modules get seeded weights and non-trivial
BatchNorm statistics, which is all latency depends on.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from latency_tables.keys import LutKey
from latency_tables.pieces import (  # noqa: F401 - re-exported: callers reach the pieces through convert
    input_shape,
    module_from_spec,
    piece_module,
    seeded,
    spec_of,
    target_from_spec,
    target_module,
)
from latency_tables.quiet import scoped_env
from latency_tables.runtimes import (
    MIXED,
    RuntimeMissing,
    check_layer_precisions,
    check_precision,
    get_runtime,
    runtime_spec,
)
from search_spaces import ArchConfig
from search_spaces.errors import HwnasError
from search_spaces.files import atomic_path
from supernets.models import HeadNet, StaticNet


def calibration_inputs(shape: Sequence[int], n: int = 8, seed: int = 0) -> list[np.ndarray]:
    """Random standard-normal inputs of `shape` (what a block sees after the normalised input and BN)."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(tuple(shape)).astype(np.float32) for _ in range(n)]


# ----------------------------------------------------------------------------------------------- ONNX


#: ONNX operators that carry a layer's weights (a conv with its BatchNorm folded in, a linear layer).
LAYER_OPS = ("Conv", "Gemm", "MatMul")


def onnx_layer_id(node_name: str) -> str | None:
    """The layer id of an ONNX node as torch's TorchScript exporter names it, or None for a node that is no layer.

    The exporter names a node `/<module path, one segment per level>/<op type>[_<n>]`, and a ConvBNAct's conv is
    its child `<name>.0`: `/s0/b0/expand/expand.0/Conv` -> `s0.b0.expand`, `/s0/b0/se/reduce/Conv` ->
    `s0.b0.se.reduce`, `/classifier/Gemm` -> `classifier`; `/s0/b0/Add` -> None.
    """
    *scopes, op = node_name.strip("/").split("/")
    if re.sub(r"_\d+$", "", op) not in LAYER_OPS or not scopes:
        return None
    if len(scopes) > 1 and re.fullmatch(re.escape(scopes[-2]) + r"\.\d+", scopes[-1]):
        scopes.pop()
    return ".".join(scopes)


def name_layers(path: Path) -> None:
    """Rename, in place, each ONNX node that is a layer to its layer id (`s0.b0.expand`), where that id names one
    node; other nodes keep the exporter's names. Per-layer tools (quantization's node lists, profilers) then
    address a layer by the id the plans and the cost trace use."""
    import onnx

    model = onnx.load(str(path))
    ids = [onnx_layer_id(node.name) for node in model.graph.node]
    once = {i for i in ids if i is not None and ids.count(i) == 1}
    for node, layer in zip(model.graph.node, ids, strict=True):
        if layer in once:
            node.name = layer
    onnx.save(model, str(path))


def export_onnx(module: nn.Module, shape: Sequence[int], path: Path) -> Path:
    """fp32 ONNX (opset 17, TorchScript exporter: fast and needs no onnxscript), layer nodes named by layer id."""
    x = torch.zeros(tuple(shape))
    with atomic_path(path) as tmp, warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (x,), str(tmp), input_names=["input"], output_names=["output"],
                          opset_version=17, dynamo=False)
        name_layers(tmp)
    return Path(path)


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over a list of arrays."""

    def __init__(self, name: str, inputs: Sequence[np.ndarray]) -> None:
        self._items = iter([{name: x} for x in inputs])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)


class _PreprocessingAdvice(logging.Filter):
    """Drops onnxruntime.quantization's advice to pre-process the model (logged on the root logger at every call)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing" not in record.getMessage()


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """Warnings silenced and the pre-processing advice dropped while ORT quantizes; both restored on exit."""
    advice = _PreprocessingAdvice()
    root = logging.getLogger()
    root.addFilter(advice)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.removeFilter(advice)


def quantize_onnx(fp32_path: Path, path: Path, calibration: Sequence[np.ndarray]) -> Path:
    """Static int8 QDQ model: per-channel int8 weights, uint8 activations, calibrated by min/max."""
    try:
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    except ImportError:
        raise RuntimeMissing("int8 ONNX needs onnxruntime; install it with `pip install -e '.[runtimes]'`") from None
    with atomic_path(path) as tmp, _quiet_quantizer():
        quantize_static(str(fp32_path), str(tmp), _Reader("input", calibration), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return Path(path)


def node_precisions(nodes: Sequence[tuple[str | None, Sequence[str], Sequence[str]]],
                    layers: Mapping[str, str]) -> list[str | None]:
    """The precision each node of a graph runs at in a mixed-precision model, from its layers' precisions.

    `nodes` are (layer id or None, input tensor names, output tensor names) in topological order. A layer's node
    runs at its layer's precision; any other node (an activation, a residual add, a concatenation, a shuffle, a
    pooling) runs in int8 only when every node feeding it does, and in fp32 otherwise, so an activation follows
    its conv and an add fed by an fp32 (or fp16-weight) layer stays float. A node fed by no node (a constant)
    gets None."""
    made: dict[str, str | None] = {}
    out: list[str | None] = []
    for layer, inputs, outputs in nodes:
        if layer is not None:
            precision: str | None = layers[layer]
        else:
            fed = [made[name] for name in inputs if made.get(name) is not None]
            precision = None if not fed else "int8" if all(p == "int8" for p in fed) else "fp32"
        out.append(precision)
        made.update(dict.fromkeys(outputs, precision))
    return out


def quantize_onnx_layers(fp32_path: Path, path: Path, calibration: Sequence[np.ndarray],
                         layers: Mapping[str, str]) -> Path:
    """Mixed-precision QDQ model: the layers `layers` puts at int8 quantized as `quantize_onnx` does (per-channel
    int8 weights, uint8 activations, min/max calibration), the others left fp32 with `nodes_to_exclude`, together
    with the nodes that follow them (`node_precisions`). The fp32 model's layer nodes are named by layer id
    (`export_onnx`). Load it with `runtimes.OrtRuntime`, which keeps ONNX Runtime from quantizing its fp32 layers
    again."""
    import onnx

    check_layer_precisions("ort", layers)
    try:
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    except ImportError:
        raise RuntimeMissing("int8 ONNX needs onnxruntime; install it with `pip install -e '.[runtimes]'`") from None
    graph = onnx.load(str(fp32_path)).graph
    _check_layers_found("ONNX model", {n.name for n in graph.node}, layers)
    nodes = [(n.name if n.name in layers else None, list(n.input), list(n.output)) for n in graph.node]
    exclude = [n.name for n, p in zip(graph.node, node_precisions(nodes, layers), strict=True) if p == "fp32"]
    with atomic_path(path) as tmp, _quiet_quantizer():
        quantize_static(str(fp32_path), str(tmp), _Reader("input", calibration), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=exclude)
    return Path(path)


def _check_layers_found(what: str, found: set[str], layers: Mapping[str, str]) -> None:
    missing = sorted(set(layers) - found)
    if missing:
        raise HwnasError(f"the {what} has no node of layer {', '.join(missing[:5])}: the bit-width plan is for another "
                         f"architecture")


def integer_io(path: Path, *, input_: bool = True, output: bool = True) -> dict[str, list[float]]:
    """Make a QDQ model take (and give) its quantized tensor instead of floats: drop the QuantizeLinear on the
    input and the DequantizeLinear on the output. A lookup-table piece then costs what it costs inside a whole
    int8 network, where the tensors between blocks stay uint8; with float I/O every piece would pay a quantize
    and a dequantize the network does not. The (scale, zero point) of each changed end is stored in the model's
    metadata (`hwnas_io_quant`) for agreement checks. Returns them."""
    import json

    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    ends: dict[str, list[float]] = {}

    def rename(old: str, new: str) -> None:
        for node in graph.node:
            for names in (node.input, node.output):
                for i, name in enumerate(names):
                    if name == old:
                        names[i] = new

    def quant_of(node: Any) -> tuple[list[float], int]:
        zero = consts[node.input[2]]
        return [float(consts[node.input[1]]), float(zero)], helper.np_dtype_to_tensor_dtype(zero.dtype)

    for end, wanted, value, op in (("input", input_, graph.input[0], "QuantizeLinear"),
                                   ("output", output, graph.output[0], "DequantizeLinear")):
        touching = [n for n in graph.node if value.name in (n.input if end == "input" else n.output)]
        if wanted and len(touching) == 1 and touching[0].op_type == op:
            node = touching[0]
            ends[end], dtype = quant_of(node)
            graph.node.remove(node)
            rename(node.output[0] if end == "input" else node.input[0], value.name)
            value.type.tensor_type.elem_type = dtype
    if ends:
        model.metadata_props.add(key="hwnas_io_quant", value=json.dumps(ends))
        with atomic_path(path) as tmp:
            onnx.save(model, str(tmp))
    return ends


# --------------------------------------------------------------------------------------------- TFLite


#: litert-torch's own progress display and TensorFlow's C++ info logs, off while it is imported and converts.
_CONVERTER_ENV = {"LITERT_TORCH_SHOW_PROGRESS": "n", "TF_CPP_MIN_LOG_LEVEL": "3", "GLOG_minloglevel": "3"}


def _litert_torch() -> Any:
    try:
        with scoped_env(_CONVERTER_ENV):
            import litert_torch
    except ImportError:
        raise RuntimeMissing("TFLite conversion needs litert-torch; install it with `pip install -e '.[runtimes]'`"
                             " (or `pip install litert-torch`)") from None
    return litert_torch


def export_tflite(module: nn.Module, shape: Sequence[int], path: Path, precision: str = "fp32",
                  calibration: Sequence[np.ndarray] = ()) -> Path:
    """TFLite through litert-torch with channels-last input (and output, for feature maps), so a measured piece
    has no layout transposes a whole network would not have. fp32; fp16 weights (activations stay fp32); or
    full int8 (per-channel symmetric weights, calibrated static activations, int8 input and output)."""
    lt = _litert_torch()
    outputs = [0] if not isinstance(module, (HeadNet, StaticNet)) else []
    nhwc = lt.to_channel_last_io(module.eval(), args=[0], outputs=outputs).eval()
    x = torch.zeros(tuple(shape)).permute(0, 2, 3, 1).contiguous()
    with atomic_path(path) as tmp, warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            scoped_env(_CONVERTER_ENV):
        warnings.simplefilter("ignore")
        if precision == "fp32":
            edge = lt.convert(nhwc, (x,))
        elif precision == "fp16":
            from litert_torch.generative.quantize import quant_recipes

            edge = lt.convert(nhwc, (x,), quant_config=quant_recipes.full_fp16_recipe())
        elif precision == "int8":
            edge = _convert_int8(lt, nhwc, x, calibration)
        else:
            raise HwnasError(f"TFLite precision {precision!r} is not one of fp32, fp16, int8")
        edge.export(str(tmp))
    return Path(path)


def _convert_int8(lt: Any, module: nn.Module, x: torch.Tensor, calibration: Sequence[np.ndarray]) -> Any:
    """PT2E static quantization (torchao's prepare/convert with litert-torch's quantizer), calibrated on
    `calibration` (NCHW arrays, permuted to the module's channels-last input).

    The graph is exported with `strict=True`: the quantizer finds adds, multiplies and concatenations by the
    `source_fn_stack` that only strict export records, and without it they stay float (a residual block then
    ran DEQUANTIZE + float ADD). The module's result is quantized too (`_BoundaryQuantizer`), as the next
    block's convolution quantizes it inside a whole network: a lookup-table piece then takes and gives int8
    tensors and runs the ops it runs inside a network."""
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = _boundary_quantizer()
    graph = prepare_pt2e(torch.export.export(module, (x,), strict=True).module(), quantizer)
    with torch.no_grad():
        for sample in calibration:
            graph(torch.from_numpy(np.ascontiguousarray(sample.transpose(0, 2, 3, 1))))
    graph = convert_pt2e(graph, fold_quantize=False)
    # The graph was exported from the eval-mode `module` (its BatchNorm and dropout are the inference ops), but an
    # exported GraphModule keeps `training=True` and refuses `.eval()`; litert-torch reads the flag and warns
    # "converted in training mode". The flag is made to say what the graph is.
    for sub in graph.modules():
        sub.training = False
    return lt.convert(graph, (x,), quant_config=QuantConfig(pt2e_quantizer=quantizer))


def _boundary_quantizer() -> Any:
    """litert-torch's PT2E quantizer (per-channel symmetric int8 weights, static int8 activations) that also
    quantizes the graph's result when no annotator did: a stem ending in h-swish (which no annotator covers)
    would otherwise end in DEQUANTIZE + float HARD_SWISH, where inside a network the h-swish runs in int8."""
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.pt2e_quantizer_utils import get_output_act_qspec
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False)

    class _BoundaryQuantizer(PT2EQuantizer):
        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            model = super().annotate(model)
            output = next(n for n in model.graph.nodes if n.op == "output")
            result = output.args[0]
            node = result[0] if isinstance(result, (tuple, list)) else result
            while node.target == torch.ops.aten.permute.default:  # the channels-last wrapper's layout change
                node = node.args[0]
            annotation = node.meta.get("quantization_annotation")
            if annotation is None:
                node.meta["quantization_annotation"] = QuantizationAnnotation(
                    output_qspec=get_output_act_qspec(config), _annotated=True)
            elif annotation.output_qspec is None:
                annotation.output_qspec = get_output_act_qspec(config)
            return model

    return _BoundaryQuantizer().set_global(config)


#: TFLite ops that carry a layer's weights; every other op follows the ops that feed it (`node_precisions`).
TFLITE_LAYER_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def tflite_layer_pattern(layer: str) -> str:
    """Regex finding layer `layer`'s weights by litert-torch's tensor names, one `<class>_<attribute>` segment per
    level of the module path (`.../Sequential_s0/InvertedResidual_b0/ConvBNAct_expand/...`,
    `.../SqueezeExcite_se/Conv2d_reduce;`); the closing `/` or `;` keeps `b1` from matching `b10`."""
    return "".join(rf"/[\w.]+_{re.escape(part)}" for part in layer.split(".")) + "(?=[/;])"


def _tflite_op_precisions(float_path: Path, layers: Mapping[str, str]) -> list[tuple[str, str, str | None]]:
    """(op scope as ai-edge-quantizer matches rules against it, op name, precision) for each op of the float
    model: a weight op at its layer's precision, every other op as `node_precisions` says."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as tfl

    model = tfl.read_model(Path(float_path))
    graph = model.subgraphs[0]
    patterns = {layer: re.compile(tflite_layer_pattern(layer)) for layer in layers}
    rows, nodes = [], []
    for op in graph.operators:
        scope = tfl.get_op_scope(op, graph.tensors)
        name = tfl.TFL_OP_CODE_TO_NAME.get(model.operatorCodes[op.opcodeIndex].builtinCode, "")
        # The weights' tensor names the one layer they belong to (an output's name may join several modules').
        weights = tfl.get_tensor_name(graph.tensors[op.inputs[1]]) if name in TFLITE_LAYER_OPS else ""
        matches = [layer for layer, rx in patterns.items() if weights and rx.search(weights)]
        layer = matches[0] if len(matches) == 1 else None
        nodes.append((layer, [str(i) for i in op.inputs if i >= 0], [str(i) for i in op.outputs if i >= 0]))
        rows.append((scope, name))
    _check_layers_found("TFLite model", {layer for layer, _, _ in nodes if layer is not None}, layers)
    return [(scope, name, p) for (scope, name), p in zip(rows, node_precisions(nodes, layers), strict=True)]


def quantize_tflite_layers(float_path: Path, path: Path, calibration: Sequence[np.ndarray],
                           layers: Mapping[str, str]) -> Path:
    """Mixed-precision TFLite model with ai-edge-quantizer, one recipe rule per op of the float model (matched by
    its exact scope): static int8 (per-channel int8 weights, int8 activations calibrated on `calibration`, NCHW
    arrays fed channels-last) for int8 layers and the ops that follow only int8 ops, fp16 weights for fp16
    layers (computed in fp32), and no rule (float) for the rest. QUANTIZE and DEQUANTIZE ops join the regions;
    the model takes and gives floats."""
    check_layer_precisions("litert", layers)
    try:
        from ai_edge_quantizer import quantizer
    except ImportError:
        raise RuntimeMissing("mixed-precision TFLite needs ai-edge-quantizer; install it with "
                             "`pip install -e '.[runtimes]'` (or `pip install ai-edge-quantizer`)") from None
    ops = _tflite_op_precisions(Path(float_path), layers)
    q = quantizer.Quantizer(str(float_path))
    for scope, name, precision in ops:
        rx = "^" + re.escape(scope) + "$"
        if precision == "int8":
            q.add_static_config(rx, "*", activation_num_bits=8, weight_num_bits=8)
        elif precision == "fp16" and name in TFLITE_LAYER_OPS:
            q.add_weight_only_config(rx, name, 16, algorithm_key="float_casting")
    with atomic_path(path) as tmp, warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        if not any(p in ("int8", "fp16") for _, _, p in ops):  # nothing to quantize: the float model as it is
            tmp.write_bytes(Path(float_path).read_bytes())
            return Path(path)
        feeds = [{"args_0": np.ascontiguousarray(x.transpose(0, 2, 3, 1))} for x in calibration]
        result = q.calibrate({"serving_default": feeds}) if q.need_calibration else None
        tmp.write_bytes(bytes(q.quantize(result, enable_progress_report=False).quantized_model))
    return Path(path)


# ------------------------------------------------------------------------------------------- export


def to_onnx(module: nn.Module, shape: Sequence[int], path: Path, precision: str,
            calibration: Sequence[np.ndarray], piece: LutKey | None = None,
            layers: Mapping[str, str] | None = None) -> Path:
    """The ONNX Runtime converter (`RuntimeSpec.converter`): fp32 ONNX, int8 QDQ calibrated on `calibration`, or
    (precision `mixed`) each layer at its precision in `layers` (`quantize_onnx_layers`). An int8 lookup-table
    `piece` takes and gives its quantized tensors where a network's would (`integer_io`: only the stem's input and
    the head's output are float inside a network)."""
    if precision == "fp32":
        return export_onnx(module, shape, path)
    with tempfile.TemporaryDirectory() as tmpdir:
        fp32 = export_onnx(module, shape, Path(tmpdir) / "fp32.onnx")
        if precision == MIXED:
            int8 = quantize_onnx_layers(fp32, Path(tmpdir) / "int8.onnx", calibration, _mixed_layers(layers))
        else:
            int8 = quantize_onnx(fp32, Path(tmpdir) / "int8.onnx", calibration)
        if piece is not None:
            integer_io(int8, input_=piece.kind != "stem", output=piece.kind != "head")
        with atomic_path(path) as tmp:
            os.replace(int8, tmp)
    return Path(path)


def to_tflite(module: nn.Module, shape: Sequence[int], path: Path, precision: str,
              calibration: Sequence[np.ndarray], piece: LutKey | None = None,
              layers: Mapping[str, str] | None = None) -> Path:
    """The LiteRT converter (`RuntimeSpec.converter`): `export_tflite` (int8 pieces and networks alike take and
    give int8 tensors), or (precision `mixed`) the fp32 model with each layer at its precision in `layers`
    (`quantize_tflite_layers`; float input and output)."""
    if precision != MIXED:
        return export_tflite(module, shape, path, precision, calibration)
    with tempfile.TemporaryDirectory() as tmpdir:
        fp32 = export_tflite(module, shape, Path(tmpdir) / "fp32.tflite")
        return quantize_tflite_layers(fp32, path, calibration, _mixed_layers(layers))


def _mixed_layers(layers: Mapping[str, str] | None) -> Mapping[str, str]:
    if not layers:
        raise HwnasError("a mixed-precision model needs the precision of each layer (a bit-width plan's precisions)")
    return layers


def export_model_file(runtime: str, precision: str, module: nn.Module, shape: Sequence[int], path: Path,
                      calibration: Sequence[np.ndarray] | None = None,
                      layers: Mapping[str, str] | None = None) -> Path:
    """Convert a whole network (float input and output) to `runtime`'s model file at `precision`, with the
    registry's converter; int8 is calibrated on `calibration` (NCHW float arrays; default: seeded random
    inputs, a stand-in for real images). Precision `mixed` runs each layer at its precision in `layers` (layer id
    -> precision, e.g. `BitWidthPlan.precisions(arch)`), which the runtime must run per layer. Returns the path."""
    spec = runtime_spec(runtime)
    if precision == MIXED:
        check_layer_precisions(runtime, _mixed_layers(layers))
    else:
        check_precision(runtime, precision)
    calibration = list(calibration) if calibration is not None else calibration_inputs(shape)
    convert = spec.convert_function()
    if precision == MIXED:
        return convert(module.eval(), tuple(shape), Path(path), precision, calibration, layers=layers)
    return convert(module.eval(), tuple(shape), Path(path), precision, calibration)


def export_for(runtime: str, precision: str, target: LutKey | ArchConfig, path: Path, seed: int = 0,
               calibration: Sequence[np.ndarray] | None = None) -> Path:
    """Write the runtime's model file for a lookup-table piece or a network (seeded weights) at `precision`;
    returns its path. A runtime without a converter gets the target's JSON spec (`spec_of`)."""
    import json

    spec = runtime_spec(runtime)
    check_precision(runtime, precision)
    if not spec.converter:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(spec_of(target, seed)))
        return Path(path)
    shape = input_shape(target)
    calibration = list(calibration) if calibration is not None else calibration_inputs(shape, seed=seed)
    piece = target if isinstance(target, LutKey) else None
    return spec.convert_function()(target_module(target, seed), shape, Path(path), precision, calibration, piece)


def agreement(runtime: str, path: Path, module: nn.Module, inputs: Sequence[np.ndarray],
              threads: int = 1) -> dict[str, float]:
    """How the runtime's outputs agree with PyTorch's: largest absolute difference, and top-1 agreement when the
    output is a (batch, classes) matrix."""
    session = get_runtime(runtime).load(Path(path), threads)
    diffs, same = [], []
    module = module.eval()
    for x in inputs:
        with torch.inference_mode():
            want = module(torch.from_numpy(x)).numpy()
        got = session.to_torch(session(session.from_torch(x))).reshape(want.shape)
        diffs.append(float(np.abs(got - want).max()))
        if want.ndim == 2:
            same.extend((got.argmax(1) == want.argmax(1)).tolist())
    out = {"max_abs_diff": max(diffs), "inputs": float(len(inputs))}
    if same:
        out["top1_agreement"] = float(np.mean(same))
    return out
