"""Hand-designed references on the same data and runtime: scale, train alone, export, compare with the picks.

The claim hardware-aware search has to back: its pick is faster than the hand-designed network people would
otherwise ship at the same accuracy, and at least as accurate at the same latency, measured on the same data
and runtime. `compare_with_references` checks both for rows shaped like `RUN/references/summary.json`'s, and
states every accuracy with its 95% Wilson interval (MNIST nearly saturates: 1,000 validation images give
about +-0.9 points at 98%).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from search_spaces.errors import HwnasError

#: The speed-up over the fastest reference of equal or lower accuracy that the acceptance asks for.
REQUIRED_SPEEDUP = 1.5


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion `correct / n` (95% for z = 1.96)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise HwnasError(f"wilson_interval: n must be a whole number of at least 1; got {n!r}")
    if isinstance(correct, bool) or not isinstance(correct, int) or not 0 <= correct <= n:
        raise HwnasError(f"wilson_interval: correct must be a whole number from 0 to n={n}; got {correct!r}")
    if not z > 0:
        raise HwnasError(f"wilson_interval: z must be positive; got {z!r}")
    p = correct / n
    z2 = z * z
    denominator = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


# ---------------------------------------------------------------------------------------------- comparison


def _interval(row: dict[str, Any]) -> tuple[float, float]:
    """A row's 95% interval: `accuracy_ci95` when given, else Wilson's from correct / val_images, else none."""
    ci = row.get("accuracy_ci95")
    if ci is not None:
        return float(ci[0]), float(ci[1])
    if row.get("correct") is not None and row.get("val_images"):
        return wilson_interval(int(row["correct"]), int(row["val_images"]))
    acc = float(row["accuracy"])
    return acc, acc


def _measured(row: dict[str, Any], runtime: str) -> float | None:
    entry = (row.get("latency") or {}).get(runtime) or {}
    value = entry.get("measured_ms")
    return float(value) if value is not None else None


def _label(row: dict[str, Any]) -> str:
    return f"{row['name']} (compressed)" if row.get("variant") == "compressed" else str(row["name"])


def _accuracy_text(row: dict[str, Any]) -> str:
    low, high = _interval(row)
    return f"{100 * float(row['accuracy']):.1f}% +- {100 * (high - low) / 2:.1f}"


def _faster_than(cand: dict[str, Any], cand_ms: float, refs: list[tuple[dict[str, Any], float]]) -> dict | None:
    """Condition (a): the fastest reference of equal or lower accuracy, and the candidate's speed-up over it."""
    pool = [(ref, ms) for ref, ms in refs if float(ref["accuracy"]) <= float(cand["accuracy"])]
    if not pool:
        return None
    ref, ms = min(pool, key=lambda item: (item[1], -float(item[0]["accuracy"]), _label(item[0])))
    speedup = ms / cand_ms
    return {"reference": _label(ref), "accuracy": float(ref["accuracy"]), "measured_ms": ms,
            "speedup": speedup, "met": speedup >= REQUIRED_SPEEDUP}


def _as_accurate_as(cand: dict[str, Any], cand_ms: float, refs: list[tuple[dict[str, Any], float]]) -> dict | None:
    """Condition (b): the most accurate reference of equal or higher latency; met at equal or higher accuracy."""
    pool = [(ref, ms) for ref, ms in refs if ms >= cand_ms]
    if not pool:
        return None
    ref, ms = max(pool, key=lambda item: (float(item[0]["accuracy"]), -item[1], _label(item[0])))
    cand_low, cand_high = _interval(cand)
    ref_low, ref_high = _interval(ref)
    return {"reference": _label(ref), "accuracy": float(ref["accuracy"]), "measured_ms": ms,
            "difference_points": 100 * (float(cand["accuracy"]) - float(ref["accuracy"])),
            "within_uncertainty": cand_low <= ref_high and ref_low <= cand_high,
            "met": float(cand["accuracy"]) >= float(ref["accuracy"])}


def _sentences(cand: dict[str, Any], row: dict[str, Any], runtime: str,
               refs_by_label: dict[str, dict[str, Any]]) -> str:
    who = f"The {'compressed pick' if cand.get('variant') == 'compressed' else 'pick'} {cand['name']}"
    mine = _accuracy_text(cand)
    parts = []
    faster = row["faster_than"]
    if faster is None:
        parts.append(f"{who} ({mine}) is less accurate than every reference measured on {runtime}: "
                     f"no reference qualifies for the speed-up condition.")
    else:
        ref_text = _accuracy_text(refs_by_label[faster["reference"]])
        parts.append(f"{who} is {faster['speedup']:.2f}x faster on {runtime} than {faster['reference']} "
                     f"({ref_text}) at {mine}: {'met' if faster['met'] else 'not met'} "
                     f"(at least {REQUIRED_SPEEDUP}x asked).")
    accurate = row["as_accurate_as"]
    if accurate is None:
        parts.append(f"{who} ({row['measured_ms']:.4g} ms) is slower than every reference measured on {runtime}: "
                     f"no reference qualifies for the accuracy condition.")
    else:
        ref_text = _accuracy_text(refs_by_label[accurate["reference"]])
        verdict = "met" if accurate["met"] else "not met"
        inside = "inside" if accurate["within_uncertainty"] else "outside"
        parts.append(f"{who} ({mine}, {row['measured_ms']:.4g} ms) against {accurate['reference']} ({ref_text}, "
                     f"{accurate['measured_ms']:.4g} ms), the most accurate reference at equal or higher latency: "
                     f"{accurate['difference_points']:+.1f} points, {inside} the 95% intervals: {verdict}.")
    return " ".join(parts)


def compare_with_references(candidates: list[dict], references: list[dict], runtime: str) -> dict:
    """Check the acceptance on `runtime` for each candidate (summary.json-shaped rows) against the references.

    (a) among references with accuracy <= the candidate's, the fastest measured one: the candidate's speed-up
    over it must be >= 1.5; (b) among references with measured latency >= the candidate's, the most accurate:
    the candidate must be at least as accurate ("within_uncertainty": the two 95% intervals overlap). A
    condition no reference qualifies for is vacuous (None). The best candidate has the most conditions met,
    then the lowest latency; "met" is true when at least one condition applies to it and every one that
    applies is met. Rows not measured on `runtime` are left out (said in "text").
    """
    refs = [(ref, ms) for ref in references if (ms := _measured(ref, runtime)) is not None]
    refs_by_label = {_label(ref): ref for ref, _ in refs}
    rows: list[dict[str, Any]] = []
    texts: list[str] = []
    for cand in candidates:
        cand_ms = _measured(cand, runtime)
        if cand_ms is None:
            texts.append(f"{cand['name']} has no measured latency on {runtime}: left out.")
            continue
        row = {"name": cand["name"], "variant": cand.get("variant", "fp32"), "accuracy": float(cand["accuracy"]),
               "accuracy_ci95": list(_interval(cand)), "measured_ms": cand_ms,
               "faster_than": _faster_than(cand, cand_ms, refs), "as_accurate_as": _as_accurate_as(cand, cand_ms, refs)}
        rows.append(row)
        texts.append(_sentences(cand, row, runtime, refs_by_label))
    if not refs:
        texts.insert(0, f"No reference is measured on {runtime}: nothing to compare with.")
    best, met = _best(rows)
    if best is not None:
        texts.append(f"Best candidate on {runtime}: {best['name']}; acceptance {'met' if met else 'not met'}.")
    return {"runtime": runtime, "met": met, "best": best["name"] if best else None, "rows": rows,
            "text": "\n".join(texts)}


def _best(rows: Sequence[dict[str, Any]]) -> tuple[dict[str, Any] | None, bool]:
    def conditions(row: dict[str, Any]) -> list[dict[str, Any]]:
        return [c for c in (row["faster_than"], row["as_accurate_as"]) if c is not None]

    if not rows:
        return None, False
    best = max(rows, key=lambda r: (sum(c["met"] for c in conditions(r)), -r["measured_ms"]))
    applied = conditions(best)
    return best, bool(applied) and all(c["met"] for c in applied)
