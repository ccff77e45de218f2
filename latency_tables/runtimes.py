"""Runtimes that measure a model file at batch 1 under a fixed, recorded protocol.

`Runtime` is the small interface: `version()`, `load(path) -> Session` (a callable on one numpy input), and
`measure(path, input_shape, protocol) -> Measurement` (warm-up runs, then timed runs; median and IQR).
`RUNTIMES` is the registry, one `RuntimeSpec` per runtime (suffix, package, precisions, loader, converter,
conversion revisions, device-kit support): ONNX Runtime (CPU execution provider, `.onnx`), LiteRT
(`ai-edge-litert`, falling back to `tflite_runtime`; `.tflite`) and PyTorch eager (`.json`: the lookup-table
key or architecture a module is built from, with seeded weights). Runtime packages are imported lazily; a
missing one raises `RuntimeMissing` naming what to install.
"""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from search_spaces.errors import HwnasError
from search_spaces.files import pinned_to_cpu


class RuntimeMissing(HwnasError):
    """A runtime package is not installed."""


@dataclass(frozen=True)
class Protocol:
    """How a model is timed: threads, warm-up runs, timed runs, batch (always 1 for tables), CPU pinning, and
    `repeats`: each model is timed in that many separate rounds (round-robin over a group of models, so a burst
    of load from elsewhere hits one round, not all) and the lowest round median is kept."""

    threads: int = 1
    warmup: int = 10
    runs: int = 50
    batch: int = 1
    pin_cpu: int | None = None
    repeats: int = 3

    def __post_init__(self) -> None:
        for name, low in (("threads", 1), ("warmup", 0), ("runs", 3), ("batch", 1), ("repeats", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise HwnasError(f"protocol {name} must be a whole number >= {low}; got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Protocol:
        return cls(**{k: data[k] for k in ("threads", "warmup", "runs", "batch", "pin_cpu", "repeats") if k in data})


@dataclass(frozen=True)
class Measurement:
    median_ms: float
    iqr_ms: float
    runs: int


class Session:
    """A loaded model: `run(x)` on the model's own input (shape, dtype, layout), and conversions from and to
    PyTorch's float NCHW tensors for agreement checks (`from_torch`, `to_torch`)."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], input_shape: tuple[int, ...],
                 input_dtype: Any = np.float32, channels_last: bool = False,
                 input_quant: tuple[float, int] | None = None, output_quant: tuple[float, int] | None = None,
                 ) -> None:
        self.run, self.input_shape, self.input_dtype = run, tuple(input_shape), np.dtype(input_dtype)
        self.channels_last, self.input_quant, self.output_quant = channels_last, input_quant, output_quant

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.run(x)

    def example(self, seed: int = 0) -> np.ndarray:
        """A random input of the model's shape and type (what timing feeds it)."""
        return self.from_torch(np.random.default_rng(seed).standard_normal(self.torch_shape).astype(np.float32))

    @property
    def torch_shape(self) -> tuple[int, ...]:
        shape = self.input_shape
        return (shape[0], shape[3], shape[1], shape[2]) if self.channels_last and len(shape) == 4 else shape

    def from_torch(self, x: np.ndarray) -> np.ndarray:
        if self.channels_last and x.ndim == 4:
            x = x.transpose(0, 2, 3, 1)
        if self.input_quant is not None:
            scale, zero = self.input_quant
            info = np.iinfo(self.input_dtype)
            x = np.clip(np.round(x / scale) + zero, info.min, info.max)
        return np.ascontiguousarray(x.astype(self.input_dtype))

    def to_torch(self, y: np.ndarray) -> np.ndarray:
        y = np.asarray(y)
        if self.output_quant is not None:
            scale, zero = self.output_quant
            y = (y.astype(np.float32) - zero) * scale
        if self.channels_last and y.ndim == 4:
            y = y.transpose(0, 3, 1, 2)
        return y.astype(np.float32)


def time_session(session: Session, protocol: Protocol, seed: int = 0) -> Measurement:
    """Warm up, then time `protocol.runs` single calls; median and interquartile range in milliseconds."""
    x = session.example(seed)
    for _ in range(protocol.warmup):
        session(x)
    times = np.empty(protocol.runs)
    for i in range(protocol.runs):
        start = time.perf_counter_ns()
        session(x)
        times[i] = time.perf_counter_ns() - start
    q1, median, q3 = np.percentile(times / 1e6, [25, 50, 75])
    return Measurement(float(median), float(q3 - q1), protocol.runs)


class Runtime:
    """Loads and times one runtime's model files. Subclasses implement `version` and `load`; `spec` is the
    runtime's registry entry (`RUNTIMES`), which names it and its file suffix and package."""

    def __init__(self, spec: RuntimeSpec) -> None:
        self.spec = spec

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def suffix(self) -> str:
        return self.spec.suffix

    @property
    def package(self) -> str:
        """What to pip install."""
        return self.spec.package

    def version(self) -> str:
        raise NotImplementedError

    def load(self, path: Path, threads: int) -> Session:
        raise NotImplementedError

    def check_file(self, path: Path) -> Path:
        path = Path(path)
        if not path.is_file():
            raise HwnasError(f"model file {path} does not exist")
        if path.suffix != self.suffix:
            raise HwnasError(f"{self.name} runs {self.suffix} files; got {path.name}")
        return path

    def measure(self, path: Path, protocol: Protocol, seed: int = 0) -> Measurement:
        """Time the model file under `protocol` on a random input of the model's own shape and type."""
        return self.measure_many([path], protocol, seed)[0]

    def measure_many(self, paths: list[Path], protocol: Protocol, seed: int = 0) -> list[Measurement]:
        """Time each file in `protocol.repeats` rounds, round-robin over the files; keep each file's lowest round
        median (load from elsewhere only ever slows a round down). The process is pinned to `protocol.pin_cpu`
        (when set and available) while it measures, and given back its CPUs afterwards."""
        best: list[Measurement | None] = [None] * len(paths)
        with pinned_to_cpu(protocol.pin_cpu):
            for _ in range(protocol.repeats):
                for i, path in enumerate(paths):
                    m = time_session(self.load(self.check_file(path), protocol.threads), protocol, seed)
                    current = best[i]
                    if current is None or m.median_ms < current.median_ms:
                        best[i] = m
        return [m for m in best if m is not None]

    def describe(self) -> dict[str, str]:
        return {"runtime": self.name, "runtime_version": self.version()}


def _missing(runtime: str, package: str) -> RuntimeMissing:
    return RuntimeMissing(f"runtime {runtime!r} needs the package {package}, which is not installed; install it "
                          f"with `pip install -e '.[runtimes]'` (or `pip install {package}`)")


class _KeepFloatLayers:
    """The onnxruntime module, but for sessions made without the `WeightBiasQuantization` optimizer.

    That optimizer (ORT >= 1.21) gives a float Conv/Gemm that sits between a DequantizeLinear and a QuantizeLinear
    int8 weights and an int32 bias when the session loads, and the Conv then fuses into a QLinearConv: an fp32
    layer between two int8 layers of a mixed-precision model (`convert.quantize_onnx_layers`) would run in int8.
    Fully int8 and fully fp32 models have no such float Conv, so they run as before. Everything else about the
    session is the kit's protocol (`kit_runner.ort_session`)."""

    DISABLED = ("WeightBiasQuantization",)

    def __init__(self, ort: Any) -> None:
        self._ort = ort

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ort, name)

    def InferenceSession(self, *args: Any, **kwargs: Any) -> Any:  # noqa: N802 - onnxruntime's name
        return self._ort.InferenceSession(*args, disabled_optimizers=list(self.DISABLED), **kwargs)


class OrtRuntime(Runtime):
    """ONNX Runtime, CPU execution provider, sequential execution, all graph optimisations but the one that would
    quantize a mixed-precision model's fp32 layers (`_KeepFloatLayers`)."""

    def _ort(self) -> Any:
        try:
            import onnxruntime
        except ImportError:
            raise _missing(self.name, self.package) from None
        return onnxruntime

    def version(self) -> str:
        return f"onnxruntime {self._ort().__version__}"

    def load(self, path: Path, threads: int) -> Session:
        from latency_tables.kit_runner import ORT_TYPES, ort_session

        session = ort_session(_KeepFloatLayers(self._ort()), path, threads)
        inp = session.get_inputs()[0]
        # An int8 lookup-table piece takes and gives its quantized tensors (see `convert.integer_io`).
        ends = json.loads(session.get_modelmeta().custom_metadata_map.get("hwnas_io_quant", "{}"))
        dtype = ORT_TYPES.get(inp.type, np.float32)

        def quant(end: str) -> tuple[float, int] | None:
            return (float(ends[end][0]), int(ends[end][1])) if end in ends else None

        return Session(lambda x: session.run(None, {inp.name: x})[0], tuple(inp.shape), dtype,
                       input_quant=quant("input"), output_quant=quant("output"))


def litert_interpreter_class() -> tuple[Any, str]:
    """(Interpreter class, version) from ai-edge-litert, or tflite_runtime when that is what is installed."""
    try:
        from ai_edge_litert import interpreter as module

        try:
            from importlib.metadata import version

            return module.Interpreter, f"ai-edge-litert {version('ai-edge-litert')}"
        except Exception:  # noqa: BLE001 - metadata missing in odd installs; the class still works
            return module.Interpreter, "ai-edge-litert"
    except ImportError:
        pass
    try:
        from tflite_runtime import interpreter as module

        return module.Interpreter, f"tflite_runtime {getattr(module, '__version__', '')}".strip()
    except ImportError:
        raise _missing("litert", "ai-edge-litert") from None


class LiteRTRuntime(Runtime):
    """LiteRT (TFLite) interpreter with the default XNNPACK delegate."""

    def version(self) -> str:
        return litert_interpreter_class()[1]

    def load(self, path: Path, threads: int) -> Session:
        interpreter_class, _ = litert_interpreter_class()
        interpreter = interpreter_class(model_path=str(path), num_threads=threads)
        interpreter.allocate_tensors()
        inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]

        def run(x: np.ndarray) -> np.ndarray:
            interpreter.set_tensor(inp["index"], x)
            interpreter.invoke()
            return interpreter.get_tensor(out["index"])

        def quant(detail: dict[str, Any]) -> tuple[float, int] | None:
            scale, zero = detail.get("quantization", (0.0, 0))
            return (float(scale), int(zero)) if scale else None

        # hwnas converts with channels-last input (no boundary transposes inside a measured piece).
        return Session(run, tuple(int(d) for d in inp["shape"]), inp["dtype"], channels_last=True,
                       input_quant=quant(inp), output_quant=quant(out))


class TorchRuntime(Runtime):
    """PyTorch eager on the CPU. Its model file is a JSON spec (`{"key": ...}` or `{"arch": ...}`): the module
    is built from it with seeded weights, which is all latency depends on."""

    def version(self) -> str:
        import torch

        return f"torch {torch.__version__}"

    def load(self, path: Path, threads: int) -> Session:
        import torch

        from latency_tables.pieces import input_shape, module_from_spec, target_from_spec

        spec = json.loads(Path(path).read_text())
        module = module_from_spec(spec)

        def run(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return module(torch.from_numpy(x)).numpy()

        return Session(run, input_shape(target_from_spec(spec)))

    def measure_many(self, paths: list[Path], protocol: Protocol, seed: int = 0) -> list[Measurement]:
        """As for every runtime, with torch's thread count set to the protocol's while it measures."""
        from supernets.threads import torch_threads

        with torch_threads(protocol.threads):
            return super().measure_many(paths, protocol, seed)


@dataclass(frozen=True, eq=False)
class RuntimeSpec:
    """One runtime's registry entry: everything hwnas knows about it, in one place.

    Args:
        suffix: its model files' suffix.
        package: what to pip install for it.
        precisions: the precisions its tables are built and its models exported at.
        runtime: the `Runtime` class that loads and times its model files (torch-free, but for torch's own).
        converter: `"module:function"` converting a torch module to its model file (looked up only when a model
            is converted, so pricing and measuring stay torch-free); the signature is that of
            `latency_tables.convert.to_onnx`. Empty when the model file is a JSON spec of a piece or network,
            built into a module when loaded (the torch runtime).
        revisions: revision of the conversion of lookup-table pieces per precision (1 where absent); a change
            re-measures every key of that precision's tables.
        kit: whether the torch-free device kit (`kit_runner.LOADERS`) runs it.
        layer_precisions: the precisions one layer of a mixed-precision model may run at (`"mixed"` models, one
            precision per layer from a bit-width plan); empty when the runtime exports no mixed models.
    """

    name: str
    suffix: str
    package: str
    precisions: tuple[str, ...]
    runtime: type[Runtime]
    converter: str = ""
    revisions: Mapping[str, int] = field(default_factory=dict)
    kit: bool = False
    layer_precisions: tuple[str, ...] = ()

    def make(self) -> Runtime:
        return self.runtime(self)

    def revision(self, precision: str) -> int:
        return int(self.revisions.get(precision, 1))

    def convert_function(self) -> Callable[..., Path]:
        """The converter from a torch module (imports it, and with it torch and the converter package)."""
        if not self.converter:
            raise HwnasError(f"runtime {self.name!r} has no converter from a torch module: its model file is a "
                             f"spec of a lookup-table piece or architecture (latency_tables.convert.export_for)")
        module, _, function = self.converter.partition(":")
        return getattr(importlib.import_module(module), function)


#: The registry: one entry per runtime.
RUNTIMES: dict[str, RuntimeSpec] = {spec.name: spec for spec in (
    # ort int8 revision 2: pieces take and give uint8 tensors, as inside a whole network (`convert.integer_io`).
    # Mixed models: int8 QDQ or fp32 per layer (fp16 on the CPU provider runs in fp32 behind inserted casts).
    RuntimeSpec("ort", ".onnx", "onnxruntime", ("fp32", "int8"), OrtRuntime, "latency_tables.convert:to_onnx",
                {"int8": 2}, kit=True, layer_precisions=("fp32", "int8")),
    # litert int8 revision 2: strict export, so residual adds quantize; every piece's result is quantized
    # (`convert._convert_int8`).
    # Mixed models: ai-edge-quantizer's per-op recipes (static int8, fp16 weights, fp32) on the float model.
    RuntimeSpec("litert", ".tflite", "ai-edge-litert", ("fp32", "fp16", "int8"), LiteRTRuntime,
                "latency_tables.convert:to_tflite", {"int8": 2}, kit=True, layer_precisions=("fp32", "fp16", "int8")),
    RuntimeSpec("torch", ".json", "torch", ("fp32",), TorchRuntime),
)}
#: Precisions each runtime's tables may be built at (from the registry).
PRECISIONS: dict[str, tuple[str, ...]] = {name: spec.precisions for name, spec in RUNTIMES.items()}


def runtime_spec(name: str) -> RuntimeSpec:
    """The registry entry of runtime `name`; a `HwnasError` naming the registered ones otherwise."""
    try:
        return RUNTIMES[name]
    except KeyError:
        raise HwnasError(f"unknown runtime {name!r}; allowed: {', '.join(RUNTIMES)}") from None


def get_runtime(name: str) -> Runtime:
    return runtime_spec(name).make()


def check_precision(runtime: str, precision: str) -> str:
    allowed = runtime_spec(runtime).precisions
    if precision not in allowed:
        raise HwnasError(f"runtime {runtime!r} has no precision {precision!r}; allowed: {', '.join(allowed)}")
    return precision


#: The precision of a model whose layers run at the precisions a bit-width plan gives them.
MIXED = "mixed"


def check_layer_precisions(runtime: str, layers: Mapping[str, str]) -> dict[str, str]:
    """`layers` (layer id -> precision) if `runtime` runs every one of them in a mixed model; else a `HwnasError`
    naming the first layer it cannot run and what it can."""
    allowed = runtime_spec(runtime).layer_precisions
    if not allowed:
        raise HwnasError(f"runtime {runtime!r} exports no mixed-precision models (one precision per layer)")
    for layer, precision in layers.items():
        if precision not in allowed:
            raise HwnasError(f"layer {layer} at {precision} cannot run on {runtime}: a {runtime} mixed-precision "
                             f"model runs each layer at one of {', '.join(allowed)}")
    return dict(layers)


def exportable() -> dict[str, tuple[str, ...]]:
    """Runtimes a torch module converts to (`convert.export_model_file`), with their precisions."""
    return {name: spec.precisions for name, spec in RUNTIMES.items() if spec.converter}
