"""Subnet export: the directory format, loading without the supernet, runtime parity, measured latency against the
tables' predictions, the measured constraint verdict, and clear errors for missing or corrupt files."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from latency_tables.runtimes import Protocol
from latency_tables.table import find_table
from nas.export import (
    METRICS_FILE,
    SPEC_FILE,
    WEIGHTS_FILE,
    ParityError,
    Provenance,
    SubnetError,
    SubnetSpec,
    check_parity,
    export_from_run,
    export_subnet,
    latency_verdict,
    load_subnet,
    meets_constraint_measured,
    remeasure,
)
from search_spaces import get_space
from search_spaces.errors import HwnasError
from supernets.config import PhaseConfig
from supernets.data import to_tensor
from supernets.evaluation import recalibrate_bn, recalibration_images
from supernets.training import SupernetTrainer, load_supernet
from tests.supernets.test_training import quiet, tiny_config, tiny_digits

ROOT = Path(__file__).resolve().parents[2]
FAST = Protocol(warmup=2, runs=10, repeats=1)
RECAL = 64


def the_arch():
    """A small subnet of the `small` space through fused, ShuffleNet (split and shuffle) and EfficientNet blocks."""
    return get_space("small").extreme(False, (1, 2, 2, 1))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("supernet")
    SupernetTrainer(tiny_config(phases=(PhaseConfig("full", 1, 0.05),)), path, data=tiny_digits(), progress=False,
                    log=quiet).run()
    return path


@pytest.fixture(scope="module")
def tables():
    return [find_table("small", "ort", "fp32"), find_table("small", "litert", "fp32")]


@pytest.fixture(scope="module")
def exported(run_dir, tables, tmp_path_factory):
    out_root = tmp_path_factory.mktemp("subnets")
    messages: list[str] = []
    path = export_from_run(run_dir, the_arch(), out_root, data=tiny_digits(), recal_images=RECAL, tables=tables,
                           protocol=FAST, constraint="latency_ms<=1000", accuracy=0.5,
                           extra_metrics={"note": "test"}, progress=messages.append)
    return path, messages


def copy_of(exported, tmp_path) -> Path:
    target = tmp_path / exported[0].name
    shutil.copytree(exported[0], target)
    return target


def test_the_export_directory_holds_every_file_and_the_spec_describes_it(exported, run_dir, tables):
    path, messages = exported
    arch = the_arch()
    assert path.name == arch.key
    assert sorted(p.name for p in path.parent.iterdir()) == [arch.key]  # no temporary left beside it
    assert sorted(p.name for p in path.iterdir()) == ["metrics.json", "model.onnx", "model.safetensors",
                                                      "model.tflite", "spec.json"]
    assert any("converting to litert" in m for m in messages) and messages[-1].startswith("exported")
    spec_json = json.loads((path / SPEC_FILE).read_text())
    assert spec_json["arch"] == arch.to_str() and spec_json["arch_json"] == arch.to_dict()
    assert spec_json["prune_plan"] is None and spec_json["bitwidth_plan"] is None
    assert spec_json["input"]["shape"] == [1, 1, arch.resolution, arch.resolution]
    spec = SubnetSpec.load(path)
    assert spec.arch == arch and spec.space == "small" and spec.key == arch.key
    _, meta = load_supernet(run_dir)
    assert spec.provenance == Provenance(meta["weights_sha256"], "digits", 0, RECAL,
                                         tuple(t.table_id for t in tables), spec.provenance.hwnas_version,
                                         torch.__version__)
    assert spec.models == (("ort", "fp32"), ("litert", "fp32"))
    assert set(spec.files) == {"model.safetensors", "model.onnx", "model.tflite"}
    assert SubnetSpec.from_dict(spec.to_dict()) == spec


def test_load_subnet_gives_the_recalibrated_materialized_model_without_the_supernet(exported, run_dir):
    path, _ = exported
    data, arch = tiny_digits(), the_arch()
    net, _ = load_supernet(run_dir)
    want = recalibrate_bn(net.materialize(arch), recalibration_images(data, arch.resolution, RECAL, 0))
    model, spec = load_subnet(path)
    assert not model.training
    x = to_tensor(data.val.images, arch.resolution, data.mean, data.std)
    with torch.no_grad():
        assert torch.equal(model(x), want(x))
    fresh = net.materialize(arch).eval()  # not recalibrated: the export's statistics are not the supernet's
    with torch.no_grad():
        assert not torch.allclose(fresh(x), want(x))


def test_metrics_record_accuracy_costs_parity_and_measured_against_predicted_latency(exported, tables):
    path, _ = exported
    metrics = json.loads((path / METRICS_FILE).read_text())
    data = tiny_digits()
    accuracy = metrics["accuracy"]
    assert accuracy["images"] == len(data.val) and 0 <= accuracy["top1"] <= 1 and accuracy["search_accuracy"] == 0.5
    assert metrics["cost"]["params"] > 0 and metrics["cost"]["flops"] == 2 * metrics["cost"]["macs"]
    assert metrics["extra"] == {"note": "test"}
    parity = metrics["parity"]
    assert parity["passed"] and parity["images"] == len(data.val)
    assert set(parity["runtimes"]) == {"ort-fp32", "litert-fp32"}
    for report in parity["runtimes"].values():
        assert report["max_abs_diff"] <= 1e-4 and report["top1_agreement"] == 1.0 and report["top1_differ"] == 0
        assert report["top1"] == parity["torch_top1"] == accuracy["top1"]
    latency = metrics["latency"]
    for label in ("ort-fp32", "litert-fp32"):
        measured = latency["measured"][label]
        assert measured["median_ms"] > 0 and measured["iqr_ms"] >= 0 and measured["threads"] == 1
        assert measured["runs"] == FAST.runs and measured["protocol"] == FAST.to_dict()
    for table in tables:
        predicted = latency["predicted"][table.table_id]["latency_ms"]
        assert predicted == pytest.approx(table.predict_arch(the_arch()))
        comparison = latency["comparison"][table.table_id]
        assert comparison["predicted_ms"] == predicted
        assert comparison["measured_ms"] == latency["measured"][f"{table.profile.runtime}-fp32"]["median_ms"]
        assert comparison["relative_error"] == pytest.approx((predicted - comparison["measured_ms"])
                                                             / comparison["measured_ms"])
    verdict = latency["constraint"]
    assert verdict["table_id"] == tables[0].table_id and verdict["measured"] == "ort-fp32"
    assert verdict["meets_constraint_predicted"] and verdict["meets_constraint_measured"]
    assert meets_constraint_measured(path)


def test_check_parity_compares_both_runtimes_with_pytorch_and_records_it(exported, tmp_path):
    path = copy_of(exported, tmp_path)
    data = tiny_digits()
    report = check_parity(path, data, images=20)
    assert report["images"] == 20 and report["passed"]
    for r in report["runtimes"].values():
        assert 0 <= r["max_abs_diff"] <= 1e-4 and r["top1_agreement"] == 1.0
    assert json.loads((path / METRICS_FILE).read_text())["parity"] == report


def test_parity_failure_is_reported_with_how_many_differ(exported, run_dir, tmp_path):
    """An ONNX model of the same subnet without BN recalibration (its hash recorded, so it is read) disagrees."""
    from latency_tables.convert import export_onnx

    path = copy_of(exported, tmp_path)
    net, _ = load_supernet(run_dir)
    arch = the_arch()
    export_onnx(net.materialize(arch).eval(), (1, 1, arch.resolution, arch.resolution), path / "model.onnx")
    spec = json.loads((path / SPEC_FILE).read_text())
    spec["files"]["model.onnx"] = hashlib.sha256((path / "model.onnx").read_bytes()).hexdigest()
    (path / SPEC_FILE).write_text(json.dumps(spec))
    report = check_parity(path, tiny_digits(), raise_on_failure=False, record=False)
    assert not report["passed"] and report["runtimes"]["litert-fp32"]["passed"]
    onnx = report["runtimes"]["ort-fp32"]
    assert not onnx["passed"] and onnx["max_abs_diff"] > 1e-2
    with pytest.raises(ParityError, match=r"model.onnx \(ort-fp32\): .*largest \|logit difference\|"):
        check_parity(path, tiny_digits())


def test_missing_or_corrupt_files_are_named(exported, tmp_path):
    path = copy_of(exported, tmp_path)
    weights = path / WEIGHTS_FILE
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(SubnetError, match=r"model\.safetensors does not match the sha256 recorded in .*spec\.json"):
        load_subnet(path)
    weights.unlink()
    with pytest.raises(SubnetError, match=r"model\.safetensors is missing"):
        load_subnet(path)
    weights.write_bytes(good)
    (path / "model.tflite").write_bytes(b"not a flatbuffer")
    with pytest.raises(SubnetError, match=r"model\.tflite does not match the sha256"):
        check_parity(path, tiny_digits(), record=False)
    spec_path = path / SPEC_FILE
    spec = json.loads(spec_path.read_text())
    del spec["files"]["model.tflite"]  # no recorded hash: the runtime's own refusal is reported with the file
    spec_path.write_text(json.dumps(spec))
    with pytest.raises(SubnetError, match=r"model\.tflite cannot be loaded by litert"):
        check_parity(path, tiny_digits(), record=False)
    spec_path.write_text("{not json")
    with pytest.raises(SubnetError, match=r"spec\.json cannot be read as JSON"):
        load_subnet(path)
    spec_path.unlink()
    with pytest.raises(SubnetError, match=r"spec\.json is missing"):
        load_subnet(path)
    (path / METRICS_FILE).unlink()
    with pytest.raises(SubnetError, match=r"metrics\.json is missing"):
        remeasure(path)
    with pytest.raises(SubnetError, match="is not a directory"):
        load_subnet(tmp_path / "nothing")


def test_a_spec_whose_weights_belong_to_another_architecture_is_refused(exported, tmp_path):
    path = copy_of(exported, tmp_path)
    other = get_space("small").extreme(False)
    spec = json.loads((path / SPEC_FILE).read_text())
    spec.update(arch=other.to_str(), arch_json=other.to_dict(), key=other.key)
    (path / SPEC_FILE).write_text(json.dumps(spec))
    with pytest.raises(SubnetError, match=rf"model\.safetensors does not fit the architecture .*\({other.key}\)"):
        load_subnet(path)
    spec.update(key="0123456789ab")
    (path / SPEC_FILE).write_text(json.dumps(spec))
    with pytest.raises(SubnetError, match="key '0123456789ab' is not the architecture's key"):
        load_subnet(path)
    spec.update(key=other.key, arch=the_arch().to_str())
    (path / SPEC_FILE).write_text(json.dumps(spec))
    with pytest.raises(SubnetError, match="'arch' and 'arch_json' describe different architectures"):
        load_subnet(path)


def test_the_measured_verdict_decides_the_constraint():
    verdict = latency_verdict("latency_ms<=1.0", predicted_ms=0.9, measured_ms=1.2)
    assert verdict["meets_constraint_predicted"] and not verdict["meets_constraint_measured"]
    verdict = latency_verdict("latency_ms<1.0", predicted_ms=1.1, measured_ms=0.95)
    assert not verdict["meets_constraint_predicted"] and verdict["meets_constraint_measured"]
    assert latency_verdict("latency_ms<=1", None, 1.0)["meets_constraint_measured"]
    with pytest.raises(HwnasError, match="latency_ms constraint .*not params"):
        latency_verdict("params<=300k", 1.0, 1.0)


def test_remeasure_flags_a_subnet_that_measures_over_the_bound(exported, tables, tmp_path):
    path = copy_of(exported, tmp_path)
    predicted = tables[0].predict_arch(the_arch())
    bound = predicted * 1.5
    # A bound the table's prediction meets; only the measurement decides (the prediction itself is not re-run).
    report = remeasure(path, tables=tables[:1], protocol=FAST, runtimes=[("ort", "fp32")],
                       constraint=f"latency_ms<={bound}")
    measured = report["measured"]["ort-fp32"]["median_ms"]
    assert set(report["measured"]) == {"ort-fp32"} and report["constraint"]["meets_constraint_predicted"]
    assert report["constraint"]["meets_constraint_measured"] == (measured <= bound)
    assert json.loads((path / METRICS_FILE).read_text())["latency"] == report
    # A bound far under the measured latency, with no table: only the measured verdict, and it is no.
    tight = f"latency_ms<={measured / 1e3}"
    report = remeasure(path, tables=[], protocol=FAST, runtimes=[("ort", "fp32")], constraint=tight)
    assert not report["constraint"]["meets_constraint_measured"] and report["constraint"]["predicted_ms"] is None
    assert not meets_constraint_measured(path)
    # Default tables: the ones spec.json names (shipped), each compared with its runtime's measurement.
    report = remeasure(path, protocol=FAST, record=False)
    assert set(report["comparison"]) == {t.table_id for t in tables}
    with pytest.raises(SubnetError, match="holds no ort-int8 model"):
        remeasure(path, runtimes=[("ort", "int8")], record=False)


def test_a_failed_export_leaves_nothing_that_looks_complete(run_dir, tmp_path, monkeypatch):
    from latency_tables import convert

    def broken(*args, **kwargs):
        raise RuntimeError("converter crashed")

    monkeypatch.setattr(convert, "export_tflite", broken)
    net, _ = load_supernet(run_dir)
    with pytest.raises(RuntimeError, match="converter crashed"):
        export_subnet(net, the_arch(), tiny_digits(), tmp_path, recal_images=RECAL, seed=0, protocol=FAST)
    assert list(tmp_path.iterdir()) == []


def test_bad_requests_are_refused_before_any_work(exported, run_dir, tmp_path, tables):
    net, _ = load_supernet(run_dir)
    data, arch = tiny_digits(), the_arch()
    with pytest.raises(SubnetError, match="already exists; pass overwrite=True"):
        export_subnet(net, arch, data, exported[0].parent, recal_images=RECAL, seed=0)
    with pytest.raises(HwnasError, match="exporting ort at precision 'fp16' is not supported; allowed: fp32, int8"):
        export_subnet(net, arch, data, tmp_path, recal_images=RECAL, seed=0, runtimes=[("ort", "fp16")])
    with pytest.raises(HwnasError, match="cannot export to runtime 'torch'; allowed: ort, litert"):
        export_subnet(net, arch, data, tmp_path, recal_images=RECAL, seed=0, runtimes=[("torch", "fp32")])
    with pytest.raises(HwnasError, match="whose runtime is not exported"):
        export_subnet(net, arch, data, tmp_path, recal_images=RECAL, seed=0, runtimes=[("ort", "fp32")],
                      tables=tables[::-1], constraint="latency_ms<=1")
    with pytest.raises(HwnasError, match="recal_images must be at least 1"):
        export_subnet(net, arch, data, tmp_path, recal_images=0, seed=0)
    with pytest.raises(HwnasError, match="resolution"):
        export_subnet(net, dataclasses.replace(arch, resolution=16), data, tmp_path, recal_images=RECAL, seed=0)
    assert list(tmp_path.iterdir()) == []


def test_importing_the_module_loads_no_torch():
    code = "import sys, nas.export; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


def test_spec_round_trip_and_refusals():
    arch = the_arch()
    spec = SubnetSpec(arch, "small", 0.1, 0.3, Provenance(None, "digits", 1, 10), (("ort", "fp32"),),
                      {"model.onnx": "ab"})
    data = spec.to_dict()
    assert SubnetSpec.from_dict(json.loads(json.dumps(data))) == spec
    with pytest.raises(SubnetError, match="format 'other'"):
        SubnetSpec.from_dict({**data, "format": "other"})
    with pytest.raises(SubnetError, match="not a valid subnet spec: KeyError"):
        SubnetSpec.from_dict({k: v for k, v in data.items() if k != "provenance"})
    assert np.isclose(data["input"]["pixel_scale"] * 255, 1.0)


def test_an_export_failing_parity_is_not_published_unless_asked(run_dir, tmp_path, monkeypatch):
    """An ONNX converter that shifts the logits by 1e-3 (top-1 unchanged): over the 1e-4 tolerance."""
    import copy

    from latency_tables import convert

    original = convert.export_onnx

    def shifted(module, shape, path):
        module = copy.deepcopy(module)
        with torch.no_grad():
            module.classifier.bias += 1e-3
        return original(module, shape, path)

    monkeypatch.setattr(convert, "export_onnx", shifted)
    net, _ = load_supernet(run_dir)
    arch, kwargs = the_arch(), dict(recal_images=RECAL, seed=0, runtimes=[("ort", "fp32")], protocol=FAST)
    with pytest.raises(ParityError, match=r"not exported: .*model\.onnx \(ort-fp32\): largest \|logit difference\| "
                                          r"0\.001 > 0\.0001. The files are kept in .*parity-failed"):
        export_subnet(net, arch, tiny_digits(), tmp_path, **kwargs)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{arch.key}.parity-failed"]
    kept = json.loads((tmp_path / f"{arch.key}.parity-failed" / METRICS_FILE).read_text())
    assert not kept["parity"]["passed"] and kept["parity"]["runtimes"]["ort-fp32"]["top1_agreement"] == 1.0
    path = export_subnet(net, arch, tiny_digits(), tmp_path, require_parity=False, **kwargs)
    assert sorted(p.name for p in tmp_path.iterdir()) == [arch.key]
    metrics = json.loads((path / METRICS_FILE).read_text())
    assert not metrics["parity"]["passed"] and metrics["latency"]["measured"]["ort-fp32"]["median_ms"] > 0
    assert metrics["parity"]["runtimes"]["ort-fp32"]["max_abs_diff"] == pytest.approx(1e-3, rel=0.05)
