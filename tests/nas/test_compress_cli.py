"""`hwnas compress` end to end on a tiny exported subnet: pruned to a latency budget on the shipped ORT table,
fine-tuned with the parent as teacher, exported with its plan and measured; bad input exits 2 with one line."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from latency_tables.ondemand import on_demand_keys
from latency_tables.runtimes import Protocol
from latency_tables.table import LatencyTable, find_table
from nas.cli import main
from nas.cli.compress import summary_lines
from nas.compress.allocate import predicted_latency
from nas.compress.finetune import FinetuneConfig, finetune
from nas.compress.pipeline import COMPRESS_FILE, CompressConfig, compress_subnet, fidelity
from nas.export import ExportOptions, Provenance, SubnetSpec, export_model, load_subnet
from search_spaces import HwnasError, get_space
from search_spaces.plans import channel_groups
from supernets.data import load_dataset
from supernets.models import build_model

FAST = Protocol(warmup=2, runs=10, repeats=1)


@pytest.fixture(scope="module")
def parent_dir(tmp_path_factory):
    """A seeded `small`-space subnet (MobileNetV3 and EfficientNet blocks, SE), exported with its ORT fp32 model
    and a measured latency."""
    arch = get_space("small").sample(np.random.default_rng(0))
    torch.manual_seed(0)
    data = load_dataset("digits", seed=0)  # what `hwnas compress` loads by the provenance's name
    root = tmp_path_factory.mktemp("subnets")
    trained = finetune(build_model(arch), data, root / "train", FinetuneConfig(epochs=3, lr=0.05), log=str).model
    spec = SubnetSpec(arch, "small", data.mean, data.std, Provenance(None, data.name, 0, 0))
    options = ExportOptions(runtimes=(("ort", "fp32"),), protocol=FAST)
    return export_model(trained, spec, data, root / "subnets", options)


def cli(*args):
    return main(["compress", *map(str, args), "--no-progress"])


def test_fidelity_of_identical_and_opposite_outputs():
    p = torch.tensor([[0.9, 0.1], [0.2, 0.8]], dtype=torch.float64)
    same = fidelity(p, p, np.array([0, 0]))
    assert same == {"accuracy_before": 0.5, "accuracy_after": 0.5, "label_loyalty": 1.0,
                    "probability_loyalty": pytest.approx(1.0)}
    apart = fidelity(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), np.array([1]))
    assert apart["label_loyalty"] == 0.0 and apart["probability_loyalty"] == pytest.approx(0.0)
    assert (apart["accuracy_before"], apart["accuracy_after"]) == (0.0, 1.0)


@pytest.mark.runtime
def test_compress_prune_writes_a_pruned_subnet_with_its_plan_and_measured_latency(parent_dir, tmp_path, capsys,
                                                                                 monkeypatch):
    # the drift check before measuring on demand refuses a busy machine (tested in test_ondemand); here the keys are
    # measured whatever the load, so that the run always reaches the part this test is about
    monkeypatch.setattr("latency_tables.ondemand.remeasured_drift", lambda *args, **kwargs: 1.0)
    parent, spec = load_subnet(parent_dir)
    table = find_table("small", "ort", "fp32")
    before_ms, _ = predicted_latency(table, spec.arch)
    budget = round(0.8 * before_ms, 4)
    assert cli(parent_dir, "--constraint", f"latency_ms<={budget}", "--table", "ort:fp32", "--method", "prune",
               "--epochs", 1, "--max-steps", 3, "--out", tmp_path, "--no-other-runtime", "--json") == 0
    out = json.loads(capsys.readouterr().out)
    path = tmp_path / out["key"]
    saved = json.loads((path / "spec.json").read_text())
    assert saved["prune_plan"]["parent"] == spec.key == spec.arch.key and saved["prune_plan"]["keep"]
    model, got = load_subnet(path)
    assert got.prune_plan is not None and got.arch == got.prune_plan.apply_to(spec.arch) != spec.arch
    assert sum(channel_groups(got.arch).values()) < sum(channel_groups(spec.arch).values())
    assert sum(p.numel() for p in model.parameters()) == out["params_after"] < out["params_before"]
    summary = json.loads((path / COMPRESS_FILE).read_text())
    assert summary["parent"] == spec.key and summary["method"] == "prune" and summary["precision"] == "fp32"
    assert 0.0 <= summary["accuracy_before"] <= 1.0 and 0.0 <= summary["accuracy_after"] <= 1.0
    assert 0.0 <= summary["label_loyalty"] <= 1.0 and 0.0 < summary["probability_loyalty"] <= 1.0
    latency = summary["latency"]
    assert latency["predicted_ms"] <= budget < latency["parent_predicted_ms"] == pytest.approx(before_ms)
    assert latency["measured_ms"] > 0 and latency["parent_measured_ms"] > 0 and latency["measured_speedup"] > 0
    both = latency["side_by_side"]  # the two models timed round-robin in one run: the speed-up people read
    assert both["speedup"] == pytest.approx(both["parent_ms"] / both["compressed_ms"]) and both["compressed_ms"] > 0
    metrics = json.loads((path / "metrics.json").read_text())
    recorded = metrics["extra"]["compress"]  # metrics.json holds all but the new model's own measurement
    assert recorded["accuracy_after"] == summary["accuracy_after"] and recorded["params_after"] == out["params_after"]
    assert recorded["latency"]["parent_measured_ms"] == latency["parent_measured_ms"]
    assert recorded["predicted"] == latency["predicted_ms"] and recorded["choice"]["step"] > 0
    text = "\n".join(summary_lines(path, summary))
    assert f"compressed {spec.key} by prune to {path.name} (fp32)" in text and f"written to {path}" in text
    assert f"measured {latency['measured_ms']:.4f} ms (parent {latency['parent_measured_ms']:.4f} ms, " \
        f"{both['speedup']:.2f}x side by side)" in text
    assert metrics["latency"]["measured"]["ort-fp32"]["median_ms"] == latency["measured_ms"]
    assert metrics["accuracy"]["top1"] == pytest.approx(summary["accuracy_after"])  # the same validation split
    # the keys the plan rests on were measured into a copy of the table beside the output, kept for later runs
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [".measured-tables"]
    measured = LatencyTable.load(tmp_path / ".measured-tables" / table.table_id)
    assert summary["choice"]["measured_keys"] == len(on_demand_keys(measured)) > 0
    assert summary["choice"]["estimated"] is False
    assert len(measured.rows) == len(table.rows) + summary["choice"]["measured_keys"]


@pytest.mark.runtime
def test_bad_input_exits_2_with_one_line(parent_dir, tmp_path, capsys):
    common = ["--table", "ort:fp32", "--out", tmp_path]
    assert cli(parent_dir, "--constraint", "latency_ms<=1", "--method", "fold", *common) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "method is 'fold'; allowed: one of prune, quantize, sequential, joint" in err
    assert cli(parent_dir, "--constraint", "latency_ms<=0.001", "--method", "prune", *common) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cannot be met" in err and "smallest latency reachable" in err
    assert cli(tmp_path / "nowhere", "--constraint", "latency_ms<=1", "--method", "prune", *common) == 2
    assert "nowhere" in capsys.readouterr().err
    assert cli(parent_dir, "--constraint", "params<=1", "--method", "prune", *common) == 2
    assert "one budget METRIC<=X with METRIC one of latency_ms, size_bytes, macs, bitops" in capsys.readouterr().err
    assert cli(parent_dir, "--constraint", "macs<=1e6", "--method", "joint", *common) == 2
    assert "a macs budget does not change with precision" in capsys.readouterr().err
    assert cli(parent_dir, "--constraint", "latency_ms<=0.001", "--method", "joint", *common) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cannot be reached" in err and "the smallest reachable" in err
    assert cli(parent_dir, "--constraint", "latency_ms<=1", "--method", "prune", "--teacher", "largest", *common) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "teacher 'largest' is the supernet's largest subnet" in err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_config_refuses_bad_settings():
    table = find_table("small", "ort", "fp32")
    with pytest.raises(HwnasError, match="criterion is 'size'; allowed: one of l1, bn, taylor"):
        CompressConfig("prune", 1.0, table, criterion="size")
    with pytest.raises(HwnasError, match="budget is -1"):
        CompressConfig("prune", -1.0, table)
    with pytest.raises(HwnasError, match="is not a directory"):
        compress_subnet("/nonexistent/subnet", "/nonexistent/out", CompressConfig("prune", 1.0, table))


def _fastest(arch):
    """The parent's latency on ORT with every block at its fastest precision."""
    from nas.compress.bits import latency_costs, runtime_tables

    return float(latency_costs(arch, runtime_tables("small", "ort"), ("fp32", "int8"))[0].min(axis=1).sum())


def _int8_budget(model, out_root):
    """A latency budget halfway between the parent's fp32 and its cheapest plan on ORT, the changes of precision
    measured as `compress_subnet` measures them (into the cache it reuses under `out_root`)."""
    from nas.compress.bits import allocate_bits, arch_pieces, runtime_tables
    from nas.compress.pipeline import _sample
    from nas.compress.switch import fit_switch_cost

    arch, tables = model.arch, runtime_tables("small", "ort")
    x, _ = _sample(load_dataset("digits", seed=0), 128, 0, arch.resolution)
    fitted = fit_switch_cost(model, [x[i:i + 1].numpy() for i in range(64)], "ort", tables, FAST,
                             out_root / ".measured-tables", log=str)
    zero = {layer: {"fp32": 0.0, "int8": 0.0} for _, layers in arch_pieces(arch) for layer in layers}
    cheapest = allocate_bits(arch, zero, 10.0, tables=tables, switch_cost=fitted.for_arch(arch)).budget_cost
    fp32 = _fp32(arch)
    return (fp32 + cheapest) / 2 if cheapest < fp32 else None


def _fp32(arch):
    from nas.compress.bits import latency_costs, runtime_tables

    return float(latency_costs(arch, runtime_tables("small", "ort"), ("fp32",))[0].sum())


@pytest.mark.runtime
@pytest.mark.parametrize("method", ["quantize", "sequential"])
def test_quantize_and_sequential_reach_the_budget_on_the_runtime_tables(parent_dir, tmp_path, method):
    model, spec = load_subnet(parent_dir)
    # quantize: between fp32 and the cheapest plan (switches included); sequential: below what quantising alone
    # reaches, so it prunes first
    budget = _int8_budget(model, tmp_path) if method == "quantize" else 0.9 * _fastest(spec.arch)
    if budget is None:  # int8 does not pay anywhere in this network here: quantize names what it can reach
        with pytest.raises(HwnasError, match="cannot be reached; the smallest reachable is"):
            compress_subnet(parent_dir, tmp_path, CompressConfig(method, 0.99 * _fp32(spec.arch),
                                                                 find_table("small", "ort", "fp32"), protocol=FAST),
                            log=str)  # the protocol `_int8_budget` measured with: its cached switch costs, not new ones
        return
    teacher = str(parent_dir) if method == "sequential" else None  # an exported subnet named as the teacher
    # the tables as shipped (missing keys estimated): keys measured on demand would make the plan, and so the
    # exported model, depend on the machine's load at the time
    config = CompressConfig(method, budget, find_table("small", "ort", "fp32"), max_steps=3, protocol=FAST,
                            teacher=teacher, other_runtime=False, parity_images=300, measure_keys=False)
    path = compress_subnet(parent_dir, tmp_path, config, log=str)
    summary = json.loads((path / COMPRESS_FILE).read_text())
    _, got = load_subnet(path)
    assert got.key == summary["key"] == path.name and summary["method"] == method
    assert (got.prune_plan is not None) == (method == "sequential")
    if method == "sequential":  # prune, quantise, then distil: quantisation-aware where a precision is lowered
        assert summary["finetune"]["teacher"] == teacher and summary["finetune"]["history"][0]["epoch"] == 1
        assert summary["finetune"]["qat"] is (got.bitwidth_plan is not None)
    assert summary["choice"]["cost"] <= budget * (1 + 1e-9) and len(summary["candidates"]) == 1
    guard = summary.get("guard")
    assert (guard is not None) == (got.bitwidth_plan is not None)
    if guard is not None:
        assert guard["accuracy_guarded"] >= guard["accuracy_float"] - guard["tolerance"] - 1e-12
    if not (guard or {}).get("raised") and not summary["choice"]["repriced"]:  # the allocation's (switches included)
        assert summary["latency"]["predicted_ms"] == pytest.approx(summary["choice"]["cost"])
    assert summary["latency"]["predicted_ms"] == summary["predicted"]
    if method == "quantize":
        assert got.bitwidth_plan is not None and "int8" in got.bitwidth_plan.used(got.arch)
        assert got.models == (("ort", "mixed"),) and summary["precision"] == "mixed"
        assert summary["bytes_ratio"] > 1.0 and summary["params_ratio"] == 1.0
    assert summary["accuracy_before"] > 0.9  # a trained parent
    assert summary["latency"]["measured_ms"] > 0 and summary["label_loyalty"] > 0.5


@pytest.mark.runtime
def test_joint_chooses_pruning_and_precision_together_and_is_never_worse_than_sequential(parent_dir, tmp_path):
    from nas.compress.bits import layer_costs

    _, spec = load_subnet(parent_dir)
    table = find_table("small", "ort", "fp32")
    budget = 0.9 * _fastest(spec.arch)  # quantising alone does not reach it
    size = 0.3 * float(layer_costs(spec.arch, ("fp32",), "size_bytes").sum())  # nor int8 alone: both are needed
    # 32 images judge each layer's sensitivity (the default is 128): each pruning step allocates afresh
    config = CompressConfig("joint", budget, table, max_steps=3, protocol=FAST, candidates=4, parity_images=300,
                            measure_keys=False, size_budget=size, images=32)
    path = compress_subnet(parent_dir, tmp_path, config, log=str)
    summary = json.loads((path / COMPRESS_FILE).read_text())
    candidates = summary["candidates"]
    assert 2 <= len(candidates) <= 4 and [c["step"] for c in candidates] == sorted(c["step"] for c in candidates)
    assert all(c["cost"] <= budget * (1 + 1e-9) for c in candidates) and summary["bytes_after"] <= size
    chosen = summary["choice"]
    assert chosen["damage_kl"] == min(c["damage_kl"] for c in candidates)
    # the sequential plan is the first candidate (the path's first point whose fastest precisions reach the budget)
    seq = CompressConfig("sequential", budget, table, max_steps=3, protocol=FAST, parity_images=300,
                         measure_keys=False, other_runtime=False, size_budget=size, images=32)
    shutil.copytree(tmp_path / ".measured-tables", tmp_path / "seq" / ".measured-tables")  # the same switch costs
    seq_path = compress_subnet(parent_dir, tmp_path / "seq", seq, log=str)
    seq_summary = json.loads((seq_path / COMPRESS_FILE).read_text())
    assert seq_summary["choice"]["step"] == candidates[0]["step"] and seq_summary["choice"]["arch"] == \
        candidates[0]["arch"]
    assert chosen["damage_kl"] <= candidates[0]["damage_kl"]
    # the budget's runtime runs the plan; the other runtime gets the same pruned network in fp32, and says so
    _, got = load_subnet(path)
    assert got.prune_plan is not None and got.bitwidth_plan is not None
    assert dict(got.models) == {"ort": summary["precision"], "litert": "fp32"}
    assert summary["models"]["litert"].startswith("fp32 (the bit-width plan is ort's")
    metrics = json.loads((path / "metrics.json").read_text())
    assert metrics["parity"]["passed"] and set(metrics["latency"]["measured"]) == {f"ort-{summary['precision']}",
                                                                                   "litert-fp32"}
    assert summary["latency"]["measured_ms"] == metrics["latency"]["measured"][f"ort-{summary['precision']}"][
        "median_ms"]
    files = summary["files"][f"ort-{summary['precision']}"]
    assert files["bytes"] == (path / files["file"]).stat().st_size
    assert files["parent_bytes"] == (parent_dir / "model.onnx").stat().st_size
    assert files["ratio"] == pytest.approx(files["parent_bytes"] / files["bytes"]) and files["ratio"] > 1
    assert summary["files"]["litert-fp32"]["parent_bytes"] is None  # the parent was exported for ORT only


@pytest.mark.runtime
def test_a_size_budget_quantises_and_a_macs_budget_prunes(parent_dir, tmp_path):
    from latency_tables.analytic import AnalyticCostModel
    from nas.compress.bits import layer_costs

    _, spec = load_subnet(parent_dir)
    table = find_table("small", "ort", "fp32")
    fp32_bytes = float(layer_costs(spec.arch, ("fp32",), "size_bytes").sum())
    config = CompressConfig("quantize", 0.6 * fp32_bytes, table, metric="size_bytes", protocol=FAST,
                            other_runtime=False, parity_images=200, max_steps=2)
    summary = json.loads((compress_subnet(parent_dir, tmp_path, config, log=str) / COMPRESS_FILE).read_text())
    assert summary["metric"] == "size_bytes" and summary["bytes_after"] <= 0.6 * fp32_bytes
    assert summary["bytes_before"] == fp32_bytes and summary["budget_ms"] is None
    macs = AnalyticCostModel("fp32").estimate(spec.arch).macs
    config = CompressConfig("prune", 0.7 * macs, table, metric="macs", protocol=FAST, other_runtime=False,
                            parity_images=200, max_steps=2)
    summary = json.loads((compress_subnet(parent_dir, tmp_path, config, log=str) / COMPRESS_FILE).read_text())
    assert summary["macs_after"] <= 0.7 * macs < summary["macs_before"] == macs
    assert summary["predicted"] == summary["macs_after"] and "meets_budget_measured" not in summary["latency"]


@pytest.mark.runtime
def test_the_supernets_largest_subnet_teaches_when_named(parent_dir, trained_supernet, tmp_path):
    _, spec = load_subnet(parent_dir)
    table = find_table("small", "ort", "fp32")
    budget = 0.8 * predicted_latency(table, spec.arch)[0]
    config = CompressConfig("prune", budget, table, max_steps=2, protocol=FAST, teacher="largest",
                            supernet=str(trained_supernet), other_runtime=False)
    summary = json.loads((compress_subnet(parent_dir, tmp_path, config, log=str) / COMPRESS_FILE).read_text())
    assert summary["finetune"]["teacher"] == "largest" and summary["latency"]["predicted_ms"] <= budget


@pytest.mark.runtime
def test_simulated_bit_widths_are_labelled_and_never_exported_as_runtime_models(parent_dir, tmp_path):
    from nas.compress.bits import layer_costs

    _, spec = load_subnet(parent_dir)
    fp32_bytes = float(layer_costs(spec.arch, ("fp32",), "size_bytes").sum())
    table = find_table("small", "ort", "fp32")
    with pytest.raises(HwnasError, match="simulated bit-widths \\(w4a8\\) have no measured latency"):
        CompressConfig("quantize", 0.1, table, simulated=("w4a8",))
    config = CompressConfig("quantize", fp32_bytes / 6, table, metric="size_bytes", simulated=("w8a8", "w4a8"),
                            protocol=FAST, max_steps=2, tolerance=0.99)
    path = compress_subnet(parent_dir, tmp_path, config, log=str)
    summary = json.loads((path / COMPRESS_FILE).read_text())
    _, got = load_subnet(path)
    assert summary["simulated"] is True and summary["precision"] == "simulated" and summary["models"] == {}
    assert got.models == () and not list(path.glob("model*.onnx")) and not list(path.glob("model*.tflite"))
    assert got.bitwidth_plan is not None and "w4a8" in got.bitwidth_plan.used(got.arch)
    assert got.bitwidth_plan.simulated_in(got.arch)  # every simulated layer is named so
    assert summary["bytes_after"] <= fp32_bytes / 6 and summary["bytes_ratio"] >= 6


@pytest.mark.runtime
def test_search_compress_compresses_each_pick_once(parent_dir, tmp_path):
    import argparse

    from nas.cli.compress import compress_picks

    _, spec = load_subnet(parent_dir)
    budget = 0.85 * predicted_latency(find_table("small", "ort", "fp32"), spec.arch)[0]
    args = argparse.Namespace(compress="prune", compress_epochs=1, seed=0, no_progress=True)
    logged: list[str] = []
    lines = compress_picks([parent_dir], tmp_path, [f"latency_ms<={budget}"], "ort:fp32", "small", args,
                           logged.append)
    record = json.loads((tmp_path / f"{parent_dir.name}.prune.json").read_text())
    assert record["parent"] == parent_dir.name and (tmp_path / Path(record["path"]).name / COMPRESS_FILE).is_file()
    assert lines[0].startswith("compressed by prune to latency_ms<=") and f"compressed {spec.key} by prune" in lines[1]
    again = compress_picks([parent_dir], tmp_path, [f"latency_ms<={budget}"], "ort:fp32", "small", args,
                           logged.append)
    assert again == lines and f"{parent_dir.name}: compressed before" in logged[-1]


@pytest.mark.runtime
def test_the_cost_of_a_change_of_precision_is_measured_and_charged(parent_dir, tmp_path):
    from nas.compress.bits import allocate_bits, arch_pieces, latency_costs, runtime_tables
    from nas.compress.switch import fit_switch_cost
    from nas.export.runtime_models import calibration_inputs

    model, spec = load_subnet(parent_dir)
    tables = runtime_tables("small", "ort")
    calibration = calibration_inputs(load_dataset("digits", seed=0), spec.arch, 16, 0)
    logged: list[str] = []
    fitted = fit_switch_cost(model, calibration, "ort", tables, FAST, tmp_path, log=logged.append)
    assert len(fitted.samples) == 5 and fitted.per_switch_ms >= 0 and fitted.per_element_ms >= 0
    assert "measuring the cost" in logged[0]
    # the fit is the least-squares line through its own samples (a negative term clipped to 0 and the other refit):
    # whatever the timings were, no sample's excess is further from the line than from a line through 0
    a = np.array([[r[0], r[1]] for r in fitted.samples])
    excess = np.array([r[2] for r in fitted.samples])
    assert a[:, 0].min() >= 1 and len({tuple(row) for row in a}) == 5  # five distinct mixed plans, each switching
    line = a @ np.array([fitted.per_switch_ms, fitted.per_element_ms])
    assert np.sum((excess - line) ** 2) <= np.sum(excess ** 2) + 1e-12
    again = fit_switch_cost(model, calibration, "ort", tables, FAST, tmp_path, log=logged.append)
    assert again == fitted and len(logged) == 2  # reused from the cache: nothing measured
    # whether a switch costs measurable time here depends on the machine's load at the moment (a busy run fits 0);
    # the charging below is checked with a positive cost of the fitted form
    fitted = dataclasses.replace(fitted, per_switch_ms=max(fitted.per_switch_ms, 0.002),
                                 per_element_ms=max(fitted.per_element_ms, 1e-7))
    # allocate_bits charges it at every change of precision, the fp32 input and output included
    costs, _ = latency_costs(spec.arch, tables, ("fp32", "int8"))
    names = [n for n, _ in arch_pieces(spec.arch)]
    # int8 wanted on every other piece (fp32 made costly there), fp32 on the rest: the plan switches at each piece
    sensitivity = {layer: {"fp32": 0.0 if i % 2 else 1.0, "int8": 1.0 if i % 2 else 0.0} for i, (_, layers) in
                   enumerate(arch_pieces(spec.arch)) for layer in layers}
    alloc = allocate_bits(spec.arch, sensitivity, 10.0, tables=tables, switch_cost=fitted.for_arch(spec.arch))
    chosen = [alloc.pieces[n] for n in names]
    pieces = sum(costs[i, ("fp32", "int8").index(p)] for i, p in enumerate(chosen))
    assert alloc.budget_cost == pytest.approx(pieces + fitted.total(spec.arch, chosen))
    assert chosen == [("int8", "fp32")[i % 2] for i in range(len(chosen))] and fitted.total(spec.arch, chosen) > 0


@pytest.mark.runtime
def test_gradual_pruning_ramps_the_plan_and_an_accuracy_floor_refuses_a_worse_result(parent_dir, tmp_path):
    _, spec = load_subnet(parent_dir)
    table = find_table("small", "ort", "fp32")
    budget = 0.8 * predicted_latency(table, spec.arch)[0]
    config = CompressConfig("prune", budget, table, epochs=2, gradual=2, max_steps=3, protocol=FAST,
                            other_runtime=False, parity_images=200, measure_keys=False)
    summary = json.loads((compress_subnet(parent_dir, tmp_path / "a", config, log=str) / COMPRESS_FILE).read_text())
    shares = [row["pruned_share"] for row in summary["finetune"]["history"]]
    assert summary["finetune"]["gradual"] == 2 and 0 < shares[0] < shares[1] == pytest.approx(1.0)
    floor = dataclasses.replace(config, gradual=0, min_accuracy=0.9999)
    with pytest.raises(HwnasError, match="below the accuracy floor 99.99%.*nothing was exported"):
        compress_subnet(parent_dir, tmp_path / "b", floor, log=str)
    assert not [p for p in (tmp_path / "b").iterdir() if not p.name.startswith(".")]
    with pytest.raises(HwnasError, match="gradual is 3; allowed: 0 to epochs \\(2\\)"):
        dataclasses.replace(config, gradual=3)
