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

from latency_tables.convert import seeded
from latency_tables.runtimes import Protocol
from latency_tables.table import find_table
from nas.export import (
    METRICS_FILE,
    PARITY,
    PARITY_TOLERANCE,
    SPEC_FILE,
    WEIGHTS_FILE,
    ExportOptions,
    ParityCriterion,
    ParityError,
    Provenance,
    SubnetError,
    SubnetSpec,
    check_parity,
    export_from_run,
    export_model,
    export_subnet,
    latency_verdict,
    load_subnet,
    meets_constraint_measured,
    parity_failures,
    remeasure,
)
from nas.export.parity import SIMULATION_PARITY
from nas.export.prune import prune_model
from search_spaces import ArchConfig, get_space
from search_spaces.errors import HwnasError
from search_spaces.plans import BitWidthPlan, PrunePlan, channel_groups, layer_groups
from supernets.config import PhaseConfig
from supernets.data import to_tensor
from supernets.evaluation import recalibrate_bn, recalibration_images
from supernets.models import build_model
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


@pytest.mark.runtime
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


@pytest.mark.runtime
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


@pytest.mark.runtime
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


@pytest.mark.runtime
def test_check_parity_compares_both_runtimes_with_pytorch_and_records_it(exported, tmp_path):
    path = copy_of(exported, tmp_path)
    data = tiny_digits()
    report = check_parity(path, data, images=20)
    assert report["images"] == 20 and report["passed"]
    for r in report["runtimes"].values():
        assert 0 <= r["max_abs_diff"] <= 1e-4 and r["top1_agreement"] == 1.0
    assert json.loads((path / METRICS_FILE).read_text())["parity"] == report


@pytest.mark.runtime
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


@pytest.mark.runtime
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


@pytest.mark.runtime
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


@pytest.mark.runtime
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


@pytest.mark.runtime
def test_a_failed_export_leaves_nothing_that_looks_complete(run_dir, tmp_path, monkeypatch):
    from latency_tables import convert

    def broken(*args, **kwargs):
        raise RuntimeError("converter crashed")

    monkeypatch.setattr(convert, "export_tflite", broken)
    net, _ = load_supernet(run_dir)
    with pytest.raises(RuntimeError, match="converter crashed"):
        export_subnet(net, the_arch(), tiny_digits(), tmp_path, recal_images=RECAL, seed=0, protocol=FAST)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.runtime
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


@pytest.mark.runtime
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


# ------------------------------------------------------------------------------------- plans, precisions, publish

#: Two MBConv blocks sharing one residual chain (s0.b0.project) and an mbv3 block with SE; digits-shaped.
MBCONV = "r28_i1_n10|stem_c16_k3_s2_relu6|mbv2_k3_e2_c24_s2,mbv2_k3_e3_c24_s1|mbv3_k3_e2_c32_s2_se0.25_relu|" \
         "head_c128_f64_relu6"


def _reader_weight(model, layer):
    module = model.get_submodule(layer)
    conv = module[0] if isinstance(module, torch.nn.Sequential) else module
    return None if getattr(conv, "groups", 1) > 1 else conv.weight


def test_a_prune_plan_replays_on_a_fresh_model_keeping_the_parents_channels():
    """Zeroing what reads a pruned channel makes the parent compute what the pruned model computes."""
    arch = ArchConfig.from_str(MBCONV)
    plan = PrunePlan(arch.key, {"s0.b0.expand": [0, 3, 5, 8, 13, 21], "s1.b0.se.reduce": [1, 2, 7],
                                "s0.b0.project": list(range(0, 24, 2)), "hidden": list(range(40))})
    parent = seeded(build_model(arch))
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    pruned = prune_model(parent, plan)
    assert pruned.arch == plan.apply_to(arch) and pruned.arch.stages[0][0].mid == 6
    assert all(torch.equal(v, before[k]) for k, v in parent.state_dict().items())  # the parent is not changed
    assert torch.equal(pruned.get_submodule("s0.b0.expand")[0].weight, before["s0.b0.expand.0.weight"][[0, 3, 5, 8,
                                                                                                         13, 21]])
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert not torch.allclose(parent(x), pruned(x), atol=1e-3)
        for layer, groups in layer_groups(arch).items():
            weight = _reader_weight(parent, layer)
            if weight is not None and groups.inputs in plan.keep:
                dropped = [i for i in range(weight.shape[1]) if i not in plan.keep[groups.inputs]]
                weight[:, dropped] = 0
        assert torch.allclose(parent(x), pruned(x), atol=1e-5)


@pytest.mark.runtime
def test_export_model_exports_a_pruned_static_model_with_its_plan(tmp_path):
    arch, data = ArchConfig.from_str(MBCONV), tiny_digits()
    plan = PrunePlan(arch.key, {"s0.b0.expand": list(range(0, 32, 2)), "s1.b0.se.reduce": [0, 5]})
    model = prune_model(seeded(build_model(arch)), plan)
    spec = SubnetSpec(model.arch, "small", data.mean, data.std, Provenance(None, data.name, 0, 0), prune_plan=plan)
    table = find_table("small", "ort", "fp32")
    path = export_model(model, spec, data, tmp_path,
                        ExportOptions(runtimes=(("ort", "fp32"),), protocol=FAST, tables=(table,)))
    assert path.name == spec.key != model.arch.key
    predicted = json.loads((path / METRICS_FILE).read_text())["latency"]["predicted"][table.table_id]
    assert predicted["estimated"] and predicted["latency_ms"] > 0  # the pruned blocks' keys are not in the table
    assert json.loads((path / SPEC_FILE).read_text())["prune_plan"] == plan.to_dict()
    loaded, got = load_subnet(path)
    assert got.prune_plan == plan and got.arch == model.arch and got.key == spec.key
    x = to_tensor(data.val.images, arch.resolution, data.mean, data.std)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert json.loads((path / METRICS_FILE).read_text())["parity"]["runtimes"]["ort-fp32"]["passed"]
    with pytest.raises(HwnasError, match="export_model takes the static model of the spec's architecture"):
        export_model(seeded(build_model(arch)), spec, data, tmp_path / "other")


@pytest.mark.runtime
def test_int8_is_calibrated_on_training_images_and_judged_by_top1_agreement(run_dir, tmp_path, monkeypatch):
    from latency_tables import convert

    seen = []
    original = convert.quantize_onnx

    def spy(fp32_path, path, calibration):
        seen.append([np.array(c) for c in calibration])
        return original(fp32_path, path, calibration)

    monkeypatch.setattr(convert, "quantize_onnx", spy)
    net, _ = load_supernet(run_dir)
    data, arch = tiny_digits(), the_arch()
    path = export_subnet(net, arch, data, tmp_path, recal_images=RECAL, seed=3, runtimes=[("ort", "int8")],
                         protocol=FAST, require_parity=False)
    chosen = np.sort(np.random.default_rng(3).permutation(len(data.train))[:64])
    want = to_tensor(data.train.images[chosen], arch.resolution, data.mean, data.std).numpy()
    assert len(seen) == 1 and len(seen[0]) == 64 and all(c.shape == (1, 1, 24, 24) for c in seen[0])
    assert np.array_equal(np.concatenate(seen[0]), want)
    spec = SubnetSpec.load(path)
    assert spec.models == (("ort", "int8"),) and spec.provenance.calibration_images == 64
    assert set(spec.files) == {"model.safetensors", "model-int8.onnx"}
    report = json.loads((path / METRICS_FILE).read_text())["parity"]["runtimes"]["ort-int8"]
    assert report["criterion"] == {"min_top1_agreement": PARITY["int8"].min_top1_agreement, "max_abs_diff": None}
    simulation = report["simulation"]  # against the PyTorch simulation of every layer at int8, same calibration
    assert simulation["plan"] == BitWidthPlan(default="int8").key and simulation["calibration_images"] == 64
    assert simulation["criterion"] == {"min_top1_agreement": 0.99, "max_abs_diff": None}
    assert report["passed"] == (report["top1_agreement"] >= 0.97 and simulation["top1_agreement"] >= 0.99)
    assert 0 < report["max_abs_diff"] < 1 and 0 < simulation["max_abs_diff"] < 1


def test_parity_criteria_are_stated_per_precision():
    assert PARITY["fp32"] == ParityCriterion(1.0, 1e-4) and PARITY_TOLERANCE == 1e-4
    assert PARITY["fp16"].max_abs_diff is None and PARITY["fp16"].min_top1_agreement == 0.99
    assert PARITY["int8"].max_abs_diff is None and PARITY["int8"].min_top1_agreement == 0.97
    report = {"images": 100, "tolerance": 1e-4, "runtimes": {
        "ort-int8": {"file": "model-int8.onnx", "passed": False, "top1_agreement": 0.95, "top1_differ": 5,
                     "max_abs_diff": 0.4, "criterion": PARITY["int8"].to_dict()}}}
    assert parity_failures(report) == ["model-int8.onnx (ort-int8): 5 of 100 validation images get another top-1 "
                                       "class than PyTorch (agreement 95.00%, needs 97%)"]


def test_a_failed_simulation_parity_is_named_with_its_plan():
    report = {"images": 200, "tolerance": 1e-4, "runtimes": {
        "ort-mixed": {"file": "model-mixed.onnx", "passed": False, "top1_agreement": 0.985, "top1_differ": 3,
                      "max_abs_diff": 1.1, "criterion": PARITY["int8"].to_dict(),
                      "simulation": {"plan": "abc123def456", "criterion": SIMULATION_PARITY.to_dict(),
                                     "top1_agreement": 0.98, "top1_differ": 4, "passed": False}}}}
    assert ParityCriterion(0.99) == SIMULATION_PARITY
    assert parity_failures(report) == ["model-mixed.onnx (ort-mixed): 4 of 200 get another top-1 class than the "
                                       "PyTorch simulation of plan abc123def456 (agreement 98.00%, needs 99%)"]


@pytest.mark.runtime
def test_quantised_ort_models_agree_with_the_simulation_of_their_plan(tmp_path):
    """A trained subnet (fused, ShuffleNet and EfficientNet blocks; hard-swish stem and head) exported at int8 and
    mixed: the runtime's top-1 matches the PyTorch simulation (`fake_quantized_layers`, ranges with the runtime's
    own quantised tensors, on the export's calibration images) on >= 99% of 200 validation digits."""
    from nas.compress.finetune import FinetuneConfig, finetune
    from nas.compress.sensitivity import fake_quantized_layers, output_ranges
    from nas.export.runtime_models import calibration_inputs

    arch, data = the_arch(), tiny_digits(600, 200)
    torch.manual_seed(0)
    model = finetune(build_model(arch), data, tmp_path / "ft", FinetuneConfig(epochs=8, lr=0.05, batch_size=32),
                     log=quiet).model
    mixed = BitWidthPlan({layer: "fp32" for layer in list(layer_groups(arch))[::3]}, default="int8")
    x = to_tensor(data.val.images, arch.resolution, data.mean, data.std)
    for plan, runtime in ((None, ("ort", "int8")), (mixed, ("ort", "mixed"))):
        spec = SubnetSpec(arch, "small", data.mean, data.std, Provenance(None, data.name, 0, 0), bitwidth_plan=plan)
        path = export_model(model, spec, data, tmp_path / runtime[1], ExportOptions(runtimes=(runtime,),
                            protocol=FAST, require_parity=False))
        report = json.loads((path / METRICS_FILE).read_text())["parity"]["runtimes"][f"ort-{runtime[1]}"]
        simulation = report["simulation"]
        # measured: 99.5% agreement with the simulation at int8 and mixed (98.5% and 99.5% with the float model);
        # largest logit difference 0.30 against the simulation, 1.59 against the float model
        assert report["passed"] and simulation["top1_agreement"] >= 0.99
        assert simulation["max_abs_diff"] < 0.5 * report["max_abs_diff"]
        simulated_plan = plan or BitWidthPlan(default="int8")
        assert simulation["plan"] == simulated_plan.key
        loaded, _ = load_subnet(path)  # the simulation, recomputed: the same images differ
        calibration = torch.from_numpy(np.concatenate(calibration_inputs(data, arch, 64, 0)))
        with fake_quantized_layers(loaded, simulated_plan.precisions(arch),
                                   output_ranges(loaded, calibration, runtime=True)), torch.no_grad():
            simulated = loaded.eval()(x).numpy()
        from latency_tables.runtimes import get_runtime

        session = get_runtime("ort").load(path / f"model-{runtime[1]}.onnx", 1)
        got = np.concatenate([session(x[i:i + 1].numpy()).reshape(1, -1) for i in range(len(x))])
        assert int((got.argmax(1) != simulated.argmax(1)).sum()) == simulation["top1_differ"]
    fp32 = export_model(model, SubnetSpec(arch, "small", data.mean, data.std, Provenance(None, data.name, 0, 0)),
                        data, tmp_path / "fp32", ExportOptions(runtimes=(("ort", "fp32"),), protocol=FAST))
    assert json.loads((fp32 / METRICS_FILE).read_text())["parity"]["runtimes"]["ort-fp32"]["simulation"] is None


def test_a_bitwidth_plan_a_runtime_cannot_run_is_refused_naming_the_layer_and_runtime(tmp_path):
    from nas.export.runtime_models import runtimes_for

    arch, data = ArchConfig.from_str(MBCONV), tiny_digits()
    mixed = BitWidthPlan({"s1.b0.se.reduce": "fp32"}, default="int8")
    spec = SubnetSpec(arch, "small", data.mean, data.std, Provenance(None, data.name, 0, 0), bitwidth_plan=mixed)
    with pytest.raises(HwnasError, match=r"runs layer s1.b0.se.reduce at fp32, but the ort model is int8: export "
                                         r"\('ort', 'mixed'\) to run each layer at its plan's precision"):
        export_model(seeded(build_model(arch)), spec, data, tmp_path, ExportOptions(runtimes=(("ort", "int8"),)))
    with_fp16 = dataclasses.replace(spec, bitwidth_plan=BitWidthPlan({"s0.b0.dw": "fp16"}, default="int8"))
    with pytest.raises(HwnasError, match=r"layer s0.b0.dw at fp16 cannot run on ort: .* one of fp32, int8"):
        export_model(seeded(build_model(arch)), with_fp16, data, tmp_path, ExportOptions(runtimes=(("ort", "mixed"),)))
    simulated = dataclasses.replace(spec, bitwidth_plan=BitWidthPlan(default="int8", simulated={"s0.b0.dw"}))
    with pytest.raises(HwnasError, match=r"simulates layer s0.b0.dw's precision \(int8\), which no runtime runs "
                                         r"natively"):
        export_model(seeded(build_model(arch)), simulated, data, tmp_path)
    with pytest.raises(HwnasError, match=r"the ort mixed model runs each layer at its bit-width plan's precision; the "
                                         r"spec has no bit-width plan"):
        export_model(seeded(build_model(arch)), dataclasses.replace(spec, bitwidth_plan=None), data, tmp_path,
                     ExportOptions(runtimes=(("ort", "mixed"),)))
    assert list(tmp_path.iterdir()) == []
    assert runtimes_for(spec, None) == (("ort", "mixed"), ("litert", "mixed"))
    assert runtimes_for(with_fp16, None) == (("litert", "mixed"),)
    uniform = dataclasses.replace(spec, bitwidth_plan=BitWidthPlan(default="int8"))
    assert runtimes_for(uniform, None) == (("ort", "int8"), ("litert", "int8"))
    fp16 = dataclasses.replace(spec, bitwidth_plan=BitWidthPlan(default="fp16"))
    assert runtimes_for(fp16, None) == (("litert", "fp16"),)


@pytest.mark.runtime
def test_a_mixed_precision_plan_exports_a_mixed_model_per_runtime_judged_by_its_lowest_precision(tmp_path):
    pytest.importorskip("ai_edge_quantizer")
    arch, data = ArchConfig.from_str(MBCONV), tiny_digits()
    layers = list(layer_groups(arch))
    plan = BitWidthPlan({layer: "int8" for layer in layers[::2]} | {"s0.b0.dw": "fp16"}, default="fp32")
    spec = SubnetSpec(arch, "small", data.mean, data.std, Provenance(None, data.name, 0, 0), bitwidth_plan=plan)
    model = seeded(build_model(arch))
    with pytest.raises(HwnasError, match=r"layer s0.b0.dw at fp16 cannot run on ort"):
        export_model(model, spec, data, tmp_path, ExportOptions(runtimes=(("ort", "mixed"),)))
    path = export_model(model, spec, data, tmp_path, ExportOptions(protocol=FAST, parity_images=20,
                                                                   calibration_images=8, require_parity=False))
    saved = SubnetSpec.load(path)
    assert saved.models == (("litert", "mixed"),) and saved.bitwidth_plan == plan
    assert set(saved.files) == {"model.safetensors", "model-mixed.tflite"}
    assert saved.provenance.calibration_images == 8
    metrics = json.loads((path / METRICS_FILE).read_text())
    parity = metrics["parity"]["runtimes"]["litert-mixed"]
    assert parity["precision"] == "mixed" and parity["judged_as"] == "int8"
    assert parity["criterion"] == PARITY["int8"].to_dict() and parity["top1_agreement"] >= 0.9
    assert metrics["latency"]["measured"]["litert-mixed"]["median_ms"] > 0

    int8_fp32 = dataclasses.replace(spec, bitwidth_plan=BitWidthPlan({layer: "int8" for layer in layers[::2]}))
    path = export_model(model, int8_fp32, data, tmp_path, ExportOptions(protocol=FAST, parity_images=20,
                                                                        calibration_images=8, require_parity=False))
    saved = SubnetSpec.load(path)
    assert saved.models == (("ort", "mixed"), ("litert", "mixed"))
    assert set(saved.files) == {"model.safetensors", "model-mixed.onnx", "model-mixed.tflite"}
    runtimes = json.loads((path / METRICS_FILE).read_text())["parity"]["runtimes"]
    assert {r["judged_as"] for r in runtimes.values()} == {"int8"}
    assert all(r["top1_agreement"] >= 0.9 for r in runtimes.values())


def test_a_spec_with_plans_round_trips_and_its_key_covers_them():
    arch = the_arch()
    base = SubnetSpec(arch, "small", 0.1, 0.3, Provenance(None, "digits", 1, 10))
    prune, bits = PrunePlan("0123456789ab", {"stem": [0, 1]}), BitWidthPlan(default="int8")
    planned = dataclasses.replace(base, prune_plan=prune, bitwidth_plan=bits)
    assert base.key == arch.key  # exports without plans keep their names
    keys = {planned.key, dataclasses.replace(base, prune_plan=prune).key,
            dataclasses.replace(base, bitwidth_plan=bits).key}
    assert len(keys) == 3 and arch.key not in keys
    data = json.loads(json.dumps(planned.to_dict()))
    assert data["prune_plan"] == prune.to_dict() and data["bitwidth_plan"] == bits.to_dict()
    assert SubnetSpec.from_dict(data) == planned
    with pytest.raises(SubnetError, match="key .* is not the key of its architecture and plans"):
        SubnetSpec.from_dict({**data, "key": arch.key})
    bad = {**data, "bitwidth_plan": {**bits.to_dict(), "layers": {"stem": "int4"}}}
    with pytest.raises(SubnetError, match=r"not a valid subnet spec: PlanError: .*'int4'; allowed: fp32, fp16, int8"):
        SubnetSpec.from_dict(bad)
    today = base.to_dict()  # spec.json as exports wrote it before plans and int8 calibration existed
    del today["provenance"]["calibration_images"]
    assert SubnetSpec.from_dict(json.loads(json.dumps(today))) == base
    with pytest.raises(HwnasError, match="prune_plan must be a PrunePlan or None; got dict"):
        dataclasses.replace(base, prune_plan=prune.to_dict())


def test_publish_keeps_the_old_export_until_the_new_one_is_in_place(tmp_path):
    from nas.export.writer import publish

    def directory(name, text):
        path = tmp_path / name
        path.mkdir()
        (path / SPEC_FILE).write_text(text)
        return path

    final = tmp_path / "abc"
    directory("abc", "old")
    publish(directory(".abc.1.tmp", "new"), final)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["abc"] and (final / SPEC_FILE).read_text() == "new"
    # A publish cut off between its two renames leaves the old export aside as the only complete copy ...
    final.rename(tmp_path / ".abc.old")
    with pytest.raises(FileNotFoundError):
        publish(tmp_path / ".abc.missing.tmp", final)  # ... and a failing publish still keeps it
    assert (tmp_path / ".abc.old" / SPEC_FILE).read_text() == "new"
    publish(directory(".abc.2.tmp", "newer"), final)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["abc"] and (final / SPEC_FILE).read_text() == "newer"


def test_halving_every_group_replays_on_every_family():
    space, rng = get_space("small"), np.random.default_rng(2)
    for arch in [space.extreme(True, (1, 2, 2, 2)), *(space.sample(rng) for _ in range(6))]:
        plan = PrunePlan(arch.key, {g: list(range(0, w, 2)) for g, w in channel_groups(arch).items()})
        pruned = prune_model(seeded(build_model(arch)), plan)
        with torch.no_grad():
            assert pruned(torch.zeros(2, 1, arch.resolution, arch.resolution)).shape == (2, 10)
        assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in build_model(arch).parameters())
