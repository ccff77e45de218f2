"""`hwnas run CONFIG`: the whole pipeline from one YAML file, in one run directory, resumable.

Stages, in order: ``supernet`` (train with a recipe, or reuse a trained run), ``tables`` (shipped, table
directories, build, or import a device kit's results), ``search`` (an Optuna study in RUN/study.db), ``export``
(the picks re-measured on the runtimes and exported to RUN/subnets/), ``compress`` (the best picks compressed to
RUN/compressed/), ``references`` (hand-designed networks scaled to the data, trained alone and measured like a
pick, or their measurements read from a shipped file) and ``report`` (RUN/report.html, RUN/report.md).

The config is checked whole before anything is written: an unknown key, a wrong type or an unknown name is a
`HwnasError` naming the key, the value and what is allowed, and the run directory is left untouched. The resolved
config (every default filled in, the training recipe inlined) is saved as RUN/config.yaml.

Each stage records in RUN/stages.json the hash of what it was given (its resolved section, the files it reads and
the hashes of the stages it depends on), its status and its outputs. Run again, and a finished stage whose hash
is unchanged is skipped; a stage cut off (status ``running`` or ``failed``) is resumed: training from its last
checkpoint, the search from its study, compression pick by pick; a stage whose inputs changed runs again, and so
does everything that depends on it. Outputs a stage replaces are moved to RUN/superseded/, never deleted.
The stage functions are the library's (`SupernetTrainer`, `Search`, `export_from_run`, `compress_subnet`, ...),
not the command line.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from search_spaces import HwnasError
from search_spaces.files import atomic_write_text

Log = Callable[[str], None]

#: The stages in the order they run, and the stages each one's inputs come from.
STAGES = ("supernet", "tables", "search", "export", "compress", "references", "report")
DEPENDS: dict[str, tuple[str, ...]] = {
    "supernet": (), "tables": (), "search": ("supernet", "tables"), "export": ("search",),
    "compress": ("export", "supernet"), "references": ("tables",),
    "report": ("supernet", "tables", "search", "export", "compress", "references"),
}
STAGES_FILE = "stages.json"
CONFIG_FILE = "config.yaml"
DATASETS = ("mnist5k", "digits", "cifar10", "cifar100", "imagefolder")
TABLE_SOURCES = ("shipped", "dirs", "build", "kit")
REFERENCE_SOURCES = ("shipped", "train", "none")
COMPRESS_METHODS = ("joint", "sequential", "prune", "quantize", "none")


class ConfigError(HwnasError):
    """A run config that cannot be used: names the key, the value and what is allowed."""


# ---------------------------------------------------------------------------------------------- the config


@dataclass(frozen=True)
class DataSection:
    """The dataset every stage uses."""

    dataset: str = "mnist5k"
    data_path: Union[str, None] = None  # noqa: UP007 (the type checker of `_build` reads these annotations)


@dataclass(frozen=True)
class SupernetSection:
    """Train a supernet with `recipe` (a YAML file of `hwnas supernet train --config`, or the recipe itself as a
    mapping; None: the built-in default), or `reuse` a trained run directory."""

    recipe: Union[str, dict, None] = None  # noqa: UP007
    reuse: Union[str, None] = None  # noqa: UP007


@dataclass(frozen=True)
class TablesSection:
    """Latency tables: `shipped` (this machine's, one per `runtimes` entry RUNTIME:PRECISION), `dirs` (table
    directories in `paths`), `build` (measured here into RUN/tables/, resumable) or `kit` (a device kit's
    results in `paths`, imported into RUN/tables/). The first table is the one the search's latency is on."""

    source: str = "shipped"
    runtimes: tuple[str, ...] = ("ort:fp32", "litert:fp32")
    paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class SearchSection:
    """The search (as `hwnas search`): strategy and its options, objectives, constraints, budget, picks, and what
    ranks the measured subnets (`rank_by`: val_loss or accuracy, `nas.search.RANK_SIGNALS`)."""

    strategy: str = "evolution"
    options: dict = field(default_factory=dict)
    objectives: tuple[str, ...] = ("accuracy",)
    constraints: tuple[str, ...] = ()
    budget: int = 100
    batch: int = 10
    picks: int = 3
    predictor: Union[str, None] = None  # noqa: UP007
    val_images: Union[int, None] = None  # noqa: UP007
    recal_images: Union[int, None] = None  # noqa: UP007
    study: str = "search"
    storage: Union[str, None] = None  # noqa: UP007
    rank_by: str = "val_loss"


@dataclass(frozen=True)
class ExportSection:
    """The picks exported (the best `top` of them; None: all) and re-measured on every runtime."""

    top: Union[int, None] = None  # noqa: UP007


@dataclass(frozen=True)
class CompressSection:
    """Compression of the best `picks` picks (method `none`: no compression stage). A constraint's bound may be
    relative, `latency_ms<=0.67x` (of the subnet's own latency on `table`), `size_bytes<=0.2x` (of its fp32
    weights) or `macs<=0.5x`. `options` are further `CompressConfig` fields (e.g. max_steps, candidates)."""

    method: str = "joint"
    constraints: tuple[str, ...] = ("latency_ms<=0.67x", "size_bytes<=0.2x")
    table: Union[str, None] = None  # noqa: UP007
    epochs: int = 1
    picks: int = 1
    teacher: str = "largest"
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ReferencesSection:
    """Hand-designed networks on the same data and runtimes: `train` them here (scaled to the data, trained alone
    with the recipe for `epochs`, default the recipe's, and compressed by the compression stage when `compress`),
    read their measurements from a `shipped` file, or `none`. `predict`: price them with the run's tables too,
    measuring their keys off the tables' grid on demand (the predicted-against-measured picture)."""

    names: tuple[str, ...] = ("mobilenet_v2", "mobilenet_v3_small", "shufflenet_v2_x0_5", "efficientnet_b0")
    source: str = "shipped"
    file: str = "configs/references-mnist5k.json"
    epochs: Union[int, None] = None  # noqa: UP007
    compress: bool = True
    predict: bool = True


@dataclass(frozen=True)
class ReportSection:
    """The report (RUN/report.html and RUN/report.md)."""

    enabled: bool = True


@dataclass(frozen=True)
class RunConfig:
    """A whole `hwnas run` config."""

    name: str = "run"
    run_dir: Union[str, None] = None  # noqa: UP007 (default runs/<name>)
    stages: tuple[str, ...] = STAGES  # the stages this config runs (the others are off; what they need must exist)
    seed: int = 0
    threads: int = 1
    progress: bool = True
    data: DataSection = DataSection()
    supernet: SupernetSection = SupernetSection()
    tables: TablesSection = TablesSection()
    search: SearchSection = SearchSection()
    export: ExportSection = ExportSection()
    compress: CompressSection = CompressSection()
    references: ReferencesSection = ReferencesSection()
    report: ReportSection = ReportSection()

    def to_dict(self) -> dict[str, Any]:
        return _plain(asdict(self))


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively (YAML and JSON)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _type_name(kind: Any) -> str:
    if get_origin(kind) is Union:
        return " or ".join(_type_name(k) for k in get_args(kind))
    if get_origin(kind) is tuple:
        return f"a list of {_type_name(get_args(kind)[0]).removeprefix('a ').removeprefix('an ')}s"
    return {type(None): "null", tuple: "a list", dict: "a mapping", str: "a string", int: "an integer",
            float: "a number", bool: "true/false"}.get(kind, getattr(kind, "__name__", str(kind)))


def _build(cls: type, data: Any, where: str) -> Any:
    """`cls` from the mapping `data` at config path `where`, every key and type checked."""
    from nas.strategies.options import fits

    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'the config'} must be a mapping of keys; got {data!r}")
    hints = get_type_hints(cls)
    allowed = [f.name for f in fields(cls)]
    unknown = [k for k in data if k not in allowed]
    if unknown:
        raise ConfigError(f"unknown key {where + '.' if where else ''}{unknown[0]}; allowed "
                          f"{'in ' + where if where else 'at the top'}: {', '.join(allowed)}")
    values: dict[str, Any] = {}
    for name, value in data.items():
        kind, path = hints[name], f"{where}.{name}" if where else name
        if hasattr(kind, "__dataclass_fields__"):
            values[name] = _build(kind, value, path)
            continue
        if not fits(value, kind):
            raise ConfigError(f"{path}: {value!r} is not {_type_name(kind)}")
        values[name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


def _choice(path: str, value: Any, allowed: Sequence[Any]) -> None:
    if value not in allowed:
        raise ConfigError(f"{path}: {value!r} is not allowed; allowed: {', '.join(map(str, allowed))}")


def _positive(path: str, value: int | None, low: int = 1) -> None:
    if value is not None and value < low:
        raise ConfigError(f"{path}: {value} must be at least {low}")


def load_config(path: str | Path) -> tuple[RunConfig, Path]:
    """The checked config of YAML file `path`, and the directory its relative paths are read from (the working
    directory, as on the command line: `hwnas run configs/quickstart.yaml` from the repository root)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {' '.join(str(err).split())}") from None
    config = _build(RunConfig, data, "")
    check_config(config)
    return config, Path.cwd()


def check_config(config: RunConfig) -> None:
    """Values a type cannot check: names, choices, counts; the strategy's options and the budget texts."""
    from nas.objectives import parse_constraints, parse_objectives
    from nas.search import RANK_SIGNALS
    from nas.strategies import STRATEGY_NAMES, strategy_config
    from search_spaces import REFERENCES

    for i, stage in enumerate(config.stages):
        _choice(f"stages[{i}]", stage, STAGES)
    _choice("data.dataset", config.data.dataset, DATASETS)
    if config.data.dataset in ("cifar10", "cifar100", "imagefolder") and not config.data.data_path:
        raise ConfigError(f"data.data_path is needed for data.dataset {config.data.dataset} (a local directory)")
    if config.supernet.recipe is not None and config.supernet.reuse is not None:
        raise ConfigError("supernet: give recipe (train) or reuse (a trained run directory), not both")
    _choice("tables.source", config.tables.source, TABLE_SOURCES)
    if config.tables.source in ("dirs", "kit") and not config.tables.paths:
        raise ConfigError(f"tables.paths is needed for tables.source {config.tables.source}")
    for i, text in enumerate(config.tables.runtimes):
        _runtime_precision(f"tables.runtimes[{i}]", text)
    _choice("search.strategy", config.search.strategy, STRATEGY_NAMES)
    _choice("search.rank_by", config.search.rank_by, RANK_SIGNALS)
    try:
        strategy_config(config.search.strategy, dict(config.search.options))
        parse_objectives(list(config.search.objectives))
        parse_constraints(list(config.search.constraints))
    except HwnasError as err:
        raise ConfigError(f"search: {err}") from None
    for name in ("budget", "batch", "picks", "val_images", "recal_images"):
        _positive(f"search.{name}", getattr(config.search, name))
    _positive("export.top", config.export.top)
    _positive("threads", config.threads, 0)
    _choice("compress.method", config.compress.method, COMPRESS_METHODS)
    _choice("compress.teacher", config.compress.teacher, ("largest", "parent"))
    _positive("compress.epochs", config.compress.epochs)
    _positive("compress.picks", config.compress.picks)
    if config.compress.method != "none":
        parse_budget(config.compress.constraints)
        if config.compress.table is not None:
            _runtime_precision("compress.table", config.compress.table)
        from nas.compress.pipeline import CompressConfig

        allowed = sorted({f.name for f in fields(CompressConfig)} - {
            "method", "budget", "table", "metric", "size_budget", "epochs", "teacher", "supernet", "seed"})
        bad = [k for k in config.compress.options if k not in allowed]
        if bad:
            raise ConfigError(f"unknown key compress.options.{bad[0]}; allowed: {', '.join(allowed)}")
    _choice("references.source", config.references.source, REFERENCE_SOURCES)
    for i, name in enumerate(config.references.names):
        _choice(f"references.names[{i}]", name, list(REFERENCES))
    _positive("references.epochs", config.references.epochs)


def _runtime_precision(path: str, text: Any) -> tuple[str, str]:
    runtime, sep, precision = str(text).partition(":")
    if not sep or runtime not in ("ort", "litert") or precision not in ("fp32", "fp16", "int8"):
        raise ConfigError(f"{path}: {text!r} is not RUNTIME:PRECISION with RUNTIME ort or litert and PRECISION "
                          f"fp32, fp16 or int8 (e.g. ort:fp32)")
    return runtime, precision


def parse_budget(texts: Sequence[str]) -> list[tuple[str, float, bool]]:
    """(metric, bound, relative) of each compression constraint: `latency_ms<=0.1`, `size_bytes<=0.2x`, ..."""
    import re

    from nas.compress.pipeline import BUDGET_METRICS

    out = []
    for text in texts:
        match = re.fullmatch(r"\s*([a-z_]+)\s*<=?\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*(x?)\s*", str(text))
        if match is None or match.group(1) not in BUDGET_METRICS:
            raise ConfigError(f"compress.constraints: {text!r} is not METRIC<=BOUND (BOUND a number, or a factor "
                              f"like 0.67x) with METRIC one of {', '.join(BUDGET_METRICS)}")
        relative = bool(match.group(3))
        if relative and match.group(1) == "bitops":
            raise ConfigError(f"compress.constraints: {text!r}: a relative bound is for latency_ms, size_bytes or "
                              f"macs; give bitops as a number")
        out.append((match.group(1), float(match.group(2)), relative))
    metrics = sorted(m for m, _, _ in out)
    if len(out) not in (1, 2) or (len(out) == 2 and metrics != ["latency_ms", "size_bytes"]):
        raise ConfigError(f"compress.constraints: one budget METRIC<=X, or latency_ms<=X with size_bytes<=Y; got "
                          f"{', '.join(map(str, texts)) or 'none'}")
    return out


def resolve(config: RunConfig, root: Path) -> dict[str, Any]:
    """The resolved config as a plain mapping: the training recipe inlined (file or built-in defaults), the run
    directory filled in."""
    from supernets.config import TrainConfig

    data = config.to_dict()
    data["run_dir"] = config.run_dir or f"runs/{config.name}"
    recipe = config.supernet.recipe
    if config.supernet.reuse is None:
        if isinstance(recipe, str):
            path = recipe if Path(recipe).is_absolute() else root / recipe
            train = TrainConfig.load(path)
        else:
            train = TrainConfig.from_dict(recipe) if recipe is not None else TrainConfig()
        overrides = {"dataset": config.data.dataset, "data_path": config.data.data_path, "seed": config.seed}
        if config.threads:
            overrides["threads"] = config.threads
        data["supernet"]["recipe"] = TrainConfig.from_dict({**train.to_dict(), **overrides}).to_dict()
    return data


# ---------------------------------------------------------------------------------------------- stage state


def _hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def read_stages(run_dir: Path) -> dict[str, Any]:
    """RUN/stages.json (an empty record when there is none); a corrupt one is an error naming it."""
    path = run_dir / STAGES_FILE
    if not path.is_file():
        return {"version": 1, "stages": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise HwnasError(f"{path} is not valid JSON ({err}); move it away to start the run afresh") from None
    if not isinstance(data, dict) or not isinstance(data.get("stages"), dict):
        raise HwnasError(f"{path} has no 'stages' mapping; move it away to start the run afresh")
    return data


def _write_stages(run_dir: Path, record: dict[str, Any]) -> None:
    atomic_write_text(run_dir / STAGES_FILE, json.dumps(record, indent=2) + "\n")


@dataclass
class Plan:
    """What `hwnas run` will do with one stage, and why."""

    stage: str
    action: str  # run | resume | rerun | skip | off
    reason: str
    estimate_s: float = 0.0


#: Rough times on this machine (2-core x86 CPU, nearly idle), from the quickstart on a fresh clone (2026-12-01:
#: supernet 16.9 min, search 53 s for 100 subnets, export 28 s for 3 picks, compression 2.5 min): seconds per
#: training image per
#: weighted epoch (a phase's epoch weighs its subnets per step, +1 for the largest, +1 for the smallest, +0.3 for
#: a frozen teacher), per searched subnet (BN recalibration and validation of about 1,000 images each), per
#: exported subnet (ONNX + TFLite conversion, parity, measurement), per compressed subnet and fine-tune epoch,
#: per reference trained (per image per epoch) and the report.
ESTIMATES = {"train_image_epoch_s": 2.7e-3, "search_eval_s": 0.55, "export_pick_s": 12.0, "compress_pick_s": 120.0,
             "compress_epoch_s": 15.0, "reference_image_epoch_s": 1.2e-3, "reference_export_s": 45.0,
             "report_s": 5.0, "table_key_s": 1.5}


def _train_units(recipe: dict[str, Any]) -> float:
    units = 0.0
    for phase in recipe.get("phases", []):
        weight = phase.get("subnets", 1) + bool(phase.get("largest")) + bool(phase.get("smallest"))
        teacher = phase.get("name") in ("kernel", "depth", "expand") and recipe.get("recipe") == "progressive"
        units += phase.get("epochs", 1) * (weight + 0.3 * teacher)
    return units


def _train_images(resolved: dict[str, Any]) -> int:
    sizes = {"mnist5k": 4000, "digits": 1437, "cifar10": 50000, "cifar100": 50000}
    return sizes.get(resolved["data"]["dataset"], 10000)


def estimate(stage: str, resolved: dict[str, Any]) -> float:
    """Seconds `stage` takes from scratch on this machine when idle (`ESTIMATES`)."""
    e, images = ESTIMATES, _train_images(resolved)
    if stage == "supernet":
        recipe = resolved["supernet"]["recipe"]
        return 0.0 if recipe is None else e["train_image_epoch_s"] * images * _train_units(recipe)
    if stage == "tables":
        return e["table_key_s"] * 400 * len(resolved["tables"]["runtimes"]) if resolved["tables"]["source"] == \
            "build" else 1.0
    if stage == "search":
        return e["search_eval_s"] * resolved["search"]["budget"]
    if stage == "export":
        top = resolved["export"]["top"] or resolved["search"]["picks"]
        return e["export_pick_s"] * min(top, resolved["search"]["picks"])
    if stage == "compress":
        c = resolved["compress"]
        if c["method"] == "none":
            return 0.0
        steps = c["options"].get("max_steps")  # batches per epoch (64 images) when capped
        share = min(1.0, steps * 64 / images) if steps else 1.0
        fixed = e["compress_pick_s"] * (0.2 if c["options"].get("measure_keys") is False else 1.0)
        return c["picks"] * (fixed + e["compress_epoch_s"] * c["epochs"] * share * images / 4000)
    if stage == "references":
        r = resolved["references"]
        if r["source"] != "train":
            return 1.0
        recipe = resolved["supernet"]["recipe"] or {}
        epochs = r["epochs"] or sum(p.get("epochs", 1) for p in recipe.get("phases", [])) or 54
        compress = estimate("compress", {**resolved, "compress": {**resolved["compress"], "picks": 1}}) \
            if r["compress"] else 0.0
        return len(r["names"]) * (e["reference_image_epoch_s"] * images * epochs + e["reference_export_s"] + compress)
    return e["report_s"] if resolved["report"]["enabled"] else 0.0


# ---------------------------------------------------------------------------------------------- the run


class Pipeline:
    """The stages of one resolved config in one run directory. Constructing it reads and writes nothing."""

    def __init__(self, resolved: dict[str, Any], run_dir: Path, root: Path, *, log: Log = print,
                 command: str | None = None) -> None:
        self.resolved, self.run_dir, self.root, self.log = resolved, run_dir, root, log
        self.command = command or " ".join(["hwnas", *sys.argv[1:]])
        self.record: dict[str, Any] = {"version": 1, "stages": {}}
        self._tables: list[Any] | None = None

    # -- paths and inputs
    def path(self, text: str) -> Path:
        """A path of the config: relative ones from the root the config was read at."""
        return Path(self.root, text)

    def data_path(self) -> Path | None:
        text = self.resolved["data"]["data_path"]
        return None if text is None else self.path(text)

    @property
    def supernet_dir(self) -> Path:
        reuse = self.resolved["supernet"]["reuse"]
        return self.path(reuse) if reuse else self.run_dir / "supernet"

    def _file_hashes(self, stage: str) -> dict[str, Any]:
        """Hashes of the files a stage reads that the config only names."""
        from search_spaces.files import sha256_file

        out: dict[str, Any] = {}
        if stage == "supernet" and self.resolved["supernet"]["reuse"]:
            meta = self.supernet_dir / "supernet.json"
            out["reuse"] = sha256_file(meta) if meta.is_file() else "missing"
        if stage == "tables" and self.resolved["tables"]["source"] in ("dirs", "kit"):
            for text in self.resolved["tables"]["paths"]:
                folder = self.path(text)
                out[text] = {name: sha256_file(folder / name) if (folder / name).is_file() else "missing"
                             for name in ("table.csv", "meta.json", "results.csv")}
        if stage == "references" and self.resolved["references"]["source"] == "shipped":
            shipped = self.path(self.resolved["references"]["file"])
            out["file"] = sha256_file(shipped) if shipped.is_file() else "missing"
        return out

    def _section(self, stage: str) -> dict[str, Any]:
        r = self.resolved
        sections = {
            "supernet": {"data": r["data"], "supernet": r["supernet"], "seed": r["seed"]},
            "tables": {"tables": r["tables"], "space": self.space_name()},
            "search": {"search": r["search"], "seed": r["seed"]},
            "export": {"export": r["export"]},
            "compress": {"compress": r["compress"], "seed": r["seed"]},
            "references": {"references": r["references"], "data": r["data"], "seed": r["seed"],
                           "recipe": r["supernet"]["recipe"],
                           "compress": r["compress"] if r["references"]["compress"] else None},
            "report": {"report": r["report"]},
        }
        return sections[stage]

    def stage_hash(self, stage: str, hashes: dict[str, str]) -> str:
        """The hash of what `stage` is given: its section, the files it reads, the hashes of its inputs."""
        return _hash({"section": self._section(stage), "files": self._file_hashes(stage),
                      "upstream": {d: hashes[d] for d in DEPENDS[stage]}})

    def space_name(self) -> str:
        recipe = self.resolved["supernet"]["recipe"]
        if recipe is not None:
            return str(recipe.get("space", "small"))
        from nas.evaluators import supernet_space

        return supernet_space(self.supernet_dir)[0].name

    def enabled(self, stage: str) -> bool:
        r = self.resolved
        return stage in r["stages"] and {"compress": r["compress"]["method"] != "none",
                                         "references": r["references"]["source"] != "none",
                                         "report": r["report"]["enabled"]}.get(stage, True)

    # -- planning
    def plan(self, *, start: str | None = None, only: str | None = None) -> list[Plan]:
        """What each stage will do and why (nothing is run or written)."""
        self.record = read_stages(self.run_dir)
        recorded = self.record["stages"]
        hashes: dict[str, str] = {}
        changed: set[str] = set()
        plans = []
        forced = set(STAGES[STAGES.index(start):]) if start else {only} if only else set()
        for stage in STAGES:
            hashes[stage] = self.stage_hash(stage, hashes)
            old = recorded.get(stage, {})
            if not self.enabled(stage):
                plans.append(Plan(stage, "off", "not in this config's stages" if stage not in self.resolved["stages"]
                                  else "turned off in the config"))
                continue
            if only is not None and stage != only:
                plans.append(Plan(stage, "skip", "--only " + only))
                continue
            upstream_changed = [d for d in DEPENDS[stage] if d in changed]
            if stage in forced:
                action, reason = ("rerun", f"--from {start}" if start else f"--only {only}") if old else \
                    ("run", "not run before")
            elif not old:
                action, reason = "run", "not run before"
            elif old.get("hash") != hashes[stage]:
                action = "rerun"
                reason = f"its inputs changed ({', '.join(upstream_changed)} changed)" if upstream_changed else \
                    "its config section or input files changed"
            elif old.get("status") == "done" and self._outputs_exist(stage, old):
                action, reason = "skip", f"done {old.get('finished', '')}, inputs unchanged"
            elif old.get("status") == "done":
                action, reason = "rerun", "done before but its outputs are missing"
            else:
                action, reason = "resume", f"cut off ({old.get('status')}); continues where it stopped"
            if action in ("run", "rerun"):
                changed.add(stage)
            plans.append(Plan(stage, action, reason, 0.0 if action == "skip" else estimate(stage, self.resolved)))
        self._hashes = hashes
        running = {p.stage for p in plans if p.action in ("run", "rerun", "resume")}
        for stage in sorted(running, key=STAGES.index):
            if stage == "report":
                continue  # the report shows what there is
            for dep in DEPENDS[stage]:
                entry = recorded.get(dep, {})
                if dep not in running and (entry.get("status") != "done" or not self._outputs_exist(dep, entry)):
                    why = f"--only {only}" if only is not None else "stage " + stage
                    raise HwnasError(f"{why} needs the output of stage {dep}, which is missing from {self.run_dir} "
                                     f"(stage {dep} is {'off in the config' if not self.enabled(dep) else 'not run'}"
                                     f"; run it first: `hwnas run CONFIG --from {dep}`)")
        return plans

    def _outputs_exist(self, stage: str, entry: dict[str, Any]) -> bool:
        for value in entry.get("outputs", {}).values():
            for text in value if isinstance(value, list) else [value]:
                if isinstance(text, str) and not text.startswith("sqlite:") and "/" in text and \
                        not Path(text).exists():
                    return False
        return True

    # -- running
    def run(self, plans: list[Plan]) -> None:
        """Run the planned stages in order, recording each in stages.json."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.run_dir / CONFIG_FILE, yaml.safe_dump(self.resolved, sort_keys=False))
        self.record.update({"version": 1, "command": self.command, "config": CONFIG_FILE})
        todo = [p for p in plans if p.action in ("run", "rerun", "resume")]
        for i, plan in enumerate(plans):
            if plan.action in ("skip", "off"):
                self.log(f"[{i + 1}/{len(plans)}] {plan.stage}: skipped ({plan.reason})")
                continue
            if plan.action == "rerun":
                self._supersede(plan.stage)
            left = sum(p.estimate_s for p in todo[todo.index(plan):])
            self.log(f"[{i + 1}/{len(plans)}] {plan.stage}: {plan.action} ({plan.reason}); about "
                     f"{_duration(plan.estimate_s)}, {_duration(left)} left in all")
            self._run_stage(plan.stage)
            entry = self.record["stages"][plan.stage]
            self.log(f"[{i + 1}/{len(plans)}] {plan.stage}: done in {_duration(entry['seconds'])}"
                     + (f" ({entry['summary']})" if entry.get("summary") else ""))

    def _run_stage(self, stage: str) -> None:
        entry = self.record["stages"].get(stage, {})
        started = time.perf_counter() - (entry.get("seconds", 0.0) if entry.get("hash") == self._hashes[stage]
                                         else 0.0)
        entry = {"status": "running", "hash": self._hashes[stage], "started": _now(), "outputs": {}}
        self.record["stages"][stage] = entry
        _write_stages(self.run_dir, self.record)
        try:
            outputs, summary = getattr(self, f"_stage_{stage}")()
        except BaseException as err:
            entry.update({"status": "failed" if not isinstance(err, KeyboardInterrupt) else "running",
                          "error": str(err)[:500], "seconds": time.perf_counter() - started})
            _write_stages(self.run_dir, self.record)
            raise
        entry.update({"status": "done", "finished": _now(), "seconds": round(time.perf_counter() - started, 1),
                      "outputs": outputs, "summary": summary})
        entry.pop("error", None)
        _write_stages(self.run_dir, self.record)

    def _supersede(self, stage: str) -> None:
        """Move what `stage` wrote before into RUN/superseded/ (never deleted: it may be a user's only copy)."""
        names = {"supernet": ["supernet"] if not self.resolved["supernet"]["reuse"] else [],
                 "tables": ["tables"], "search": ["study.db", "search"], "export": ["subnets"],
                 "compress": ["compressed"], "references": ["references"], "report": []}[stage]
        present = [n for n in names if (self.run_dir / n).exists()]
        if not present:
            return
        old = self.record["stages"].get(stage, {}).get("hash", "unknown")[:8]
        target = self.run_dir / "superseded" / f"{stage}-{old}-{_dt.datetime.now():%Y%m%d-%H%M%S}"
        target.mkdir(parents=True, exist_ok=True)
        for name in present:
            (self.run_dir / name).rename(target / name)
        self.log(f"  {stage}: earlier outputs ({', '.join(present)}) moved to {target}")

    def summary(self) -> list[str]:
        """The closing lines: each stage's one-line summary and where the report is."""
        stages = self.record["stages"]
        lines = [f"summary of {self.run_dir}:"]
        for stage in STAGES:
            entry = stages.get(stage, {})
            if entry.get("status") == "done" and entry.get("summary"):
                lines.append(f"  {stage:<10}  {entry['summary']}")
        html = stages.get("report", {}).get("outputs", {}).get("html")
        if html:
            lines.append(f"report: {html} (and report.md beside it; rebuild with `hwnas report {self.run_dir}`)")
        return lines

    # -- the stages (each returns its outputs and a one-line summary)
    def _progress(self) -> bool:
        return bool(self.resolved["progress"])

    def _stage_supernet(self) -> tuple[dict[str, Any], str]:
        if self.resolved["supernet"]["reuse"]:
            from supernets.training import load_run

            run = load_run(self.supernet_dir)  # checks it is a trained run
            return {"run_dir": str(self.supernet_dir)}, f"reused {self.supernet_dir} (epoch {run.meta['epoch']})"
        from supernets.config import TrainConfig
        from supernets.training import SupernetTrainer

        config = TrainConfig.from_dict(self.resolved["supernet"]["recipe"])
        data_path = self.data_path()
        if data_path is not None:
            config = TrainConfig.from_dict({**config.to_dict(), "data_path": str(data_path)})
        trainer = SupernetTrainer(config, self.supernet_dir, progress=self._progress(), log=self.log)
        history = trainer.run(resume=True)
        last = history[-1] if history else {}
        return {"run_dir": str(self.supernet_dir)}, (
            f"largest {last['acc_largest']:.2%}, smallest {last['acc_smallest']:.2%}" if "acc_largest" in last
            else f"{len(history)} epochs")

    def tables(self) -> list[Any]:
        """The run's latency tables (loaded once)."""
        if self._tables is None:
            from latency_tables.table import LatencyTable

            entry = self.record["stages"].get("tables", {})
            self._tables = [LatencyTable.load(p) for p in entry.get("outputs", {}).get("tables", [])]
        return self._tables

    def _stage_tables(self) -> tuple[dict[str, Any], str]:
        from latency_tables.table import LatencyTable, find_table

        t, space = self.resolved["tables"], self.space_name()
        if t["source"] == "shipped":
            tables = [find_table(space, *_runtime_precision("tables.runtimes", text)) for text in t["runtimes"]]
        elif t["source"] == "dirs":
            tables = [LatencyTable.load(self.path(p)) for p in t["paths"]]
        elif t["source"] == "kit":
            from latency_tables.kit import import_kit

            tables = [import_kit(self.path(p), self.run_dir / "tables" / Path(p).name) for p in t["paths"]]
        else:
            from latency_tables.build import build_table
            from search_spaces import get_space

            tables = []
            for text in t["runtimes"]:
                runtime, precision = _runtime_precision("tables.runtimes", text)
                out = self.run_dir / "tables" / f"{space}-{runtime}-{precision}"
                tables.append(build_table(get_space(space), runtime, precision, out, progress=self._progress(),
                                          log=self.log))
        self._tables = tables
        return {"tables": [str(tb.path) for tb in tables]}, ", ".join(tb.table_id for tb in tables)

    def _search_objects(self) -> tuple[Any, Any, Any]:
        from nas.evaluators import CostEvaluator, supernet_space
        from nas.objectives import parse_constraints, parse_objectives
        from nas.search import SearchSettings

        s = self.resolved["search"]
        space = supernet_space(self.supernet_dir)[0]
        settings = SearchSettings(s["strategy"], parse_objectives(list(s["objectives"])),
                                  parse_constraints(list(s["constraints"])), budget=s["budget"], batch=s["batch"],
                                  seed=self.resolved["seed"], picks=s["picks"], options=dict(s["options"]),
                                  rank_by=s["rank_by"])
        return space, settings, CostEvaluator(space, self.tables())

    def _stage_search(self) -> tuple[dict[str, Any], str]:
        from nas.evaluators import SupernetEvaluator
        from nas.search import Search, write_picks

        s = self.resolved["search"]
        space, settings, costs = self._search_objects()
        inputs: dict[str, Any] = {}
        if s["strategy"] == "differentiable":
            inputs = {"supernet": str(self.supernet_dir), "table": self.tables()[0], "progress": self._progress()}
        evaluator = SupernetEvaluator.from_run(
            self.supernet_dir, val_images=s["val_images"], recal_images=s["recal_images"],
            threads=self.resolved["threads"] or None, cache_path=self.run_dir / "search" / "accuracy_cache-w0.json")
        predictor = None
        if s["predictor"]:
            from nas.predictor import AccuracyPredictor

            predictor = AccuracyPredictor.load(self.path(s["predictor"]), space).predict
        storage = s["storage"] or f"sqlite:///{self.run_dir / 'study.db'}"
        attrs = {"command": self.command, "config": str(self.run_dir / CONFIG_FILE)}
        search = Search(space, settings, costs, scores=evaluator.scores, storage=storage, study_name=s["study"],
                        predictor=predictor, progress=self._progress(), strategy_inputs=inputs, study_attrs=attrs)
        result = search.run()
        picks = write_picks(self.run_dir, result.picks)
        best = result.picks[0] if result.picks else None
        return ({"storage": storage, "study": s["study"], "picks_csv": str(picks)},
                (f"{result.trials} trials ranked by {result.rank_by}; best {best['accuracy']:.2%} {best['key']}"
                 if best else "no picks")
                + (f"; stopped before the budget: {result.stopped}" if result.stopped else ""))

    def picks(self) -> list[dict[str, Any]]:
        """The search's picks as written (numbers read back as numbers)."""
        from nas.export.picks import read_picks

        return read_picks(self.run_dir / "search" / "picks.csv")

    def _stage_export(self) -> tuple[dict[str, Any], str]:
        from nas.export.picks import export_picks
        from nas.search import write_picks
        from nas.study import note_measured, open_study
        from search_spaces import ArchConfig
        from supernets.threads import torch_threads

        rows = self.picks()
        top = self.resolved["export"]["top"] or len(rows)
        space, settings, costs = self._search_objects()
        with torch_threads(self.resolved["threads"] or None):
            lines = export_picks(str(self.supernet_dir), self.run_dir / "subnets", rows[:top], costs.tables,
                                 settings.constraints, self.log)
        write_picks(self.run_dir, rows)
        study = self.record["stages"]["search"]["outputs"]
        note_measured(open_study(study["storage"], study["study"], settings.objectives, space), rows[:top])
        for line in lines[1:]:
            self.log(line)
        dirs = [str(self.run_dir / "subnets" / ArchConfig.from_str(p["arch"]).key) for p in rows[:top]]
        return {"subnets": dirs}, f"{len(dirs)} exported"

    def compress_config(self, subnet_dir: Path, tables: list[Any]) -> Any:
        """The `CompressConfig` of the compression section for the exported subnet in `subnet_dir`: relative
        bounds taken of its latency on the table (predicted, or measured when the table cannot price it), its
        fp32 weight bytes or its MACs."""
        from latency_tables.table import find_table
        from nas.compress.pipeline import CompressConfig
        from nas.export import SubnetSpec, read_metrics

        c = self.resolved["compress"]
        spec = SubnetSpec.load(subnet_dir)
        table = tables[0]
        if c["table"] is not None:
            runtime, precision = _runtime_precision("compress.table", c["table"])
            same = [tb for tb in tables if (tb.profile.runtime, tb.profile.precision) == (runtime, precision)]
            table = same[0] if same else find_table(spec.space, runtime, precision)
        metrics = read_metrics(subnet_dir)
        bounds: dict[str, float] = {}
        for metric, bound, relative in parse_budget(c["constraints"]):
            if relative:
                bound *= self._base(metric, spec, metrics, table)
            bounds[metric] = bound
        metric = "latency_ms" if "latency_ms" in bounds else next(iter(bounds))
        teacher_largest = c["teacher"] == "largest" and spec.provenance.supernet_sha256 is not None  # not a reference
        return CompressConfig(method=c["method"], budget=bounds[metric], metric=metric,
                              size_budget=bounds.get("size_bytes") if metric == "latency_ms" else None, table=table,
                              epochs=c["epochs"], seed=self.resolved["seed"],
                              teacher="largest" if teacher_largest else None,
                              supernet=str(self.supernet_dir) if teacher_largest else None, **c["options"])

    @staticmethod
    def _base(metric: str, spec: Any, metrics: dict[str, Any], table: Any) -> float:
        """The value a relative bound is a factor of."""
        cost = metrics.get("cost", {})
        if metric in ("size_bytes", "macs"):
            name = "params" if metric == "size_bytes" else "macs"
            if not cost.get(name):
                raise HwnasError(f"a relative {metric} bound needs the {name} of {spec.key}; its metrics.json has "
                                 f"none: give compress.constraints an absolute {metric} bound")
            return float(cost[name]) * (4.0 if metric == "size_bytes" else 1.0)
        latency = metrics.get("latency", {})
        comparison = latency.get("comparison", {}).get(table.table_id, {})
        for name in ("predicted_ms", "measured_ms"):
            if comparison.get(name) is not None and math.isfinite(comparison[name]):
                return float(comparison[name])
        for name, value in latency.get("measured", {}).items():
            if name.startswith(table.profile.runtime) and isinstance(value, dict) and value.get("median_ms"):
                return float(value["median_ms"])
        raise HwnasError(f"a relative latency bound needs the latency of {spec.key} on {table.table_id}; its "
                         f"metrics.json has none: give compress.constraints an absolute latency_ms bound")

    def _compress_dirs(self, parents: list[Path], out_root: Path) -> list[Path]:
        """Compress each exported subnet in `parents` into `out_root` (a subnet compressed before is reused)."""
        from functools import partial

        from nas.compress.pipeline import compress_once
        from supernets.threads import torch_threads

        method = self.resolved["compress"]["method"]
        with torch_threads(self.resolved["threads"] or None):
            return [compress_once(parent, out_root, method, partial(self.compress_config, parent, self.tables()),
                                  log=self.log, progress=self._progress()) for parent in parents]

    def _stage_compress(self) -> tuple[dict[str, Any], str]:
        from nas.compress.pipeline import COMPRESS_FILE

        subnets = self.record["stages"].get("export", {}).get("outputs", {}).get("subnets", [])
        parents = [Path(p) for p in subnets[: self.resolved["compress"]["picks"]]]
        dirs = self._compress_dirs(parents, self.run_dir / "compressed")
        summaries = [json.loads((d / COMPRESS_FILE).read_text(encoding="utf-8")) for d in dirs]
        text = "; ".join(f"{s['parent']}: {s['accuracy_before']:.2%} -> {s['accuracy_after']:.2%}, weights "
                         f"{s['bytes_ratio']:.1f}x" for s in summaries)
        return {"compressed": [str(d) for d in dirs]}, text

    def _stage_references(self) -> tuple[dict[str, Any], str]:
        from nas import references as refs

        r = self.resolved["references"]
        out = self.run_dir / "references"
        summary_path = out / "summary.json"
        if r["source"] == "shipped":
            shipped = self.path(r["file"])
            shipped_data = refs.load_summary(shipped)
            if shipped_data.get("dataset") != self.resolved["data"]["dataset"]:
                raise HwnasError(f"references.file {r['file']} holds measurements on {shipped_data.get('dataset')}, "
                                 f"not on {self.resolved['data']['dataset']}: set references.source: train")
            have = {row["name"] for row in shipped_data["rows"]}
            missing = [n for n in r["names"] if n not in have]
            if missing:
                raise HwnasError(f"references.file {r['file']} has no {', '.join(missing)}; it has "
                                 f"{', '.join(sorted(have))} (or set references.source: train)")
            rows = [row for row in shipped_data["rows"] if row["name"] in r["names"]]
            refs.write_summary(summary_path, rows, dataset=shipped_data["dataset"],
                               val_images=int(shipped_data.get("val_images") or 0), source=f"shipped:{r['file']}",
                               machine=shipped_data.get("machine"))
            from latency_tables.table import cpu_model

            if shipped_data.get("machine") not in (None, cpu_model()):
                self.log(f"  references: {r['file']} was measured on {shipped_data.get('machine')}, this is "
                         f"{cpu_model()}: their latencies do not compare with this run's (references.source: train)")
            return {"summary": str(summary_path)}, f"{len(rows)} rows from {r['file']}"
        from supernets.config import TrainConfig
        from supernets.data import load_dataset
        from supernets.threads import torch_threads

        recipe = self.resolved["supernet"]["recipe"]
        config = TrainConfig.from_dict(recipe) if recipe is not None else TrainConfig()
        data = load_dataset(self.resolved["data"]["dataset"], self.data_path(),
                            val_fraction=config.val_fraction, seed=config.seed)
        rows, uncompressed = [], []
        resolution = refs.reference_resolution(int(data.train.images.shape[-1]), self.space_name())
        for name in r["names"]:
            with torch_threads(self.resolved["threads"] or None):
                directory = refs.train_reference(name, data, config, out / name,
                                                 tables=self.tables() if r["predict"] else [], epochs=r["epochs"],
                                                 seed=self.resolved["seed"], progress=self._progress(), log=self.log,
                                                 resolution=resolution, space=self.space_name())
            rows.append(refs.reference_row(directory, name, "fp32"))
            if r["compress"] and self.resolved["compress"]["method"] != "none":
                try:
                    compressed = self._compress_dirs([directory], out / "compressed")[0]
                except HwnasError as err:  # a budget one network cannot reach: the others still compare
                    uncompressed.append(name)
                    self.log(f"  references: {name} is not compressed: {err}")
                    continue
                rows.append(refs.reference_row(compressed, name, "compressed"))
        refs.write_summary(summary_path, rows, dataset=data.name, val_images=len(data.val), source="trained")
        return {"summary": str(summary_path)}, f"{len(r['names'])} trained" + (
            f"; not compressed to the budget: {', '.join(uncompressed)}" if uncompressed else "")

    def _stage_report(self) -> tuple[dict[str, Any], str]:
        from nas.report import build_report

        self.record["stages"]["report"]["status"] = "done"  # the report shows itself as done
        _write_stages(self.run_dir, self.record)
        html, md = build_report(self.run_dir)
        return {"html": str(html), "md": str(md)}, str(html)


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def run_pipeline(config_path: str | Path, *, run_dir: str | Path | None = None, dry_run: bool = False,
                 start: str | None = None, only: str | None = None, log: Log = print) -> Path:
    """`hwnas run`: check the config, plan the stages, and run them (or, with `dry_run`, print the plan and an
    estimate of each stage's time on this machine). Returns the run directory."""
    for flag, value in (("--from", start), ("--only", only)):
        if value is not None and value not in STAGES:
            raise HwnasError(f"{flag} {value!r} is not a stage; stages: {', '.join(STAGES)}")
    if start is not None and only is not None:
        raise HwnasError("give --from STAGE or --only STAGE, not both")
    config, root = load_config(config_path)
    resolved = resolve(config, root)
    if run_dir is not None:
        resolved["run_dir"] = str(run_dir)
    directory = Path(resolved["run_dir"])
    if directory.exists() and not directory.is_dir():
        raise HwnasError(f"run directory {directory} exists and is not a directory")
    pipeline = Pipeline(resolved, directory, root, log=log)
    if start is not None and not pipeline.enabled(start) or only is not None and not pipeline.enabled(only):
        raise HwnasError(f"stage {start or only} is turned off in {config_path}")
    plans = pipeline.plan(start=start, only=only)
    if dry_run:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        cores = os.cpu_count() or 1
        log(f"run directory {directory} ({'exists' if directory.exists() else 'new'}); config {config_path}")
        width = max(len(p.stage) for p in plans)
        for p in plans:
            log(f"  {p.stage:<{width}}  {p.action:<6}  {_duration(p.estimate_s) if p.estimate_s else '-':>8}  "
                f"{p.reason}")
        total = sum(p.estimate_s for p in plans)
        busy = max(1.0, (load + 1.0) / cores)
        log(f"  about {_duration(total)} in all on this machine when idle ({cores} cores); load now {load:.1f}"
            + (f": expect about {_duration(total * busy)}" if busy > 1.05 else ""))
        return directory
    pipeline.run(plans)
    for line in pipeline.summary():
        log(line)
    return directory


__all__ = ["STAGES", "ConfigError", "Pipeline", "RunConfig", "check_config", "load_config", "parse_budget",
           "read_stages", "resolve", "run_pipeline"]

