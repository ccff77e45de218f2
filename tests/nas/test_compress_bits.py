"""Per-layer quantisation sensitivity (fake quantisation, Hutchinson Hessian trace) and the exact bit-width
allocator against the shipped small-space ORT fp32 and int8 tables."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from latency_tables.counting import layer_ops
from nas.compress.bits import (
    BITS,
    allocate_bits,
    arch_pieces,
    boundary_elements,
    chain_cost,
    latency_costs,
    layer_costs,
    runtime_menu,
    runtime_tables,
    solve_chain,
)
from nas.compress.sensitivity import (
    fake_quantized,
    fake_quantized_layers,
    hawq_scores,
    hessian_trace,
    measured_sensitivity,
    output_ranges,
    precision_scores,
    quantize_weight,
    rank_agreement,
)
from search_spaces import ArchConfig, get_space
from search_spaces.errors import HwnasError
from supernets.data import to_tensor
from supernets.models import build_model
from tests.supernets.tiny import tiny_digits

#: stem -> a residual MBConv (16 -> 16, stride 1) -> head.
RESIDUAL = "r28_i1_n10|stem_c16_k3_s2_relu|mbv2_k3_e2_c16_s1|head_c64_relu"


@pytest.fixture(scope="module")
def tables():
    return runtime_tables("small", "ort")


@pytest.fixture(scope="module")
def arch():
    return get_space("small").sample(np.random.default_rng(0))


def every_layer(arch, **scores):
    return {layer: dict(scores) for _, layers in arch_pieces(arch) for layer in layers}


# ------------------------------------------------------------------------------------------ the DP


def brute_force(sens, cost, between, budget):
    best = None
    for choice in itertools.product(range(cost.shape[1]), repeat=len(cost)):
        if chain_cost(choice, cost, between) <= budget:
            s = sum(sens[i, q] for i, q in enumerate(choice))
            best = s if best is None else min(best, s)
    return best


def test_dp_equals_brute_force_on_four_blocks_with_switch_costs():
    rng = np.random.default_rng(3)
    for _ in range(6):
        cost = rng.integers(1, 10, size=(4, 3)).astype(float)
        sens = rng.random((4, 3))
        between = rng.integers(0, 3, size=(3, 3, 3)).astype(float)
        for i in range(3):
            np.fill_diagonal(between[i], 0.0)
        low = solve_chain(sens, cost, 1e9, between).cost  # unconstrained: least sensitive
        cheapest = brute_force(-cost, cost, between, 1e9)  # (only to have a range of budgets to sweep)
        assert cheapest is not None
        for budget in range(int(cost.min(axis=1).sum()), int(low) + 2):
            expected = brute_force(sens, cost, between, budget)
            if expected is None:
                with pytest.raises(HwnasError, match="smallest reachable is"):
                    solve_chain(sens, cost, budget, between, resolution=1.0)
                continue
            found = solve_chain(sens, cost, budget, between, resolution=1.0)
            assert found.cost <= budget
            assert found.sensitivity == pytest.approx(expected, abs=1e-12)
            assert found.cost == chain_cost(found.choice, cost, between)


def test_float_costs_are_optimal_or_within_the_reported_gap():
    rng = np.random.default_rng(7)
    exact = 0
    for _ in range(20):
        cost, sens = rng.random((4, 3)), rng.random((4, 3))
        between = rng.random((3, 3, 3)) * 0.2 * (1 - np.eye(3))
        budget = cost.min(axis=1).sum() + rng.random() * 1.5
        expected = brute_force(sens, cost, between, budget)
        if expected is None:
            continue
        for resolution in (None, 0.05):
            found = solve_chain(sens, cost, budget, between, resolution=resolution)
            assert found.cost <= budget * (1 + 1e-9)
            assert expected - 1e-12 <= found.sensitivity <= expected + found.gap + 1e-12
            exact += found.gap == 0.0
    assert exact >= 20  # the rounded-down optimum usually fits: proven optimal


def test_an_option_slower_and_no_less_sensitive_is_never_taken():
    cost = np.array([[1.0, 0.5], [1.0, 1.5], [2.0, 1.0], [1.0, 0.2]])  # piece 1 is slower at option 1
    equal = np.ones((4, 2))
    found = solve_chain(equal, cost, 10.0)
    assert found.choice == (1, 0, 1, 1)
    assert found.cost == pytest.approx(0.5 + 1.0 + 1.0 + 0.2)


# --------------------------------------------------------------------- on the shipped ORT tables


def test_uniform_plans_cost_what_each_table_predicts(arch, tables):
    costs, estimated = latency_costs(arch, tables, ("fp32", "int8"))
    assert costs.shape == (len(arch_pieces(arch)), 2) and estimated == []
    assert costs[:, 0].sum() == pytest.approx(tables["fp32"].predict_arch(arch), rel=1e-12)
    assert costs[:, 1].sum() == pytest.approx(tables["int8"].predict_arch(arch), rel=1e-12)
    fp32 = allocate_bits(arch, every_layer(arch, int8=1.0), costs[:, 0].sum(), tables=tables)
    assert set(fp32.plan.layers.values()) == {"fp32"} and fp32.sensitivity == 0.0
    assert set(fp32.plan.layers) == {op.name for op in layer_ops(arch)}


def test_blocks_slower_in_int8_stay_fp32(arch, tables):
    costs, _ = latency_costs(arch, tables, ("fp32", "int8"))
    names = [name for name, _ in arch_pieces(arch)]
    slower = {n for n, (f, i) in zip(names, costs, strict=True) if i > f}
    faster = set(names) - slower
    assert slower and faster  # the shipped tables have both kinds
    equal = allocate_bits(arch, every_layer(arch, fp32=1.0, int8=1.0), costs[:, 0].sum(), tables=tables)
    assert {n for n, p in equal.pieces.items() if p == "fp32"} == slower
    assert equal.budget_cost == pytest.approx(costs.min(axis=1).sum())
    tight = (costs.min(axis=1).sum() + costs[:, 0].sum()) / 2
    plan = allocate_bits(arch, every_layer(arch, int8=1.0), tight, tables=tables)
    assert plan.budget_cost <= tight * (1 + 1e-9) and plan.predicted["latency_ms"] == pytest.approx(plan.budget_cost)
    assert all(plan.pieces[n] == "fp32" for n in slower)
    assert 0 < sum(p == "int8" for p in plan.pieces.values()) < len(faster)
    assert plan.plan.precision_of("stem") == plan.pieces["stem"]


def test_size_and_bitops_budgets(arch):
    size = layer_costs(arch, ("fp32", "int8"), "size_bytes")
    weights = sum(op.weights for op in layer_ops(arch))
    assert size[:, 0].sum() == 4 * weights and size[:, 1].sum() == weights
    bitops = layer_costs(arch, ("fp32", "int8"), "bitops")
    assert bitops[:, 0].sum() == 16 * bitops[:, 1].sum() == 1024 * sum(op.macs for op in layer_ops(arch))
    sens = every_layer(arch, int8=1.0)
    for budget in (weights * 1.0, weights * 2.0, weights * 3.5):
        found = allocate_bits(arch, sens, budget, metric="size_bytes")
        assert found.budget_cost <= budget * (1 + 1e-9) and found.predicted["size_bytes"] == found.budget_cost
        assert "latency_ms" not in found.predicted
    assert set(allocate_bits(arch, sens, weights, metric="size_bytes").pieces.values()) == {"int8"}


def test_switch_costs_count_the_fp32_input_and_output(arch, tables):
    costs, _ = latency_costs(arch, tables, ("fp32", "int8"))
    sens = every_layer(arch, int8=0.0, fp32=1.0)  # int8 preferred everywhere
    free = allocate_bits(arch, sens, 10.0, tables=tables)
    assert set(free.pieces.values()) == {"int8"} and free.budget_cost == pytest.approx(costs[:, 1].sum())
    paid = allocate_bits(arch, sens, 10.0, tables=tables, switch_cost=0.001)
    assert paid.budget_cost == pytest.approx(costs[:, 1].sum() + 0.002)
    assert paid.predicted["latency_ms"] == pytest.approx(costs[:, 1].sum())


def test_litert_menu_and_boundary_switch_costs(arch):
    tables = runtime_tables("small", "litert")
    costs, _ = latency_costs(arch, tables, runtime_menu("litert"))
    sens = every_layer(arch, fp16=0.1, int8=1.0)
    everything = allocate_bits(arch, sens, costs[:, 0].sum(), runtime="litert", tables=tables)
    assert set(everything.pieces.values()) == {"fp32"} and everything.optimality_gap == 0.0
    tight = allocate_bits(arch, sens, costs.min(axis=1).sum() * 1.02, runtime="litert", tables=tables)
    assert tight.budget_cost <= costs.min(axis=1).sum() * 1.02 * (1 + 1e-9) and "int8" in tight.pieces.values()
    elements = boundary_elements(ArchConfig.from_str(RESIDUAL))
    assert elements == [1 * 28 * 28, 16 * 14 * 14, 16 * 14 * 14, 10]
    seen = []
    per_element = allocate_bits(arch, sens, 10.0, runtime="litert", tables=tables, precisions=["fp32", "int8"],
                                switch_cost=lambda b, before, after: seen.append((b, before, after)) or 1e-6)
    assert (0, "fp32", "int8") in seen and (len(arch_pieces(arch)), "int8", "fp32") in seen
    assert set(per_element.pieces.values()) == {"fp32"}  # int8 costs more sensitivity and the budget is loose


def test_bad_input_is_refused_naming_what_is_allowed(arch, tables):
    sens = every_layer(arch, int8=1.0)
    costs, _ = latency_costs(arch, tables, ("fp32", "int8"))
    smallest = costs.min(axis=1).sum()
    with pytest.raises(HwnasError, match=f"smallest reachable is {smallest:.6g}"):
        allocate_bits(arch, sens, smallest * 0.9, tables=tables)
    with pytest.raises(HwnasError, match="allowed: latency_ms, size_bytes, bitops"):
        allocate_bits(arch, sens, 1.0, metric="macs")
    with pytest.raises(HwnasError, match="not on ort's menu; allowed: fp32, int8"):
        runtime_menu("ort", ["fp16"])
    with pytest.raises(HwnasError, match="no sensitivity of layer stem at int8"):
        allocate_bits(arch, {"stem": {"fp32": 0.0}}, 1.0, tables=tables)
    with pytest.raises(HwnasError, match="needs the runtime's latency tables"):
        allocate_bits(arch, sens, 1.0)
    assert runtime_menu("litert") == ("fp32", "fp16", "int8")


def test_simulated_bit_widths_price_size_and_bitops(arch):
    weights = sum(op.weights for op in layer_ops(arch))
    macs = sum(op.macs for op in layer_ops(arch))
    menu = ("fp32", "w8a8", "w4a8", "w2a16")
    size, bitops = layer_costs(arch, menu, "size_bytes"), layer_costs(arch, menu, "bitops")
    assert list(size.sum(axis=0)) == [4 * weights, weights, weights / 2, weights / 4]
    assert list(bitops.sum(axis=0)) == [1024 * macs, 64 * macs, 32 * macs, 32 * macs]
    assert BITS["w4a8"] == (4, 8) and BITS["w2a16"] == (2, 16) and BITS["int8"] == (8, 8) and len(BITS) == 3 + 56


def test_simulated_allocation_over_a_size_budget(arch):
    menu = ("fp32", "w8a8", "w4a8", "w2a8")
    assert runtime_menu("simulated", ["w2a8", "w4a8", "fp32", "w8a8"]) == menu == runtime_menu("simulated")
    weights = sum(op.weights for op in layer_ops(arch))
    sens = every_layer(arch, w8a8=0.1, w4a8=0.5, w2a8=2.0)
    loose = allocate_bits(arch, sens, 4 * weights, metric="size_bytes", runtime="simulated")
    assert set(loose.pieces.values()) == {"fp32"} and loose.plan.simulated == frozenset()
    floor = allocate_bits(arch, sens, weights / 4, metric="size_bytes", runtime="simulated", precisions=menu)
    assert set(floor.pieces.values()) == {"w2a8"} and floor.budget_cost == weights / 4
    layers = {n for _, names in arch_pieces(arch) for n in names}
    assert floor.plan.simulated == layers and floor.plan.used(arch) == ("w2a8",)
    # sizes are multiples of a quarter byte (2-bit weights): buckets of 0.25 make the DP exact
    middle = allocate_bits(arch, sens, weights / 2, metric="size_bytes", runtime="simulated", precisions=menu,
                           resolution=0.25)
    assert middle.budget_cost <= weights / 2 and middle.optimality_gap == 0.0
    assert middle.sensitivity <= 0.5 * len(layers)  # at most uniform w4a8's, which fits
    assert middle.plan.simulated == {n for n in layers if middle.plan.precision_of(n) != "fp32"}
    bitops = allocate_bits(arch, sens, 64 * sum(op.macs for op in layer_ops(arch)), metric="bitops",
                           runtime="simulated")
    assert set(bitops.pieces.values()) <= {"w8a8", "w4a8", "w2a8", "fp32"} and "latency_ms" not in bitops.predicted
    with pytest.raises(HwnasError, match=f"smallest reachable is {weights / 4:.6g}"):
        allocate_bits(arch, sens, weights / 5, metric="size_bytes", runtime="simulated")


def test_simulated_precisions_have_no_latency_and_no_runtime(arch, tables):
    sens = every_layer(arch, w8a8=0.1, w4a8=0.5, w2a8=2.0, int8=1.0)
    with pytest.raises(HwnasError, match=r"latency_ms budget cannot be allocated over simulated precisions \(w8a8, "
                                         r"w4a8, w2a8\): no runtime runs them, so they have no measured latency; "
                                         r"allowed: a size_bytes or bitops budget .* \(ort: fp32, int8; litert"):
        allocate_bits(arch, sens, 1.0, runtime="simulated")
    with pytest.raises(HwnasError, match=r"simulated precision\(s\) w4a8 are not on ort's menu \(no runtime runs "
                                         r"them\); allowed: runtime='simulated'"):
        allocate_bits(arch, sens, 1.0, tables=tables, precisions=("fp32", "w4a8"))
    with pytest.raises(HwnasError, match="takes no latency tables"):
        allocate_bits(arch, sens, 1e9, metric="size_bytes", runtime="simulated", tables=tables)
    with pytest.raises(HwnasError, match=r"int8 not on the simulated menu; allowed: fp32 and simulated w<2-8>"):
        runtime_menu("simulated", ["fp32", "int8"])
    with pytest.raises(HwnasError, match="runtime 'simulated' has no latency tables"):
        runtime_tables("small", "simulated")


# ------------------------------------------------------------------------------------- sensitivity


def digits(arch, n=48):
    data = tiny_digits(n_train=n, n_val=8)
    return to_tensor(data.train.images, arch.resolution, data.mean, data.std), torch.from_numpy(data.train.labels)


def residual_model(zero_project=False):
    """RESIDUAL, seeded, with a scaled-up classifier so that its outputs are confident rather than near uniform."""
    torch.manual_seed(0)
    model = build_model(ArchConfig.from_str(RESIDUAL)).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.fill_(1.0)  # undo zero-init of the residual's last BN, so the block counts
        model.classifier.weight.mul_(30.0)
        if zero_project:
            model.get_submodule("s0.b0.project")[0].weight.zero_()
    return model


def test_weights_are_quantised_per_channel_with_a_straight_through_gradient():
    w = (torch.randn(4, 3, 3, 3) * torch.tensor([1.0, 10.0, 0.01, 0.0])[:, None, None, None]).requires_grad_()
    q = quantize_weight(w, 8)
    for c in range(4):
        top, qc = float(w[c].detach().abs().max()), q[c].detach()
        assert float(qc.abs().max()) == pytest.approx(top)
        assert torch.allclose(qc, w[c].detach(), atol=top / 254 + 1e-12)
        assert len(torch.unique(qc)) <= 255
    q.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


def test_fake_quantising_a_layer_with_zero_weights_changes_nothing():
    model = residual_model(zero_project=True)
    x, labels = digits(model.arch)
    reference = model(x)
    ranges = output_ranges(model, x)
    assert ranges["s0.b0.project"] == (0.0, 0.0)
    with fake_quantized(model, "s0.b0.project", "int8", ranges["s0.b0.project"]):
        assert torch.equal(model(x), reference)
    found = measured_sensitivity(model, x, labels, ("int8", "w2a2"), layers=["s0.b0.project", "stem"])
    assert found["s0.b0.project"]["int8"].kl == 0.0 and found["s0.b0.project"]["int8"].accuracy_drop == 0.0
    assert found["stem"]["w2a2"].kl > found["stem"]["int8"].kl > 0.0
    assert torch.equal(model(x), reference)  # every layer restored


def test_measured_sensitivity_and_scores():
    model = residual_model()
    x, labels = digits(model.arch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    found = measured_sensitivity(model, x, labels, ("int8", "fp16", "w4a4"))
    assert list(found) == [op.name for op in layer_ops(model.arch)]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(0 < s["fp16"].kl < s["int8"].kl < s["w4a4"].kl for s in found.values())
    scores = precision_scores(found)
    assert scores["stem"] == {"fp32": 0.0, **{p: found["stem"][p].kl for p in ("int8", "fp16", "w4a4")}}
    kl = {layer: s["int8"].kl for layer, s in found.items()}
    assert rank_agreement({"kl": kl, "reversed": {k: -v for k, v in kl.items()}}, kl) == \
        pytest.approx({"kl": 1.0, "reversed": -1.0})


def test_hutchinson_matches_the_exact_trace_of_a_quadratic_model():
    torch.manual_seed(1)
    model = torch.nn.Linear(6, 2, bias=False)
    x, y = torch.randn(32, 6) * torch.arange(1.0, 7.0), torch.randn(32, 2)
    exact = torch.autograd.functional.hessian(lambda w: F.mse_loss(x @ w.reshape(2, 6).T, y),
                                              model.weight.detach().flatten())
    per_weight = float(torch.trace(exact)) / 12
    found = hessian_trace(model, [(x, y)], samples=400, seed=0, weights={"fc": model.weight}, loss=F.mse_loss)
    assert found["fc"] == pytest.approx(per_weight, rel=0.10)
    again = hessian_trace(model, [(x, y)], samples=400, seed=0, weights={"fc": model.weight}, loss=F.mse_loss)
    other = hessian_trace(model, [(x, y)], samples=400, seed=1, weights={"fc": model.weight}, loss=F.mse_loss)
    assert again == found and other != found


def test_hessian_trace_of_a_static_model_is_seeded_and_gives_hawq_scores():
    model = residual_model()
    x, labels = digits(model.arch, n=16)
    trace = hessian_trace(model.train(), [(x, labels)], samples=2, seed=5)
    assert model.training  # evaluated in eval mode, its mode restored
    assert list(trace) == [op.name for op in layer_ops(model.arch)]
    assert all(np.isfinite(v) for v in trace.values())
    assert hessian_trace(model, [(x, labels)], samples=2, seed=5) == trace
    scores = hawq_scores(model, trace, ("int8", "w4a8"))
    assert all(s["fp32"] == 0.0 for s in scores.values())
    assert all(abs(s["w4a8"]) > abs(s["int8"]) for s in scores.values() if s["int8"] != 0.0)
    with pytest.raises(HwnasError, match="unknown simulated precision 'int3'"):
        hawq_scores(model, trace, ("int3",))


def test_hessian_trace_differentiates_hard_swish_and_hard_sigmoid_twice():
    torch.manual_seed(2)
    model = build_model(ArchConfig.from_str("r16_i1_n3|stem_c8_k3_s1_hswish|mbv3_k3_e2_c8_s1_se0.25_hswish|"
                                            "head_c24_hswish")).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.fill_(1.0)
    x, labels = torch.randn(8, 1, 16, 16), torch.arange(8) % 3
    reference = model(x)
    trace = hessian_trace(model, [(x, labels)], samples=2, seed=0)  # torch alone: no double backward
    assert len(trace) == 8 and all(np.isfinite(v) and v != 0.0 for v in trace.values())
    hard = [m for m in model.modules() if isinstance(m, (torch.nn.Hardswish, torch.nn.Hardsigmoid))]
    assert len(hard) == 5 and all("forward" not in vars(m) for m in hard)
    assert torch.equal(model(x), reference)


def test_a_whole_plan_is_simulated_as_its_layers_one_inside_another():
    model = residual_model()
    x, _ = digits(model.arch, n=16)
    reference, ranges = model(x), output_ranges(model, x)
    plan = {"stem": "int8", "s0.b0.expand": "fp32", "s0.b0.dw": "fp16", "classifier": "w4a8"}
    with fake_quantized_layers(model, plan, ranges):
        simulated = model(x)
    with fake_quantized(model, "stem", "int8", ranges["stem"]), fake_quantized(model, "s0.b0.dw", "fp16"), \
            fake_quantized(model, "classifier", "w4a8", ranges["classifier"]):
        nested = model(x)
    assert torch.equal(simulated, nested) and not torch.equal(simulated, reference)
    assert torch.equal(model(x), reference)
    with pytest.raises(HwnasError, match="model has no layer 's9.b0.dw'"), \
            fake_quantized_layers(model, {"s9.b0.dw": "int8"}, ranges):
        pass
