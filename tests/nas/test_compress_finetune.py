"""Fine-tuning compressed subnets: Hinton's loss on hand-made logits, distillation moving a student towards its
teacher, stage-feature distillation, the gradual pruning schedule (masked share per epoch, masks computing what the
pruned model computes, final widths), resume bit for bit, and teachers that do not fit refused."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from nas.compress.distill import (
    FeatureDistiller,
    check_teacher,
    kd_loss,
    load_teacher,
    teacher_from_run,
    teacher_from_subnet,
    teacher_kl,
)
from nas.compress.finetune import FinetuneConfig, finetune
from nas.compress.gradual import GradualPruning, pruned_fraction
from nas.compress.importance import channel_importance
from nas.export.prune import prune_model
from search_spaces import ArchConfig
from search_spaces.errors import HwnasError
from search_spaces.plans import PrunePlan, channel_groups
from supernets.data import Split
from supernets.models import build_model
from tests.supernets.tiny import quiet, tiny_digits

TINY = "r16_i1_n10|stem_c8_k3_s2_relu|mbv2_k3_e2_c16_s1|mbv2_k3_e2_c24_s2|head_c32_relu"
WIDE = "r16_i1_n10|stem_c16_k3_s2_relu|mbv2_k3_e3_c24_s1|mbv2_k3_e3_c32_s2|head_c64_relu"
#: Every grouper: fused, inverted residual with SE and a residual chain, split and two-branch ShuffleNet units,
#: a hidden head layer.
MIXED = ("r16_i1_n10|stem_c16_k3_s2_hswish|fused_k3_e3_c16_s1,fused_k3_e2_c16_s1|mbv3_k3_e2_c24_s2_se0.25_relu,"
         "mbv3_k3_e3_c24_s1_se0.25_relu|shufflev2_k3_c40_s2,shufflev2_k3_c40_s1|head_c64_f48_hswish")
FAST = dict(batch_size=32, threads=1, max_steps=2, lr=0.05)


def seeded_model(arch: str, seed: int):
    torch.manual_seed(seed)
    return build_model(ArchConfig.from_str(arch))


def random_bn(model, seed: int):
    """Non-trivial BatchNorm statistics and affine terms, so that a masked channel's shift would show."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.3)
    return model.eval()


def half_plan(model) -> PrunePlan:
    """Keep the better-scored half (by L1) of every prunable group."""
    scores = channel_importance(model, "l1")
    keep = {g: tuple(sorted(np.argsort(-s, kind="stable")[: max(1, len(s) // 2)].tolist())) for g, s in scores.items()}
    return PrunePlan(model.arch.key, keep)


# ------------------------------------------------------------------------------------------------ kd_loss


def test_kd_loss_exact_values_on_hand_made_logits():
    s = torch.tensor([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]])
    t = torch.tensor([[3.0, 2.0, 1.0], [0.0, 0.0, 1.0]])
    y = torch.tensor([0, 2])
    temp, alpha = 2.0, 0.3

    def log_softmax(z):
        z = np.asarray(z, dtype=np.float64)
        return z - np.log(np.exp(z).sum(1, keepdims=True))

    log_ps, log_pt = log_softmax(s.numpy() / temp), log_softmax(t.numpy() / temp)
    kl = float((np.exp(log_pt) * (log_pt - log_ps)).sum(1).mean())
    ce = float(-log_softmax(s.numpy())[[0, 1], [0, 2]].mean())
    assert kl > 0.1 and ce > 0.1
    got = kd_loss(s, t, y, temperature=temp, alpha=alpha)
    assert float(got) == pytest.approx(alpha * temp * temp * kl + (1 - alpha) * ce, rel=1e-6)
    assert float(kd_loss(s, t, y, temperature=temp, alpha=0.0)) == pytest.approx(ce, rel=1e-6)
    assert float(kd_loss(s, t, y, temperature=temp, alpha=1.0)) == pytest.approx(temp * temp * kl, rel=1e-6)
    assert float(kd_loss(s, s.clone(), y, temperature=temp, alpha=1.0)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(HwnasError, match="temperature must be > 0"):
        kd_loss(s, t, y, temperature=0.0)


# ----------------------------------------------------------------------------------------- distillation


def test_distillation_moves_the_student_towards_its_teacher(tmp_path):
    data = tiny_digits()
    teacher = seeded_model(WIDE, 1).eval()
    with torch.no_grad():  # a teacher with a clear opinion: far from the student's near-uniform outputs
        teacher.classifier.weight.mul_(4.0)
        teacher.classifier.bias.copy_(torch.linspace(-2.0, 2.0, 10))
    student = seeded_model(TINY, 0)
    before_state = {k: v.clone() for k, v in student.state_dict().items()}
    config = FinetuneConfig(epochs=3, alpha=1.0, temperature=2.0, **{**FAST, "max_steps": None})
    before = teacher_kl(student, teacher, data.val, data)
    result = finetune(student, data, tmp_path / "ft", config, teacher=teacher, log=quiet)
    after = teacher_kl(result.model, teacher, data.val, data)
    assert after < 0.8 * before
    labels_only = finetune(student, data, tmp_path / "ce", config, log=quiet).model  # the same run, no teacher
    assert after < 0.8 * teacher_kl(labels_only, teacher, data.val, data)
    assert result.history[-1]["val_kl_teacher"] == pytest.approx(after)
    assert all(torch.equal(v, before_state[k]) for k, v in student.state_dict().items())  # the input is a copy


def test_feature_distillation_adapts_widths_and_refuses_other_stage_counts(tmp_path):
    student, teacher = seeded_model(TINY, 0), seeded_model(WIDE, 1).eval()
    same = FeatureDistiller(student, seeded_model(TINY, 2))
    assert all(isinstance(a, torch.nn.Identity) for a in same.adapters)
    distiller = FeatureDistiller(student, teacher)
    assert [tuple(a.weight.shape) for a in distiller.adapters] == [(24, 16, 1, 1), (32, 24, 1, 1)]
    x = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with distiller.watching() as (s_out, t_out):
        student(x)
        teacher(x)
    pairs = zip(distiller.adapters, s_out, t_out, strict=True)
    expected = sum(torch.nn.functional.mse_loss(a(s), t) for a, s, t in pairs)
    assert float(distiller.loss(s_out, t_out).detach()) == pytest.approx(float(expected.detach()))
    one_stage = seeded_model("r16_i1_n10|stem_c8_k3_s2_relu|mbv2_k3_e2_c16_s1|head_c32_relu", 3)
    with pytest.raises(HwnasError, match="the student has 2, the teacher 1"):
        FeatureDistiller(student, one_stage)
    config = FinetuneConfig(epochs=1, feature_weight=0.5, **FAST)
    rng_before, threads_before = torch.get_rng_state(), torch.get_num_threads()
    result = finetune(student, tiny_digits(), tmp_path / "ft", config, teacher=teacher, log=quiet)
    assert torch.equal(torch.get_rng_state(), rng_before) and torch.get_num_threads() == threads_before
    saved = json.loads((tmp_path / "ft" / "checkpoint" / "supernet.json").read_text())
    assert saved["kind"] == "hwnas.finetune/1" and saved["epoch"] == 1
    from safetensors.torch import load_file
    weights = load_file(str(tmp_path / "ft" / "checkpoint" / "supernet.safetensors"))
    assert {"adapters.0.weight", "adapters.1.weight"} <= set(weights)
    assert np.isfinite(result.history[0]["loss"])


def test_a_teacher_for_other_classes_or_input_is_refused(tmp_path):
    student = seeded_model(TINY, 0)
    other = seeded_model(TINY.replace("n10", "n5"), 1)
    with pytest.raises(HwnasError, match=r"teacher \w+ has 5 classes and 1 input channels, the student \w+ 10 "
                                         r"classes"):
        finetune(student, tiny_digits(), tmp_path / "ft", FinetuneConfig(epochs=1, **FAST), teacher=other, log=quiet)
    assert not (tmp_path / "ft").exists()
    with pytest.raises(HwnasError, match="3 input channels"):
        check_teacher(seeded_model(TINY.replace("i1", "i3"), 1), student.arch)
    with pytest.raises(HwnasError, match=r"dataset digits has 10 classes .* the student \w+ 5 classes"):
        finetune(other, tiny_digits(), tmp_path / "ft", FinetuneConfig(epochs=1, **FAST), log=quiet)


def test_teacher_from_run_is_the_largest_subnet_recalibrated_and_frozen(trained_supernet):
    from supernets.training import load_run

    net = load_run(trained_supernet).net
    space = net.space
    student = space.extreme(False)
    teacher = teacher_from_run(trained_supernet, student, data=tiny_digits(), recal_images=32)
    assert teacher.arch.stages == space.extreme(True).stages and teacher.arch.resolution == student.resolution
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    stored = net.materialize(teacher.arch).state_dict()  # the supernet's own statistics, before recalibration
    assert not torch.equal(teacher.state_dict()["stem.1.running_mean"], stored["stem.1.running_mean"])
    assert torch.equal(teacher.state_dict()["stem.0.weight"], stored["stem.0.weight"])
    mixed = next(a for a in (space.sample(np.random.default_rng(s)) for s in range(50))
                 if a.stages[-1][0].family != space.stages[-1].families[0])
    follows = teacher_from_run(trained_supernet, mixed, data=tiny_digits(), recal_images=32)
    assert [stage[0].family for stage in follows.arch.stages] == [stage[0].family for stage in mixed.stages]
    other = ArchConfig(student.resolution, 1, 5, student.stem, student.stages, student.head)
    with pytest.raises(HwnasError, match="has 10 classes and 1 input channels, the student .* 5 classes"):
        teacher_from_run(trained_supernet, other, data=tiny_digits(), recal_images=32)


def exported(model, root):
    """`model` exported without runtime models (spec.json, model.safetensors, metrics.json)."""
    from nas.export import ExportOptions, Provenance, SubnetSpec, export_model

    data = tiny_digits()
    n = model.arch.num_classes
    if n != data.num_classes:  # digits 0 to n-1 only
        train, val = data.train.labels < n, data.val.labels < n
        data = replace(data, train=Split(data.train.images[train], data.train.labels[train]),
                       val=Split(data.val.images[val], data.val.labels[val]), num_classes=n)
    spec = SubnetSpec(model.arch, "small", data.mean, data.std, Provenance(None, data.name, 0, 0))
    return export_model(model.eval(), spec, data, root, ExportOptions(runtimes=()))


def test_teacher_from_an_exported_subnet_is_loaded_frozen_and_checked(tmp_path):
    student = seeded_model(TINY, 0).arch
    model = random_bn(seeded_model(WIDE, 1), 2)
    teacher = load_teacher(exported(model, tmp_path / "a"), student)
    assert teacher.arch == model.arch and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in teacher.state_dict().items())
    other = exported(seeded_model(WIDE.replace("n10", "n5"), 1), tmp_path / "b")
    with pytest.raises(HwnasError, match=r"teacher \w+ has 5 classes .* the student \w+ 10 classes"):
        teacher_from_subnet(other, student)
    with pytest.raises(HwnasError, match="not a directory"):
        teacher_from_subnet(tmp_path / "nothing")
    with pytest.raises(HwnasError, match="give the supernet's run directory"):
        load_teacher("largest", student)


# ------------------------------------------------------------------------------------------ gradual pruning


def test_pruned_fraction_follows_the_cubic_and_linear_schedules():
    assert [pruned_fraction(e, 10) for e in (0, 4, 9, 12)] == pytest.approx([0.271, 0.875, 1.0, 1.0])
    assert [pruned_fraction(e, 4, "linear") for e in range(5)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])
    assert pruned_fraction(0, 0) == 1.0
    with pytest.raises(HwnasError, match="allowed: cubic, linear"):
        pruned_fraction(0, 3, "exp")


@pytest.mark.parametrize("arch", [TINY, MIXED])
def test_full_masks_compute_what_the_pruned_model_computes(arch):
    model = random_bn(seeded_model(arch, 0), 1)
    plan = half_plan(model)
    x = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    unmasked = model(x)
    pruning = GradualPruning(plan, channel_importance(model, "l1"), ramp_epochs=2)
    pruning.attach(model)
    pruning.set_epoch(1)
    masked = model(x)
    pruning.detach()
    assert pruning.masked() == {g: sorted(set(range(w)) - set(plan.keep[g]))
                                for g, w in channel_groups(model.arch).items() if g in plan.keep}
    pruned = prune_model(model, plan)
    assert not torch.allclose(masked, unmasked, atol=1e-3)
    torch.testing.assert_close(pruned(x), masked, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model(x), unmasked)  # detached: the masks no longer apply


def test_gradual_schedule_masks_its_share_per_epoch_and_ends_at_the_plans_widths(tmp_path):
    model = seeded_model(MIXED, 0)
    plan, scores = half_plan(model), channel_importance(model, "l1")
    widths = channel_groups(model.arch)
    dropped = {g: widths[g] - len(kept) for g, kept in plan.keep.items()}
    config = FinetuneConfig(epochs=3, prune_epochs=3, prune_schedule="cubic", **FAST)
    result = finetune(model, tiny_digits(), tmp_path / "ft", config, plan=plan, scores=scores, log=quiet)
    for epoch, row in enumerate(result.history):
        fraction = 1 - (1 - (epoch + 1) / 3) ** 3
        expected = sum(int(np.floor(fraction * n + 0.5)) for n in dropped.values())
        assert row["masked_channels"] == expected
        assert row["pruned_share"] == pytest.approx(expected / sum(dropped.values()))
    assert [row["pruned_share"] < 1.0 for row in result.history] == [True, True, False]
    assert result.model.arch == plan.apply_to(model.arch)
    assert channel_groups(result.model.arch)["s0.b0.expand"] == len(plan.keep["s0.b0.expand"])
    assert result.val_accuracy == pytest.approx(result.history[-1]["val_accuracy"])  # masked == pruned


def test_gradual_pruning_masks_lowest_scored_channels_first():
    model = seeded_model(TINY, 0)
    width = channel_groups(model.arch)["s0.b0.expand"]
    plan = PrunePlan(model.arch.key, {"s0.b0.expand": [0, 1, 2, 3]})
    scores = {"s0.b0.expand": np.arange(width, 0, -1, dtype=float)}  # channel width-1 scores lowest
    pruning = GradualPruning(plan, scores, ramp_epochs=4, schedule="linear")
    pruning.attach(model)
    assert pruning.set_epoch(0) == {"s0.b0.expand": 3}  # 0.25 of 12 dropped
    assert pruning.masked() == {"s0.b0.expand": [width - 3, width - 2, width - 1]}
    with pytest.raises(HwnasError, match="has 16 channels but 3 scores"):
        GradualPruning(plan, {"s0.b0.expand": np.ones(3)}, 2).attach(seeded_model(TINY, 0))


# ------------------------------------------------------------------------------------------------ resume


def stop_after_first(line: str) -> None:
    if "epoch 1/2" in line:
        raise KeyboardInterrupt


def whole_and_resumed(model, data, tmp_path, config, kwargs):
    """A fine-tune run whole, and the same cut after its first epoch (KeyboardInterrupt) then run again: both
    results and the lines the resumed run logged."""
    whole = finetune(model, data, tmp_path / "whole", config, log=quiet, **kwargs)
    with pytest.raises(KeyboardInterrupt):
        finetune(model, data, tmp_path / "cut", config, log=stop_after_first, **kwargs)
    lines: list[str] = []
    return whole, finetune(model, data, tmp_path / "cut", config, log=lines.append, **kwargs), lines


def test_an_interrupted_finetune_resumes_bit_for_bit(tmp_path):
    data = tiny_digits()
    model, teacher = seeded_model(TINY, 0), seeded_model(WIDE, 1).eval()
    plan = half_plan(model)
    config = FinetuneConfig(epochs=2, prune_epochs=2, feature_weight=0.1, augment_shift=1, **FAST)
    kwargs = dict(teacher=teacher, plan=plan)
    whole, resumed, lines = whole_and_resumed(model, data, tmp_path, config, kwargs)
    assert lines[0].startswith("resumed fine-tune") and "after epoch 1 of 2" in lines[0]  # the cut's checkpoint
    assert len(resumed.history) == 2
    assert resumed.history == whole.history
    assert resumed.model.state_dict().keys() == whole.model.state_dict().keys()
    assert all(torch.equal(v, whole.model.state_dict()[k]) for k, v in resumed.model.state_dict().items())
    with pytest.raises(HwnasError, match="made with another config"):
        finetune(model, data, tmp_path / "cut", FinetuneConfig(epochs=2, **FAST), log=quiet, **kwargs)
    other_scores = {g: -s for g, s in channel_importance(model, "l1").items()}
    with pytest.raises(HwnasError, match="made with another scores"):
        finetune(model, data, tmp_path / "cut", config, log=quiet, scores=other_scores, **kwargs)
    again = finetune(model, data, tmp_path / "cut", config, log=quiet, **kwargs)  # finished: nothing to train
    assert again.history == whole.history
    assert all(torch.equal(v, whole.model.state_dict()[k]) for k, v in again.model.state_dict().items())


def test_bad_config_is_refused():
    with pytest.raises(HwnasError, match="prune_epochs is 5; allowed: 0 to epochs"):
        FinetuneConfig(epochs=2, prune_epochs=5)
    with pytest.raises(HwnasError, match="prune_schedule is 'exp'"):
        FinetuneConfig(prune_schedule="exp")


# ------------------------------------------------------------------------------- quantisation-aware training


def simulated_accuracy(model, data, bits, calibration) -> float:
    """Validation accuracy of `model` with `bits` fake-quantised, ranges calibrated on `calibration` (PTQ)."""
    from nas.compress.sensitivity import fake_quantized_layers, output_ranges
    from supernets.evaluation import accuracy

    ranges = output_ranges(model, calibration, runtime=True)
    with fake_quantized_layers(model, bits.precisions(model.arch), ranges), torch.no_grad():
        return accuracy(model, data.val, model.arch.resolution, data.mean, data.std)


def test_qat_at_w3a3_beats_ptq_of_the_same_weights(tmp_path):
    from search_spaces.plans import BitWidthPlan
    from supernets.evaluation import accuracy, recalibration_images

    data = tiny_digits(600, 200)
    trained = finetune(seeded_model(TINY, 0), data, tmp_path / "float", FinetuneConfig(epochs=10, lr=0.05,
                       batch_size=32), log=quiet).model
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    bits, calibration = BitWidthPlan(default="w3a3"), recalibration_images(data, 16, 128, 0)
    float_top1, ptq = accuracy(trained, data.val, 16, data.mean, data.std), simulated_accuracy(trained, data, bits,
                                                                                                calibration)
    assert float_top1 > 0.9 and ptq < float_top1 - 0.3  # measured: 0.93 float, 0.53 simulated w3a3
    config = FinetuneConfig(epochs=6, lr=0.01, batch_size=32)
    qat = finetune(trained, data, tmp_path / "qat", config, bits=bits, calibration=calibration, log=quiet)
    ft = finetune(trained, data, tmp_path / "ft", config, log=quiet).model  # the same fine-tune, no simulation
    assert qat.val_accuracy == pytest.approx(simulated_accuracy(qat.model, data, bits, calibration))
    assert qat.val_accuracy == pytest.approx(qat.history[-1]["val_accuracy"])
    # measured: QAT 0.76 simulated; PTQ 0.53 of the trained weights, 0.59 of the float fine-tune's
    assert qat.val_accuracy >= ptq + 0.15
    assert qat.val_accuracy >= simulated_accuracy(ft, data, bits, calibration) + 0.15
    assert qat.history[-1]["val_accuracy_float"] == pytest.approx(accuracy(qat.model, data.val, 16, data.mean,
                                                                           data.std))
    assert not any("parametrizations" in k for k in qat.model.state_dict())  # float weights, no simulation left
    assert all(torch.equal(v, before[k]) for k, v in trained.state_dict().items())


def test_qat_with_gradual_pruning_ends_at_the_plans_widths_simulated(tmp_path):
    from search_spaces.plans import BitWidthPlan
    from supernets.evaluation import recalibration_images

    data = tiny_digits()
    model = seeded_model(MIXED, 0)
    plan, calibration = half_plan(model), recalibration_images(data, 16, 64, 0)
    bits = BitWidthPlan({"stem": "fp32", "classifier": "fp32"}, default="w4a4")
    config = FinetuneConfig(epochs=2, prune_epochs=2, **FAST)
    result = finetune(model, data, tmp_path / "ft", config, plan=plan, bits=bits, calibration=calibration,
                      log=quiet)
    assert result.model.arch == plan.apply_to(model.arch)
    assert [row["pruned_share"] < 1.0 for row in result.history] == [True, False]
    simulated = simulated_accuracy(result.model, data, bits, calibration)
    assert result.val_accuracy == pytest.approx(simulated)
    assert result.val_accuracy == pytest.approx(result.history[-1]["val_accuracy"])  # masked == pruned, simulated
    with pytest.raises(HwnasError, match="calibration images of shape"):
        finetune(model, data, tmp_path / "x", config, bits=bits, log=quiet)
    with pytest.raises(HwnasError, match="give bits"):
        finetune(model, data, tmp_path / "x", config, calibration=calibration, log=quiet)
    with pytest.raises(HwnasError, match="s9.b0"):
        finetune(model, data, tmp_path / "x", config, bits=BitWidthPlan({"s9.b0.conv": "int8"}),
                 calibration=calibration, log=quiet)
    assert not (tmp_path / "x").exists()


def test_an_interrupted_qat_resumes_bit_for_bit_and_refuses_a_float_checkpoint(tmp_path):
    from search_spaces.plans import BitWidthPlan
    from supernets.evaluation import recalibration_images

    data = tiny_digits()
    model, teacher = seeded_model(TINY, 0), seeded_model(WIDE, 1).eval()
    kwargs = dict(teacher=teacher, plan=half_plan(model), bits=BitWidthPlan(default="int8"),
                  calibration=recalibration_images(data, 16, 64, 0))
    config = FinetuneConfig(epochs=2, prune_epochs=2, augment_shift=1, **FAST)
    whole, resumed, _ = whole_and_resumed(model, data, tmp_path, config, kwargs)
    assert resumed.history == whole.history and resumed.val_accuracy == whole.val_accuracy
    assert all(torch.equal(v, whole.model.state_dict()[k]) for k, v in resumed.model.state_dict().items())
    with pytest.raises(HwnasError, match="made with another bits"):
        finetune(model, data, tmp_path / "cut", config, log=quiet, **{**kwargs, "bits": BitWidthPlan(default="w4a8")})
    float_only = {k: v for k, v in kwargs.items() if k not in ("bits", "calibration")}
    with pytest.raises(KeyboardInterrupt):
        finetune(model, data, tmp_path / "float", config, log=stop_after_first, **float_only)
    with pytest.raises(HwnasError, match="made with another bits, calibration"):
        finetune(model, data, tmp_path / "float", config, log=quiet, **kwargs)
