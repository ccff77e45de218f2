"""Latency-aware structured pruning: channel importance by criterion (exact on hand-set weights), allocation of the
channels each group keeps against the shipped small-space ORT fp32 table, and the plan replayed on the parent's
weights (ShuffleNet units included)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from latency_tables.convert import seeded
from latency_tables.keys import arch_keys
from latency_tables.table import find_table
from nas.compress import (
    IMPORTANCE,
    AllocationError,
    allocate,
    allocate_latency,
    channel_importance,
    group_writers,
)
from nas.compress.allocate import width_options
from nas.export.prune import prune_model
from search_spaces import ArchConfig, get_space
from search_spaces.errors import HwnasError
from search_spaces.plans import PrunePlan, channel_groups, layer_groups
from supernets.models import build_model

#: stem -> MBConv without a residual (middle group written by expand and dw) -> head.
TINY = "r28_i1_n10|stem_c16_k3_s2_relu|mbv2_k3_e2_c24_s1|head_c64_relu"
#: A small-space subnet with a stride-2 (two-branch) and a stride-1 (split) ShuffleNet unit.
SHUFFLE = ("r28_i1_n10|stem_c16_k3_s2_hswish|fused_k7_e3_c16_s1,fused_k5_e3_c16_s1|mbv2_k5_e3_c24_s2,"
           "mbv2_k7_e4_c24_s1,mbv2_k3_e4_c24_s1|shufflev2_k5_c40_s2,shufflev2_k7_c40_s1|fused_k7_e4_c80_s1,"
           "fused_k7_e2_c80_s1,fused_k3_e2_c80_s1|head_c256_hswish")


@pytest.fixture(scope="module")
def table():
    return find_table("small", "ort", "fp32")


def sampled(seed):
    return get_space("small").sample(np.random.default_rng(seed))


def hand_set_tiny():
    """TINY with every conv weight 1, except middle channel 5 (zero in both writers, expand and dw), and BN scales
    i + 1 (expand) and -2 (dw), 0 for channel 5."""
    model = build_model(ArchConfig.from_str(TINY)).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.weight.fill_(1.0)
        expand, dw = model.get_submodule("s0.b0.expand"), model.get_submodule("s0.b0.dw")
        expand[0].weight[5] = 0
        dw[0].weight[5] = 0
        expand[1].weight.copy_(torch.arange(32.0) + 1)
        dw[1].weight.fill_(-2.0)
        expand[1].weight[5] = dw[1].weight[5] = 0
    return model


def test_l1_and_bn_sum_over_every_layer_that_writes_a_group():
    model = hand_set_tiny()
    assert group_writers(model.arch) == {"stem": ["stem"], "s0.b0.expand": ["s0.b0.expand", "s0.b0.dw"],
                                         "s0.b0.project": ["s0.b0.project"], "head": ["head"]}
    l1 = channel_importance(model, "l1")
    expected = np.full(32, 16.0 + 9.0)  # expand rows: 16 inputs x 1; dw rows: 3 x 3 x 1
    expected[5] = 0
    assert set(l1) == {"stem", "s0.b0.expand", "s0.b0.project", "head"}
    np.testing.assert_array_equal(l1["s0.b0.expand"], expected)
    np.testing.assert_array_equal(l1["stem"], np.full(16, 9.0))
    np.testing.assert_array_equal(l1["head"], np.full(64, 24.0))
    bn = channel_importance(model, "bn")
    expected_bn = np.arange(32.0) + 1 + 2
    expected_bn[5] = 0
    np.testing.assert_array_equal(bn["s0.b0.expand"], expected_bn)
    assert l1["s0.b0.expand"].dtype == bn["s0.b0.expand"].dtype == np.float64


def test_a_zero_channel_is_pruned_first(table):
    model = hand_set_tiny()
    arch = model.arch
    for criterion in ("l1", "bn"):
        scores = {"s0.b0.expand": channel_importance(model, criterion)["s0.b0.expand"]}
        parent_ms = table.predict_arch(arch, estimate_missing=True)
        plan = allocate(arch, scores, table, parent_ms * 0.9999, round_to=1, min_channels=31)
        assert dict(plan.keep) == {"s0.b0.expand": tuple(i for i in range(32) if i != 5)}
    plan = allocate(arch, {"s0.b0.expand": channel_importance(model, "bn")["s0.b0.expand"]}, table, parent_ms * 0.9999)
    assert dict(plan.keep) == {"s0.b0.expand": tuple(range(8, 32))}  # the 24 largest |gamma|, sorted


def _by_hand_taylor(model, batches):
    """|sum over batches of activation x gradient| at the stem's and the head's outputs, from a forward written out
    here (TINY: no residual, no hidden layer)."""
    totals = {"stem": 0, "head": 0}
    for images, labels in batches:
        stem = model.stem(images)
        stem.retain_grad()
        head = model.head(model.s0(stem))
        head.retain_grad()
        F.cross_entropy(model.classifier(head.mean((2, 3))), labels, reduction="sum").backward()
        totals["stem"] = totals["stem"] + (stem * stem.grad).sum((0, 2, 3))
        totals["head"] = totals["head"] + (head * head.grad).sum((0, 2, 3))
    return {name: value.abs().detach().double().numpy() for name, value in totals.items()}


def test_taylor_is_activation_times_gradient_summed_over_batches():
    model = seeded(build_model(ArchConfig.from_str(TINY)))
    with torch.no_grad():  # head channel 3 outputs 0 everywhere: its Taylor score is 0
        head = model.get_submodule("head")
        head[0].weight[3] = 0
        head[1].bias[3] = head[1].running_mean[3] = 0
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(3, 1, 28, 28, generator=gen), torch.randint(0, 10, (3,), generator=gen))
               for _ in range(2)]
    model.train()
    scores = channel_importance(model, "taylor", batches)
    assert model.training  # its mode is restored
    assert all(p.grad is None for p in model.parameters())  # weights' gradients are not touched
    model.eval()
    expected = _by_hand_taylor(model, batches)
    np.testing.assert_allclose(scores["stem"], expected["stem"], rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(scores["head"], expected["head"], rtol=1e-5, atol=1e-9)
    assert scores["head"][3] == 0 and (scores["head"] > 0).sum() > 10  # (ReLU leaves some channels dead)


def test_criteria_refuse_bad_names_and_inputs():
    model = seeded(build_model(ArchConfig.from_str(TINY)))
    assert set(IMPORTANCE) == {"l1", "bn", "taylor"}
    with pytest.raises(HwnasError, match=r"unknown importance criterion 'l2'; allowed: l1, bn, taylor"):
        channel_importance(model, "l2")
    with pytest.raises(HwnasError, match="taylor importance needs at least one calibration batch"):
        channel_importance(model, "taylor")
    with pytest.raises(HwnasError, match=r"images must be N x 1 x H x W .* got images \(2, 3, 28, 28\)"):
        channel_importance(model, "taylor", [(torch.zeros(2, 3, 28, 28), torch.zeros(2))])
    with pytest.raises(HwnasError, match="needs a static model .* got a Linear"):
        channel_importance(torch.nn.Linear(2, 2), "l1")


def test_width_options_are_multiples_of_round_to_down_to_min_channels():
    assert width_options(20, 8, 8) == [20, 16, 8]
    assert width_options(12, 8, 8) == [12, 8]
    assert width_options(6, 8, 8) == [6]  # narrower than min_channels: not pruned
    assert width_options(24, 8, 10) == [24, 16]
    assert width_options(10, 1, 8) == [10, 9, 8]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_allocated_plan_meets_the_budget_and_replays_on_the_parent(table, seed):
    arch = sampled(seed)
    parent = seeded(build_model(arch))
    scores = channel_importance(parent, "l1")
    budget = 0.7 * table.predict_arch(arch)
    result = allocate_latency(arch, scores, table, budget)
    plan = result.plan
    assert plan.parent == arch.key and plan.keep and result.arch == plan.apply_to(arch)
    assert result.latency_ms == table.predict_arch(plan.apply_to(arch), estimate_missing=True) <= budget
    assert result.parent_latency_ms == pytest.approx(table.predict_arch(arch))
    for group, kept in plan.keep.items():
        width = len(kept)
        assert width % 8 == 0 and width >= 8 and width < channel_groups(arch)[group] == len(scores[group])
        top = set(np.argsort(-scores[group], kind="stable")[:width].tolist())
        assert list(kept) == sorted(top)  # the highest-scored channels, sorted
        assert result.widths[group] == width
    # the pruned blocks' keys are off the table's grid: estimated, and said so
    assert result.estimated and set(result.estimated_keys) == {k.to_str() for k in arch_keys(result.arch)
                                                                if k not in table.rows}
    summary = json.loads(json.dumps(result.to_dict()))
    assert summary["latency_ms"] == result.latency_ms and summary["estimated"] is True
    assert PrunePlan.from_dict(summary["plan"]) == plan and summary["table"] == table.table_id
    pruned = prune_model(parent, plan)
    assert pruned.arch == result.arch
    x = torch.randn(2, arch.in_channels, arch.resolution, arch.resolution, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert pruned(x).shape == parent(x).shape == (2, arch.num_classes)


def _zero_readers_of_pruned_channels(model, plan):
    """The parent with every weight that reads a pruned channel zeroed: it computes what the pruned model does."""
    with torch.no_grad():
        for layer, groups in layer_groups(model.arch).items():
            module = model.get_submodule(layer)
            conv = module[0] if isinstance(module, torch.nn.Sequential) else module
            if getattr(conv, "groups", 1) == 1 and groups.inputs in plan.keep:
                dropped = [i for i in range(conv.weight.shape[1]) if i not in plan.keep[groups.inputs]]
                conv.weight[:, dropped] = 0


def test_shufflenet_units_prune_only_their_branch_width_and_keep_their_shapes(table):
    arch = ArchConfig.from_str(SHUFFLE)
    get_space("small").validate(arch)
    units = [s for s in arch.sites() if s.block.family.startswith("shuffle")]
    assert [s.block.is_split_unit(s.in_channels) for s in units] == [False, True]
    parent = seeded(build_model(arch))
    scores = channel_importance(parent, "bn")
    unit_prefixes = tuple(f"s{s.stage}.b{s.position}." for s in units)
    assert {g for g in scores if g.startswith(unit_prefixes)} == {p + "right.pw1" for p in unit_prefixes}
    branch = {g: v for g, v in scores.items() if g.endswith("right.pw1")}
    narrowest = PrunePlan(arch.key, {g: range(8) for g in branch}).apply_to(arch)
    result = allocate_latency(arch, branch, table, table.predict_arch(narrowest, estimate_missing=True))
    assert set(result.plan.keep) == set(branch) and all(len(k) in (8, 16) for k in result.plan.keep.values())
    pruned = prune_model(parent, result.plan)
    shapes = {}

    def record(key):
        def hook(_module, _inputs, output):
            shapes.setdefault(key, tuple(output.shape))
        return hook

    for model in (parent, pruned):
        for site in units:
            name = f"s{site.stage}.b{site.position}"
            model.get_submodule(name).register_forward_hook(record((id(model), name)))
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = pruned(x)
        _zero_readers_of_pruned_channels(parent, result.plan)
        assert torch.allclose(parent(x), out, atol=1e-5)  # split, concat and shuffle intact
    for site in units:
        name = f"s{site.stage}.b{site.position}"
        assert shapes[(id(pruned), name)] == shapes[(id(parent), name)] == (3, site.block.out_channels, 4, 4)
        assert result.arch.stages[site.stage][site.position].out_channels == site.block.out_channels


def test_an_unreachable_budget_names_the_smallest_reachable_latency(table):
    arch = sampled(0)
    scores = channel_importance(seeded(build_model(arch)), "l1")
    smallest = PrunePlan(arch.key, {g: range(min(width_options(len(v), 8, 8))) for g, v in scores.items()})
    floor = table.predict_arch(smallest.apply_to(arch), estimate_missing=True)
    with pytest.raises(AllocationError, match=r"smallest latency reachable with round_to=8, min_channels=8 .* is "
                                              + re.escape(f"{floor:.4g} ms")):
        allocate(arch, scores, table, floor * 0.99)
    assert allocate_latency(arch, scores, table, floor).latency_ms <= floor
    with pytest.raises(AllocationError, match=r"unknown allocation method 'knapsack'; allowed: greedy"):
        allocate(arch, scores, table, 1.0, method="knapsack")
    with pytest.raises(AllocationError, match="round_to must be a whole number >= 1; got 0"):
        allocate(arch, scores, table, 1.0, round_to=0)
    with pytest.raises(AllocationError, match="latency budget must be a finite number of ms > 0"):
        allocate(arch, scores, table, float("nan"))
    with pytest.raises(AllocationError, match=r"scores for s9.b0.expand, which are not prunable groups"):
        allocate(arch, {**scores, "s9.b0.expand": np.ones(8)}, table, 1.0)
    with pytest.raises(AllocationError, match=r"scores of group stem must be 16 finite numbers >= 0"):
        allocate(arch, {**scores, "stem": np.ones(3)}, table, 1.0)


def test_round_to_one_and_budgets_that_tighten(table):
    arch = sampled(0)
    scores = channel_importance(seeded(build_model(arch)), "l1")
    parent_ms = table.predict_arch(arch)
    fine = allocate_latency(arch, scores, table, 0.85 * parent_ms, round_to=1)
    coarse = allocate_latency(arch, scores, table, 0.85 * parent_ms, round_to=8)
    assert fine.latency_ms <= 0.85 * parent_ms and all(len(k) >= 8 for k in fine.plan.keep.values())
    removed = sum(len(scores[g]) - len(k) for g, k in fine.plan.keep.items())
    assert fine.steps == removed > coarse.steps  # round_to=1 walks one channel at a time
    assert width_options(20, 1, 8) == list(range(20, 7, -1))
    latencies = [allocate_latency(arch, scores, table, f * parent_ms).latency_ms for f in (0.9, 0.75, 0.6, 0.45)]
    assert all(b <= a for a, b in zip(latencies, latencies[1:], strict=False)) and latencies[-1] <= 0.45 * parent_ms
    assert allocate(arch, scores, table, 2 * parent_ms).keep == {}  # a budget already met prunes nothing
