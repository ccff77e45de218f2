"""Writing an export: `export_model` (a static model, compressed or not, with its spec) and `export_subnet` (a
supernet's subnet, materialized and BatchNorm-recalibrated, then `export_model`), published atomically."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from latency_tables.runtimes import Protocol, get_runtime
from latency_tables.table import LatencyTable
from nas.export.latency import latency_constraint, latency_report, measure, predictions
from nas.export.parity import PARITY_TOLERANCE, compare, parity_failures
from nas.export.runtime_models import (
    DEFAULT_RUNTIMES,
    calibration_inputs,
    convert_model,
    needs_calibration,
    runtimes_for,
)
from nas.export.spec import (
    METRICS_FILE,
    METRICS_FORMAT,
    SPEC_FORMAT,
    WEIGHTS_FILE,
    ParityError,
    Progress,
    Provenance,
    SubnetError,
    SubnetSpec,
    check_data,
    label,
    load_subnet,
    model_file,
    say,
    write_metrics,
)
from nas.objectives import Constraint
from search_spaces import ArchConfig
from search_spaces.errors import HwnasError
from search_spaces.files import follow_umask, fsync_dir, fsync_file, sha256_file

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

    from supernets.data import Dataset
    from supernets.supernet import Supernet



@dataclass(frozen=True)
class ExportOptions:
    """How `export_model` converts, checks and measures.

    Args:
        runtimes: (runtime, precision) models to write; None: `DEFAULT_RUNTIMES`, or with a uniform bit-width plan
            each runtime at the plan's precision.
        tables: latency tables for predicted latency; the first is the one `constraint` is checked on.
        protocol: how runtime models are timed (default: each matching table's protocol).
        parity_images: validation images parity is checked on (None: all).
        calibration_images: training images (chosen by the spec's seed) that calibrate int8 models.
        float_runtimes: runtimes exported at fp32 beside a bit-width plan that another runtime's model runs.
    """

    runtimes: tuple[tuple[str, str], ...] | None = None
    tables: tuple[LatencyTable, ...] = ()
    protocol: Protocol | None = None
    constraint: str | Constraint | None = None
    parity_images: int | None = None
    parity_tolerance: float = PARITY_TOLERANCE
    require_parity: bool = True
    calibration_images: int = 64
    threads: int = 1
    overwrite: bool = False
    #: Runtimes whose model stays fp32 although the spec has a bit-width plan (the plan is another runtime's; this
    #: one runs the same pruned network in float). metrics.json says so per model.
    float_runtimes: tuple[str, ...] = ()


def _hwnas_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hwnas")
    except PackageNotFoundError:
        return "unknown"


def _check_request(spec: SubnetSpec, data: Dataset, out_root: Path, options: ExportOptions) -> None:
    """Everything that can be refused before any work: runtimes, plan, data, tables, constraint, target."""
    models = runtimes_for(spec, options.runtimes, options.float_runtimes)
    check_data(spec.arch, data)
    for table in options.tables:
        table.check(space=spec.space)
    ids = [t.table_id for t in options.tables]
    if len(set(ids)) != len(ids):
        raise HwnasError(f"latency tables {', '.join(ids)} name one table twice")
    c = latency_constraint(options.constraint)
    first = options.tables[0].profile if options.tables else None
    if c is not None and first is not None and label(first.runtime, first.precision) not in \
            {label(*m) for m in models}:
        raise HwnasError(f"constraint {c} is checked on table {options.tables[0].table_id}, whose runtime is not "
                         f"exported ({', '.join(label(*m) for m in models)})")
    if options.calibration_images < 1:
        raise HwnasError(f"calibration_images must be at least 1 (got {options.calibration_images})")
    predictions(spec.arch, options.tables)  # fails on a table lacking a key before any work
    for runtime, _ in models:
        get_runtime(runtime).version()  # RuntimeMissing (naming the extra) before any work
    final = out_root / spec.key
    if final.exists() and not options.overwrite:
        raise SubnetError(f"{final} already exists; pass overwrite=True to replace it (nothing was changed)")


def _write_files(model: nn.Module, spec: SubnetSpec, data: Dataset, tmp: Path, models: Sequence[tuple[str, str]],
                 options: ExportOptions, progress: Progress | None) -> SubnetSpec:
    """Weights and runtime models into `tmp`, then spec.json recording them; returns that spec."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": SPEC_FORMAT, "arch_key": spec.arch.key})
    calibration: list[np.ndarray] = []
    if needs_calibration(models):
        say(progress, f"calibrating int8 on {options.calibration_images} training images")
        calibration = calibration_inputs(data, spec.arch, options.calibration_images, spec.provenance.seed)
    for runtime, precision in models:
        name = model_file(runtime, precision)
        say(progress, f"converting to {runtime} {precision} ({name})")
        convert_model(model, spec, runtime, precision, tmp / name, calibration)
    files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
    provenance = dataclasses.replace(spec.provenance, calibration_images=len(calibration))
    spec = dataclasses.replace(spec, provenance=provenance, models=tuple(models), files=files)
    spec.save(tmp)
    return spec


def _first_metrics(model: nn.Module, spec: SubnetSpec, data: Dataset, options: ExportOptions,
                   accuracy: float | None, extra: Mapping[str, Any] | None) -> dict[str, Any]:
    from latency_tables.analytic import AnalyticCostModel
    from supernets.evaluation import accuracy as top1

    plan = spec.bitwidth_plan
    if plan is not None and plan.simulated_in(spec.arch):
        plan = None  # runtimes run the float network; the simulated plan's sizes are its compression's figures
    cost = AnalyticCostModel(plan.default if plan else "fp32").estimate(spec.arch, dict(plan.layers) if plan else None)
    metrics: dict[str, Any] = {
        "format": METRICS_FORMAT, "key": spec.key, "arch": spec.arch.to_str(),
        "accuracy": {"top1": top1(model, data.val, spec.arch.resolution, spec.mean, spec.std), "split": "val",
                     "images": len(data.val), "dataset": data.name, "runtime": "torch"},
        "cost": cost.to_dict()}
    metrics["cost"]["latency_ms"] = {tid: p["latency_ms"] for tid, p in predictions(spec.arch, options.tables).items()}
    if accuracy is not None:
        metrics["accuracy"]["search_accuracy"] = float(accuracy)
    if extra:
        metrics["extra"] = dict(extra)
    return metrics


def export_model(model: nn.Module, spec: SubnetSpec, data: Dataset, out_root: str | Path,
                 options: ExportOptions = ExportOptions(), *, accuracy: float | None = None,
                 extra_metrics: Mapping[str, Any] | None = None, progress: Progress | None = None,
                 extra_files: Callable[[dict[str, Any], Path], Mapping[str, str]] | None = None) -> Path:
    """Export the static model `model` of `spec.arch` (its weights as they are: trained, pruned, recalibrated) to
    `out_root/<spec.key>/` and return that path (see `nas.export`).

    Each runtime model is converted from it (int8 calibrated on training images of `data`), checked for parity
    on the validation split by its precision's criterion (`nas.export.parity.PARITY`), and timed. When parity
    fails and `options.require_parity` is set, nothing is published: the finished directory is kept as
    `<key>.parity-failed/` and a `ParityError` says what differs. An existing export is replaced only with
    `options.overwrite`, and is kept until the new one is in place. `extra_files`, given the finished metrics and
    the directory being written, returns more text files (name -> text) to write beside them, so that they appear
    with the export or not at all."""
    out_root = Path(out_root)
    if getattr(model, "arch", None) != spec.arch:
        raise HwnasError(f"export_model takes the static model of the spec's architecture {spec.arch.key} "
                         f"(build_model / Supernet.materialize); got a {type(model).__name__}")
    _check_request(spec, data, out_root, options)
    models = runtimes_for(spec, options.runtimes, options.float_runtimes)
    key = spec.key
    out_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", suffix=".tmp", dir=out_root))
    try:
        spec = _write_files(model.eval(), spec, data, tmp, models, options, progress)
        loaded, spec = load_subnet(tmp)  # what is measured and compared is what was written
        say(progress, "validation accuracy (PyTorch)")
        metrics = _first_metrics(loaded, spec, data, options, accuracy, extra_metrics)
        parity = compare(loaded, tmp, spec, data, models, images=options.parity_images,
                         tolerance=options.parity_tolerance, threads=options.threads, progress=progress)
        metrics["parity"] = parity
        if options.require_parity and not parity["passed"]:
            write_metrics(tmp, metrics)
            failed = out_root / f"{key}.parity-failed"
            shutil.rmtree(failed, ignore_errors=True)
            follow_umask(tmp)
            tmp.rename(failed)
            raise ParityError(f"subnet {key} was not exported: its runtime models disagree with PyTorch: "
                              + " | ".join(parity_failures(parity)) + f". The files are kept in {failed}")
        measured = measure(tmp, spec, models, options.protocol, options.tables, progress)
        metrics["latency"] = latency_report(spec.arch, measured, options.tables,
                                            latency_constraint(options.constraint))
        write_metrics(tmp, metrics)
        for name, text in (extra_files(metrics, tmp) if extra_files is not None else {}).items():
            if Path(name).name != name or name in (spec.files or {}) or name == METRICS_FILE:
                raise HwnasError(f"extra file name {name!r} must be a plain file name other than the export's own")
            (tmp / name).write_text(text, encoding="utf-8")
        final = publish(tmp, out_root / key)
        shutil.rmtree(out_root / f"{key}.parity-failed", ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    say(progress, f"exported {final}")
    return final


def publish(tmp: Path, final: Path) -> Path:
    """Put the finished directory `tmp` in place as `final`, durably: its files and entries are flushed first, and
    an older export at `final` is moved aside and removed only once the new one is in place (after a crash
    between the two renames, the next publish puts the older one back before anything is removed). The directory
    and its files get the modes the umask gives (the temporary directory was private)."""
    follow_umask(tmp)
    for path in tmp.iterdir():
        if path.is_file():
            fsync_file(path)
    fsync_dir(tmp)
    old = final.with_name(f".{final.name}.old")
    if old.exists() and not final.exists():  # an interrupted publish: `old` is the only complete copy
        old.rename(final)
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)
    return final


def export_subnet(net: Supernet, arch: ArchConfig, data: Dataset, out_root: str | Path, *, recal_images: int,
                  seed: int, runtimes: Sequence[tuple[str, str]] = DEFAULT_RUNTIMES,
                  tables: Sequence[LatencyTable] = (), accuracy: float | None = None,
                  protocol: Protocol | None = None, extra_metrics: Mapping[str, Any] | None = None,
                  constraint: str | Constraint | None = None, supernet_sha256: str | None = None,
                  parity_images: int | None = None, parity_tolerance: float = PARITY_TOLERANCE,
                  require_parity: bool = True, overwrite: bool = False,
                  progress: Progress | None = None) -> Path:
    """Export subnet `arch` of `net` to `out_root/<arch.key>/` with `export_model`, after materializing it and
    recalibrating its BatchNorm statistics on `recal_images` training images of `data` chosen by `seed`
    (`supernets.evaluation`). `accuracy`, when given, is recorded as `search_accuracy` (what the search saw); the
    other keywords are `ExportOptions`' fields."""
    import torch

    from supernets.evaluation import recalibrate_bn, recalibration_images

    net.space.validate(arch)
    check_data(arch, data)
    if recal_images < 1:
        raise HwnasError(f"recal_images must be at least 1 (got {recal_images})")
    options = ExportOptions(runtimes=tuple(runtimes), tables=tuple(tables), protocol=protocol, constraint=constraint,
                            parity_images=parity_images, parity_tolerance=parity_tolerance,
                            require_parity=require_parity, overwrite=overwrite)
    provenance = Provenance(supernet_sha256, data.name, seed, min(recal_images, len(data.train)),
                            tuple(t.table_id for t in tables), _hwnas_version(), str(torch.__version__))
    spec = SubnetSpec(arch, net.space.name, data.mean, data.std, provenance)
    _check_request(spec, data, Path(out_root), options)
    say(progress, f"materializing {arch.key} and recalibrating BatchNorm on {recal_images} training images")
    model = net.materialize(arch)
    recalibrate_bn(model, recalibration_images(data, arch.resolution, recal_images, seed))
    return export_model(model, spec, data, out_root, options, accuracy=accuracy, extra_metrics=extra_metrics,
                        progress=progress)


def export_from_run(run_dir: str | Path, arch: ArchConfig, out_root: str | Path, *, data: Dataset | None = None,
                    recal_images: int | None = None, seed: int | None = None, **kwargs: Any) -> Path:
    """`export_subnet` for a trained supernet's run directory: its weights (sha256 recorded), its dataset and
    recipe's BN recalibration images and seed unless given. Other keywords go to `export_subnet`."""
    from supernets.training import load_run

    run = load_run(run_dir)
    return export_subnet(run.net, arch, run.dataset() if data is None else data, out_root,
                         recal_images=recal_images or run.config.bn_recal_images,
                         seed=run.config.seed if seed is None else seed,
                         supernet_sha256=run.meta.get("weights_sha256"), **kwargs)
