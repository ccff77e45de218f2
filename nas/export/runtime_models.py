"""Which runtime models an export writes and how each is converted: the (runtime, precision) pairs asked for,
checked against what each runtime exports and against the spec's bit-width plan (precision `mixed`: each layer at
its plan's precision), and int8 calibration on the dataset's training images."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from latency_tables.runtimes import MIXED, RUNTIMES, check_layer_precisions
from nas.export.spec import SubnetSpec
from search_spaces import ArchConfig
from search_spaces.errors import HwnasError

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

    from supernets.data import Dataset

#: What an export converts to by default: (runtime, precision).
DEFAULT_RUNTIMES: tuple[tuple[str, str], ...] = (("ort", "fp32"), ("litert", "fp32"))
#: Precisions each runtime's export supports: every registered runtime that converts a torch module, at its
#: precisions (`latency_tables.runtimes.RUNTIMES`).
EXPORT_PRECISIONS: dict[str, tuple[str, ...]] = {name: entry.precisions for name, entry in RUNTIMES.items()
                                                 if entry.converter}


def check_runtimes(runtimes: Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """`runtimes` as (runtime, precision) pairs; each a runtime and precision an export supports, none twice."""
    pairs = tuple((str(r), str(p)) for r, p in runtimes)
    for runtime, precision in pairs:
        if runtime not in EXPORT_PRECISIONS:
            known = [r for r in RUNTIMES if r in EXPORT_PRECISIONS]
            raise HwnasError(f"cannot export to runtime {runtime!r}; allowed: {', '.join(known)}")
        allowed = EXPORT_PRECISIONS[runtime] + ((MIXED,) if RUNTIMES[runtime].layer_precisions else ())
        if precision not in allowed:
            raise HwnasError(f"exporting {runtime} at precision {precision!r} is not supported; allowed: "
                             f"{', '.join(allowed)}")
    if len(set(pairs)) != len(pairs):
        raise HwnasError(f"runtimes {pairs} name one (runtime, precision) twice")
    return pairs


def runtimes_for(spec: SubnetSpec, runtimes: Sequence[tuple[str, str]] | None,
                 float_runtimes: Sequence[str] = ()) -> tuple[tuple[str, str], ...]:
    """The runtime models to write (`runtimes`; None: `DEFAULT_RUNTIMES`, with a uniform bit-width plan every
    runtime that exports the plan's precision, and with a plan that mixes precisions a `mixed` model for every
    runtime that runs each of its layers' precisions), checked against the spec's bit-width plan: a model at one
    precision needs every layer at that precision; a `mixed` model needs a runtime that runs each layer's
    precision; no runtime runs a simulated layer. A refusal names the layer and the runtime. A runtime in
    `float_runtimes` may be asked for at fp32 beside a plan: the plan is another runtime's, and this one runs the
    same (pruned) network in float."""
    plan = spec.bitwidth_plan
    simulated = sorted(plan.simulated_in(spec.arch)) if plan is not None else []
    if simulated and runtimes is None:
        raise HwnasError(f"the bit-width plan simulates layer {simulated[0]}'s precision "
                         f"({plan.precision_of(simulated[0]) if plan else ''}), which no runtime runs natively: a "
                         f"simulated plan gives accuracy, size and BitOPs figures and is not exported as deployable")
    if runtimes is not None:
        models = check_runtimes(runtimes)
    elif plan is not None and len(plan.used(spec.arch)) == 1:
        (precision,) = plan.used(spec.arch)
        models = tuple((r, precision) for r, allowed in EXPORT_PRECISIONS.items() if precision in allowed)
    elif plan is not None:
        used = set(plan.used(spec.arch))
        models = tuple((r, MIXED) for r, entry in RUNTIMES.items() if entry.converter and entry.layer_precisions
                       and used <= set(entry.layer_precisions))
        if not models:
            menus = "; ".join(f"{r}: {', '.join(e.layer_precisions)}" for r, e in RUNTIMES.items()
                              if e.layer_precisions)
            raise HwnasError(f"no runtime runs every precision of the bit-width plan ({', '.join(sorted(used))}) in "
                             f"one model; the precisions per layer each runs: {menus}")
    else:
        models = DEFAULT_RUNTIMES
    unknown = sorted(set(float_runtimes) - {r for r, p in models if p == "fp32"})
    if unknown:
        raise HwnasError(f"float_runtimes names {', '.join(unknown)}, which is not exported at fp32; allowed: the "
                         f"runtimes asked for at fp32")
    for runtime, precision in models:
        if runtime in float_runtimes:
            continue
        _check_plan(spec, runtime, precision)
    return models


def _check_plan(spec: SubnetSpec, runtime: str, precision: str) -> None:
    plan = spec.bitwidth_plan
    if plan is None:
        if precision == MIXED:
            raise HwnasError(f"the {runtime} {MIXED} model runs each layer at its bit-width plan's precision; the spec "
                             f"has no bit-width plan")
        return
    simulated = sorted(plan.simulated_in(spec.arch))
    if simulated:
        layer = simulated[0]
        raise HwnasError(f"the bit-width plan simulates layer {layer}'s precision, which {runtime} does not run "
                         f"natively; {runtime} exports only layers at a precision it runs")
    precisions = plan.precisions(spec.arch)
    if precision == MIXED:
        check_layer_precisions(runtime, precisions)
        return
    for layer, wanted in precisions.items():
        if wanted != precision:
            raise HwnasError(f"the bit-width plan runs layer {layer} at {wanted}, but the {runtime} model is "
                             f"{precision}: export ({runtime!r}, {MIXED!r}) to run each layer at its plan's "
                             f"precision, or give every layer {precision}")


def calibration_inputs(data: Dataset, arch: ArchConfig, n: int, seed: int) -> list[np.ndarray]:
    """`n` training images of `data` (a seeded choice) at the architecture's resolution, normalised as the model's
    input, one (1, C, H, W) array each: what int8 models are calibrated on."""
    from supernets.evaluation import recalibration_images

    x = recalibration_images(data, arch.resolution, n, seed).numpy()
    return [x[i:i + 1] for i in range(len(x))]


def convert_model(model: nn.Module, spec: SubnetSpec, runtime: str, precision: str, path: Path,
                  calibration: Sequence[np.ndarray]) -> None:
    """Write `model` as `runtime`'s model file at `precision` with the registry's converter (int8 calibrated on
    `calibration`; a `mixed` model's layers at the spec's bit-width plan's precisions)."""
    from latency_tables.convert import export_model_file

    plan = spec.bitwidth_plan
    layers = plan.precisions(spec.arch) if precision == MIXED and plan is not None else None
    export_model_file(runtime, precision, model, spec.input_shape, path, calibration, layers=layers)


def needs_calibration(models: Sequence[tuple[str, str]]) -> bool:
    """Whether any of `models` quantizes activations (int8, or mixed, which may), so needs calibration images."""
    return any(p in ("int8", MIXED) for _, p in models)
