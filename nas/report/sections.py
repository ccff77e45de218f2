"""The report's eight sections, each built from what the run directory holds (a stage that has not run is one
line saying so)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nas.report import figures
from nas.report.document import Block, Heading, Image, Para, Pre, Table
from nas.report.run import STAGES, Model, Run

#: Runtime packages whose versions the provenance lists.
PACKAGES = ("hwnas", "torch", "onnxruntime", "ai-edge-litert", "optuna", "numpy", "matplotlib")


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def accuracy_text(model: Model) -> str:
    low, high = model.interval
    return f"{_pct(model.accuracy)} +- {100 * (high - low) / 2:.1f}" if high > low else _pct(model.accuracy)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _num(value: Any) -> str:
    return "-" if value is None else f"{float(value):,.0f}"


def _not_run(run: Run, *stages: str) -> list[Block]:
    return [Para(run.status_line(s)) for s in stages if run.stage(s) is None]


def verdicts(run: Run) -> dict[str, dict[str, Any]]:
    """`compare_with_references` per runtime (each model at its own precision on it), picks and compressed picks
    as candidates."""
    if not run.references or not (run.picks or run.compressed):
        return {}
    from nas.references import compare_with_references

    runtimes = run.runtimes
    candidates = [m.as_reference_row(runtimes) for m in run.picks + run.compressed]
    refs = [r.as_reference_row(runtimes) for r in run.references]
    return {rt: compare_with_references(candidates, refs, rt) for rt in runtimes}


def _latencies(model: Model, runtimes: list[str]) -> str:
    parts = [f"{lat[0]} {lat[1]:.4g} ms" for rt in runtimes if (lat := model.latency_on(rt)) is not None]
    return ", ".join(parts) or "not measured"


def summary(run: Run, found: dict[str, dict[str, Any]]) -> list[Block]:
    rows = []
    for name in STAGES:
        stage = run.stages["stages"].get(name) or {}
        seconds = stage.get("seconds")
        rows.append((name, str(stage.get("status", "not run yet")),
                     f"{seconds:.1f}" if isinstance(seconds, (int, float)) else "-", str(stage.get("finished", "-"))))
    blocks: list[Block] = [Heading("Summary"), Para(f"Run {run.directory.name} ({run.directory})."),
                           Table(("stage", "status", "seconds", "finished"), tuple(rows))]
    if not run.picks:
        return blocks + _not_run(run, "export") + ([Para("no picks were exported")] if run.stage("export") else [])
    best = run.picks[0]
    blocks.append(Para(f"Best pick {best.key}: {accuracy_text(best)}, measured {_latencies(best, run.runtimes)}."))
    for child in run.children(best):
        speed = f", {child.speedup:.2f}x faster side by side" if child.speedup else ""
        blocks.append(Para(f"After compression ({child.key}): {accuracy_text(child)}, measured "
                           f"{_latencies(child, run.runtimes)}{speed}."))
    for runtime, verdict in found.items():
        blocks.append(Para(f"Against the hand-designed references on {runtime}: acceptance "
                           f"{'met' if verdict['met'] else 'not met'} (best candidate {verdict.get('best')})."))
    return blocks


def planes(run: Run) -> list[Block]:
    blocks: list[Block] = [Heading("Accuracy and latency")]
    if not run.runtimes:
        return blocks + (_not_run(run, "search", "export") or [Para("nothing was measured on a runtime")])
    for runtime in run.runtimes:
        png, caption = figures.plane_figure(run, runtime)
        blocks.append(Image(f"plane-{runtime}.png", png, caption))
    return blocks


def predicted_measured(run: Run) -> list[Block]:
    blocks: list[Block] = [Heading("Predicted against measured latency")]
    drawn = figures.latency_figure(run)
    if drawn is None:
        return blocks + (_not_run(run, "export") or [Para("no model has both a table's prediction and a "
                                                          "measurement of the same runtime model")])
    return blocks + [Image("predicted-measured.png", *drawn)]


def references(run: Run, found: dict[str, dict[str, Any]]) -> list[Block]:
    blocks: list[Block] = [Heading("Hand-designed references")]
    if not run.references:
        return blocks + (_not_run(run, "references") or [Para("the references' summary holds no row")])
    meta = run.references_meta or {}
    if meta.get("scaling"):
        blocks.append(Para(f"Scaling: {meta['scaling']} Source: {meta.get('source', '-')}; "
                           f"{meta.get('val_images', '-')} validation images of {meta.get('dataset', '-')}."))
    labels = sorted({label for r in run.references for label in r.measured})
    rows = tuple((r.name, r.variant, accuracy_text(r), _num(r.params), _num(r.macs), _num(r.size_bytes),
                  *(_ms(r.measured.get(label)) for label in labels)) for r in run.references)
    blocks.append(Table(("name", "variant", "accuracy (95%)", "params", "MACs", "bytes",
                         *(f"{label} ms" for label in labels)), rows))
    for runtime, verdict in found.items():
        blocks += [Heading(f"Verdict on {runtime}", 3), Para(verdict["text"], verbatim=True)]
    return blocks


def architectures(run: Run) -> list[Block]:
    blocks: list[Block] = [Heading("Architectures of the picks")]
    if not run.picks:
        return blocks + _not_run(run, "export")
    for pick in run.picks:
        if pick.arch:
            blocks.append(Image(f"arch-{pick.key}.png", *figures.arch_figure(pick, run.children(pick))))
    return blocks


def _batch_size(config: dict[str, Any]) -> int:
    search = config.get("search") if isinstance(config, dict) else None
    batch = search.get("batch") if isinstance(search, dict) else None
    return batch if isinstance(batch, int) and batch > 0 else figures.DEFAULT_BATCH


def progress(run: Run, config: dict[str, Any]) -> list[Block]:
    blocks: list[Block] = [Heading("Search progress, supernet training, latency tables")]
    drawn = figures.progress_figure(run, _batch_size(config))
    blocks += [Image("search-progress.png", *drawn)] if drawn else _not_run(run, "search")
    drawn = figures.training_figure(run.train_log or [])
    blocks += [Image("supernet-training.png", *drawn)] if drawn else _not_run(run, "supernet")
    rows = []
    for meta in run.tables:
        v = meta.get("validation") or {}
        rows.append((str(meta.get("table_id")), str(v.get("samples", "-")),
                     *(f"{100 * v[k]:.1f}%" if isinstance(v.get(k), (int, float)) else "-"
                       for k in ("mape", "within_5", "within_10")),
                     f"{v['kendall_tau']:.3f}" if isinstance(v.get("kendall_tau"), (int, float)) else "-",
                     f"{v['rmse_ms']:.4f}" if isinstance(v.get("rmse_ms"), (int, float)) else "not validated"))
    if rows:
        blocks += [Para("Latency tables, validated on whole networks measured end to end:"),
                   Table(("table", "networks", "MAPE", "within 5%", "within 10%", "Kendall tau", "RMSE ms"),
                         tuple(rows))]
    else:
        blocks += _not_run(run, "tables")
    return blocks


def _verdict_text(model: Model) -> str:
    c = model.constraint
    if not c:
        return "-"
    return f"{c.get('constraint')}: {'met' if c.get('meets_constraint_measured') else 'not met'} (measured)"


def picks_table(run: Run) -> list[Block]:
    blocks: list[Block] = [Heading("Picks")]
    if not run.picks:
        return blocks + _not_run(run, "export")
    models = [m for pick in run.picks for m in (pick, *run.children(pick))]
    labels = sorted({label for m in models for label in (*m.measured, *m.predicted)})
    rows = []
    for m in models:
        loyalty = f"{_pct(m.loyalty[0])} / {_pct(m.loyalty[1])}" if m.loyalty else "-"
        rows.append((m.key, m.variant, accuracy_text(m), loyalty, _num(m.params), _num(m.macs), _num(m.size_bytes),
                     *(f"{_ms(m.predicted.get(label))} / {_ms(m.measured.get(label))}" for label in labels),
                     _verdict_text(m)))
    blocks.append(Table(("key", "variant", "accuracy (95%)", "label / probability loyalty", "params", "MACs",
                         "bytes", *(f"{label} predicted / measured ms" for label in labels), "constraint"),
                        tuple(rows)))
    return blocks


def _versions() -> list[tuple[str, str]]:
    from importlib import metadata

    out = []
    for name in PACKAGES:
        try:
            out.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            out.append((name, "not installed"))
    return out


def _seeds(config: Any, prefix: str = "") -> list[tuple[str, str]]:
    if not isinstance(config, dict):
        return []
    out = []
    for key, value in config.items():
        name = f"{prefix}{key}"
        if key == "seed" and not isinstance(value, dict):
            out.append((name, str(value)))
        out += _seeds(value, name + ".")
    return out


def provenance(run: Run, config: dict[str, Any]) -> list[Block]:
    stages = run.stages["stages"]
    blocks: list[Block] = [Heading("Provenance"), Para(f"Command: {run.stages.get('command', '-')}"),
                           Table(("package", "version"), tuple(_versions()))]
    ids = [str(meta.get("table_id")) for meta in run.tables]
    blocks.append(Para(f"Latency tables: {', '.join(ids) or 'none'}. Seeds: "
                       f"{', '.join(f'{k} = {v}' for k, v in _seeds(config)) or 'none recorded'}."))
    blocks.append(Table(("stage", "input hash"), tuple((name, str((stages.get(name) or {}).get("hash", "-")))
                                                       for name in STAGES if name in stages)))
    blocks += [Para("The resolved config.yaml:"), Pre(run.config_text)] if run.config_text else \
        [Para("config.yaml is missing from the run directory")]
    return blocks


def all_sections(run: Run, config: dict[str, Any]) -> list[Block]:
    found = verdicts(run)
    builders: list[Callable[[], list[Block]]] = [
        lambda: summary(run, found), lambda: planes(run), lambda: predicted_measured(run),
        lambda: references(run, found), lambda: architectures(run), lambda: progress(run, config),
        lambda: picks_table(run), lambda: provenance(run, config)]
    return [block for build in builders for block in build()]
