"""Whether an export's runtime models compute what the PyTorch model computes, judged per precision.

The criteria live in `PARITY`, the one place that states them: an fp32 model must give PyTorch's logits within a
tolerance and its top-1 class on every image; an fp16 or int8 model rounds by design, so it must give PyTorch's
top-1 class on at least a stated fraction of the validation images, and its largest logit difference is reported.
A mixed-precision model (layers at the precisions of a bit-width plan) is judged by its lowest precision's criterion.

A quantised model (int8, or mixed with a bit-width plan that quantises a layer) is also compared with the PyTorch
simulation of its plan (`nas.compress.sensitivity.fake_quantized_layers`; a uniform int8 model without a plan
simulates every layer at int8), with the tensors a runtime quantises beside layer outputs (`output_ranges(...,
runtime=True)`: the input, unfused pre-activations), MinMax ranges calibrated on the same training images the
export calibrated on (`nas.export.runtime_models.calibration_inputs`, the spec's `provenance`). That is the model
the runtime should be running, so it must agree on the top-1 class of `SIMULATION_PARITY` of the images, beside the
float criterion above. Each report's `simulation` holds that comparison (None for float models, or for an export
whose calibration images are not recorded).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from latency_tables.runtimes import MIXED, RuntimeMissing, get_runtime
from nas.export.spec import (
    ParityError,
    Progress,
    SubnetError,
    SubnetSpec,
    check_data,
    checked_file,
    label,
    load_subnet,
    model_file,
    read_metrics,
    say,
    write_metrics,
)
from search_spaces.errors import HwnasError

if TYPE_CHECKING:
    from torch import nn

    from search_spaces.plans import BitWidthPlan
    from supernets.data import Dataset


@dataclass(frozen=True)
class ParityCriterion:
    """What a runtime model at one precision must meet: its top-1 class is PyTorch's on at least
    `min_top1_agreement` of the images, and (when `max_abs_diff` is set) no logit differs by more."""

    min_top1_agreement: float
    max_abs_diff: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"min_top1_agreement": self.min_top1_agreement, "max_abs_diff": self.max_abs_diff}


PARITY: dict[str, ParityCriterion] = {
    # The same arithmetic in another order: only float rounding may differ.
    "fp32": ParityCriterion(1.0, 1e-4),
    # fp16 rounds every weight to 11 significant bits, moving logits by about 1e-3 of their size: that flips the
    # top-1 class only where the two best logits nearly tie, which 1% of images leaves room for and no more.
    "fp16": ParityCriterion(0.99),
    # int8 (per-channel weights, activations calibrated on training images) costs well under 1% top-1 on trained
    # networks; agreement below 97% means a broken calibration or conversion rather than quantisation noise.
    "int8": ParityCriterion(0.97),
}
#: What a quantised runtime model must meet against the PyTorch simulation of its bit-width plan (the issue's bound):
#: the simulation rounds the same weights and layer outputs, so only the rounding the runtime adds elsewhere (its
#: input, residual adds, pooling, pre-activation tensors) may move the top-1 class.
SIMULATION_PARITY = ParityCriterion(0.99)
#: Precisions from the one that rounds most: a mixed-precision model is judged by the first its layers use.
LOWEST_FIRST = ("int8", "fp16", "fp32")
#: Largest |logit difference| an fp32 runtime model may show against PyTorch.
PARITY_TOLERANCE = PARITY["fp32"].max_abs_diff or 0.0


def criterion(precision: str, tolerance: float = PARITY_TOLERANCE) -> ParityCriterion:
    """The criterion for a model at `precision`; `tolerance` replaces fp32's logit bound."""
    if precision not in PARITY:
        raise HwnasError(f"no parity criterion for precision {precision!r}; allowed: {', '.join(PARITY)}")
    found = PARITY[precision]
    return ParityCriterion(found.min_top1_agreement, tolerance) if found.max_abs_diff is not None else found


def judged_as(spec: SubnetSpec, precision: str) -> str:
    """The precision whose criterion a runtime model at `precision` is judged by: its own, or for a mixed-precision
    model the lowest precision any of its layers runs at (its bit-width plan's), since that layer's rounding is
    what can move the top-1 class."""
    if precision != MIXED:
        return precision
    used = spec.bitwidth_plan.used(spec.arch) if spec.bitwidth_plan is not None else ()
    return next((p for p in LOWEST_FIRST if p in used), "fp32")


def _load_session(directory: Path, spec: SubnetSpec, runtime: str, precision: str, threads: int) -> tuple[Any, Path]:
    name = model_file(runtime, precision)
    path = checked_file(directory, spec, name, f" (the {runtime} {precision} model)")
    rt = get_runtime(runtime)
    rt.version()  # RuntimeMissing, naming what to install, before anything else is tried
    try:
        return rt.load(path, threads), path
    except RuntimeMissing:
        raise
    except Exception as err:  # noqa: BLE001 - each runtime raises its own types for an unreadable model
        raise SubnetError(f"{path} cannot be loaded by {runtime} ({type(err).__name__}: {err}); export the subnet "
                          f"again") from None


def _judged(path: Path, precision: str, judged: str, tolerance: float, n: int, diff: float, differ: int,
            correct: int, simulation: dict[str, Any] | None) -> dict[str, Any]:
    want = criterion(judged, tolerance)
    agreement = 1 - differ / n
    ok = math.isfinite(diff) and agreement >= want.min_top1_agreement and \
        (want.max_abs_diff is None or diff <= want.max_abs_diff)
    return {"file": path.name, "precision": precision, "judged_as": judged, "criterion": want.to_dict(),
            "max_abs_diff": diff, "top1_agreement": agreement, "top1_differ": differ, "top1": correct / n,
            "simulation": simulation, "passed": ok and (simulation is None or simulation["passed"])}


def simulated_plan(spec: SubnetSpec, precision: str) -> BitWidthPlan | None:
    """The bit-width plan a runtime model at `precision` runs, for its PyTorch simulation: the spec's plan (an int8
    model without one: every layer int8); None for a model that quantises nothing."""
    from search_spaces.plans import BitWidthPlan

    if precision not in ("int8", MIXED):
        return None
    plan = spec.bitwidth_plan if spec.bitwidth_plan is not None else BitWidthPlan(default=precision)
    if precision == MIXED and set(plan.used(spec.arch)) <= {"fp32"}:
        return None
    return plan


class _Simulations:
    """The PyTorch simulation of each quantised runtime model's plan, ranges calibrated on the export's images."""

    def __init__(self, model: nn.Module, spec: SubnetSpec, data: Dataset, models: Sequence[tuple[str, str]]) -> None:
        import torch

        from nas.compress.sensitivity import output_ranges
        from nas.export.runtime_models import calibration_inputs

        self.model, self.spec = model, spec
        self.plans = {label(r, p): plan for r, p in models if (plan := simulated_plan(spec, p)) is not None}
        n = spec.provenance.calibration_images
        self.ranges: dict[str, tuple[float, float]] = {}
        if self.plans and n > 0:
            images = calibration_inputs(data, spec.arch, n, spec.provenance.seed)
            self.ranges = output_ranges(model, torch.from_numpy(np.concatenate(images)), runtime=True)
        else:
            self.plans = {}
        self.differ = dict.fromkeys(self.plans, 0)
        self.diffs = dict.fromkeys(self.plans, 0.0)
        self.abs_sums = dict.fromkeys(self.plans, 0.0)

    def logits(self, x: Any) -> dict[str, Any]:
        """Simulated logits per plan key for the batch `x`."""
        import torch

        from nas.compress.sensitivity import fake_quantized_layers

        found = {}
        for plan in {p.key: p for p in self.plans.values()}.values():
            with fake_quantized_layers(self.model, plan.precisions(self.spec.arch), self.ranges), \
                    torch.inference_mode():
                found[plan.key] = self.model(x).numpy()
        return found

    def record(self, name: str, simulated: Mapping[str, Any], got: Any) -> None:
        if name in self.plans:
            want = simulated[self.plans[name].key]
            self.diffs[name] = max(self.diffs[name], float(np.abs(got - want).max()))
            self.abs_sums[name] += float(np.abs(got - want).mean(1).sum())
            self.differ[name] += int((got.argmax(1) != want.argmax(1)).sum())

    def report(self, name: str, n: int) -> dict[str, Any] | None:
        if name not in self.plans:
            return None
        agreement = 1 - self.differ[name] / n
        return {"plan": self.plans[name].key, "calibration_images": self.spec.provenance.calibration_images,
                "criterion": SIMULATION_PARITY.to_dict(), "top1_agreement": agreement,
                "top1_differ": self.differ[name], "max_abs_diff": self.diffs[name],
                "mean_abs_diff": self.abs_sums[name] / n,
                "passed": agreement >= SIMULATION_PARITY.min_top1_agreement}


def compare(model: nn.Module, directory: Path, spec: SubnetSpec, data: Dataset, models: Sequence[tuple[str, str]],
            *, images: int | None, tolerance: float, threads: int, batch: int = 250,
            progress: Progress | None = None) -> dict[str, Any]:
    """Compare each runtime model's logits with PyTorch's on the first `images` validation images, one at a time,
    and judge each by its precision's criterion (a quantised one also against its plan's simulation)."""
    import torch

    from supernets.data import to_tensor

    split = data.val
    n = len(split) if images is None else max(0, min(int(images), len(split)))
    if n == 0:
        raise HwnasError("parity needs at least one validation image")
    sessions = {label(r, p): _load_session(directory, spec, r, p, threads) for r, p in models}
    diffs = {name: 0.0 for name in sessions}
    differ = {name: 0 for name in sessions}
    correct = {name: 0 for name in ("torch", *sessions)}
    say(progress, f"parity of {', '.join(sessions)} with PyTorch on {n} validation images")
    model.eval()
    simulations = _Simulations(model, spec, data, models)
    for start in range(0, n, batch):
        x = to_tensor(split.images[start:min(n, start + batch)], spec.arch.resolution, spec.mean, spec.std)
        labels = split.labels[start:start + len(x)]
        with torch.inference_mode():
            want = model(x).numpy()
        correct["torch"] += int((want.argmax(1) == labels).sum())
        simulated = simulations.logits(x)
        xs = x.numpy()
        for name, (session, _) in sessions.items():
            got = np.concatenate([session.to_torch(session(session.from_torch(xs[i:i + 1]))).reshape(1, -1)
                                  for i in range(len(xs))])
            if got.shape != want.shape:
                raise ParityError(f"{sessions[name][1]} gives logits of shape {got.shape[1:]}, PyTorch "
                                  f"{want.shape[1:]}")
            diffs[name] = max(diffs[name], float(np.abs(got - want).max()))
            differ[name] += int((got.argmax(1) != want.argmax(1)).sum())
            correct[name] += int((got.argmax(1) == labels).sum())
            simulations.record(name, simulated, got)
    report: dict[str, Any] = {"tolerance": tolerance, "images": n, "split": "val", "torch_top1": correct["torch"] / n,
                              "runtimes": {}}
    for (_, precision), (name, (_, path)) in zip(models, sessions.items(), strict=True):
        report["runtimes"][name] = _judged(path, precision, judged_as(spec, precision), tolerance, n, diffs[name],
                                           differ[name], correct[name], simulations.report(name, n))
    report["passed"] = all(r["passed"] for r in report["runtimes"].values())
    return report


def parity_failures(report: Mapping[str, Any]) -> list[str]:
    """One line per runtime model that fails parity in a `check_parity` report (empty when all pass)."""
    lines = []
    for name, r in report["runtimes"].items():
        if r["passed"]:
            continue
        want = r.get("criterion", {"min_top1_agreement": 1.0, "max_abs_diff": report["tolerance"]})
        parts = []
        if r["top1_agreement"] < want["min_top1_agreement"]:
            parts.append(f"{r['top1_differ']} of {report['images']} validation images get another top-1 class than "
                         f"PyTorch (agreement {r['top1_agreement']:.2%}, needs {want['min_top1_agreement']:.0%})")
        bound = want["max_abs_diff"]
        if bound is not None and not r["max_abs_diff"] <= bound:
            parts.append(f"largest |logit difference| {r['max_abs_diff']:.3g} > {bound:g}")
        elif not math.isfinite(r["max_abs_diff"]):
            parts.append(f"largest |logit difference| {r['max_abs_diff']}")
        sim = r.get("simulation")
        if sim is not None and not sim["passed"]:
            parts.append(f"{sim['top1_differ']} of {report['images']} get another top-1 class than the PyTorch "
                         f"simulation of plan {sim['plan']} (agreement {sim['top1_agreement']:.2%}, needs "
                         f"{sim['criterion']['min_top1_agreement']:.0%})")
        lines.append(f"{r['file']} ({name}): {'; '.join(parts)}")
    return lines


def check_parity(directory: str | Path, data: Dataset, *, images: int | None = None,
                 tolerance: float = PARITY_TOLERANCE, threads: int = 1, record: bool = True,
                 raise_on_failure: bool = True, progress: Progress | None = None) -> dict[str, Any]:
    """Whether each runtime model of an export meets its precision's criterion (`PARITY`; `tolerance` is fp32's
    logit bound) on the first `images` validation images of `data` (all by default). Returns the report (per
    runtime: max_abs_diff, top1_agreement, top1_differ, top1, criterion, passed); with `record`, stores it in
    metrics.json as `parity`. Raises a `ParityError` saying what differs unless `raise_on_failure` is False."""
    directory = Path(directory)
    model, spec = load_subnet(directory)
    check_data(spec.arch, data)
    report = compare(model, directory, spec, data, spec.models, images=images, tolerance=tolerance, threads=threads,
                     progress=progress)
    if record:
        metrics = read_metrics(directory)
        metrics["parity"] = report
        write_metrics(directory, metrics)
    if raise_on_failure and not report["passed"]:
        raise ParityError(f"{directory}: runtime models disagree with PyTorch: " + " | ".join(parity_failures(report)))
    return report
