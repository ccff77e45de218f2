#!/usr/bin/env python3
"""hwnas device-kit runner: times every model listed in manifest.json on this device.

Needs only Python 3.8+, numpy and the runtime the kit was made for: onnxruntime for .onnx models, or
ai-edge-litert (or tflite_runtime) for .tflite models. It does not import torch or hwnas.

    python3 runner.py                    # the kit's protocol (threads, warm-up, timed runs)
    python3 runner.py --threads 4        # another thread count (the table then says so)

Results go to results.csv (one row per model, appended as each finishes: run it again after an interruption
and it continues) and results_meta.json (device, runtime version, protocol). Bring both back and run
`hwnas lut kit-import KIT_DIR --device NAME`.
"""

import argparse
import csv
import json
import os
import platform
import sys
import time

import numpy as np

RESULT_COLUMNS = ["id", "latency_ms_median", "latency_ms_iqr", "runs"]


def ort_session(ort, path, threads):
    """An ONNX Runtime session under hwnas's protocol (CPU provider, sequential, all graph optimisations).
    hwnas's own OrtRuntime uses this too, so the kit and the local builder time models the same way."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


#: numpy types of the ONNX Runtime input types hwnas models use (hwnas's own OrtRuntime reads this too).
ORT_TYPES = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8}


def random_input(shape, dtype):
    """A seeded random input: integers over the type's range for a quantized model, else standard normal."""
    rng = np.random.default_rng(0)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def load_ort(path, threads):
    """(run on one input, a random input of the model's own shape and type, the runtime's version string)."""
    import onnxruntime as ort

    session = ort_session(ort, path, threads)
    inp = session.get_inputs()[0]
    x = random_input(inp.shape, ORT_TYPES.get(inp.type, np.float32))
    return (lambda x: session.run(None, {inp.name: x})[0]), x, "onnxruntime " + ort.__version__


def load_litert(path, threads):
    """As `load_ort`, for a .tflite model (ai-edge-litert, or tflite_runtime where that is installed)."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        version = "ai-edge-litert"
    except ImportError:
        from tflite_runtime.interpreter import Interpreter

        version = "tflite_runtime"
    interpreter = Interpreter(model_path=path, num_threads=threads)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    x = random_input(inp["shape"], inp["dtype"])

    def run(x):
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        return interpreter.get_tensor(out["index"])

    return run, x, version


#: The runtimes the kit runs, by name (hwnas's registry marks them `kit=True`; a test checks they agree).
LOADERS = {"ort": load_ort, "litert": load_litert}


def load_session(runtime, path, threads):
    """(run on one input, a random input of the model's own shape and type, the runtime's version string)."""
    if runtime not in LOADERS:
        sys.exit(f"this runner does not run {runtime!r} models (it runs {', '.join(LOADERS)})")
    return LOADERS[runtime](path, threads)


def time_model(run, x, warmup, runs):
    for _ in range(warmup):
        run(x)
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter_ns()
        run(x)
        times[i] = time.perf_counter_ns() - start
    q1, median, q3 = np.percentile(times / 1e6, [25, 50, 75])
    return float(median), float(q3 - q1)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kit", default=here, help="kit directory (default: this script's)")
    parser.add_argument("--threads", type=int, help="threads (default: the kit's protocol)")
    parser.add_argument("--warmup", type=int, help="warm-up runs (default: the kit's protocol)")
    parser.add_argument("--runs", type=int, help="timed runs (default: the kit's protocol)")
    parser.add_argument("--device", default=platform.node(), help="a name for this device")
    args = parser.parse_args()
    with open(os.path.join(args.kit, "manifest.json")) as fh:
        manifest = json.load(fh)
    protocol = dict(manifest["protocol"])
    for name in ("threads", "warmup", "runs"):
        if getattr(args, name) is not None:
            protocol[name] = getattr(args, name)
    results = os.path.join(args.kit, "results.csv")
    done = set()
    if os.path.exists(results):
        with open(results, newline="") as fh:
            text = fh.read()
        if text and not text.endswith("\n"):  # an interrupted append: drop the incomplete line
            text = text[: text.rfind("\n") + 1]
            with open(results, "w", newline="") as fh:
                fh.write(text)
        done = {row["id"] for row in csv.DictReader(text.splitlines())}
    else:
        with open(results, "w", newline="") as fh:
            csv.writer(fh, lineterminator="\n").writerow(RESULT_COLUMNS)
    version = None
    entries = [e for e in manifest["entries"] if e["id"] not in done]
    repeats = int(protocol.get("repeats", 1))
    for start in range(0, len(entries), 32):
        group = entries[start:start + 32]
        best = {}
        for _ in range(repeats):  # round-robin rounds: a burst of load elsewhere slows one round, not all
            for entry in group:
                run, x, version = load_session(manifest["runtime"], os.path.join(args.kit, entry["file"]),
                                               protocol["threads"])
                median, iqr = time_model(run, x, protocol["warmup"], protocol["runs"])
                if entry["id"] not in best or median < best[entry["id"]][0]:
                    best[entry["id"]] = (median, iqr)
        with open(results, "a", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            for entry in group:
                median, iqr = best[entry["id"]]
                writer.writerow([entry["id"], f"{median:.6g}", f"{iqr:.6g}", protocol["runs"]])
            fh.flush()
            os.fsync(fh.fileno())
        print(f"{len(done) + start + len(group)}/{len(manifest['entries'])} measured", file=sys.stderr)
    if version is None and manifest["entries"]:
        version = load_session(manifest["runtime"], os.path.join(args.kit, manifest["entries"][0]["file"]),
                               protocol["threads"])[2]
    meta = {"device": args.device, "machine": platform.machine(), "platform": platform.platform(),
            "processor": platform.processor(), "runtime_version": version, "protocol": protocol,
            "python": platform.python_version(), "numpy": np.__version__,
            "torch_loaded": "torch" in sys.modules}
    with open(os.path.join(args.kit, "results_meta.json"), "w") as fh:
        json.dump(meta, fh, indent=2)
    print(f"wrote {results}", file=sys.stderr)


if __name__ == "__main__":
    main()
