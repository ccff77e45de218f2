"""Runtimes that measure a model file at batch 1 under a fixed, recorded protocol.

`Runtime` is the small interface: `version()`, `load(path) -> Session` (a callable on one numpy input), and
`measure(path, input_shape, protocol) -> Measurement` (warm-up runs, then timed runs; median and IQR).
Implementations: ONNX Runtime (CPU execution provider, `.onnx`), LiteRT (`ai-edge-litert`, falling back to
`tflite_runtime`; `.tflite`) and PyTorch eager (`.json`: the lookup-table key or architecture a module is
built from, with seeded weights). Runtime packages are imported lazily; a missing one raises
`RuntimeMissing` naming what to install.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from search_spaces.errors import HwnasError


class RuntimeMissing(HwnasError):
    """A runtime package is not installed."""


@dataclass(frozen=True)
class Protocol:
    """How a model is timed: threads, warm-up runs, timed runs, batch (always 1 for tables), CPU pinning."""

    threads: int = 1
    warmup: int = 10
    runs: int = 50
    batch: int = 1
    pin_cpu: int | None = None

    def __post_init__(self) -> None:
        for name, low in (("threads", 1), ("warmup", 0), ("runs", 3), ("batch", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise HwnasError(f"protocol {name} must be a whole number >= {low}; got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Protocol:
        return cls(**{k: data[k] for k in ("threads", "warmup", "runs", "batch", "pin_cpu") if k in data})


@dataclass(frozen=True)
class Measurement:
    median_ms: float
    iqr_ms: float
    runs: int


Session = Callable[[np.ndarray], np.ndarray]


def time_session(session: Session, x: np.ndarray, protocol: Protocol) -> Measurement:
    """Warm up, then time `protocol.runs` single calls; median and interquartile range in milliseconds."""
    for _ in range(protocol.warmup):
        session(x)
    times = np.empty(protocol.runs)
    for i in range(protocol.runs):
        start = time.perf_counter_ns()
        session(x)
        times[i] = time.perf_counter_ns() - start
    q1, median, q3 = np.percentile(times / 1e6, [25, 50, 75])
    return Measurement(float(median), float(q3 - q1), protocol.runs)


def pin_to_cpu(cpu: int | None) -> None:
    """Pin this process to one CPU (nn-Meter's protocol); no-op when `cpu` is None or pinning is unsupported."""
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})


class Runtime:
    """Base class: subclasses set `name`, `suffix`, `package` and implement `version` and `load`."""

    name = ""
    suffix = ""
    package = ""  # what to pip install

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

    def measure(self, path: Path, input_shape: tuple[int, ...], protocol: Protocol, seed: int = 0) -> Measurement:
        session = self.load(self.check_file(path), protocol.threads)
        x = np.random.default_rng(seed).standard_normal(input_shape).astype(np.float32)
        return time_session(session, x, protocol)

    def describe(self) -> dict[str, str]:
        return {"runtime": self.name, "runtime_version": self.version()}


def _missing(runtime: str, package: str) -> RuntimeMissing:
    return RuntimeMissing(f"runtime {runtime!r} needs the package {package}, which is not installed; install it "
                          f"with `pip install -e '.[runtimes]'` (or `pip install {package}`)")


class OrtRuntime(Runtime):
    """ONNX Runtime, CPU execution provider, sequential execution, all graph optimisations."""

    name, suffix, package = "ort", ".onnx", "onnxruntime"

    def _ort(self) -> Any:
        try:
            import onnxruntime
        except ImportError:
            raise _missing(self.name, self.package) from None
        return onnxruntime

    def version(self) -> str:
        return str(self._ort().__version__)

    def load(self, path: Path, threads: int) -> Session:
        ort = self._ort()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: x})[0]


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
        from tflite_runtime import interpreter as module  # type: ignore[no-redef]

        return module.Interpreter, f"tflite_runtime {getattr(module, '__version__', '')}".strip()
    except ImportError:
        raise _missing("litert", "ai-edge-litert") from None


class LiteRTRuntime(Runtime):
    """LiteRT (TFLite) interpreter with the default XNNPACK delegate."""

    name, suffix, package = "litert", ".tflite", "ai-edge-litert"

    def version(self) -> str:
        return litert_interpreter_class()[1]

    def load(self, path: Path, threads: int) -> Session:
        interpreter_class, _ = litert_interpreter_class()
        interpreter = interpreter_class(model_path=str(path), num_threads=threads)
        interpreter.allocate_tensors()
        inp, out = interpreter.get_input_details()[0]["index"], interpreter.get_output_details()[0]["index"]

        def run(x: np.ndarray) -> np.ndarray:
            interpreter.set_tensor(inp, x)
            interpreter.invoke()
            return interpreter.get_tensor(out)

        return run


class TorchRuntime(Runtime):
    """PyTorch eager on the CPU. Its model file is a JSON spec (`{"key": ...}` or `{"arch": ...}`): the module
    is built from it with seeded weights, which is all latency depends on."""

    name, suffix, package = "torch", ".json", "torch"

    def version(self) -> str:
        import torch

        return f"torch {torch.__version__}"

    def load(self, path: Path, threads: int) -> Session:
        import torch

        from latency_tables.convert import module_from_spec

        module = module_from_spec(json.loads(Path(path).read_text()))
        torch.set_num_threads(threads)

        def run(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return module(torch.from_numpy(x)).numpy()

        return run


RUNTIMES: dict[str, type[Runtime]] = {"ort": OrtRuntime, "litert": LiteRTRuntime, "torch": TorchRuntime}
#: Precisions each runtime's tables may be built at.
PRECISIONS: dict[str, tuple[str, ...]] = {"ort": ("fp32", "int8"), "litert": ("fp32", "fp16", "int8"),
                                          "torch": ("fp32",)}


def get_runtime(name: str) -> Runtime:
    try:
        return RUNTIMES[name]()
    except KeyError:
        raise HwnasError(f"unknown runtime {name!r}; allowed: {', '.join(RUNTIMES)}") from None


def check_precision(runtime: str, precision: str) -> str:
    allowed = PRECISIONS[get_runtime(runtime).name]
    if precision not in allowed:
        raise HwnasError(f"runtime {runtime!r} has no precision {precision!r}; allowed: {', '.join(allowed)}")
    return precision
