"""The report's figures: each a data function (tested on its numbers) and a drawing that returns PNG bytes.

Drawn with matplotlib's object API on an Agg canvas (`Figure` + `FigureCanvasAgg`), so no backend or rcParams
of the process is changed.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from nas.report.run import Model, Run, Trial

#: Block family -> colour (fixed, so every report reads the same).
FAMILY_COLOURS = {"mbv2": "#4c72b0", "mbv3": "#dd8452", "effnet": "#55a868", "fused": "#c44e52",
                  "shufflev2": "#8172b3"}
#: Precision -> colour of the kept-channel bars.
PRECISION_COLOURS = {"fp32": "#4c72b0", "fp16": "#55a868", "int8": "#dd8452"}
_SIMULATED_COLOUR = "#8c8c8c"
DPI = 100
#: Default trials per batch when a trial records none.
DEFAULT_BATCH = 10


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------ accuracy-latency plane


def trial_table(run: Run, runtime: str) -> dict[str, Any] | None:
    """The meta.json of the run's fp32 table for `runtime` that prices the trials on that plane (None: none)."""
    for meta in run.tables:
        profile = meta.get("profile") or {}
        if profile.get("runtime") == runtime and profile.get("precision") == "fp32":
            return meta
    return None


def _trial_latencies(run: Run, runtime: str) -> list[tuple[float, float, bool]]:
    """(predicted ms on `runtime`'s table, accuracy, feasible) of every finished trial."""
    meta = trial_table(run, runtime)
    if meta is None or not run.trials:
        return []
    table_id = str(meta.get("table_id"))
    first = run.tables[0].get("table_id") == table_id
    table = None
    out = []
    for t in run.trials:
        acc = t.attrs.get("accuracy")
        if t.values is None or acc is None:
            continue
        latency = t.attrs.get(f"latency_ms@{table_id}", t.attrs.get("latency_ms") if first else None)
        if latency is None and t.attrs.get("arch"):
            if table is None:
                from latency_tables.table import LatencyTable

                table = LatencyTable.load(meta["path"])
            from search_spaces import ArchConfig

            latency = table.predict_arch(ArchConfig.from_str(t.attrs["arch"]), estimate_missing=True)
        if latency is not None:
            out.append((float(latency), float(acc), t.feasible))
    return out


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other is faster and at least as accurate than (or as fast and more accurate), by latency."""
    from nas.objectives import pareto_mask

    if not points:
        return []
    p = np.array([(lat, -acc) for lat, acc in points])
    return sorted((lat, -neg) for lat, neg in p[pareto_mask(p)])


def plane_points(run: Run, runtime: str) -> dict[str, list[tuple[float, float]]]:
    """The (latency ms, accuracy) points of the plane of `runtime`: trials at the table's predicted latency, their
    Pareto front, and picks, compressed picks and references (fp32, compressed) at their measured latency."""
    trials = _trial_latencies(run, runtime)
    out: dict[str, list[tuple[float, float]]] = {"trials": [(lat, acc) for lat, acc, _ in trials]}
    out["front"] = pareto_front(out["trials"])
    groups = {"picks": run.picks, "compressed": run.compressed,
              "references": [r for r in run.references if r.variant != "compressed"],
              "references_compressed": [r for r in run.references if r.variant == "compressed"]}
    for name, models in groups.items():
        out[name] = [(m[1], model.accuracy) for model in models if (m := model.latency_on(runtime)) is not None]
    return out


def _error_bars(ax: Any, models: Sequence[Model], runtime: str, **style: Any) -> None:
    shown = [(m, lat[1]) for m in models if (lat := m.latency_on(runtime)) is not None]
    if not shown:
        return
    x = [ms for _, ms in shown]
    y = [100 * m.accuracy for m, _ in shown]
    low = [100 * (m.accuracy - m.interval[0]) for m, _ in shown]
    high = [100 * (m.interval[1] - m.accuracy) for m, _ in shown]
    ax.errorbar(x, y, yerr=[low, high], fmt="none", ecolor=style.pop("ecolor", "black"), elinewidth=1, capsize=3,
                zorder=3)
    ax.scatter(x, y, zorder=4, **style)


def _focus(ax: Any, points: dict[str, list[tuple[float, float]]], run: Run, runtime: str) -> int:
    """Cut the accuracy axis below the models' intervals and the upper three quarters of the trials, so that a few
    collapsed trials do not squeeze the picks together; returns how many trials are left out."""
    lows = [m.interval[0] for m in run.picks + run.compressed + run.references if m.latency_on(runtime)]
    accs = [acc for _, acc in points["trials"]]
    if not accs:
        return 0
    floor = min(lows + [float(np.percentile(accs, 25))])
    top = max([acc for _, acc in points["trials"]] + [m.interval[1] for m in run.picks + run.compressed
                                                     + run.references if m.latency_on(runtime)])
    pad = 0.05 * (top - floor) + 0.002
    ax.set_ylim(100 * (floor - pad), 100 * (top + pad))
    return sum(acc < floor - pad for acc in accs)


def plane_figure(run: Run, runtime: str) -> tuple[bytes, str]:
    """The accuracy-latency plane of `runtime` (PNG, caption)."""
    points = plane_points(run, runtime)
    fig = _figure(8, 5.2)
    ax = fig.add_subplot()
    if points["trials"]:
        x, y = zip(*points["trials"], strict=True)
        ax.scatter(x, [100 * a for a in y], s=10, c="#b0b0b0", label="trials (table-predicted latency)", zorder=1)
        fx, fy = zip(*points["front"], strict=True)
        ax.step(fx, [100 * a for a in fy], where="post", c="#707070", lw=1, label="Pareto front of the trials")
    _error_bars(ax, run.picks, runtime, s=40, c="#1f77b4", marker="o", label="picks (measured)")
    _error_bars(ax, run.compressed, runtime, s=55, c="#d62728", marker="*", ecolor="#d62728",
                label="compressed picks (measured)")
    for child in run.compressed:
        parent = next((p for p in run.picks if p.key == child.parent), None)
        a, b = (parent.latency_on(runtime) if parent else None), child.latency_on(runtime)
        if parent is not None and a is not None and b is not None:
            ax.annotate("", xy=(b[1], 100 * child.accuracy), xytext=(a[1], 100 * parent.accuracy),
                        arrowprops={"arrowstyle": "->", "color": "#d62728", "lw": 1}, zorder=2)
    refs = [r for r in run.references if r.variant != "compressed"]
    refs_c = [r for r in run.references if r.variant == "compressed"]
    _error_bars(ax, refs, runtime, s=50, c="#2ca02c", marker="s", label="references fp32 (measured)")
    _error_bars(ax, refs_c, runtime, s=50, c="#9467bd", marker="D", label="references compressed (measured)")
    for ref in refs + refs_c:
        lat = ref.latency_on(runtime)
        if lat is not None:
            ax.annotate(ref.name + (" (c)" if ref.variant == "compressed" else ""), (lat[1], 100 * ref.accuracy),
                        textcoords="offset points", xytext=(5, -10), fontsize=7)
    hidden = _focus(ax, points, run, runtime)
    ax.set_xlabel(f"latency on {runtime} (ms)")
    ax.set_ylabel("validation accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3, frameon=False)
    meta = trial_table(run, runtime)
    priced = (f"trials are priced by table {(meta or {}).get('table_id')} (predicted latency); only picks and "
              f"references are measured" if points["trials"] else
              "no trials priced on this runtime (no fp32 table for it)")
    shown = {k: len(v) for k, v in points.items()}
    caption = (f"Accuracy against latency on {runtime}: {shown['trials']} trials, {shown['front']} on their Pareto "
               f"front, {shown['picks']} picks, {shown['compressed']} compressed picks (arrows from their parents), "
               f"{shown['references']} references and {shown['references_compressed']} compressed references, "
               f"each model at its own precision; {priced}"
               + (f"; {hidden} trials less accurate than the axis shows are left out" if hidden else "")
               + ". Error bars: 95% Wilson intervals on the validation images.")
    return _png(fig), caption


# ------------------------------------------------------------------------------- predicted against measured


def latency_pairs(run: Run) -> list[tuple[str, str, str, float, float]]:
    """(kind, name, runtime:precision, predicted ms, measured ms) of every model with both on one runtime model."""
    out = []
    for model in run.picks + run.compressed + run.references:
        for label, predicted in sorted(model.predicted.items()):
            if label in model.measured:
                out.append((model.kind, model.name, label, predicted, model.measured[label]))
    return out


def latency_figure(run: Run) -> tuple[bytes, str] | None:
    pairs = latency_pairs(run)
    if not pairs:
        return None
    fig = _figure(6, 5)
    ax = fig.add_subplot()
    markers = {"pick": "o", "compressed": "*", "reference": "s"}
    plural = {"pick": "picks", "compressed": "compressed picks", "reference": "references"}
    labels = sorted({p[2] for p in pairs})
    colours = {label: f"C{i}" for i, label in enumerate(labels)}
    for kind, marker in markers.items():
        for label in labels:
            sel = [(p[3], p[4]) for p in pairs if p[0] == kind and p[2] == label]
            if sel:
                x, y = zip(*sel, strict=True)
                ax.scatter(x, y, marker=marker, c=colours[label], s=45, label=f"{plural[kind]}, {label}", zorder=3)
    top = 1.15 * max(max(p[3], p[4]) for p in pairs)
    line = np.array([0.0, top])
    ax.plot(line, line, c="black", lw=1, label="measured = predicted")
    ax.fill_between(line, line / 1.1, line / 0.9, color="#999999", alpha=0.25, label="+-10% of measured")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("predicted latency (ms, table)")
    ax.set_ylabel("measured latency (ms)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    inside = sum(abs(p[3] - p[4]) <= 0.1 * p[4] for p in pairs)
    caption = (f"Predicted (latency table) against measured latency: {inside} of {len(pairs)} "
               f"({100 * inside / len(pairs):.0f}%) within +-10% of the measurement.")
    return _png(fig), caption


# ------------------------------------------------------------------------------------------- architectures


def _draw_arch(ax: Any, arch_text: str) -> None:
    from matplotlib.patches import Rectangle

    from search_spaces import ArchConfig

    arch = ArchConfig.from_str(arch_text)
    widest = max([b.out_channels for stage in arch.stages for b in stage] + [arch.stem.channels])
    x, gap = 0.0, 0.25
    ax.add_patch(Rectangle((x, 0), 0.5, 1, fc="#dddddd", ec="black", lw=0.5))
    ax.text(x + 0.25, 0.5, f"stem c{arch.stem.channels}", rotation=90, ha="center", va="center", fontsize=7)
    x += 0.5 + gap
    for s, stage in enumerate(arch.stages):
        start = x
        for block in stage:
            width = 0.35 + 0.9 * block.out_channels / widest
            ax.add_patch(Rectangle((x, 0), width, 1, fc=FAMILY_COLOURS.get(block.family, "#bbbbbb"), ec="black",
                                   lw=0.5))
            stride = " s2" if block.stride == 2 else ""
            ax.text(x + width / 2, 0.5, f"k{block.kernel} e{block.expand:g}\nc{block.out_channels}{stride}",
                    rotation=90, ha="center", va="center", fontsize=6.5, color="white")
            x += width + 0.05
        ax.text((start + x) / 2, 1.06, f"s{s}", ha="center", va="bottom", fontsize=7)
        x += gap
    ax.add_patch(Rectangle((x, 0), 0.5, 1, fc="#dddddd", ec="black", lw=0.5))
    ax.text(x + 0.25, 0.5, f"head c{arch.head.channels}", rotation=90, ha="center", va="center", fontsize=7)
    ax.set_xlim(-0.1, x + 0.6)
    ax.set_ylim(-0.05, 1.25)
    ax.axis("off")


def kept_channels(compressed: Model, parent_arch: str) -> list[tuple[str, int, int, str]]:
    """(layer id, kept output channels, parent's output channels, precision) of each layer of a compressed pick,
    from its spec.json's prune_plan and bitwidth_plan."""
    from search_spaces import ArchConfig
    from search_spaces.plans import BitWidthPlan, PrunePlan, channel_groups, layer_groups

    spec = compressed.spec or {}
    prune = PrunePlan.from_dict(spec["prune_plan"]) if spec.get("prune_plan") else None
    bits = BitWidthPlan.from_dict(spec["bitwidth_plan"]) if spec.get("bitwidth_plan") else None
    arch = ArchConfig.from_str(parent_arch)
    widths = channel_groups(arch)
    out = []
    for layer, groups in layer_groups(arch).items():
        if groups.outputs is None or groups.outputs not in widths:
            continue
        total = widths[groups.outputs]
        kept = prune.width(groups.outputs, total) if prune is not None else total
        out.append((layer, kept, total, bits.precision_of(layer) if bits is not None else "fp32"))
    return out


def _draw_kept(ax: Any, rows: list[tuple[str, int, int, str]]) -> None:
    from matplotlib.patches import Patch

    colours = [PRECISION_COLOURS.get(p, _SIMULATED_COLOUR) for _, _, _, p in rows]
    ax.bar(range(len(rows)), [k / t for _, k, t, _ in rows], color=colours, width=0.8)
    ax.set_xticks(range(len(rows)), [r[0] for r in rows], rotation=90, fontsize=6)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("kept / parent channels", fontsize=8)
    used = list(dict.fromkeys(p for _, _, _, p in rows))
    ax.legend(handles=[Patch(color=PRECISION_COLOURS.get(p, _SIMULATED_COLOUR), label=p) for p in used],
              fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), title="precision", title_fontsize=7)
    ax.grid(axis="y", alpha=0.3)


def arch_figure(pick: Model, children: Sequence[Model]) -> tuple[bytes, str]:
    """A pick drawn stage by stage, and below it each compressed version's kept channels and precision per layer."""
    from matplotlib.patches import Patch

    kept = [(child, kept_channels(child, pick.arch or "")) for child in children if child.spec]
    fig = _figure(10, 2.4 + 3.2 * len(kept))
    axes = fig.subplots(1 + len(kept), 1, squeeze=False, height_ratios=[2.4] + [3.2] * len(kept))[:, 0]
    _draw_arch(axes[0], pick.arch or "")
    axes[0].set_title(f"pick {pick.key}", fontsize=9)
    families = list(FAMILY_COLOURS)
    axes[0].legend(handles=[Patch(color=FAMILY_COLOURS[f], label=f) for f in families], fontsize=7, ncol=len(families),
                   loc="upper center", bbox_to_anchor=(0.5, 0.0), frameon=False)
    for ax, (child, rows) in zip(axes[1:], kept, strict=True):
        _draw_kept(ax, rows)
        ax.set_title(f"compressed {child.key}: kept output channels per layer, bar colour = precision", fontsize=9)
    caption = (f"Pick {pick.key} stage by stage (box width grows with output channels; k kernel, e expansion, "
               f"c channels, s2 stride 2)" + ("; below, the kept channels and precision per layer of "
                                              f"{len(kept)} compressed version(s)" if kept else "") + ".")
    return _png(fig), caption


# -------------------------------------------------------------------------------------------- search progress


def _batches(trials: Sequence[Trial], batch_size: int) -> dict[int, list[Trial]]:
    out: dict[int, list[Trial]] = {}
    for t in trials:
        out.setdefault(t.batch if t.batch >= 0 else t.number // batch_size, []).append(t)
    return dict(sorted(out.items()))


def progress_points(run: Run, batch_size: int = DEFAULT_BATCH) -> list[tuple[int, float | None, float | None]]:
    """(batch, best feasible value of the first objective so far, hypervolume of the feasible trials so far; None
    for a single objective) per batch of the study's trials."""
    from nas.objectives import Objective, hypervolume, minimised
    from nas.search import hv_reference

    if not run.trials or not run.objectives:
        return []
    objectives = [Objective.parse(o) for o in run.objectives]
    from nas.objectives import Constraint

    constraints = [Constraint.parse(c) for c in run.constraints]
    done = [t for t in run.trials if t.values is not None and len(t.values) == len(objectives)]
    if not done:
        return []
    columns = {o.metric: np.array([t.values[i] for t in done if t.values]) for i, o in enumerate(objectives)}
    reference = hv_reference(objectives, constraints, columns) if len(objectives) > 1 else None
    out: list[tuple[int, float | None, float | None]] = []
    seen: list[Trial] = []
    for batch, trials in _batches(done, batch_size).items():
        seen += trials
        feasible = [t for t in seen if t.feasible and t.values]
        first = [t.values[0] for t in feasible if t.values]
        best = (max(first) if objectives[0].direction == "max" else min(first)) if first else None
        hv = None
        if reference is not None and feasible:
            cols = {o.metric: np.array([t.values[i] for t in feasible if t.values]) for i, o in enumerate(objectives)}
            hv = hypervolume(minimised(cols, objectives), reference)
        out.append((batch, best, hv))
    return out


def progress_figure(run: Run, batch_size: int = DEFAULT_BATCH) -> tuple[bytes, str] | None:
    points = progress_points(run, batch_size)
    if not points:
        return None
    fig = _figure(7, 3.6)
    ax = fig.add_subplot()
    batches = [p[0] for p in points]
    metric = run.objectives[0].split(":")[0]
    handles = ax.plot(batches, [np.nan if p[1] is None else p[1] for p in points], marker="o", c="C0",
                      drawstyle="steps-post", label=f"best feasible {metric} so far")
    ax.set_xlabel("batch")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    _integer_ticks(ax)
    if any(p[2] is not None for p in points):
        ax2 = ax.twinx()
        handles += ax2.plot(batches, [np.nan if p[2] is None else p[2] for p in points], marker="s", c="C1",
                            drawstyle="steps-post", label="hypervolume of the feasible trials")
        ax2.set_ylabel("hypervolume")
    ax.legend(handles=handles, fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
    last = points[-1]
    caption = (f"Search progress over {len(points)} batches of {len(run.trials or [])} trials: the best feasible "
               f"{run.objectives[0]} so far ({'none feasible' if last[1] is None else f'{last[1]:.4g}'} at the end)"
               + (f" and the hypervolume of the feasible trials ({last[2]:.4g} at the end)" if last[2] is not None
                  else "") + ".")
    return _png(fig), caption


def _integer_ticks(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def training_figure(rows: Sequence[dict[str, Any]]) -> tuple[bytes, str] | None:
    """The supernet's loss and largest / smallest subnet accuracy per epoch, its phases shaded."""
    if not rows:
        return None
    fig = _figure(8, 3.6)
    ax_loss, ax_acc = fig.subplots(1, 2)
    epochs = [int(r["epoch"]) for r in rows]
    ax_loss.plot(epochs, [r.get("loss", np.nan) for r in rows], marker=".", c="C0")
    ax_loss.set_ylabel("training loss")
    for name, colour in (("acc_largest", "C2"), ("acc_smallest", "C3")):
        sel = [(r["epoch"], 100 * r[name]) for r in rows if r.get(name) is not None]
        if sel:
            x, y = zip(*sel, strict=True)
            ax_acc.plot(x, y, marker="o", c=colour, label=name.replace("acc_", "") + " subnet")
    ax_acc.set_ylabel("validation accuracy (%)")
    if ax_acc.get_legend_handles_labels()[0]:
        ax_acc.legend(fontsize=7)
    phases: list[tuple[str, int, int]] = []
    for epoch, row in zip(epochs, rows, strict=True):
        phase = str(row.get("phase", ""))
        if phases and phases[-1][0] == phase:
            phases[-1] = (phase, phases[-1][1], epoch)
        else:
            phases.append((phase, epoch, epoch))
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        _integer_ticks(ax)
        for i, (phase, start, end) in enumerate(phases):
            ax.axvspan(start - 0.5, end + 0.5, color="#000000", alpha=0.04 if i % 2 else 0.0)
            if len(phases) > 1:  # short phases side by side: their names alternate between two heights
                ax.text((start + end) / 2, 1.01 + 0.06 * (i % 2), phase, transform=ax.get_xaxis_transform(),
                        ha="center", va="bottom", fontsize=7)
    caption = (f"Supernet training over {len(rows)} epochs ({', '.join(p[0] for p in phases) or 'one phase'}; "
               f"phases shaded alternately).")
    return _png(fig), caption
