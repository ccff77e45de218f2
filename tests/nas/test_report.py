"""The run report: a run directory built here with the library's own writers (an Optuna study, specs, plans) and
dicts shaped like the exports', then checked figure by figure and section by section."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from latency_tables.table import LatencyTable, find_table
from nas.export.spec import Provenance, SubnetSpec
from nas.objectives import parse_constraints, parse_objectives
from nas.report import build_report, read_run
from nas.report.figures import kept_channels, pareto_front, plane_points, progress_points
from nas.study import open_study, record
from search_spaces import get_space
from search_spaces.errors import HwnasError
from search_spaces.plans import BitWidthPlan, PrunePlan, channel_groups

SPACE = get_space("small")
OBJECTIVES = parse_objectives(["accuracy", "latency_ms"])
CONSTRAINTS = parse_constraints(["latency_ms<=0.12"])
N_TRIALS, BATCH = 12, 4
ORT = find_table("small", "ort", "fp32")
LITERT = find_table("small", "litert", "fp32")
IMAGES = 1000


def _write(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) if not isinstance(data, str) else data, encoding="utf-8")


def _stage(outputs: dict, seconds: float = 1.5) -> dict:
    return {"status": "done", "hash": "ab" * 32, "started": "2026-11-30T10:00:00+00:00",
            "finished": "2026-11-30T10:00:02+00:00", "seconds": seconds, "outputs": outputs}


def _metrics(arch, accuracy: float, ort_ms: float, litert_ms: float, precision: str = "fp32") -> dict:
    """metrics.json as `export_model` writes it (nas/export/writer.py, latency.py `latency_report`)."""
    predicted = ORT.predict_arch(arch, estimate_missing=True)
    measured = {f"ort-{precision}": {"runtime": "ort", "precision": precision, "median_ms": ort_ms, "threads": 1},
                "litert-fp32": {"runtime": "litert", "precision": "fp32", "median_ms": litert_ms, "threads": 1}}
    latency = {"device": "amd-epyc-2c", "measured": measured,
               "predicted": {ORT.table_id: {"latency_ms": predicted, "runtime": "ort", "precision": "fp32"}},
               "constraint": {"constraint": "latency_ms<=0.12", "bound_ms": 0.12, "predicted_ms": predicted,
                              "measured_ms": ort_ms, "meets_constraint_predicted": predicted <= 0.12,
                              "meets_constraint_measured": ort_ms <= 0.12, "table_id": ORT.table_id,
                              "measured": f"ort-{precision}"}}
    return {"format": "hwnas.subnet-metrics/1", "key": "", "arch": arch.to_str(),
            "accuracy": {"top1": accuracy, "split": "val", "images": IMAGES, "dataset": "digits"},
            "cost": {"params": 50_000, "macs": 1_000_000, "dtype": "fp32"}, "latency": latency}


def _export(directory: Path, spec: SubnetSpec, metrics: dict, extra: dict | None = None) -> str:
    metrics["key"] = spec.key
    _write(directory / "spec.json", spec.to_dict())
    _write(directory / "metrics.json", metrics)
    for name, data in (extra or {}).items():
        _write(directory / name, data)
    return str(directory)


def _study(run: Path, seed: int = 0) -> list:
    storage = f"sqlite:///{run / 'study.db'}"
    study = open_study(storage, "search", OBJECTIVES, SPACE)
    genes = SPACE.sample_genes(np.random.default_rng(seed), N_TRIALS)
    archs = [SPACE.from_genes(g) for g in genes]
    latency = np.array([ORT.predict_arch(a) for a in archs])
    accuracy = np.linspace(0.9, 0.99, N_TRIALS)
    for b in range(N_TRIALS // BATCH):
        rows = slice(b * BATCH, (b + 1) * BATCH)
        record(study, SPACE, genes[rows], {"accuracy": accuracy[rows], "latency_ms": latency[rows]}, OBJECTIVES,
               CONSTRAINTS, strategy="evolution", seed=seed, batch=b)
    return archs


def make_run(tmp_path: Path, stages: tuple[str, ...] = ("supernet", "tables", "search", "export", "compress",
                                                          "references")) -> Path:
    """A run directory holding the stages named."""
    run = tmp_path / "run"
    run.mkdir()
    record_: dict = {}
    supernet = run / "supernet"
    _write(supernet / "train_log.jsonl", "".join(json.dumps(r) + "\n" for r in (
        {"epoch": 1, "phase": "full", "loss": 1.2, "seconds": 3.0, "acc_largest": 0.8, "acc_smallest": 0.7},
        {"epoch": 2, "phase": "full", "loss": 0.6, "seconds": 3.0, "acc_largest": 0.9, "acc_smallest": 0.85},
        {"epoch": 3, "phase": "kernel", "loss": 0.5, "seconds": 3.0},
        {"epoch": 4, "phase": "kernel", "loss": 0.4, "seconds": 3.0, "acc_largest": 0.95, "acc_smallest": 0.9})))
    record_["supernet"] = _stage({"run_dir": str(supernet)})
    record_["tables"] = _stage({"tables": [str(ORT.path), str(LITERT.path)]})
    archs = _study(run)
    record_["search"] = _stage({"storage": f"sqlite:///{run / 'study.db'}", "study": "search",
                                "picks_csv": "RUN/search/picks.csv"})
    picks = [archs[-1], archs[-2]]
    _write(run / "search" / "picks.csv", "accuracy,key,arch\n" + "".join(f'0.9,{a.key},"{a.to_str()}"\n'
                                                                           for a in picks))
    provenance = Provenance(None, "digits", 0, 0, (ORT.table_id,))
    subnets = [_export(run / "subnets" / a.key, SubnetSpec(a, "small", 0.5, 0.5, provenance),
                       _metrics(a, acc, 0.11 + i / 100, 0.4 + i / 10))
               for i, (a, acc) in enumerate(zip(picks, (0.984, 0.971), strict=True))]
    record_["export"] = _stage({"subnets": subnets})
    parent = picks[0]
    group, width = next((g, w) for g, w in channel_groups(parent).items() if w >= 8 and g != "stem")
    plan = PrunePlan(parent.key, {group: tuple(range(width // 2))})
    bits = BitWidthPlan({"stem": "fp32"}, default="int8")
    spec = SubnetSpec(plan.apply_to(parent), "small", 0.5, 0.5, provenance, prune_plan=plan, bitwidth_plan=bits)
    compress = {"method": "joint", "parent": parent.key, "metric": "latency_ms", "budget": 0.08, "runtime": "ort",
                "accuracy_before": 0.984, "accuracy_after": 0.975, "label_loyalty": 0.981,
                "probability_loyalty": 0.962, "params_after": 30_000, "macs_after": 600_000, "bytes_after": 41_000.0,
                "latency": {"predicted_ms": 0.07, "measured_ms": 0.075,
                            "side_by_side": {"parent_ms": 0.11, "compressed_ms": 0.075, "speedup": 1.47}}}
    compressed = [_export(run / "compressed" / spec.key, spec, _metrics(spec.arch, 0.975, 0.075, 0.35, "mixed"),
                          {"compress.json": compress})]
    record_["compress"] = _stage({"compressed": compressed})
    rows = [{"name": name, "variant": variant, "accuracy": acc, "val_images": IMAGES, "correct": round(acc * IMAGES),
             "params": 200_000, "macs": 5_000_000, "size_bytes": 800_000.0,
             "latency": {"ort:fp32" if variant == "fp32" else "ort:int8": {"measured_ms": ms, "predicted_ms": None},
                         "litert:fp32": {"measured_ms": 5 * ms, "predicted_ms": None}}}
            for name, variant, acc, ms in (("mobilenet_v2", "fp32", 0.982, 0.3), ("shufflenet_v2_x0_5", "fp32", 0.95,
                                                                                  0.15),
                                           ("mobilenet_v2", "compressed", 0.978, 0.18))]
    _write(run / "references" / "summary.json", {"version": 1, "dataset": "digits", "val_images": IMAGES,
                                                 "source": "trained", "scaling": "Widths halved.", "rows": rows})
    record_["references"] = _stage({"summary": "RUN/references/summary.json"})
    stages_json = {"version": 1, "command": "hwnas run configs/smoke.yaml", "hwnas_version": "0",
                   "stages": {k: v for k, v in record_.items() if k in stages}}
    _write(run / "stages.json", stages_json)
    _write(run / "config.yaml", "search:\n  batch: 4\n  seed: 7\nsupernet:\n  seed: 3\n")
    return run


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    run = make_run(tmp_path_factory.mktemp("report"))
    build_report(run)
    return run


def _images(html: str) -> list[Image.Image]:
    found = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    return [Image.open(io.BytesIO(base64.b64decode(data))) for data in found]


def test_the_html_embeds_every_figure_as_a_png_of_its_size(full_run):
    html = (full_run / "report.html").read_text()
    images = _images(html)
    # planes on ort and litert, predicted/measured, 2 architectures, search progress, supernet training
    sizes = [im.size for im in images]
    assert len(images) == html.count("<img") == 7
    assert all(im.format == "PNG" for im in images)
    assert sizes == [(800, 520), (800, 520), (600, 500), (1000, 560), (1000, 240), (700, 360), (800, 360)]
    assert "http://" not in html and "https://" not in html and "<script" not in html
    md = (full_run / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\((report/[^)]+\.png)\)", md)
    assert len(links) == 7 and all((full_run / link).is_file() for link in links)


def test_sections_come_in_order_with_the_picks_and_the_verdict(full_run):
    html = (full_run / "report.html").read_text()
    order = ["Summary", "Accuracy and latency", "Predicted against measured latency", "Hand-designed references",
             "Architectures of the picks", "Search progress", "Picks", "Provenance"]
    positions = [html.index(f"<h2>{h}") for h in order]
    assert positions == sorted(positions)
    run = read_run(full_run)
    picks_section = html[html.index("<h2>Picks"):html.index("<h2>Provenance")]
    for pick in run.picks:
        assert pick.key in picks_section
    assert "98.4% +- 0.8" in picks_section and "97.1% +- 1.1" in picks_section
    assert "97.5%" in picks_section and "98.1% / 96.2%" in picks_section  # compressed: accuracy and loyalty
    assert "latency_ms&lt;=0.12: met (measured)" in picks_section
    from nas.references import compare_with_references

    runtimes = run.runtimes
    verdict = compare_with_references([m.as_reference_row(runtimes) for m in run.picks + run.compressed],
                                      [r.as_reference_row(runtimes) for r in run.references], "ort")
    assert verdict["text"].splitlines()[0] in html.replace("&#x27;", "'")
    assert "1.47x faster side by side" in html
    assert "search.seed = 7" in html and "supernet.seed = 3" in html and "batch: 4" in html


def test_the_plane_has_every_trial_pick_and_reference(full_run):
    run = read_run(full_run)
    assert run.runtimes == ["ort", "litert"]
    ort = plane_points(run, "ort")
    assert len(ort["trials"]) == N_TRIALS
    assert ort["front"] == pareto_front(ort["trials"]) and 1 <= len(ort["front"]) <= N_TRIALS
    assert ort["picks"] == [(0.11, 0.984), (0.12, 0.971)]
    assert ort["compressed"] == [(0.075, 0.975)]  # its int8/mixed model, not the fp32 fallback
    assert ort["references"] == [(0.3, 0.982), (0.15, 0.95)] and ort["references_compressed"] == [(0.18, 0.978)]
    trials = sorted(t.attrs["latency_ms"] for t in run.trials)
    assert sorted(lat for lat, _ in ort["trials"]) == pytest.approx(trials)
    litert = plane_points(run, "litert")  # priced by the litert table, which the trials did not record
    arch = run.trials[0].attrs["arch"]
    from search_spaces import ArchConfig

    expected = LatencyTable.load(LITERT.path).predict_arch(ArchConfig.from_str(arch), estimate_missing=True)
    assert expected in [lat for lat, _ in litert["trials"]] and len(litert["trials"]) == N_TRIALS
    assert litert["compressed"] == [(0.35, 0.975)]


def test_pareto_front_keeps_the_undominated():
    points = [(1.0, 0.9), (2.0, 0.95), (1.5, 0.85), (3.0, 0.95), (0.5, 0.7)]
    assert pareto_front(points) == [(0.5, 0.7), (1.0, 0.9), (2.0, 0.95)]


def test_progress_is_the_best_feasible_so_far_and_the_hypervolume_grows(full_run):
    run = read_run(full_run)
    points = progress_points(run, batch_size=100)  # the trials' own batch attribute wins
    assert [p[0] for p in points] == [0, 1, 2]
    feasible = [t for t in run.trials if t.attrs["latency_ms"] <= 0.12]
    assert points[-1][1] == pytest.approx(max(t.attrs["accuracy"] for t in feasible))
    best = [p[1] for p in points if p[1] is not None]
    hv = [p[2] for p in points if p[2] is not None]
    assert best == sorted(best) and hv == sorted(hv) and hv[-1] > 0
    from nas.objectives import hypervolume

    scores = np.array([(-t.attrs["accuracy"], t.attrs["latency_ms"]) for t in feasible])
    assert hv[-1] == pytest.approx(hypervolume(scores, [0.0, 0.12]))


def test_kept_channels_follow_the_prune_and_bit_width_plans(full_run):
    run = read_run(full_run)
    child = run.compressed[0]
    parent = next(p for p in run.picks if p.key == child.parent)
    rows = kept_channels(child, parent.arch)
    plan = PrunePlan.from_dict(child.spec["prune_plan"])
    (group, kept), = plan.keep.items()
    by_layer = {layer: (k, total, precision) for layer, k, total, precision in rows}
    assert by_layer["stem"][2] == "fp32" and {p for _, _, p in by_layer.values()} == {"fp32", "int8"}
    pruned = [layer for layer, (k, total, _) in by_layer.items() if k < total]
    assert pruned and all(by_layer[layer][0] == len(kept) for layer in pruned)
    assert all(2 * by_layer[layer][0] == by_layer[layer][1] for layer in pruned)


def test_stages_not_run_are_one_line_each(tmp_path):
    run = make_run(tmp_path, stages=("supernet", "tables"))
    html_path, md_path = build_report(run)
    html, md = html_path.read_text(), md_path.read_text()
    for stage in ("search", "export", "references"):
        assert f"{stage}: not run yet" in md
    assert len(_images(html)) == 1  # the supernet's training curves only
    shown = f"{ORT.meta['validation']['within_10']:.1%}"  # the table's latest validation: within 10%
    assert "amd-epyc-2c-ort-fp32-t1" in md and shown in md, shown


def test_a_corrupt_metrics_json_is_named(tmp_path):
    run = make_run(tmp_path)
    bad = next((run / "subnets").iterdir()) / "metrics.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(HwnasError, match=re.escape(str(bad))):
        build_report(run)
    assert not (run / "report.html").exists()


def test_a_missing_run_or_stages_json_is_one_line(tmp_path):
    from nas.cli import main

    with pytest.raises(HwnasError, match="does not exist"):
        build_report(tmp_path / "nowhere")
    with pytest.raises(HwnasError, match="no stages.json"):
        build_report(tmp_path)
    assert main(["report", str(tmp_path)]) == 2


def test_the_command_rebuilds_the_report(tmp_path, capsys):
    from nas.cli import main

    run = make_run(tmp_path, stages=("supernet",))
    assert main(["report", str(run)]) == 0
    assert str(run / "report.html") in capsys.readouterr().out
    assert (run / "report" / "supernet-training.png").is_file()


def test_a_rebuild_drops_figures_it_no_longer_has(tmp_path):
    run = make_run(tmp_path)
    build_report(run)
    stale = run / "report" / "arch-000000000000.png"
    stale.write_bytes(b"old")
    build_report(run)
    assert not stale.exists() and len(list((run / "report").glob("*.png"))) == 7


def test_paths_recorded_relative_to_another_directory_are_found_in_the_run(tmp_path, monkeypatch):
    run = make_run(tmp_path)
    stages = (run / "stages.json").read_text().replace(str(run), "runs/smoke")  # as `hwnas run` records them
    (run / "stages.json").write_text(stages)
    monkeypatch.chdir(tmp_path)  # runs/smoke does not exist here: the run directory was moved since
    moved = read_run(run)
    assert len(moved.picks) == 2 and len(moved.compressed) == 1 and len(moved.trials) == N_TRIALS
    assert moved.train_log is not None and len(moved.train_log) == 4
