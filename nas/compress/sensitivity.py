"""How much each layer of a static model minds being quantised, per layer id: measured and Hessian-based.

- Measured (`measured_sensitivity`): one layer alone is fake-quantised (`fake_quantized`) and the accuracy drop and
  the KL divergence of the outputs against the float model are recorded on calibration images. Fake quantisation
  is simulated with torch ops and straight-through rounding (so the same context serves quantisation-aware
  training): per-channel symmetric weights (the convolution's weight before BatchNorm folding; per-channel
  symmetric rounding commutes with the per-channel BN scale, so this equals quantising the folded weight) and
  per-tensor asymmetric (uint8-style) activations of the layer's output, with ranges from the float model on the
  calibration images (MinMax, as ONNX Runtime calibrates by default); an activation's gradient passes straight
  through where it lies in the range and is zero where the range clips it (as torch's FakeQuantize). `int16` is
  16x8 (int16 activations, int8 weights, as LiteRT and ORT run it); `fp16` rounds weights and outputs through
  half precision; `w<b>a<b>` (e.g. `w4a8`) are simulated integer bit-widths for accelerators hwnas cannot run.
- Runtime tensors (`output_ranges(..., runtime=True)`): ONNX Runtime's QDQ graphs and LiteRT's int8 models
  quantise every tensor a quantised layer reads, not only layer outputs (the network input, residual sums,
  concatenations, pooled and squeeze-excited tensors), and, where the activation is not fused into the convolution
  (hard-swish, SiLU, hard-sigmoid; ReLU and ReLU6 are fused), the convolution's pre-activation output. With those
  ranges (keys `<layer id>` + `IN` and + `PRE`) `fake_quantized_layers` quantises them too (a layer's input at 8
  bits, 16 under 16x8; a pre-activation at the layer's activation bits): the simulation runtime parity is judged
  against.
- Hessian trace (`hessian_trace`): HAWQ-V2 (Dong et al., "HAWQ-V2: Hessian Aware trace-Weighted Quantization of
  Neural Networks", NeurIPS 2020). Hutchinson's estimator Tr(H) = E[v^T H v] over Rademacher vectors v, the
  Hessian-vector product taken by differentiating the gradient a second time; one vector over all layers' weights
  per sample, each layer's trace read from its own block (the cross terms vanish in expectation). Divided by the
  layer's weight count. `hawq_scores` turns it into HAWQ-V3's per-precision objective Tr(H)/n * ||Q(W) - W||^2.
- `rank_agreement`: Kendall's tau between each estimator's layer ranking and the measured accuracy drop.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from latency_tables.table import kendall_tau
from search_spaces.errors import HwnasError
from supernets.layers import ConvBNAct, layer_modules

#: Named simulated precisions: (weight bits, activation bits); None for fp16 (rounded through half precision).
NAMED_SPECS: dict[str, tuple[int, int] | None] = {"int8": (8, 8), "int16": (8, 16), "fp16": None}
_SIMULATED = re.compile(r"w([2-8])a([2-8]|16)")

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: Range keys of the tensors a runtime quantises beside layer outputs (`output_ranges(..., runtime=True)`): a
#: layer's input (layer id + IN), and its pre-activation output (layer id + PRE) where its activation is not fused.
IN, PRE = "#in", "#pre"
#: Activations a runtime fuses into the convolution before quantising its output.
FUSED_ACTIVATIONS: tuple[type[nn.Module], ...] = (nn.ReLU, nn.ReLU6)


def quant_bits(precision: str) -> tuple[int, int] | None:
    """(weight bits, activation bits) of a simulated precision; None for fp16."""
    if precision in NAMED_SPECS:
        return NAMED_SPECS[precision]
    match = _SIMULATED.fullmatch(precision)
    if not match:
        raise HwnasError(f"unknown simulated precision {precision!r}; allowed: {', '.join(NAMED_SPECS)}, or "
                         f"w<2-8>a<2-8|16> (simulated integer bit-widths, e.g. w4a8)")
    return int(match.group(1)), int(match.group(2))


def _straight_through(x: torch.Tensor, rounded: torch.Tensor) -> torch.Tensor:
    """`rounded` forward, identity backward (the straight-through estimator)."""
    return x + (rounded - x).detach()


def quantize_weight(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-channel symmetric fake quantisation to `bits` (levels -(2^(b-1)-1) .. 2^(b-1)-1)."""
    top = 2 ** (bits - 1) - 1
    flat = weight.detach().reshape(weight.shape[0], -1)
    scale = flat.abs().amax(dim=1).clamp_min(1e-12) / top
    scale = scale.reshape(-1, *([1] * (weight.dim() - 1)))
    return _straight_through(weight, torch.clamp(torch.round(weight / scale), -top, top) * scale)


def quantize_activation(x: torch.Tensor, low: float, high: float, bits: int) -> torch.Tensor:
    """Per-tensor asymmetric fake quantisation to `bits` over [low, high] (widened to hold 0, which stays exact)."""
    low, high = min(low, 0.0), max(high, 0.0)
    levels = 2**bits - 1
    scale = (high - low) / levels if high > low else 1.0
    zero = round(-low / scale)
    q = torch.clamp(torch.round(x / scale) + zero, 0, levels)
    # clipped straight-through (as torch's FakeQuantize): no gradient where the range clips the value
    inside = ((x >= (0 - zero) * scale) & (x <= (levels - zero) * scale)).to(x.dtype)
    return ((q - zero) * scale).detach() + (x - x.detach()) * inside


def _through_half(x: torch.Tensor) -> torch.Tensor:
    return _straight_through(x, x.half().float())


class _WeightQuant(nn.Module):
    """A parametrization: the weight as the runtime would store it."""

    def __init__(self, bits: int | None) -> None:
        super().__init__()
        self.bits = bits

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return _through_half(weight) if self.bits is None else quantize_weight(weight, self.bits)


def layer_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """Each layer's weight by layer id, in network order (a conv+BN unit's convolution weight)."""
    found: dict[str, nn.Parameter] = {}
    for name, module in layer_modules(model):
        weight = _weighted(module).weight
        assert isinstance(weight, nn.Parameter)
        found[name] = weight
    return found


def _weighted(module: nn.Module) -> nn.Module:
    return module[0] if isinstance(module, ConvBNAct) else module


def _layer(model: nn.Module, layer_id: str) -> nn.Module:
    layers = dict(layer_modules(model))
    if layer_id not in layers:
        raise HwnasError(f"model has no layer {layer_id!r}; its layers: {', '.join(layers)}")
    return layers[layer_id]


def _unfused(module: nn.Module) -> nn.Module | None:
    """A conv+BN unit's BatchNorm when an activation the runtime does not fuse follows it, else None."""
    if isinstance(module, ConvBNAct) and len(module) > 2 and not isinstance(module[2], FUSED_ACTIVATIONS):
        return module[1]
    return None


@contextmanager
def fake_quantized(model: nn.Module, layer_id: str, precision: str,
                   output_range: tuple[float, float] | None = None, *,
                   pre_range: tuple[float, float] | None = None,
                   input_range: tuple[float, float] | None = None) -> Iterator[nn.Module]:
    """`model` with layer `layer_id` fake-quantised at `precision` (weights and output), restored on exit.

    `output_range` is the calibrated (min, max) of the layer's float output; needed for integer activations.
    `pre_range` (its pre-activation output) and `input_range` (its input tensor) quantise those too, at integer
    precisions, as a runtime does (see the module docstring)."""
    bits = quant_bits(precision)
    module = _layer(model, layer_id)
    if bits is not None and output_range is None:
        raise HwnasError(f"fake-quantising {layer_id} at {precision} needs its calibrated output range (min, max)")
    target = _weighted(module)
    parametrize.register_parametrization(target, "weight", _WeightQuant(None if bits is None else bits[0]))

    def quantize_output(_: nn.Module, __: object, out: torch.Tensor) -> torch.Tensor:
        if bits is None:
            return _through_half(out)
        assert output_range is not None
        return quantize_activation(out, output_range[0], output_range[1], bits[1])

    handles = [module.register_forward_hook(quantize_output)]
    norm = _unfused(module)
    if bits is not None and pre_range is not None and norm is not None:
        low, high = pre_range
        handles.append(norm.register_forward_hook(lambda _, __, out: quantize_activation(out, low, high, bits[1])))
    if bits is not None and input_range is not None:
        low_in, high_in = input_range
        input_bits = max(8, bits[1])  # the tensor a layer reads is 8-bit (16 under 16x8), as runtimes store it
        handles.append(module.register_forward_pre_hook(
            lambda _, args: (quantize_activation(args[0], low_in, high_in, input_bits), *args[1:])))
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()
        parametrize.remove_parametrizations(target, "weight", leave_parametrized=False)


@contextmanager
def fake_quantized_layers(model: nn.Module, layers: Mapping[str, str],
                          ranges: Mapping[str, tuple[float, float]]) -> Iterator[nn.Module]:
    """`model` with each layer of `layers` (layer id -> precision, e.g. `BitWidthPlan.precisions(arch)`) that is
    not fp32 fake-quantised at its precision: a bit-width plan simulated in torch, for its accuracy or for
    quantisation-aware training. `ranges` are the float model's (`output_ranges`), as runtimes calibrate."""
    with ExitStack() as stack:
        for layer_id, precision in layers.items():
            if precision != "fp32":
                stack.enter_context(fake_quantized(model, layer_id, precision, ranges.get(layer_id),
                                                   pre_range=ranges.get(layer_id + PRE),
                                                   input_range=ranges.get(layer_id + IN)))
        yield model


def output_ranges(model: nn.Module, images: torch.Tensor, batch_size: int = 64, *,
                  runtime: bool = False) -> dict[str, tuple[float, float]]:
    """(min, max) of every layer's float output over `images` (MinMax calibration); with `runtime`, also of the
    input of every layer (layer id + `IN`) and of each pre-activation output a runtime quantises (+ `PRE`)."""
    ranges: dict[str, tuple[float, float]] = {}

    def record(name: str) -> Callable[[nn.Module, object, torch.Tensor], None]:
        def hook(_: nn.Module, __: object, out: torch.Tensor) -> None:
            low, high = float(out.min()), float(out.max())
            old = ranges.get(name, (low, high))
            ranges[name] = (min(old[0], low), max(old[1], high))
        return hook

    handles = [module.register_forward_hook(record(name)) for name, module in layer_modules(model)]
    if runtime:
        handles += [module.register_forward_pre_hook(lambda m, args, name=name: record(name + IN)(m, None, args[0]))
                    for name, module in layer_modules(model)]
        handles += [norm.register_forward_hook(record(name + PRE)) for name, module in layer_modules(model)
                    if (norm := _unfused(module)) is not None]
    try:
        _logits(model, images, batch_size)
    finally:
        for handle in handles:
            handle.remove()
    return ranges


@contextmanager
def _evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """`model` in eval mode (BatchNorm on its running statistics, as the runtime runs it), its mode restored."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def _logits(model: nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    with _evaluating(model):
        return torch.cat([model(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


@dataclass(frozen=True)
class LayerSensitivity:
    """What quantising one layer alone costs on the calibration images: top-1 accuracy drop (fraction, float
    minus quantised) and mean KL(float || quantised) of the output distributions (nats)."""

    accuracy_drop: float
    kl: float


def measured_sensitivity(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                         precisions: Sequence[str] = ("int8",), *, layers: Sequence[str] | None = None,
                         batch_size: int = 64, runtime: bool = False) -> dict[str, dict[str, LayerSensitivity]]:
    """Layer id -> precision -> `LayerSensitivity`, each layer fake-quantised alone (`fake_quantized`); with
    `runtime`, with the tensors a runtime quantises for it too (its input and unfused pre-activation)."""
    ranges = output_ranges(model, images, batch_size, runtime=runtime)
    reference = _logits(model, images, batch_size)
    log_p = F.log_softmax(reference.double(), dim=1)  # float64: small KLs are not lost in rounding
    accuracy = float((reference.argmax(1) == labels).float().mean())
    found: dict[str, dict[str, LayerSensitivity]] = {}
    for layer_id in layers if layers is not None else [name for name, _ in layer_modules(model)]:
        found[layer_id] = {}
        for precision in precisions:
            with fake_quantized(model, layer_id, precision, ranges.get(layer_id), pre_range=ranges.get(layer_id + PRE),
                                input_range=ranges.get(layer_id + IN)):
                logits = _logits(model, images, batch_size)
            kl = F.kl_div(F.log_softmax(logits.double(), dim=1), log_p, log_target=True, reduction="batchmean")
            drop = accuracy - float((logits.argmax(1) == labels).float().mean())
            found[layer_id][precision] = LayerSensitivity(drop, max(float(kl), 0.0))
    return found


def _hardsigmoid(x: torch.Tensor) -> torch.Tensor:
    return F.relu6(x + 3.0) / 6.0


def _hardswish(x: torch.Tensor) -> torch.Tensor:
    return x * F.relu6(x + 3.0) / 6.0


@contextmanager
def _twice_differentiable(model: nn.Module) -> Iterator[nn.Module]:
    """`model` with its hard-swish and hard-sigmoid modules computed by relu6 (the same values), whose backward
    torch can differentiate again (it has no double backward for `hardsigmoid_backward`); restored on exit."""
    swapped = []
    for module in model.modules():
        replacement = {nn.Hardswish: _hardswish, nn.Hardsigmoid: _hardsigmoid}.get(type(module))
        if replacement is not None:
            module.forward = replacement
            swapped.append(module)
    try:
        yield model
    finally:
        for module in swapped:
            del module.forward


def hessian_trace(model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], *, samples: int = 16,
                  seed: int = 0, weights: Mapping[str, nn.Parameter] | None = None,
                  loss: Loss = F.cross_entropy) -> dict[str, float]:
    """Hutchinson estimate of each layer's Hessian trace of the loss (mean over `batches`) w.r.t. its weights,
    divided by the weight count (HAWQ-V2). Seeded Rademacher vectors; `samples` of them."""
    if samples < 1 or not batches:
        raise HwnasError(f"hessian_trace needs samples >= 1 and at least one batch; got samples={samples}, "
                         f"{len(batches)} batch(es)")
    params = dict(weights if weights is not None else layer_weights(model))
    names, tensors = list(params), list(params.values())
    gen = torch.Generator().manual_seed(seed)
    totals = np.zeros(len(names))
    with _evaluating(model), _twice_differentiable(model):  # the Hessian of the function the runtime runs
        for images, labels in batches:
            grads = torch.autograd.grad(loss(model(images), labels), tensors, create_graph=True)
            for _ in range(samples):
                vs = [torch.randint(0, 2, t.shape, generator=gen).to(t.dtype) * 2 - 1 for t in tensors]
                hvs = torch.autograd.grad(grads, tensors, grad_outputs=vs, retain_graph=True, allow_unused=True)
                totals += [0.0 if hv is None else float((v * hv).sum()) for v, hv in zip(vs, hvs, strict=True)]
    counts = np.array([t.numel() for t in tensors], dtype=float)
    return dict(zip(names, (totals / (samples * len(batches)) / counts).tolist(), strict=True))


def hawq_scores(model: nn.Module, trace: Mapping[str, float],
                precisions: Sequence[str] = ("int8",)) -> dict[str, dict[str, float]]:
    """HAWQ-V3's sensitivity (Yao et al., ICML 2021) per layer and precision: Tr(H)/n x ||Q(W) - W||^2, fp32 0."""
    weights = layer_weights(model)
    scores: dict[str, dict[str, float]] = {}
    for layer_id, per_weight in trace.items():
        weight = weights[layer_id].detach()
        scores[layer_id] = {"fp32": 0.0}
        for precision in precisions:
            bits = quant_bits(precision)
            rounded = weight.half().float() if bits is None else quantize_weight(weight, bits[0])
            scores[layer_id][precision] = per_weight * float(((rounded - weight) ** 2).sum())
    return scores


def rank_agreement(estimates: Mapping[str, Mapping[str, float]], measured_drop: Mapping[str, float]
                   ) -> dict[str, float]:
    """Kendall's tau-b between each estimator's scores (estimator name -> layer id -> score) and the measured
    accuracy drop, over the layers both name; NaN when every drop is equal (e.g. int8 flips no prediction on the
    calibration images: rank against the KL instead)."""
    taus = {}
    for name, scores in estimates.items():
        common = [layer for layer in measured_drop if layer in scores]
        if len(common) < 2:
            raise HwnasError(f"estimator {name} shares {len(common)} layer(s) with the measured drops; need >= 2")
        taus[name] = kendall_tau(np.array([scores[k] for k in common]), np.array([measured_drop[k] for k in common]))
    return taus


def precision_scores(measured: Mapping[str, Mapping[str, LayerSensitivity]], by: str = "kl"
                     ) -> dict[str, dict[str, float]]:
    """Layer id -> precision -> score (`kl` or `accuracy_drop`, negative drops clipped to 0), fp32 0: what
    `nas.compress.bits.allocate_bits` takes."""
    if by not in ("kl", "accuracy_drop"):
        raise HwnasError(f"unknown sensitivity score {by!r}; allowed: kl, accuracy_drop")
    return {layer: {"fp32": 0.0, **{p: max(getattr(s, by), 0.0) for p, s in per.items()}}
            for layer, per in measured.items()}
