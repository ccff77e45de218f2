"""nas.references: Wilson intervals, the comparison with hand-designed references, scaling, training, summaries."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from latency_tables.counting import count_arch
from nas.references import (
    DEFAULT_WIDTH,
    SCALING_RULE,
    compare_with_references,
    load_summary,
    reference_row,
    scale_reference,
    total_stride,
    train_reference,
    wilson_interval,
    write_summary,
)
from search_spaces import REFERENCES, reference
from search_spaces.errors import HwnasError


def _row(name: str, correct: int, ms: float | None, variant: str = "fp32", runtime: str = "ort:fp32") -> dict:
    latency = {} if ms is None else {runtime: {"measured_ms": ms, "predicted_ms": None, "table_id": None}}
    return {"name": name, "variant": variant, "accuracy": correct / 1000, "correct": correct, "val_images": 1000,
            "accuracy_ci95": list(wilson_interval(correct, 1000)), "latency": latency}


# ------------------------------------------------------------------------------------------------- wilson


def test_wilson_interval_closed_forms_at_the_ends():
    # x = 0: [0, z^2 / (n + z^2)]; x = n: [n / (n + z^2), 1]
    assert wilson_interval(0, 10) == pytest.approx((0.0, 1.96**2 / (10 + 1.96**2)), abs=1e-12)
    low, high = wilson_interval(10, 10)
    assert low == pytest.approx(10 / (10 + 1.96**2), abs=1e-12) and high == pytest.approx(1.0)


def test_wilson_interval_known_values():
    # Newcombe (1998), Table I: 81/263 -> 0.2553 to 0.3662 (method 3, Wilson without continuity correction)
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=5e-5)
    # 15/148 -> 0.0624 to 0.1605 (same table)
    assert wilson_interval(15, 148) == pytest.approx((0.0624, 0.1605), abs=5e-5)
    # scipy.stats.binomtest(981, 1000).proportion_ci(method="wilson") -> 0.970516 to 0.987803 (z = 1.959964)
    low, high = wilson_interval(981, 1000)
    assert low == pytest.approx(0.970516, abs=2e-6) and high == pytest.approx(0.987803, abs=2e-6)
    assert 0.8 < 100 * (high - low) / 2 < 0.9  # about +-0.9 points near 98% on 1,000 images


@pytest.mark.parametrize("correct,n", [(5, 0), (11, 10), (-1, 10), (1.5, 10), (True, 10)])
def test_wilson_interval_bad_input(correct, n):
    with pytest.raises(HwnasError, match="wilson_interval"):
        wilson_interval(correct, n)


# --------------------------------------------------------------------------------------------- comparison


REFS = [_row("mobilenet_v2", 985, 2.0), _row("shufflenet_v2_x0_5", 971, 0.9), _row("efficientnet_b0", 988, 3.0)]


def test_compare_met():
    pick = _row("abc", 974, 0.5, variant="compressed")
    out = compare_with_references([pick], REFS, "ort:fp32")
    row = out["rows"][0]
    assert row["faster_than"]["reference"] == "shufflenet_v2_x0_5"
    assert row["faster_than"]["speedup"] == pytest.approx(1.8) and row["faster_than"]["met"] is True
    # every reference is slower; the most accurate of them is efficientnet_b0 (98.8%) > 97.4%: not met
    assert row["as_accurate_as"]["reference"] == "efficientnet_b0"
    assert row["as_accurate_as"]["difference_points"] == pytest.approx(-1.4)
    # 96.3-98.2 and 97.9-99.4 overlap: the difference is inside the intervals, but not met all the same
    assert row["as_accurate_as"]["within_uncertainty"] is True and row["as_accurate_as"]["met"] is False
    assert out["met"] is False and out["best"] == "abc"
    expected = ("The compressed pick abc is 1.80x faster on ort:fp32 than shufflenet_v2_x0_5 (97.1% +- 1.1) "
                "at 97.4% +- 1.0")
    assert expected + ": met" in out["text"]
    assert ": not met." in out["text"]


def test_compare_met_both_conditions():
    pick = _row("abc", 989, 0.6)
    out = compare_with_references([pick], REFS, "ort:fp32")
    row = out["rows"][0]
    assert row["faster_than"]["reference"] == "shufflenet_v2_x0_5" and row["faster_than"]["speedup"] == 1.5
    assert row["faster_than"]["met"] is True  # exactly 1.5x counts
    assert row["as_accurate_as"]["reference"] == "efficientnet_b0" and row["as_accurate_as"]["met"] is True
    assert row["as_accurate_as"]["within_uncertainty"] is True
    assert out["met"] is True and "not met" not in out["text"] and "acceptance met" in out["text"]


def test_compare_not_met_too_slow():
    pick = _row("slow", 986, 1.5)
    out = compare_with_references([pick], REFS, "ort:fp32")
    row = out["rows"][0]
    # references at <= 98.6%: mobilenet_v2 (2.0 ms) and shufflenet (0.9 ms): the fastest is shufflenet, 0.6x
    assert row["faster_than"]["reference"] == "shufflenet_v2_x0_5"
    assert row["faster_than"]["speedup"] == pytest.approx(0.6) and row["faster_than"]["met"] is False
    # slower references: mobilenet_v2 (98.5) and efficientnet_b0 (98.8): the most accurate wins
    assert row["as_accurate_as"]["reference"] == "efficientnet_b0" and row["as_accurate_as"]["met"] is False
    assert out["met"] is False and "not met" in out["text"]
    assert "is 1.67x slower (speed-up 0.60x) on ort:fp32 than shufflenet_v2_x0_5" in out["text"]


def test_compare_vacuous():
    # less accurate than every reference and slower than every reference: neither condition applies
    pick = _row("bad", 900, 5.0)
    out = compare_with_references([pick], REFS, "ort:fp32")
    assert out["rows"][0]["faster_than"] is None and out["rows"][0]["as_accurate_as"] is None
    assert out["met"] is False
    assert "The pick bad (90.0% +- 1.9, 5 ms) is less accurate and slower than every reference measured on " \
        "ort:fp32 (no reference qualifies for either condition): not met." in out["text"]
    # more accurate than all and slower than all: only (a) applies, and it is not met
    out = compare_with_references([_row("big", 995, 5.0)], REFS, "ort:fp32")
    assert out["rows"][0]["as_accurate_as"] is None and out["rows"][0]["faster_than"]["met"] is False
    assert out["met"] is False and "no reference qualifies for the accuracy condition" in out["text"]
    # no reference measured on this runtime
    out = compare_with_references([pick], REFS, "litert:fp32")
    assert out["rows"] == [] and out["best"] is None and out["met"] is False
    assert "No reference is measured on litert:fp32" in out["text"] and "bad has no measured latency" in out["text"]


def test_compare_ties():
    refs = [_row("a", 980, 1.0), _row("b", 980, 2.0), _row("c", 990, 2.0), _row("c", 985, 2.0, variant="compressed")]
    pick = _row("p", 980, 2.0 / 3)
    row = compare_with_references([pick], refs, "ort:fp32")["rows"][0]
    # equal accuracy qualifies for (a); of the two at 98.0% the faster one (a, 1.0 ms) is the comparison
    assert row["faster_than"]["reference"] == "a" and row["faster_than"]["speedup"] == pytest.approx(1.5)
    # equal latency qualifies for (b)
    pick = _row("q", 990, 2.0)
    row = compare_with_references([pick], refs, "ort:fp32")["rows"][0]
    assert row["as_accurate_as"]["reference"] == "c" and row["as_accurate_as"]["difference_points"] == 0.0
    assert row["as_accurate_as"]["met"] is True  # equal accuracy is "at least as accurate"
    assert row["faster_than"]["reference"] == "a" and row["faster_than"]["speedup"] == pytest.approx(0.5)


def test_compare_best_candidate():
    fast = _row("fast", 989, 0.6, variant="compressed")
    slow = _row("slow", 989, 0.8)
    worse = _row("worse", 950, 0.1)
    out = compare_with_references([slow, worse, fast], REFS, "ort:fp32")
    assert [r["name"] for r in out["rows"]] == ["slow", "worse", "fast"]
    assert out["best"] == "fast" and out["met"] is True
    assert math.isclose(out["rows"][2]["faster_than"]["speedup"], 1.5)
    worse_row = out["rows"][1]
    assert worse_row["faster_than"] is None  # less accurate than every reference
    assert worse_row["as_accurate_as"]["difference_points"] == pytest.approx(-3.8)
    assert worse_row["as_accurate_as"]["within_uncertainty"] is False
    assert "outside the 95% intervals: not met" in out["text"]
    assert "The pick worse (95.0% +- 1.4) is less accurate than every reference measured on ort:fp32: no " \
        "reference qualifies for the speed-up condition." in out["text"]


# ------------------------------------------------------------------------------------------------ scaling


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_scale_reference_builds_and_exports(name, tmp_path):
    import torch

    from supernets.models import build_model

    arch = scale_reference(name, resolution=28, in_channels=1, num_classes=10)
    assert (arch.resolution, arch.in_channels, arch.num_classes) == (28, 1, 10)
    assert total_stride(arch) == 8 and total_stride(reference(name)) == 32
    published = reference(name)
    assert arch.depths == published.depths
    assert arch.stem.channels == max(8, round(published.stem.channels * DEFAULT_WIDTH / 8) * 8)
    model = build_model(arch).eval()
    logits = model(torch.zeros(2, 1, 28, 28))
    assert logits.shape == (2, 10)
    assert sum(p.numel() for p in model.parameters()) == count_arch(arch)[0]
    import onnxruntime as ort

    x = torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    torch.onnx.export(model, (x,), str(tmp_path / "m.onnx"), dynamo=False)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert abs(out - model(x).detach().numpy()).max() < 1e-3


def test_scale_reference_rule_on_mobilenet_v2():
    arch = scale_reference("mobilenet_v2", resolution=32, in_channels=3, num_classes=100, width=1.0)
    # stem 2, then the 24- and 32-channel stages keep stride 2 (total 8); the 64 and 160 stages become stride 1
    assert [stage[0].stride for stage in arch.stages] == [1, 2, 2, 1, 1, 1, 1]
    assert [stage[0].out_channels for stage in arch.stages] == [16, 24, 32, 64, 96, 160, 320]
    half = scale_reference("mobilenet_v2", resolution=32, in_channels=3, num_classes=100, width=0.5)
    assert [stage[0].out_channels for stage in half.stages] == [8, 16, 16, 32, 48, 80, 160]
    assert (half.stem.channels, half.head.channels) == (16, 640)
    shuffle = scale_reference("shufflenet_v2_x0_5", resolution=28, in_channels=1, num_classes=10)
    # stem 2 x max pool 2, then stage 2 keeps its stride 2; stages 3 and 4 become stride 1
    assert shuffle.stem.maxpool and [stage[0].stride for stage in shuffle.stages] == [2, 1, 1]
    v3 = scale_reference("mobilenet_v3_small", resolution=28, in_channels=1, num_classes=10)
    assert v3.head.hidden == 512 and [stage[0].stride for stage in v3.stages] == [2, 2, 1, 1]
    assert "make_divisible" in SCALING_RULE


def test_scale_reference_bad_input():
    with pytest.raises(HwnasError, match="unknown reference network 'resnet50'; known: mobilenet_v2"):
        scale_reference("resnet50", resolution=28, in_channels=1, num_classes=10)
    with pytest.raises(HwnasError, match="width factor"):
        scale_reference("mobilenet_v2", resolution=28, in_channels=1, num_classes=10, width=0)


# ------------------------------------------------------------------------------------- training and rows


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """shufflenet_v2_x0_5 trained for one epoch on digits and exported to ORT only (LiteRT's converter takes half a
    minute), with the shipped ORT table's prediction."""
    from latency_tables.table import LatencyTable, shipped_tables
    from supernets.config import TrainConfig
    from supernets.data import load_dataset
    from supernets.threads import torch_threads

    data = load_dataset("digits")
    config = TrainConfig.load(Path(__file__).resolve().parents[2] / "configs" / "mnist5k.yaml")
    tables = [LatencyTable.load(p) for p in shipped_tables() if p.name == "small-amd-epyc-2c-ort-fp32-t1"]
    out = tmp_path_factory.mktemp("refs")
    logs: list[str] = []
    with torch_threads(1):  # two cores shared with other work: more threads only wait on each other
        path = train_reference("shufflenet_v2_x0_5", data, config, out, tables=tables, epochs=1, log=logs.append,
                               runtimes=[("ort", "fp32")])
    return path, data, config, tables, logs


def test_train_reference_exports_and_measures(trained):
    path, data, _, tables, logs = trained
    arch = scale_reference("shufflenet_v2_x0_5", resolution=8, in_channels=1, num_classes=10)
    assert path.name == arch.key
    info = json.loads((path / "reference.json").read_text())
    assert info["name"] == "shufflenet_v2_x0_5" and info["epochs"] == 1 and info["scaling"] == SCALING_RULE
    assert info["width"] == DEFAULT_WIDTH and info["seconds"] > 0
    metrics = json.loads((path / "metrics.json").read_text())
    assert set(metrics["latency"]["measured"]) == {"ort-fp32"}
    assert all(m["threads"] == 1 for m in metrics["latency"]["measured"].values())
    if info["unpriced"]:  # this machine could not measure the table's missing keys: the reason is recorded
        assert tables[0].table_id in info["unpriced"]
    else:  # the keys were measured on demand into a copy: the prediction is real, not estimated
        predicted = metrics["latency"]["predicted"][tables[0].table_id]
        assert predicted["latency_ms"] > 0 and predicted["estimated"] is False
        assert (path.parent / ".measured-tables" / tables[0].table_id / "table.csv").is_file()
    assert any("training" in line for line in logs)


def test_train_reference_reuses_a_finished_export(trained):
    path, data, config, tables, _ = trained
    before = (path / "metrics.json").stat().st_mtime_ns
    logs: list[str] = []
    again = train_reference("shufflenet_v2_x0_5", data, config, path.parent, tables=tables, epochs=1,
                            log=logs.append)
    assert again == path and (path / "metrics.json").stat().st_mtime_ns == before
    assert logs == [f"shufflenet_v2_x0_5: reusing {path}"]


def test_reference_row_and_summary_round_trip(trained, tmp_path):
    path, data, *_ = trained
    row = reference_row(path, "shufflenet_v2_x0_5", "fp32")
    metrics = json.loads((path / "metrics.json").read_text())
    assert row["accuracy"] == metrics["accuracy"]["top1"] and row["val_images"] == len(data.val) == 359
    assert row["correct"] == round(row["accuracy"] * 359)
    assert row["accuracy_ci95"] == list(wilson_interval(row["correct"], 359))
    assert set(row["latency"]) == {"ort:fp32"}
    ort_row, ort_metrics = row["latency"]["ort:fp32"], metrics["latency"]
    assert ort_row["measured_ms"] == ort_metrics["measured"]["ort-fp32"]["median_ms"]
    if ort_row["table_id"] is not None:
        assert ort_row["predicted_ms"] == ort_metrics["predicted"][ort_row["table_id"]]["latency_ms"]
    assert row["epochs"] == 1 and row["params"] == metrics["cost"]["params"]
    assert row["size_bytes"] < 4 * row["params"]  # BatchNorm folded: fewer weights than parameters
    # a compressed export: accuracy and sizes from compress.json
    comp = tmp_path / "comp"
    shutil.copytree(path, comp)
    (comp / "reference.json").unlink()
    metrics["latency"]["predicted"] = {}  # as a mixed-precision model: no table for its precision
    (comp / "metrics.json").write_text(json.dumps(metrics))
    (comp / "compress.json").write_text(json.dumps({"accuracy_after": 0.5, "params_after": 1000, "macs_after": 2000,
                                                    "bytes_after": 1234.0, "runtime": "ort", "table": "t-int8",
                                                    "latency": {"predicted_ms": 0.25}}))
    crow = reference_row(comp, "shufflenet_v2_x0_5", "compressed")
    assert (crow["accuracy"], crow["correct"], crow["params"], crow["macs"], crow["size_bytes"]) == \
        (0.5, 180, 1000, 2000, 1234)
    assert crow["latency"]["ort:fp32"]["predicted_ms"] == 0.25 and crow["latency"]["ort:fp32"]["table_id"] == "t-int8"
    with pytest.raises(HwnasError, match="compress.json is missing"):
        reference_row(path, "shufflenet_v2_x0_5", "compressed")
    summary = write_summary(tmp_path / "references" / "summary.json", [row, crow], dataset="digits",
                            val_images=359, source="trained", machine="test cpu")
    loaded = load_summary(summary)
    assert loaded["rows"] == [row, crow] and loaded["machine"] == "test cpu" and loaded["scaling"] == SCALING_RULE


def test_load_summary_errors(tmp_path):
    path = tmp_path / "summary.json"
    with pytest.raises(HwnasError, match="summary.json is missing"):
        load_summary(path)
    path.write_text("{not json")
    with pytest.raises(HwnasError, match=r"summary.json is not readable JSON \(JSONDecodeError"):
        load_summary(path)
    path.write_text(json.dumps({"version": 2, "rows": []}))
    with pytest.raises(HwnasError, match="summary.json: references summary version 2; this hwnas reads version 1"):
        load_summary(path)
    path.write_text(json.dumps({"version": 1, "rows": [{"name": "x", "variant": "fp32", "accuracy": 0.9}]}))
    with pytest.raises(HwnasError, match="row 0 lacks latency"):
        load_summary(path)
    with pytest.raises(HwnasError, match="source 'mine' is not allowed"):
        write_summary(path, [], dataset="digits", val_images=1, source="mine")


def test_compare_bare_runtime_takes_each_rows_precision():
    comp = _row("abc", 980, 0.9, variant="compressed")
    comp["latency"]["ort:int8"] = {"measured_ms": 0.5, "predicted_ms": None, "table_id": None}
    out = compare_with_references([comp], REFS, "ort")
    row = out["rows"][0]
    assert row["measured_on"] == "ort:int8" and row["measured_ms"] == 0.5
    assert row["faster_than"]["speedup"] == pytest.approx(1.8)
    # the exact key is that key only
    assert compare_with_references([comp], REFS, "ort:fp32")["rows"][0]["measured_on"] == "ort:fp32"
