"""`hwnas run CONFIG` (nas.pipeline): the config checked whole, stage planning from recorded input hashes, and the
whole pipeline end to end on configs/smoke.yaml."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from nas.cli import main
from nas.pipeline import STAGES, Pipeline, load_config, read_stages, resolve, run_pipeline
from search_spaces import HwnasError

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke.yaml"


def _config(tmp_path: Path, edit: dict | None = None, base: Path = SMOKE) -> Path:
    data = yaml.safe_load(base.read_text(encoding="utf-8"))
    for dotted, value in (edit or {}).items():
        node = data
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.mark.parametrize(("edit", "expected"), [
    ({"serach": {}}, "unknown key serach; allowed at the top: name, run_dir"),
    ({"search.budgte": 3}, "unknown key search.budgte; allowed in search: strategy, options"),
    ({"search.budget": "ten"}, "search.budget: 'ten' is not an integer"),
    ({"search.budget": 0}, "search.budget: 0 must be at least 1"),
    ({"search.strategy": "anneal"}, "search.strategy: 'anneal' is not allowed; allowed: "),
    ({"search.rank_by": "loss"}, "search.rank_by: 'loss' is not allowed; allowed: val_loss, accuracy"),
    ({"references.names": ["mobilenet_v2", "resnet50"]}, "references.names[1]: 'resnet50' is not allowed; allowed: "
                                                          "mobilenet_v2, mobilenet_v3_large"),
    ({"tables.runtimes": ["ort:fp64"]}, "tables.runtimes[0]: 'ort:fp64' is not RUNTIME:PRECISION"),
    ({"compress.constraints": ["latency<=0.5x"]}, "compress.constraints: 'latency<=0.5x' is not METRIC<=BOUND"),
    ({"compress.options": {"epoch": 2}}, "unknown key compress.options.epoch; allowed: "),
    ({"data.dataset": "imagenet"}, "data.dataset: 'imagenet' is not allowed; allowed: mnist5k, digits"),
    ({"supernet.recipe": {"phases": [{"name": "full", "epochs": 1, "lr": 0.1, "colour": 3}]}}, "colour"),
])
def test_bad_config_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, edit, expected):
    config = _config(tmp_path, edit)
    run_dir = tmp_path / "run"
    assert main(["run", str(config), "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert expected in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not run_dir.exists()


@pytest.mark.parametrize(("args", "expected"), [
    (["--from", "train"], "--from 'train' is not a stage; stages: supernet, tables, search, export, compress"),
    (["--only", "serch"], "--only 'serch' is not a stage"),
    (["--from", "search", "--only", "export"], "not both"),
])
def test_bad_stage_flags(tmp_path, capsys, args, expected):
    run_dir = tmp_path / "run"
    assert main(["run", str(SMOKE), "--run-dir", str(run_dir), *args]) == 2
    assert expected in capsys.readouterr().err
    assert not run_dir.exists()


def test_missing_config_and_bad_yaml(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert "config file" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("search: [1, 2\n", encoding="utf-8")
    assert main(["run", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "is not valid YAML" in err and err.count("\n") == 1


def test_resolved_config_fills_every_default_and_inlines_the_recipe(tmp_path):
    config, root = load_config(_config(tmp_path, {"search": {"budget": 7}}))
    resolved = resolve(config, root)
    assert resolved["search"]["budget"] == 7 and resolved["search"]["strategy"] == "evolution"  # default kept
    assert resolved["search"]["rank_by"] == "val_loss"
    assert resolved["supernet"]["recipe"]["dataset"] == "digits"  # the data section reaches the recipe
    assert resolved["supernet"]["recipe"]["batch_size"] == 32
    assert resolved["supernet"]["recipe"]["momentum"] == 0.9  # a recipe default filled in
    assert resolved["run_dir"] == "runs/smoke"


def test_dry_run_prints_every_stage_with_an_estimate_and_writes_nothing(tmp_path):
    lines: list[str] = []
    run_dir = tmp_path / "run"
    run_pipeline(SMOKE, run_dir=run_dir, dry_run=True, log=lines.append)
    assert not run_dir.exists()
    body = "\n".join(lines)
    for stage in STAGES:
        assert f"  {stage} " in body
    assert body.count("not run before") == len(STAGES)
    assert "in all on this machine when idle" in lines[-1]


def _planned(tmp_path: Path, config: Path, **flags) -> tuple[Pipeline, dict[str, tuple[str, str]]]:
    cfg, root = load_config(config)
    pipeline = Pipeline(resolve(cfg, root), tmp_path / "run", root, log=lambda _: None)
    return pipeline, {p.stage: (p.action, p.reason) for p in pipeline.plan(**flags)}


def _mark_done(pipeline: Pipeline, status: str = "done") -> None:
    """stages.json as if every stage had finished with the current hashes (outputs recorded as none)."""
    record = {"version": 1, "stages": {s: {"status": status, "hash": h, "outputs": {}}
                                       for s, h in pipeline._hashes.items()}}
    pipeline.run_dir.mkdir(parents=True, exist_ok=True)
    (pipeline.run_dir / "stages.json").write_text(json.dumps(record), encoding="utf-8")


def test_changed_inputs_rerun_the_stage_and_what_depends_on_it(tmp_path):
    pipeline, plan = _planned(tmp_path, SMOKE)
    assert {a for a, _ in plan.values()} == {"run"}
    _mark_done(pipeline)
    assert {a for a, _ in _planned(tmp_path, SMOKE)[1].values()} == {"skip"}
    # a search setting changed: search and what reads its output run again; supernet, tables, references do not
    _, plan = _planned(tmp_path, _config(tmp_path, {"search.budget": 13}))
    assert {s for s, (a, _) in plan.items() if a == "rerun"} == {"search", "export", "compress", "report"}
    assert plan["search"][1] == "its config section or input files changed"
    assert plan["export"][1] == "its inputs changed (search changed)"
    assert plan["supernet"][0] == plan["references"][0] == "skip"
    # the data changed: everything that trains on it
    _, plan = _planned(tmp_path, _config(tmp_path, {"data.dataset": "mnist5k"}))
    assert {s for s, (a, _) in plan.items() if a == "rerun"} == {"supernet", "search", "export", "compress",
                                                                  "references", "report"}
    assert plan["tables"][0] == "skip"


def test_cut_off_stages_resume_and_flags_force(tmp_path):
    pipeline, _ = _planned(tmp_path, SMOKE)
    _mark_done(pipeline, status="running")
    _, plan = _planned(tmp_path, SMOKE)
    assert plan["search"] == ("resume", "cut off (running); continues where it stopped")
    _mark_done(pipeline)
    _, plan = _planned(tmp_path, SMOKE, start="compress")
    assert [s for s, (a, _) in plan.items() if a == "rerun"] == ["compress", "references", "report"]
    _, plan = _planned(tmp_path, SMOKE, only="export")
    assert plan["export"] == ("rerun", "--only export") and plan["search"][0] == "skip"


def test_only_needs_its_inputs(tmp_path):
    pipeline, _ = _planned(tmp_path, SMOKE)
    with pytest.raises(HwnasError, match="--only export needs the output of stage search, which is missing"):
        pipeline.plan(only="export")


def test_corrupt_stages_file_is_named(tmp_path):
    (tmp_path / "stages.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(HwnasError, match="stages.json is not valid JSON"):
        read_stages(tmp_path)


def test_smoke_pipeline_end_to_end_then_skips(smoke_workspace, monkeypatch):
    """configs/smoke.yaml, every stage for real (digits; the session's `smoke_workspace`), the report checked;
    run again: all skipped, nothing rewritten."""
    monkeypatch.chdir(smoke_workspace)
    run_dir = Path("runs/smoke")
    lines = (smoke_workspace / "smoke.log").read_text(encoding="utf-8").splitlines()
    record = read_stages(run_dir)
    assert [s for s in STAGES if record["stages"][s]["status"] == "done"] == list(STAGES)
    outputs = {s: record["stages"][s]["outputs"] for s in STAGES}
    assert (Path(outputs["supernet"]["run_dir"]) / "train_log.jsonl").is_file()
    picks = (run_dir / "search" / "picks.csv").read_text(encoding="utf-8").splitlines()
    assert len(picks) == 1 + 2  # header + search.picks
    (subnet,) = outputs["export"]["subnets"]
    metrics = json.loads((Path(subnet) / "metrics.json").read_text(encoding="utf-8"))
    assert set(metrics["latency"]["measured"]) == {"ort-fp32", "litert-fp32"}
    (compressed,) = outputs["compress"]["compressed"]
    summary = json.loads((Path(compressed) / "compress.json").read_text(encoding="utf-8"))
    assert summary["parent"] == Path(subnet).name and summary["method"] == "prune"
    refs = json.loads(Path(outputs["references"]["summary"]).read_text(encoding="utf-8"))
    assert [r["name"] for r in refs["rows"]] == ["mobilenet_v3_small"] and refs["source"] == "trained"
    html = Path(outputs["report"]["html"]).read_text(encoding="utf-8")
    assert Path(subnet).name in html and "mobilenet_v3_small" in html and "data:image/png;base64," in html
    assert yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))["search"]["budget"] == 12
    # one line per stage starts and ends it; no progress bars in a log; the summary names the report
    assert sum(line.startswith("[") and ": done in " in line for line in lines) == len(STAGES)
    assert not any("\r" in line for line in lines)
    assert lines[-1].startswith("report: runs/smoke/report.html")
    before = (run_dir / "stages.json").read_text(encoding="utf-8")
    again: list[str] = []
    run_pipeline(SMOKE, run_dir=run_dir, log=again.append)
    skipped = [line for line in again if line.startswith("[")]
    assert len(skipped) == len(STAGES) and all(": skipped (done " in line for line in skipped)
    assert json.loads((run_dir / "stages.json").read_text(encoding="utf-8"))["stages"] == json.loads(before)["stages"]
    # the compression section changed: only compression and the report would run again
    edited = _config(smoke_workspace, {"compress.constraints": ["latency_ms<=0.9x"]})
    plan = {p.stage: p.action for p in Pipeline(resolve(*load_config(edited)), run_dir, Path.cwd()).plan()}
    assert {s for s, a in plan.items() if a == "rerun"} == {"compress", "report"}


def test_an_interrupted_stage_is_recorded_and_resumed(tmp_path, monkeypatch):
    """Ctrl-C in a stage leaves it `running` in stages.json (finished stages stay done); the next run skips the
    finished ones and resumes it."""
    config = _config(tmp_path, {"stages": ["tables", "report"]})
    run_dir = tmp_path / "run"
    calls: list[str] = []

    def report(self):  # noqa: ANN001
        calls.append("report")
        if len(calls) == 1:
            raise KeyboardInterrupt
        return {"html": str(self.run_dir / "stages.json")}, "rebuilt"

    monkeypatch.setattr(Pipeline, "_stage_report", report)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(config, run_dir=run_dir, log=lambda _: None)
    stages = read_stages(run_dir)["stages"]
    assert stages["tables"]["status"] == "done" and stages["report"]["status"] == "running"
    assert (run_dir / "config.yaml").is_file()
    lines: list[str] = []
    run_pipeline(config, run_dir=run_dir, log=lines.append)
    assert lines[1].startswith("[2/7] tables: skipped (done")
    assert any(line.startswith("[7/7] report: done") for line in lines)
    assert any("report: resume (cut off (running)" in line for line in lines)
    assert read_stages(run_dir)["stages"]["report"]["status"] == "done" and calls == ["report", "report"]


def test_tables_from_directories_are_hashed_by_their_files(tmp_path):
    """tables.source dirs: the stage loads the directories named; a changed table file makes the stage (and
    what depends on it) run again."""
    source = ROOT / "latency_tables" / "data" / "small-amd-epyc-2c-ort-fp32-t1"
    copy = tmp_path / "my-table"
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("models"))
    config = _config(tmp_path, {"stages": ["tables"], "tables": {"source": "dirs", "paths": [str(copy)]}})
    run_pipeline(config, run_dir=tmp_path / "run", log=lambda _: None)
    stage = read_stages(tmp_path / "run")["stages"]["tables"]
    assert stage["status"] == "done" and stage["outputs"]["tables"] == [str(copy)]
    assert stage["summary"] == "amd-epyc-2c-ort-fp32-t1"
    with open(copy / "table.csv", "a", encoding="utf-8") as fh:
        fh.write("\n")
    _, plan = _planned(tmp_path, config)
    assert plan["tables"] == ("rerun", "its config section or input files changed")
    assert plan["search"] == ("off", "not in this config's stages")


def test_a_reference_that_cannot_reach_the_compression_budget_is_kept_uncompressed(smoke_workspace, tmp_path,
                                                                                  monkeypatch):
    """One reference whose compression budget is out of reach does not stop the others: its fp32 row stays, the
    stage's summary names it."""
    import nas.references as refs

    (exported,) = (smoke_workspace / "runs" / "smoke" / "references" / "mobilenet_v3_small").glob("*/")
    monkeypatch.setattr(refs, "train_reference", lambda name, *a, **k: exported)

    def unreachable(self, parents, out_root):  # noqa: ANN001
        raise HwnasError("joint: latency_ms<=0.01 cannot be reached on ort")

    monkeypatch.setattr(Pipeline, "_compress_dirs", unreachable)
    config = _config(tmp_path, {"references.compress": True})
    cfg, root = load_config(config)
    lines: list[str] = []
    pipeline = Pipeline(resolve(cfg, root), tmp_path / "run", root, log=lines.append)
    pipeline._tables = []
    outputs, summary = pipeline._stage_references()
    rows = json.loads(Path(outputs["summary"]).read_text(encoding="utf-8"))["rows"]
    assert [(r["name"], r["variant"]) for r in rows] == [("mobilenet_v3_small", "fp32")]
    assert summary == "1 trained; not compressed to the budget: mobilenet_v3_small"
    assert lines == ["  references: mobilenet_v3_small is not compressed: joint: latency_ms<=0.01 cannot be reached "
                     "on ort"]
