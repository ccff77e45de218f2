"""nas.references: Wilson intervals, the comparison with hand-designed references, scaling, training, summaries."""

from __future__ import annotations

import math

import pytest

from nas.references import compare_with_references, wilson_interval
from search_spaces.errors import HwnasError


def _row(name: str, correct: int, ms: float | None, variant: str = "fp32", runtime: str = "ort:fp32") -> dict:
    latency = {} if ms is None else {runtime: {"measured_ms": ms, "predicted_ms": None, "table_id": None}}
    return {"name": name, "variant": variant, "accuracy": correct / 1000, "correct": correct, "val_images": 1000,
            "accuracy_ci95": list(wilson_interval(correct, 1000)), "latency": latency}


# ------------------------------------------------------------------------------------------------- wilson


def test_wilson_interval_closed_forms_at_the_ends():
    # x = 0: [0, z^2 / (n + z^2)]; x = n: [n / (n + z^2), 1]
    assert wilson_interval(0, 10) == pytest.approx((0.0, 1.96**2 / (10 + 1.96**2)), abs=1e-12)
    low, high = wilson_interval(10, 10)
    assert low == pytest.approx(10 / (10 + 1.96**2), abs=1e-12) and high == pytest.approx(1.0)


def test_wilson_interval_known_values():
    # Newcombe (1998), Table I: 81/263 -> 0.2553 to 0.3662 (method 3, Wilson without continuity correction)
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=5e-5)
    # 15/148 -> 0.0624 to 0.1605 (same table)
    assert wilson_interval(15, 148) == pytest.approx((0.0624, 0.1605), abs=5e-5)
    # scipy.stats.binomtest(981, 1000).proportion_ci(method="wilson") -> 0.970516 to 0.987803 (z = 1.959964)
    low, high = wilson_interval(981, 1000)
    assert low == pytest.approx(0.970516, abs=2e-6) and high == pytest.approx(0.987803, abs=2e-6)
    assert 0.8 < 100 * (high - low) / 2 < 0.9  # about +-0.9 points near 98% on 1,000 images


@pytest.mark.parametrize("correct,n", [(5, 0), (11, 10), (-1, 10), (1.5, 10), (True, 10)])
def test_wilson_interval_bad_input(correct, n):
    with pytest.raises(HwnasError, match="wilson_interval"):
        wilson_interval(correct, n)


# --------------------------------------------------------------------------------------------- comparison


REFS = [_row("mobilenet_v2", 985, 2.0), _row("shufflenet_v2_x0_5", 971, 0.9), _row("efficientnet_b0", 988, 3.0)]


def test_compare_met():
    pick = _row("abc", 974, 0.5, variant="compressed")
    out = compare_with_references([pick], REFS, "ort:fp32")
    row = out["rows"][0]
    assert row["faster_than"]["reference"] == "shufflenet_v2_x0_5"
    assert row["faster_than"]["speedup"] == pytest.approx(1.8) and row["faster_than"]["met"] is True
    # every reference is slower; the most accurate of them is efficientnet_b0 (98.8%) > 97.4%: not met
    assert row["as_accurate_as"]["reference"] == "efficientnet_b0"
    assert row["as_accurate_as"]["difference_points"] == pytest.approx(-1.4)
    # 96.3-98.2 and 97.9-99.4 overlap: the difference is inside the intervals, but not met all the same
    assert row["as_accurate_as"]["within_uncertainty"] is True and row["as_accurate_as"]["met"] is False
    assert out["met"] is False and out["best"] == "abc"
    expected = ("The compressed pick abc is 1.80x faster on ort:fp32 than shufflenet_v2_x0_5 (97.1% +- 1.1) "
                "at 97.4% +- 1.0")
    assert expected + ": met" in out["text"]
    assert ": not met." in out["text"]


def test_compare_met_both_conditions():
    pick = _row("abc", 989, 0.6)
    out = compare_with_references([pick], REFS, "ort:fp32")
    row = out["rows"][0]
    assert row["faster_than"]["reference"] == "shufflenet_v2_x0_5" and row["faster_than"]["speedup"] == 1.5
    assert row["faster_than"]["met"] is True  # exactly 1.5x counts
    assert row["as_accurate_as"]["reference"] == "efficientnet_b0" and row["as_accurate_as"]["met"] is True
    assert row["as_accurate_as"]["within_uncertainty"] is True
    assert out["met"] is True and "not met" not in out["text"] and "acceptance met" in out["text"]


def test_compare_not_met_too_slow():
    pick = _row("slow", 986, 1.5)
    out = compare_with_references([pick], REFS, "ort:fp32")
    row = out["rows"][0]
    # references at <= 98.6%: mobilenet_v2 (2.0 ms) and shufflenet (0.9 ms): the fastest is shufflenet, 0.6x
    assert row["faster_than"]["reference"] == "shufflenet_v2_x0_5"
    assert row["faster_than"]["speedup"] == pytest.approx(0.6) and row["faster_than"]["met"] is False
    # slower references: mobilenet_v2 (98.5) and efficientnet_b0 (98.8): the most accurate wins
    assert row["as_accurate_as"]["reference"] == "efficientnet_b0" and row["as_accurate_as"]["met"] is False
    assert out["met"] is False and "0.60x faster" in out["text"] and "not met" in out["text"]


def test_compare_vacuous():
    # less accurate than every reference and slower than every reference: neither condition applies
    pick = _row("bad", 900, 5.0)
    out = compare_with_references([pick], REFS, "ort:fp32")
    assert out["rows"][0]["faster_than"] is None and out["rows"][0]["as_accurate_as"] is None
    assert out["met"] is False
    assert "no reference qualifies for the speed-up condition" in out["text"]
    assert "no reference qualifies for the accuracy condition" in out["text"]
    # more accurate than all and slower than all: only (a) applies, and it is not met
    out = compare_with_references([_row("big", 995, 5.0)], REFS, "ort:fp32")
    assert out["rows"][0]["as_accurate_as"] is None and out["rows"][0]["faster_than"]["met"] is False
    assert out["met"] is False
    # no reference measured on this runtime
    out = compare_with_references([pick], REFS, "litert:fp32")
    assert out["rows"] == [] and out["best"] is None and out["met"] is False
    assert "No reference is measured on litert:fp32" in out["text"] and "bad has no measured latency" in out["text"]


def test_compare_ties():
    refs = [_row("a", 980, 1.0), _row("b", 980, 2.0), _row("c", 990, 2.0), _row("c", 985, 2.0, variant="compressed")]
    pick = _row("p", 980, 2.0 / 3)
    row = compare_with_references([pick], refs, "ort:fp32")["rows"][0]
    # equal accuracy qualifies for (a); of the two at 98.0% the faster one (a, 1.0 ms) is the comparison
    assert row["faster_than"]["reference"] == "a" and row["faster_than"]["speedup"] == pytest.approx(1.5)
    # equal latency qualifies for (b)
    pick = _row("q", 990, 2.0)
    row = compare_with_references([pick], refs, "ort:fp32")["rows"][0]
    assert row["as_accurate_as"]["reference"] == "c" and row["as_accurate_as"]["difference_points"] == 0.0
    assert row["as_accurate_as"]["met"] is True  # equal accuracy is "at least as accurate"
    assert row["faster_than"]["reference"] == "a" and row["faster_than"]["speedup"] == pytest.approx(0.5)


def test_compare_best_candidate():
    fast = _row("fast", 989, 0.6, variant="compressed")
    slow = _row("slow", 989, 0.8)
    worse = _row("worse", 950, 0.1)
    out = compare_with_references([slow, worse, fast], REFS, "ort:fp32")
    assert [r["name"] for r in out["rows"]] == ["slow", "worse", "fast"]
    assert out["best"] == "fast" and out["met"] is True
    assert math.isclose(out["rows"][2]["faster_than"]["speedup"], 1.5)
    worse_row = out["rows"][1]
    assert worse_row["faster_than"] is None  # less accurate than every reference
    assert worse_row["as_accurate_as"]["difference_points"] == pytest.approx(-3.8)
    assert worse_row["as_accurate_as"]["within_uncertainty"] is False
    assert "outside the 95% intervals: not met" in out["text"]
