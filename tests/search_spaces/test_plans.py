"""Prune and bit-width plans: channel groups, applying a plan to an architecture, JSON round trip, key stability
and validation errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from search_spaces import ArchConfig, get_space
from search_spaces.plans import (
    SIMULATED_PRECISIONS,
    BitWidthPlan,
    LayerGroups,
    PlanError,
    PrunePlan,
    channel_groups,
    layer_groups,
    simulated_bits,
)

ROOT = Path(__file__).resolve().parents[2]
#: fused (residual on the stem's channels), two ShuffleNet stride-2 units, an EfficientNet block with SE.
MIXED = "r24_i1_n10|stem_c16_k3_s2_hswish|fused_k3_e2_c16_s1|shufflev2_k3_c24_s2|shufflev2_k3_c40_s2|" \
        "effnet_k3_e2_c64_s1|head_c256_hswish"
#: Two MBConv blocks sharing one residual chain (s0.b0.project) and an mbv3 block with SE.
MBCONV = "r28_i1_n10|stem_c16_k3_s2_relu6|mbv2_k3_e2_c24_s2,mbv2_k3_e3_c24_s1|mbv3_k3_e2_c32_s2_se0.25_relu|" \
         "head_c128_f64_relu6"


def test_groups_follow_residual_chains_and_leave_shufflenet_outputs_alone():
    arch = ArchConfig.from_str(MIXED)
    assert channel_groups(arch) == {"stem": 16, "s0.b0.expand": 32, "s1.b0.right.pw1": 12, "s2.b0.right.pw1": 20,
                                    "s3.b0.expand": 80, "s3.b0.se.reduce": 10, "s3.b0.project": 64, "head": 256}
    groups = layer_groups(arch)
    assert groups["s0.b0.project"] == LayerGroups("s0.b0.expand", "stem")  # the residual add shares the stem's
    assert groups["s1.b0.left.pw"] == LayerGroups("stem", None)  # a ShuffleNet unit's output is not prunable
    assert groups["s3.b0.expand"] == LayerGroups(None, "s3.b0.expand")
    assert groups["s3.b0.se.expand"] == LayerGroups("s3.b0.se.reduce", "s3.b0.expand")
    assert list(groups)[-2:] == ["head", "classifier"] and groups["classifier"] == LayerGroups("head", None)


def test_a_split_unit_fixes_the_channels_it_splits():
    arch = ArchConfig.from_str("r24_i1_n10|stem_c16_k3_s2_relu|mbv2_k3_e2_c24_s2|shufflev2_k3_c24_s1|head_c64_relu")
    assert "s0.b0.project" not in channel_groups(arch)
    assert layer_groups(arch)["s0.b0.project"] == LayerGroups("s0.b0.expand", None)
    assert layer_groups(arch)["s1.b0.right.pw1"] == LayerGroups(None, "s1.b0.right.pw1")


def test_apply_to_writes_explicit_widths_and_keeps_skips_as_they_were():
    arch = ArchConfig.from_str(MBCONV)
    plan = PrunePlan(arch.key, {"s0.b0.expand": [0, 3, 5], "s0.b0.project": range(20), "s1.b0.se.reduce": [1, 2],
                                "hidden": [0, 1, 2, 3]})
    pruned = plan.apply_to(arch)
    # s0.b1 still adds its input (both ends are the pruned chain); its middle width, derived from the narrower
    # input, would shrink (20 x 3 -> 64 instead of 72): written explicitly, as is the mbv3 block's SE.
    assert pruned.to_str() == ("r28_i1_n10|stem_c16_k3_s2_relu6|mbv2_k3_e2_m3_c20_s2,mbv2_k3_e3_m72_c20_s1|"
                               "mbv3_k3_e2_m48_c32_s2_se0.25_q2_relu|head_c128_f4_relu6")
    assert pruned.stages[0][1].has_residual(20)
    assert channel_groups(pruned)["s1.b0.expand"] == channel_groups(arch)["s1.b0.expand"] == 48
    assert PrunePlan(arch.key).apply_to(arch) == arch


def test_a_pruned_chain_that_meets_a_blocks_output_width_gets_noskip():
    arch = ArchConfig.from_str("r24_i1_n10|stem_c16_k3_s2_relu|mbv2_k3_e2_c24_s1|head_c64_relu")
    assert not arch.stages[0][0].has_residual(16)
    pruned = PrunePlan(arch.key, {"s0.b0.project": range(16)}).apply_to(arch)
    assert pruned.to_str() == "r24_i1_n10|stem_c16_k3_s2_relu|mbv2_k3_e2_c16_s1_noskip|head_c64_relu"


def test_a_plan_refuses_what_does_not_fit():
    arch = ArchConfig.from_str(MBCONV)
    with pytest.raises(PlanError, match=r"prune plan parent 0123456789ab is not architecture"):
        PrunePlan("0123456789ab").apply_to(arch)
    with pytest.raises(PlanError, match=r"prune plan groups s0.b1.project not in architecture .*allowed: stem, "
                                        r"s0.b0.expand, s0.b0.project, s0.b1.expand"):
        PrunePlan(arch.key, {"s0.b1.project": [0]}).apply_to(arch)
    with pytest.raises(PlanError, match=r"group s0.b0.expand: index 32 is past its 32 channels; allowed: 0 to 31"):
        PrunePlan(arch.key, {"s0.b0.expand": [0, 32]}).check(arch)
    with pytest.raises(PlanError, match=r"must be sorted and unique; got \[3, 1\]"):
        PrunePlan(arch.key, {"stem": [3, 1]})
    with pytest.raises(PlanError, match=r"at least one whole number >= 0; got \[\]"):
        PrunePlan(arch.key, {"stem": []})
    with pytest.raises(PlanError, match=r"at least one whole number >= 0; got \[-1\]"):
        PrunePlan(arch.key, {"stem": [-1]})
    with pytest.raises(PlanError, match=r"'stages.1.0' is not a layer id; allowed: stem, s<stage>.b<position>"):
        PrunePlan(arch.key, {"stages.1.0": [0]})
    with pytest.raises(PlanError, match=r"parent must be an architecture key \(12 hex digits\); got 'abc'"):
        PrunePlan("abc")


def test_prune_plan_round_trips_through_canonical_json_with_a_stable_key():
    plan = PrunePlan("0123456789ab", {"stem": (0, 2), "s0.b0.expand": [1, 4, 7]})
    text = plan.to_json()
    assert text == ('{"format":"hwnas.prune-plan/1","keep":{"s0.b0.expand":[1,4,7],"stem":[0,2]},'
                    '"parent":"0123456789ab"}')
    assert PrunePlan.from_json(text) == plan and PrunePlan.from_dict(json.loads(text)) == plan
    assert plan.key == "b3bc987d48b5"  # a stored plan keeps its key across versions
    assert PrunePlan("0123456789ab", {"s0.b0.expand": [1, 4, 7], "stem": [0, 2]}).key == plan.key
    assert hash(plan) == hash(PrunePlan.from_json(text))
    with pytest.raises(PlanError, match="unknown fields extra; allowed: format, parent, keep"):
        PrunePlan.from_dict({**plan.to_dict(), "extra": 1})
    with pytest.raises(PlanError, match="format 'hwnas.prune-plan/1'"):
        PrunePlan.from_dict({"parent": "0123456789ab"})
    with pytest.raises(PlanError, match="prune plan is not JSON"):
        PrunePlan.from_json("{")


def test_bitwidth_plan_gives_every_layer_a_precision():
    arch = ArchConfig.from_str(MBCONV)
    plan = BitWidthPlan({"stem": "fp32", "s1.b0.se.reduce": "fp16", "classifier": "fp32"}, default="int8",
                        simulated={"s1.b0.se.reduce"})
    assert plan.precision_of("stem") == "fp32" and plan.precision_of("s0.b0.dw") == "int8"
    precisions = plan.precisions(arch)
    assert list(precisions) == list(layer_groups(arch))
    assert precisions["s1.b0.se.reduce"] == "fp16" and precisions["head"] == "int8"
    assert sum(p == "int8" for p in precisions.values()) == len(precisions) - 3
    assert plan.used(arch) == ("fp32", "fp16", "int8")
    assert BitWidthPlan().used(arch) == ("fp32",)


def test_bitwidth_plan_round_trip_key_and_refusals():
    plan = BitWidthPlan({"s0.b0.dw": "int8", "stem": "fp16"}, simulated=["s0.b0.dw"])
    assert plan.to_json() == ('{"default":"fp32","format":"hwnas.bitwidth-plan/1","layers":{"s0.b0.dw":"int8",'
                              '"stem":"fp16"},"simulated":["s0.b0.dw"]}')
    assert BitWidthPlan.from_json(plan.to_json()) == plan
    assert plan.key == "c00fbf35cbe8"
    with pytest.raises(PlanError, match=r"precision of stem is 'int4'; allowed: fp32, fp16, int8"):
        BitWidthPlan({"stem": "int4"})
    with pytest.raises(PlanError, match=r"default precision is 'bf16'; allowed: fp32, fp16, int8"):
        BitWidthPlan(default="bf16")
    with pytest.raises(PlanError, match=r"'s0.b0.body' is not a layer id"):
        BitWidthPlan({"s0.b0.body": "int8"})
    with pytest.raises(PlanError, match=r"bit-width plan layers s3.b0.dw not in architecture"):
        BitWidthPlan({"s3.b0.dw": "int8"}).precisions(ArchConfig.from_str(MBCONV))
    with pytest.raises(PlanError, match="unknown fields bits"):
        BitWidthPlan.from_dict({**plan.to_dict(), "bits": 8})


def test_plans_hold_for_every_sampled_architecture():
    import numpy as np

    space, rng = get_space("small"), np.random.default_rng(0)
    for arch in (space.sample(rng) for _ in range(30)):
        widths = channel_groups(arch)
        keep = {g: list(range(0, w, 2)) for g, w in widths.items()}
        pruned = PrunePlan(arch.key, keep).apply_to(arch)
        assert channel_groups(pruned) == {g: (w + 1) // 2 for g, w in widths.items()}
        assert list(layer_groups(pruned)) == list(layer_groups(arch))


def test_the_module_imports_no_torch():
    code = "import sys, search_spaces.plans; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


def test_layer_ids_are_the_cost_traces_and_the_static_modules():
    import numpy as np

    from latency_tables.counting import layer_ids
    from supernets.models import build_model

    for name in ("small", "imagenet"):
        space, rng = get_space(name), np.random.default_rng(1)
        for arch in (space.sample(rng) for _ in range(10)):
            assert list(layer_groups(arch)) == list(layer_ids(arch))
        model = build_model(arch)
        assert all(model.get_submodule(layer) is not None for layer in layer_groups(arch))


def test_plans_from_python_with_keys_of_mixed_types_or_a_mapping_of_simulated_layers_are_plan_errors():
    with pytest.raises(PlanError, match="prune plan group: 1 is not a layer id"):
        PrunePlan("0" * 12, {1: [0], "stem": [0]})
    with pytest.raises(PlanError, match="bit-width plan layer: 1 is not a layer id"):
        BitWidthPlan({1: "int8", "stem": "fp16"})
    with pytest.raises(PlanError, match="simulated must be a list of layer ids"):
        BitWidthPlan.from_dict({"format": "hwnas.bitwidth-plan/1", "simulated": {"stem": 1}})


def test_simulated_bits_reads_w_a_precisions_and_nothing_else():
    assert simulated_bits("w4a8") == (4, 8) and simulated_bits("w2a16") == (2, 16) and simulated_bits("w8a2") == (8, 2)
    for other in ("int8", "fp32", "w1a8", "w9a8", "w4a32", "w4a8 ", "W4A8", 48, None):
        assert simulated_bits(other) is None
    assert len(SIMULATED_PRECISIONS) == 7 * 8 and SIMULATED_PRECISIONS[:3] == ("w8a16", "w8a8", "w8a7")
    assert SIMULATED_PRECISIONS[-1] == "w2a2" and all(simulated_bits(p) for p in SIMULATED_PRECISIONS)


def test_layers_at_simulated_precisions_are_simulated_and_come_after_native_ones():
    arch = ArchConfig.from_str(MBCONV)
    plan = BitWidthPlan({"s0.b0.dw": "w4a8", "stem": "int8", "head": "w2a8"}, simulated=["s1.b0.dw"])
    assert plan.simulated == {"s0.b0.dw", "head", "s1.b0.dw"}  # s1.b0.dw: fp32 listed as simulated, as before
    assert plan.used(arch) == ("fp32", "int8", "w4a8", "w2a8") and plan.has_simulated
    assert plan.simulated_in(arch) == plan.simulated
    assert BitWidthPlan.from_json(plan.to_json()) == plan
    assert BitWidthPlan.from_dict(plan.to_dict()).to_dict()["simulated"] == ["head", "s0.b0.dw", "s1.b0.dw"]
    everywhere = BitWidthPlan({"stem": "fp32"}, default="w4a4")
    assert everywhere.simulated == set() and everywhere.has_simulated
    assert everywhere.simulated_in(arch) == set(layer_groups(arch)) - {"stem"}
    assert everywhere.used(arch) == ("fp32", "w4a4")
    assert not BitWidthPlan({"stem": "int8"}).has_simulated
    with pytest.raises(PlanError, match=r"precision of stem is 'w1a8'; allowed: fp32, fp16, int8, or a simulated "
                                        r"w<2-8>a<2-8\|16>"):
        BitWidthPlan({"stem": "w1a8"})


def test_native_plan_keys_did_not_change_with_simulated_precisions():
    # keys computed before simulated precisions were accepted
    assert BitWidthPlan().key == "5012a61f3ddb"
    assert BitWidthPlan({"s0.b0.dw": "int8", "stem": "fp16"}, simulated=["s0.b0.dw"]).key == "c00fbf35cbe8"
    assert BitWidthPlan({"stem": "int8", "head": "int8"}, default="fp16").key == "7faf469340c2"
