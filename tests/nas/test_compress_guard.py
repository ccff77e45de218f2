"""The post-training-quantisation guards: empirical bias correction, and the guard against precision collapse on a
ShuffleNet subnet made collapse-prone without changing its float function."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nas.compress.finetune import FinetuneConfig, finetune
from nas.compress.guard import PrecisionCollapse, _channel_means, bias_correct, guard_plan
from nas.compress.sensitivity import fake_quantized_layers, output_ranges
from search_spaces import ArchConfig
from search_spaces.errors import HwnasError
from search_spaces.plans import BitWidthPlan
from supernets.data import to_tensor
from supernets.evaluation import accuracy, recalibration_images
from supernets.layers import layer_modules
from supernets.models import build_model
from tests.supernets.tiny import quiet, tiny_digits

TINY = "r16_i1_n10|stem_c8_k3_s2_relu|mbv2_k3_e2_c16_s1|mbv2_k3_e2_c24_s2|head_c32_relu"
#: A ShuffleNetV2 subnet: a two-branch stride-2 unit, then a split unit (ReLU in its 1x1 convolutions).
SHUFFLE = "r16_i1_n10|stem_c8_k3_s2_relu|shufflev2_k3_c24_s2,shufflev2_k3_c24_s1|head_c32_relu"
#: The ReLU layer made collapse-prone, and the scale that moves one of its channels out of every other's range.
PRONE, SCALE = "s0.b1.right.pw1", 1e5
#: The layer reading it: in int8 the runtime quantises its input tensor (the rescaled one) as well.
CONSUMER = "s0.b1.right.dw"
#: The layers the guard raises per precision (measured): the simulated fp16 rounds layer outputs, not inputs.
RAISED = {"int8": (PRONE, CONSUMER), "fp16": (PRONE,)}


def trained(arch: str, tmp: Path, data) -> torch.nn.Module:
    torch.manual_seed(0)
    config = FinetuneConfig(epochs=10, lr=0.05, batch_size=32)
    return finetune(build_model(ArchConfig.from_str(arch)), data, tmp, config, log=quiet).model.eval()


@pytest.fixture(scope="module")
def digits():
    return tiny_digits(600, 200)


@pytest.fixture(scope="module")
def shufflenet(digits, tmp_path_factory):
    """A trained ShuffleNet subnet (90.5% on 200 validation digits) and one computing the same function whose
    channel 0 of `PRONE` is `SCALE` times larger, its consumer's input weights divided by `SCALE` (ReLU is
    positively homogeneous: relu(c z) / c = relu(z) for c > 0)."""
    model = trained(SHUFFLE, tmp_path_factory.mktemp("shuffle"), digits)
    prone = build_model(model.arch).eval()
    prone.load_state_dict(model.state_dict())
    with torch.no_grad():
        unit = prone.s0.b1.right
        unit.pw1[1].weight[0] *= SCALE
        unit.pw1[1].bias[0] *= SCALE
        unit.dw[0].weight[0] /= SCALE  # depthwise: output channel 0 reads input channel 0 only
    return model, prone


def calibration(data, n: int = 64) -> torch.Tensor:
    return recalibration_images(data, 16, n, 0)


# ------------------------------------------------------------------------------------------ bias correction


def bias_errors(model, plan, images, reference) -> torch.Tensor:
    """Mean |per-channel mean of (simulated - float) pre-activation| of every quantised layer, over `images`."""
    layers = [n for n, p in plan.precisions(model.arch).items() if p != "fp32"]
    float_means = _channel_means(reference, layers, images)
    ranges = output_ranges(model, images)
    with fake_quantized_layers(model, plan.precisions(model.arch), ranges):
        means = _channel_means(model, layers, images)
    return torch.stack([(means[n] - float_means[n]).abs().mean() for n in layers])


def test_bias_correction_shrinks_the_simulated_bias_and_only_shifts_biases(digits, tmp_path):
    model = trained(TINY, tmp_path / "tiny", digits)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = BitWidthPlan({"classifier": "fp32"}, default="w4a8")
    cal = calibration(digits, 128)
    corrected = bias_correct(model, plan, cal)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the input is unchanged
    changed = {k for k, v in corrected.state_dict().items() if not torch.equal(v, before[k])}
    quantised = [n for n, p in plan.precisions(model.arch).items() if p != "fp32"]
    layers = dict(layer_modules(model))
    assert changed == {f"{n}.1.bias" if isinstance(layers[n], torch.nn.Sequential) else f"{n}.bias"
                       for n in quantised}  # every quantised layer's bias, nothing else (classifier stays)
    held_out = to_tensor(digits.val.images, 16, digits.mean, digits.std)
    plain, fixed = bias_errors(model, plan, held_out, model), bias_errors(corrected, plan, held_out, model)
    # measured on 200 held-out digits: mean per-layer bias 0.098 plain, 0.0038 corrected; every layer's shrinks
    assert float(fixed.mean()) < 0.1 * float(plain.mean())
    assert bool((fixed < plain).all())
    # in float, the first corrected layer's pre-activation moves by exactly its bias shift
    shift = corrected.state_dict()["stem.1.bias"] - before["stem.1.bias"]
    moved = _channel_means(corrected, ["stem"], held_out)["stem"] - _channel_means(model, ["stem"], held_out)["stem"]
    torch.testing.assert_close(moved.float(), shift, atol=1e-5, rtol=0)
    assert float(shift.abs().max()) > 1e-3
    with pytest.raises(HwnasError, match="s9.b0"):
        bias_correct(model, BitWidthPlan({"s9.b0.conv": "int8"}), cal)


# ----------------------------------------------------------------------------------- the collapse guard


def test_the_prone_shufflenet_computes_the_same_function(shufflenet, digits):
    model, prone = shufflenet
    x = to_tensor(digits.val.images, 16, digits.mean, digits.std)
    with torch.no_grad():
        torch.testing.assert_close(prone(x), model(x), atol=1e-4, rtol=0)
    assert accuracy(model, digits.val, 16, digits.mean, digits.std) > 0.85


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_guard_catches_the_collapse_and_raises_the_layer_responsible(shufflenet, digits, precision):
    model, prone = shufflenet
    plan, cal = BitWidthPlan(default=precision), calibration(digits)
    healthy = guard_plan(model, plan, digits, cal, log=quiet)  # the same weights before the rescaling: fine
    assert not healthy.collapsed and healthy.raised == () and healthy.plan == plan
    lines: list[str] = []
    result = guard_plan(prone, plan, digits, cal, log=lines.append)
    # measured: int8 16.0%, fp16 9.0% (channel 0 reaches ~1e5 > 65504: inf) against 90.5% float, chance 10%
    assert result.collapsed and result.accuracy_planned < 0.2 and result.chance == 0.1
    assert result.accuracy_float == pytest.approx(healthy.accuracy_float)
    assert result.raised == RAISED[precision] and result.plan.precision_of(PRONE) == "fp32"
    assert result.ranking[:2] == (PRONE, CONSUMER) and len(result.ranking) == len(plan.precisions(model.arch))
    assert result.accuracy_float - result.accuracy_guarded <= 0.015
    assert all(result.plan.precision_of(n) == precision for n in result.plan.precisions(model.arch)
               if n not in result.raised)
    assert json.loads(json.dumps(result.to_dict()))["raised"] == list(result.raised)
    assert any(f"{PRONE} ({precision}) raised to fp32" in line for line in lines)
    with pytest.raises(PrecisionCollapse, match=r"precision collapse: plan \w+ gives (16.0|9.0)% top-1") as err:
        guard_plan(prone, plan, digits, cal, strict=True, log=quiet)
    message = str(err.value)
    assert "\n" not in message and "chance 10.0%" in message and "float 90.5%" in message
    assert f"the most sensitive layers: {PRONE} ({precision})," in message and "keep them at a higher" in message


def test_guard_gives_up_past_max_raised_and_refuses_bad_settings(shufflenet, digits):
    _, prone = shufflenet
    plan, cal = BitWidthPlan(default="int8"), calibration(digits)
    with pytest.raises(PrecisionCollapse, match=rf"0 layer\(s\) raised .* {PRONE} \(int8\)"):
        guard_plan(prone, plan, digits, cal, max_raised=0, log=quiet)
    with pytest.raises(HwnasError, match="tolerance must be in"):
        guard_plan(prone, plan, digits, cal, tolerance=-0.1, log=quiet)
    with pytest.raises(HwnasError, match="at least one validation image"):
        guard_plan(prone, plan, digits, cal, images=0, log=quiet)
