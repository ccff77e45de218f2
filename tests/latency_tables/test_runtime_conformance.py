"""Every registered runtime, at every precision it lists: convert a tiny network, load and run it, agree with
PyTorch, and measure it. A new runtime is one registry entry, and these tests cover it unedited.

Bounds (seeded, untrained network; random inputs that also calibrate int8): fp32 largest |logit difference|
<= 1e-4; fp16 top-1 agreement >= 0.95; int8 top-1 agreement >= 0.9 (quantization of an untrained network on
16 random inputs; trained networks do better, see nas.export.parity).
"""

import numpy as np
import pytest

from latency_tables import kit_runner
from latency_tables.convert import (
    agreement,
    calibration_inputs,
    export_for,
    export_model_file,
    input_shape,
    target_module,
)
from latency_tables.runtimes import RUNTIMES, Protocol, RuntimeMissing, get_runtime, runtime_spec
from latency_tables.table import current_revisions

CASES = [(name, precision) for name, spec in RUNTIMES.items() for precision in spec.precisions]
TOP1_FLOOR = {"fp16": 0.95, "int8": 0.9}


def test_registry_entries_are_complete_and_consistent():
    assert set(RUNTIMES) >= {"ort", "litert", "torch"}
    for name, spec in RUNTIMES.items():
        rt = get_runtime(name)
        assert (rt.name, rt.suffix, rt.package) == (name, spec.suffix, spec.package) and rt.spec is spec
        assert spec.suffix.startswith(".") and spec.package and spec.precisions
        assert set(spec.precisions) <= {"fp32", "fp16", "int8"} and set(spec.revisions) <= set(spec.precisions)
        assert spec.kit == (name in kit_runner.LOADERS)  # the device kit runs what the registry says it runs
        if spec.converter:
            assert callable(spec.convert_function())
    assert current_revisions("ort", "int8")["conversion"] == 2 and current_revisions("ort", "fp32")["conversion"] == 1
    with pytest.raises(Exception, match="unknown runtime 'tvm'; allowed: ort, litert, torch"):
        runtime_spec("tvm")


def convert(name, precision, arch, path, calibration):
    """A whole network through the registry's converter, or (no converter) the runtime's spec file."""
    if RUNTIMES[name].converter:
        return export_model_file(name, precision, target_module(arch), input_shape(arch), path, calibration)
    return export_for(name, precision, arch, path, calibration=calibration)


@pytest.mark.parametrize("name, precision", CASES)
def test_runtime_converts_runs_agrees_and_measures(tiny_space, name, precision, tmp_path):
    spec = RUNTIMES[name]
    try:
        get_runtime(name).version()
    except RuntimeMissing as err:
        pytest.skip(str(err))
    arch = tiny_space.sample(np.random.default_rng(4))
    inputs = calibration_inputs(input_shape(arch), 16, seed=1)
    path = convert(name, precision, arch, tmp_path / f"net{spec.suffix}", inputs)
    assert path.is_file() and path.suffix == spec.suffix
    report = agreement(name, path, target_module(arch), inputs)
    assert report["inputs"] == 16
    if precision == "fp32":
        assert report["max_abs_diff"] <= 1e-4 and report["top1_agreement"] == 1.0, report
    else:
        assert report["top1_agreement"] >= TOP1_FLOOR[precision], report
    m = get_runtime(name).measure(path, Protocol(warmup=1, runs=5, repeats=2))
    assert m.median_ms > 0 and m.iqr_ms >= 0 and m.runs == 5


@pytest.mark.parametrize("name", [n for n, s in RUNTIMES.items() if s.converter])
def test_a_precision_the_runtime_lacks_is_refused_naming_the_allowed_ones(tiny_space, name, tmp_path):
    arch = tiny_space.sample(np.random.default_rng(4))
    with pytest.raises(Exception, match=f"runtime '{name}' has no precision 'int4'; allowed: "):
        export_model_file(name, "int4", target_module(arch), input_shape(arch), tmp_path / "x")
    assert not list(tmp_path.iterdir())
