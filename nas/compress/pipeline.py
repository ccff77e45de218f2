"""`compress_subnet`: one exported subnet made smaller and faster for a latency budget on a table's runtime, by the
library's pieces end to end, and exported as a new subnet directory.

- `prune`: channel scores (`channel_importance`) on a few seeded training batches, a NetAdapt-style allocation to
  the budget on the table (`allocate_latency`), the plan replayed on the parent's weights (`prune_model`), then a
  fine-tune with Hinton distillation (`finetune`) from the teacher named, or from the uncompressed parent itself.
- `quantize`: measured per-layer sensitivity (each layer fake-quantised alone; KL on training images) and an exact
  per-block precision allocation to the budget on the runtime's per-precision tables (`allocate_bits`).
- `sequential`: prune, then quantise. The pruning budget is the budget divided by the latency share that the
  fastest per-block precisions keep on the parent (as the tables predict), so that quantising reaches the rest.

The result is exported with `export_model` (spec with `prune_plan` / `bitwidth_plan`, the budget's runtime only)
and described in `compress.json` beside its files: accuracy before and after on the same validation split, label
loyalty (top-1 agreement with the parent) and probability loyalty (mean over images of 1 - sqrt(JS divergence,
base 2) between the two output distributions), parameter and byte ratios, predicted and measured latency, speed-up.
A bit-width plan's "after" figures are its torch simulation (`fake_quantized_layers`).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from latency_tables.runtimes import Protocol
from latency_tables.table import LatencyTable
from search_spaces import ArchConfig, HwnasError
from search_spaces.files import atomic_write_text
from search_spaces.plans import BitWidthPlan, PrunePlan

#: What `compress_subnet` can do.
METHODS = ("prune", "quantize", "sequential")
#: The summary file written beside the exported files.
COMPRESS_FILE = "compress.json"

Log = Callable[[str], None]


@dataclass(frozen=True)
class CompressConfig:
    """How a subnet is compressed.

    Args:
        budget_ms: the latency budget on `table` (its runtime, precision and device).
        teacher: None (the parent itself), "largest" (the supernet in `supernet`'s largest subnet) or an exported
            subnet's directory.
        images: training images (chosen by `seed`) that score channels and measure quantisation sensitivity.
        max_steps: batches per fine-tune epoch (None: the whole training split).
        parity_images: validation images the export's parity check uses (None: all).
    """

    method: str
    budget_ms: float
    table: LatencyTable
    criterion: str = "l1"
    round_to: int = 8
    epochs: int = 1
    teacher: str | None = None
    supernet: str | None = None
    seed: int = 0
    images: int = 128
    max_steps: int | None = None
    lr: float = 0.01
    protocol: Protocol | None = None
    parity_images: int | None = None
    overwrite: bool = False
    measure_keys: bool = True

    def __post_init__(self) -> None:
        from nas.compress.importance import IMPORTANCE

        checks = [("method", self.method in METHODS, f"one of {', '.join(METHODS)}"),
                  ("budget_ms", self.budget_ms > 0 and math.isfinite(self.budget_ms), "a positive number"),
                  ("criterion", self.criterion in IMPORTANCE, f"one of {', '.join(IMPORTANCE)}"),
                  ("round_to", self.round_to >= 1, ">= 1"), ("epochs", self.epochs >= 1, ">= 1"),
                  ("images", self.images >= 1, ">= 1")]
        for name, ok, allowed in checks:
            if not ok:
                raise HwnasError(f"compress {name} is {getattr(self, name)!r}; allowed: {allowed}")
        if not isinstance(self.table, LatencyTable):
            raise HwnasError(f"compress table must be a LatencyTable; got {type(self.table).__name__}")

    @property
    def runtime(self) -> str:
        return str(self.table.profile.runtime)


def _arch(model: nn.Module) -> ArchConfig:
    """The architecture of a static model (`build_model`)."""
    arch = getattr(model, "arch", None)
    if not isinstance(arch, ArchConfig):
        raise HwnasError(f"a static model of an architecture (build_model) is needed; got {type(model).__name__}")
    return arch


def _sample(data: Any, n: int, seed: int, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` training images (seeded choice) as a normalised batch and their labels."""
    from supernets.data import to_tensor

    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(data.train), size=min(n, len(data.train)), replace=False))
    x = to_tensor(data.train.images[idx], resolution, data.mean, data.std)
    return x, torch.from_numpy(data.train.labels[idx])


def _teacher(config: CompressConfig, parent: nn.Module, data: Any) -> nn.Module:
    """The teacher `config` names; by default a frozen copy of the uncompressed parent."""
    from nas.compress.distill import frozen, load_teacher, static_arch

    if config.teacher is None:
        return frozen(copy.deepcopy(parent))
    return load_teacher(config.teacher, static_arch(parent, "student"), run_dir=config.supernet, data=data)


#: Rounds of "allocate, measure the keys it estimated, allocate again on the measured table".
MEASURE_ROUNDS = 5
#: How many times `sequential` re-allocates the pruning before it gives up on the budget.
SEQUENTIAL_TRIES = 6


def _fastest_ms(arch: ArchConfig, tables: dict[str, LatencyTable], runtime: str) -> tuple[float, float]:
    """(fp32, fastest precision per block) latency of `arch` on `runtime` as its per-precision tables predict."""
    from nas.compress.bits import latency_costs, runtime_menu

    menu = runtime_menu(runtime)
    costs, _ = latency_costs(arch, tables, menu)
    return float(costs[:, menu.index("fp32")].sum()), float(costs.min(axis=1).sum())


def _allocate(arch: ArchConfig, scores: Any, config: CompressConfig, space: str) -> Any:
    """The pruning allocation: to the budget (`prune`), or (`sequential`) to the budget divided by the latency
    share that quantising keeps, shrunk until the fastest precisions reach the budget on the pruned network."""
    from nas.compress.allocate import allocate_latency
    from nas.compress.bits import runtime_tables

    if config.method != "sequential":
        return allocate_latency(arch, scores, config.table, config.budget_ms, round_to=config.round_to)
    tables = runtime_tables(space, config.runtime)
    fp32_ms, fastest = _fastest_ms(arch, tables, config.runtime)
    target_ms = config.budget_ms * fp32_ms / min(fastest, fp32_ms)  # the fp32 latency quantising brings in budget
    for _ in range(SEQUENTIAL_TRIES):
        alloc = allocate_latency(arch, scores, config.table, target_ms, round_to=config.round_to)
        fastest = _fastest_ms(alloc.arch, tables, config.runtime)[1]
        if fastest <= config.budget_ms:
            return alloc
        target_ms *= 0.97 * config.budget_ms / fastest  # a margin: the greedy walk moves in steps
    raise HwnasError(f"sequential: budget {config.budget_ms:.4g} ms not reached on {config.runtime} after "
                     f"{SEQUENTIAL_TRIES} pruning allocations (the last, quantised where fastest, predicts "
                     f"{fastest:.4g} ms); give a larger budget")


def _allocate_measured(arch: ArchConfig, scores: Any, config: CompressConfig, space: str, out_root: Path,
                       log: Log) -> tuple[Any, CompressConfig, int]:
    """The pruning allocation, with the off-grid keys it rests on measured on demand (`measure_missing`, into a
    copy of the table under `out_root/.measured-tables/`, reused by later runs) and the allocation made again on
    the measured copy, until it needs no estimate (at most `MEASURE_ROUNDS` rounds). Returns it, the config with
    the measured table, and how many keys were measured. Where this machine cannot measure the table's keys, the
    estimates stay (flagged) and the log says why."""
    from latency_tables.ondemand import measured_or_source

    alloc = _allocate(arch, scores, config, space)
    if not config.measure_keys:
        return alloc, config, 0
    source, archs, before = config.table, [], len(config.table.rows)
    for _ in range(MEASURE_ROUNDS):
        if not alloc.estimated:
            break
        archs.append(alloc.arch)
        log(f"measuring {len(alloc.estimated_keys)} table key(s) the plan needs on {source.table_id}")
        table, reason = measured_or_source(source, archs, out_root / ".measured-tables" / source.table_id,
                                           progress=False)
        if reason:
            log(f"table keys stay estimated: {reason}")
            break
        config = dataclasses.replace(config, table=table)
        alloc = _allocate(arch, scores, config, space)
    return alloc, config, len(config.table.rows) - before


def _prune(model: nn.Module, data: Any, config: CompressConfig, space: str, out_root: Path, teacher: nn.Module,
           log: Log, progress: bool) -> tuple[nn.Module, PrunePlan, dict[str, Any], CompressConfig]:
    from nas.compress.finetune import FinetuneConfig, finetune
    from nas.compress.importance import channel_importance
    from nas.export.prune import prune_model

    arch = _arch(model)
    x, y = _sample(data, config.images, config.seed, arch.resolution)
    batches = list(zip(x.split(32), y.split(32), strict=True))
    scores = channel_importance(model, config.criterion, batches)
    alloc, config, measured = _allocate_measured(arch, scores, config, space, out_root, log)
    log(f"pruning plan: {alloc.parent_latency_ms:.4f} -> {alloc.latency_ms:.4f} ms predicted on "
        f"{config.table.table_id} ({alloc.steps} steps{', estimated keys' if alloc.estimated else ''})")
    pruned = prune_model(model, alloc.plan)
    tune = FinetuneConfig(epochs=config.epochs, lr=config.lr, seed=config.seed, max_steps=config.max_steps)
    # one work directory per plan, fine-tune and teacher: the same command run again resumes a cut-off fine-tune
    run_id = hashlib.sha256(json.dumps([alloc.plan.key, tune.to_dict(), config.teacher]).encode()).hexdigest()[:12]
    work = out_root / f".{arch.key}.{run_id}.finetune"
    result = finetune(pruned, data, work, tune, teacher=teacher, progress=progress,
                      log=log)
    shutil.rmtree(work, ignore_errors=True)
    info = {"plan_predicted_ms": alloc.latency_ms, "parent_predicted_ms": alloc.parent_latency_ms,
            "estimated_keys": list(alloc.estimated_keys), "budget_ms": alloc.budget_ms, "criterion": config.criterion,
            "round_to": config.round_to, "finetune": tune.to_dict(), "history": result.history,
            "teacher": config.teacher or "parent", "measured_keys": measured}
    return result.model, alloc.plan, info, config


def _quantize(model: nn.Module, data: Any, config: CompressConfig, space: str,
              log: Log) -> tuple[BitWidthPlan, dict[str, Any]]:
    from nas.compress.bits import allocate_bits, latency_costs, runtime_menu, runtime_tables
    from nas.compress.sensitivity import measured_sensitivity, precision_scores

    arch = _arch(model)
    tables = runtime_tables(space, config.runtime)
    lower = [p for p in runtime_menu(config.runtime) if p != "fp32"]
    x, y = _sample(data, config.images, config.seed, arch.resolution)
    sensitivity = precision_scores(measured_sensitivity(model, x, y, lower))
    alloc = allocate_bits(arch, sensitivity, config.budget_ms, runtime=config.runtime, tables=tables)
    fp32_ms = float(latency_costs(arch, tables, ("fp32",))[0].sum())
    log(f"bit-width plan: {dict(alloc.pieces)} ({fp32_ms:.4f} -> {alloc.predicted['latency_ms']:.4f} ms predicted)")
    return alloc.plan, {"allocation": alloc.to_dict(), "tables": {p: t.table_id for p, t in tables.items()},
                        "parent_predicted_ms": fp32_ms}


@torch.no_grad()
def _outputs(model: nn.Module, data: Any, plan: BitWidthPlan | None, x_cal: torch.Tensor) -> torch.Tensor:
    """Softmax outputs of `model` (with `plan` simulated in torch) on the validation split."""
    from nas.compress.sensitivity import fake_quantized_layers, output_ranges
    from supernets.data import to_tensor

    model.eval()
    x = to_tensor(data.val.images, _arch(model).resolution, data.mean, data.std)
    if plan is None:
        return torch.softmax(model(x).double(), dim=1)
    ranges = output_ranges(model, x_cal)
    with fake_quantized_layers(model, plan.precisions(_arch(model)), ranges) as simulated:
        return torch.softmax(simulated(x).double(), dim=1)


def fidelity(before: torch.Tensor, after: torch.Tensor, labels: np.ndarray) -> dict[str, float]:
    """Accuracy of both output distributions, label loyalty and probability loyalty (see the module docstring)."""
    mix = (before + after) / 2

    def kl(p: torch.Tensor) -> torch.Tensor:
        return torch.where(p > 0, p * torch.log2(p.clamp_min(1e-300) / mix.clamp_min(1e-300)), 0.0).sum(dim=1)

    js = ((kl(before) + kl(after)) / 2).clamp(0.0, 1.0)
    y = torch.from_numpy(labels)
    return {"accuracy_before": float((before.argmax(1) == y).double().mean()),
            "accuracy_after": float((after.argmax(1) == y).double().mean()),
            "label_loyalty": float((before.argmax(1) == after.argmax(1)).double().mean()),
            "probability_loyalty": float((1 - js.sqrt()).mean())}


def _sizes(parent: nn.Module, model: nn.Module, plan: BitWidthPlan | None) -> dict[str, Any]:
    """Parameters, MACs and weight bytes (at each layer's precision) before and after, and their ratios."""
    from latency_tables.analytic import AnalyticCostModel
    from nas.compress.bits import arch_pieces, layer_costs
    from search_spaces.plans import PRECISIONS

    arch_p, arch_c = _arch(parent), _arch(model)
    macs = (AnalyticCostModel("fp32").estimate(arch_p).macs, AnalyticCostModel("fp32").estimate(arch_c).macs)
    params = (sum(p.numel() for p in parent.parameters()), sum(p.numel() for p in model.parameters()))
    bytes_before = float(layer_costs(arch_p, ("fp32",), "size_bytes").sum())
    chosen = {name: (plan.precision_of(layers[0]) if plan else "fp32") for name, layers in arch_pieces(arch_c)}
    menu = tuple(p for p in PRECISIONS if p in set(chosen.values()))
    per_piece = layer_costs(arch_c, menu, "size_bytes")
    bytes_after = float(sum(per_piece[i, menu.index(p)] for i, p in enumerate(chosen.values())))
    return {"params_before": params[0], "params_after": params[1], "params_ratio": params[0] / params[1],
            "macs_before": macs[0], "macs_after": macs[1], "macs_ratio": macs[0] / macs[1],
            "bytes_before": bytes_before, "bytes_after": bytes_after, "bytes_ratio": bytes_before / bytes_after}


def _protocol(config: CompressConfig) -> Protocol:
    """How both the parent and the compressed model are timed: the config's protocol, else the table's."""
    return config.protocol or Protocol.from_dict(config.table.meta["protocol"])


def _parent_measured(directory: Path, spec: Any, runtime: str, protocol: Protocol, log: Log) -> float | None:
    """The parent's fp32 model on `runtime` timed now by `protocol` (None when it was not exported)."""
    from nas.export.latency import measure
    from nas.export.spec import label

    if (runtime, "fp32") not in spec.models:
        log(f"the parent has no {runtime} fp32 model: no measured speed-up")
        return None
    return float(measure(directory, spec, [(runtime, "fp32")], protocol, (), log)[label(runtime, "fp32")]["median_ms"])


def _measured_after(final: Path, config: CompressConfig, parent_ms: float | None) -> dict[str, Any]:
    """The compressed model's measured latency (from the export's metrics), speed-up and budget verdict."""
    measured = json.loads((final / "metrics.json").read_text(encoding="utf-8"))["latency"]["measured"]
    after = next((float(m["median_ms"]) for m in measured.values() if m["runtime"] == config.runtime), None)
    out: dict[str, Any] = {"measured_ms": after}
    if after and parent_ms:
        out["measured_speedup"] = parent_ms / after
    if after is not None:
        out["meets_budget_measured"] = bool(after <= config.budget_ms)
    return out


def _compressed(parent: nn.Module, spec: Any, data: Any, config: CompressConfig, out_root: Path, log: Log,
                progress: bool) -> tuple[nn.Module, PrunePlan | None, BitWidthPlan | None, dict[str, Any],
                                         CompressConfig]:
    """The compressed model, its plans, what each stage found, and the config as it ends (its table holds the
    keys measured on demand)."""
    torch.manual_seed(config.seed)
    model, prune_plan, bits, info = parent, None, None, {}
    if config.method in ("prune", "sequential"):
        teacher = _teacher(config, parent, data)  # a teacher that does not fit is refused before any work
        model, prune_plan, info["prune"], config = _prune(parent, data, config, spec.space, out_root, teacher, log,
                                                          progress)
    if config.method in ("quantize", "sequential"):
        bits, info["quantize"] = _quantize(model, data, config, spec.space, log)
    return model, prune_plan, bits, info, config


def _summary(parent: nn.Module, spec: Any, model: nn.Module, bits: BitWidthPlan | None, info: dict[str, Any],
             data: Any, config: CompressConfig, parent_ms: float | None) -> dict[str, Any]:
    """Everything `compress.json` says but the compressed model's measured latency."""
    x_cal, _ = _sample(data, config.images, config.seed, spec.arch.resolution)
    fid = fidelity(_outputs(parent, data, None, x_cal), _outputs(model, data, bits, x_cal), data.val.labels)
    stage = info["quantize"] if bits is not None else info["prune"]
    predicted = stage["allocation"]["predicted"]["latency_ms"] if bits is not None else stage["plan_predicted_ms"]
    parent_predicted = info["prune" if "prune" in info else "quantize"]["parent_predicted_ms"]
    latency: dict[str, Any] = {"predicted_ms": predicted, "parent_predicted_ms": parent_predicted,
                               "parent_measured_ms": parent_ms, "protocol": _protocol(config).to_dict()}
    if predicted and parent_predicted:
        latency["predicted_speedup"] = parent_predicted / predicted
    return {"method": config.method, "parent": spec.key, "budget_ms": config.budget_ms,
            "table": config.table.table_id, **fid, **_sizes(parent, model, bits), "latency": latency, **info}


def compress_subnet(subnet_dir: str | Path, out_root: str | Path, config: CompressConfig, *, data: Any = None,
                    log: Log = print, progress: bool = False) -> Path:
    """Compress the exported subnet in `subnet_dir` by `config` and export it to `out_root/<key>/` (the key of its
    architecture and plans); returns that directory. `data` defaults to the dataset its provenance names;
    `progress` shows the fine-tune's progress bars."""
    from nas.export import ExportOptions, Provenance, SubnetSpec, export_model, load_subnet
    from nas.export.spec import check_data
    from supernets.data import load_dataset

    subnet_dir, out_root = Path(subnet_dir), Path(out_root)
    parent, spec = load_subnet(subnet_dir)
    data = load_dataset(spec.provenance.dataset, seed=spec.provenance.seed) if data is None else data
    check_data(spec.arch, data)
    model, prune_plan, bits, info, config = _compressed(parent, spec, data, config, out_root, log, progress)
    used = ("fp32",) if bits is None else bits.used(_arch(model))
    precision = used[0] if len(used) == 1 else "mixed"
    # the parent is timed first, so that metrics.json holds every figure but the new model's own measurement
    parent_ms = _parent_measured(subnet_dir, spec, config.runtime, _protocol(config), log)
    summary = {**_summary(parent, spec, model, bits, info, data, config, parent_ms), "precision": precision}
    provenance = dataclasses.replace(spec.provenance, dataset=data.name, seed=config.seed,
                                     table_ids=(config.table.table_id,))
    new = SubnetSpec(_arch(model), spec.space, spec.mean, spec.std,
                     Provenance.from_dict(provenance.to_dict()), prune_plan=prune_plan, bitwidth_plan=bits)
    like_table = precision == config.table.profile.precision  # export_model checks a budget like for like only
    options = ExportOptions(runtimes=((config.runtime, precision),), tables=(config.table,),
                            protocol=_protocol(config),
                            constraint=f"latency_ms<={config.budget_ms}" if like_table else None,
                            parity_images=config.parity_images, overwrite=config.overwrite)
    final = export_model(model, new, data, out_root, options, extra_metrics={"compress": summary}, progress=log)
    summary["key"] = new.key
    summary["latency"].update(_measured_after(final, config, parent_ms))
    atomic_write_text(final / COMPRESS_FILE, json.dumps(summary, indent=2, default=str) + "\n")
    return final
