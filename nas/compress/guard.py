"""Guards for post-training quantisation: empirical bias correction, and the guard against precision collapse.

- `bias_correct`: empirical bias correction (Nagel, van Baalen, Blankevoort and Welling, "Data-Free Quantization
  through Weight Equalization and Bias Correction", ICCV 2019, section 4.2, empirical variant). For every layer
  the plan quantises, in network order, the mean per output channel of the layer's pre-activation output under the
  simulated plan (its weights quantised, its input from the already corrected, simulated layers before it) minus
  the float model's is subtracted from the layer's bias (a conv+BN unit's BatchNorm bias). The simulated plan's
  outputs are then unbiased on the calibration images, layer after layer.
- `guard_plan`: a bit-width plan simulated on the validation split (`fake_quantized_layers`, MinMax ranges on the
  calibration images, as the runtimes calibrate) against the float model. Past the tolerance the quantised layers
  are ranked by their measured sensitivity at their planned precision (`measured_sensitivity`: each quantised
  alone on the calibration images, accuracy drop against the float model's own predictions, then KL) and raised
  to fp32 one at a time, most sensitive first, until the plan is within tolerance; then each raised layer the plan
  stays within tolerance without is lowered again. Simulation and sensitivity quantise what the runtime quantises
  (`output_ranges(..., runtime=True)`: a layer's input tensor too). A plan that collapses (near
  chance while the float model is not, or past the tolerance) with `strict`, or that raising `max_raised` layers
  cannot save, is a `PrecisionCollapse` naming the layers responsible: collapse is an error, never an export.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from nas.compress.distill import static_arch
from nas.compress.sensitivity import fake_quantized_layers, measured_sensitivity, output_ranges
from search_spaces.errors import HwnasError
from search_spaces.plans import BitWidthPlan
from supernets.data import Dataset, to_tensor
from supernets.layers import ConvBNAct, layer_modules

#: A planned accuracy within this much (fraction) of chance (1 / classes) is a collapse whatever the tolerance.
NEAR_CHANCE = 0.10
#: Layers a `PrecisionCollapse` message names at most.
NAMED_LAYERS = 5


class PrecisionCollapse(HwnasError):
    """A bit-width plan whose simulated accuracy collapses (near chance or past the tolerance)."""


def _preactivation(module: nn.Module) -> nn.Module:
    """Where a layer's bias acts: a conv+BN unit's BatchNorm, else the layer itself."""
    return module[1] if isinstance(module, ConvBNAct) else module


def _bias(module: nn.Module) -> torch.Tensor | None:
    bias = _preactivation(module).bias
    return bias if isinstance(bias, torch.Tensor) else None


@torch.no_grad()
def _channel_means(model: nn.Module, layer_ids: list[str], images: torch.Tensor, batch_size: int = 64
                   ) -> dict[str, torch.Tensor]:
    """Mean per output channel of each layer's pre-activation output over `images` (float64), model in eval mode."""
    layers = dict(layer_modules(model))
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def record(name: str) -> Callable[[nn.Module, object, torch.Tensor], None]:
        def hook(_: nn.Module, __: object, out: torch.Tensor) -> None:
            flat = out.detach().double().transpose(0, 1).reshape(out.shape[1], -1)
            sums[name] = sums.get(name, 0) + flat.sum(1)
            counts[name] = counts.get(name, 0) + flat.shape[1]
        return hook

    handles = [_preactivation(layers[name]).register_forward_hook(record(name)) for name in layer_ids]
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(images), batch_size):
            model(images[start:start + batch_size])
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return {name: sums[name] / counts[name] for name in layer_ids}


def bias_correct(model: nn.Module, plan: BitWidthPlan, calibration: torch.Tensor) -> nn.Module:
    """A deep copy of `model` with empirical bias correction for `plan` on the `calibration` images (see the module
    docstring); `model` is not changed. Layers without a bias (none in `build_model`'s networks) are left as they
    are. The simulation's activation ranges are recalibrated on the corrected model before each layer."""
    precisions = plan.precisions(static_arch(model, "model"))
    corrected = copy.deepcopy(model).eval()
    quantised = [name for name, p in precisions.items() if p != "fp32"]
    reference = _channel_means(model, quantised, calibration)
    layers = dict(layer_modules(corrected))
    for name in quantised:
        bias = _bias(layers[name])
        if bias is None:
            continue
        with torch.no_grad():
            ranges = output_ranges(corrected, calibration, runtime=True)
        with fake_quantized_layers(corrected, precisions, ranges):
            simulated = _channel_means(corrected, [name], calibration)[name]
        with torch.no_grad():
            bias -= (simulated - reference[name]).to(bias.dtype)
    return corrected


@dataclass(frozen=True)
class GuardResult:
    """What `guard_plan` found and did: the (possibly raised) plan, the layers raised to fp32 in order, top-1
    accuracies (fractions) of the float model, the plan as given and the guarded plan on the same validation
    images, whether the given plan collapsed, and the tolerance (absolute drop) it was judged by."""

    plan: BitWidthPlan
    raised: tuple[str, ...]
    accuracy_float: float
    accuracy_planned: float
    accuracy_guarded: float
    collapsed: bool
    tolerance: float
    chance: float = 0.0
    images: int = 0
    ranking: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"plan": self.plan.to_dict(), "raised": list(self.raised), "accuracy_float": self.accuracy_float,
                "accuracy_planned": self.accuracy_planned, "accuracy_guarded": self.accuracy_guarded,
                "collapsed": self.collapsed, "tolerance": self.tolerance, "chance": self.chance,
                "images": self.images, "ranking": list(self.ranking)}


class _Simulator:
    """Top-1 accuracy of a model under bit-width plans on fixed validation images, ranges from calibration."""

    def __init__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                 calibration: torch.Tensor) -> None:
        self.model, self.images, self.labels = model, images, labels
        self.arch = static_arch(model, "model")
        with torch.no_grad():
            self.ranges = output_ranges(model, calibration, runtime=True)

    @torch.no_grad()
    def _top1(self) -> float:
        was_training = self.model.training
        self.model.eval()
        try:
            logits = torch.cat([self.model(self.images[i:i + 250]) for i in range(0, len(self.images), 250)])
        finally:
            self.model.train(was_training)
        return float((logits.argmax(1) == self.labels).double().mean())

    def accuracy(self, plan: BitWidthPlan | None) -> float:
        if plan is None:
            return self._top1()
        with fake_quantized_layers(self.model, plan.precisions(self.arch), self.ranges):
            return self._top1()


def _ranked(model: nn.Module, precisions: Mapping[str, str], calibration: torch.Tensor) -> list[str]:
    """The quantised layers, most sensitive first: each quantised alone at its precision on the calibration
    images, by accuracy drop against the float model's own top-1 (the images have no labels), then KL."""
    with torch.no_grad():
        model.eval()
        labels = torch.cat([model(calibration[i:i + 250]) for i in range(0, len(calibration), 250)]).argmax(1)
    scores: dict[str, tuple[float, float]] = {}
    for precision in sorted(set(precisions.values()) - {"fp32"}):
        layers = [name for name, p in precisions.items() if p == precision]
        found = measured_sensitivity(model, calibration, labels, (precision,), layers=layers, runtime=True)
        scores |= {name: (per[precision].accuracy_drop, per[precision].kl) for name, per in found.items()}
    order = list(precisions)  # ties: network order
    return sorted(scores, key=lambda name: (-scores[name][0], -scores[name][1], order.index(name)))


def _raised(plan: BitWidthPlan, layers: list[str]) -> BitWidthPlan:
    return BitWidthPlan({**plan.layers, **dict.fromkeys(layers, "fp32")}, plan.default,
                        plan.simulated - set(layers))


def guard_plan(model: nn.Module, plan: BitWidthPlan, data: Dataset, calibration: torch.Tensor, *,
               tolerance: float = 0.015, images: int | None = None, strict: bool = False,
               max_raised: int | None = None, log: Callable[[str], None] = print) -> GuardResult:
    """Simulate `plan` on `data.val` (the first `images`) and keep it within `tolerance` of the float model by
    raising its most sensitive layers to fp32 (see the module docstring).

    Args:
        calibration: normalised training images at the model's resolution: activation ranges and sensitivity.
        strict: refuse a collapsed plan (`PrecisionCollapse`) instead of raising layers.
        max_raised: at most this many layers raised (None: as many as the plan quantises).
    Raises:
        PrecisionCollapse: with `strict` and a collapsed plan, or when `max_raised` layers do not bring the plan
            within tolerance; the message names the accuracy, chance and the most sensitive layers.
    """
    arch = static_arch(model, "model")
    if not 0.0 <= tolerance < 1.0 or (max_raised is not None and max_raised < 0):
        raise HwnasError(f"guard_plan: tolerance must be in [0, 1) and max_raised None or >= 0; got tolerance "
                         f"{tolerance}, max_raised {max_raised}")
    n = len(data.val) if images is None else min(int(images), len(data.val))
    if n < 1:
        raise HwnasError(f"guard_plan needs at least one validation image; got images={images}")
    x = to_tensor(data.val.images[:n], arch.resolution, data.mean, data.std)
    sim = _Simulator(model, x, torch.as_tensor(np.asarray(data.val.labels[:n])), calibration)
    chance = 1.0 / arch.num_classes
    acc_float, acc_planned = sim.accuracy(None), sim.accuracy(plan)

    def fails(acc: float) -> bool:  # near chance counts only where the float model is not near chance itself
        return acc_float - acc > tolerance or (acc <= chance + NEAR_CHANCE < acc_float)

    collapsed = fails(acc_planned)
    log(f"guard: plan {plan.key} top-1 {acc_planned:.2%} (float {acc_float:.2%}, chance {chance:.2%}) on {n} "
        f"validation images")
    result = GuardResult(plan, (), acc_float, acc_planned, acc_planned, collapsed, tolerance, chance, n)
    if not collapsed:
        return result
    precisions = plan.precisions(arch)
    ranking = _ranked(model, precisions, calibration)
    if strict:
        raise PrecisionCollapse(_collapse_message(plan, result, ranking, precisions, "strict guard: nothing raised"))
    raised: list[str] = []
    acc, guarded = acc_planned, plan
    for layer in ranking[:len(ranking) if max_raised is None else max_raised]:
        if not fails(acc):
            break
        raised.append(layer)
        guarded = _raised(plan, raised)
        acc = sim.accuracy(guarded)
        log(f"guard: {layer} ({precisions[layer]}) raised to fp32: top-1 {acc:.2%}")
    if not fails(acc):
        raised, acc = _needed(plan, raised, sim, fails, acc, log)
        guarded = _raised(plan, raised)
    result = GuardResult(guarded, tuple(raised), acc_float, acc_planned, acc, collapsed, tolerance, chance, n,
                         tuple(ranking))
    if fails(acc):
        raise PrecisionCollapse(_collapse_message(plan, result, ranking, precisions,
                                                  f"{len(raised)} layer(s) raised to fp32 did not save it"))
    return result


def _needed(plan: BitWidthPlan, raised: list[str], sim: _Simulator, fails: Callable[[float], bool], acc: float,
            log: Callable[[str], None]) -> tuple[list[str], float]:
    """`raised` without the layers the plan stays within tolerance without (tried last raised first, the last
    one kept: it brought the plan within), and the accuracy then."""
    kept = list(raised)
    for layer in reversed(raised[:-1]):
        trial = [name for name in kept if name != layer]
        trial_acc = sim.accuracy(_raised(plan, trial))
        if not fails(trial_acc):
            kept, acc = trial, trial_acc
            log(f"guard: {layer} lowered again (not needed): top-1 {acc:.2%}")
    return kept, acc


def _collapse_message(plan: BitWidthPlan, result: GuardResult, ranking: list[str], precisions: Mapping[str, str],
                      what: str) -> str:
    named = ", ".join(f"{name} ({precisions[name]})" for name in ranking[:NAMED_LAYERS])
    return (f"precision collapse: plan {plan.key} gives {result.accuracy_planned:.1%} top-1 on {result.images} "
            f"validation images (float {result.accuracy_float:.1%}, chance {result.chance:.1%}, tolerance "
            f"{result.tolerance * 100:.1f} points; {what}); the most sensitive layers: {named}; keep them at a "
            f"higher precision (guard_plan without strict raises them to fp32), or train under the plan "
            f"(finetune with bits=)")
