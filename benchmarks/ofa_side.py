"""once-for-all's own search beside ours (benchmark only): the `ofa` package's (MIT Han Lab, PyPI `ofa`)
`EvolutionFinder` run offline on this machine, timed as it is shipped.

Its offline workarounds, all kept in this file (the package is used, not changed):

- torchvision: `ofa.utils` imports it for data loaders only; stub modules stand in while `ofa` is imported and
  are removed from `sys.modules` afterwards.
- `device="cpu"` for its accuracy predictor (torch MLP 400-400-400 on its one-hot encoding, untrained: its cost,
  not its quality, is measured).
- a local latency table: the package downloads YAML tables (and reads them with a `yaml.load` call PyYAML 6
  refuses); `StandInLut` gives every key it asks for a latency from the key's multiply-accumulates instead
  (0.5 ns per MAC + 5 us per layer), so the search's throughput, not its picks, is what is compared.

Two efficiency predictors: (a) its own `Mbv3LatencyModel` (each candidate is set active on an OFAMobileNetV3 and
its config built, then the table is read per layer), (b) `BlockTableModel`, the same table read per block straight
from the architecture dict (the equivalence of the two is checked on 200 random architectures).

Install: `.venv/bin/pip install --no-deps ofa` (the `ofa-bench` extra); without it, `load_ofa` says why.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import random
import sys
import time
import types
from dataclasses import dataclass
from typing import Any

import numpy as np


def load_ofa() -> tuple[dict[str, Any], str]:
    """The `ofa` pieces the comparison needs (name -> object), or ({}, why they cannot be used)."""
    stubbed = [name for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional",
                                 "torchvision.datasets") if name not in sys.modules]
    for name in stubbed:
        sys.modules[name] = _stub(name)
        parent, _, child = name.rpartition(".")
        if parent in stubbed:
            setattr(sys.modules[parent], child, sys.modules[name])
    try:
        search = importlib.import_module("ofa.nas.search_algorithm")
        accuracy = importlib.import_module("ofa.nas.accuracy_predictor")
        efficiency = importlib.import_module("ofa.nas.efficiency_predictor")
        networks = importlib.import_module("ofa.imagenet_classification.elastic_nn.networks")
    except Exception as err:  # noqa: BLE001 - any import failure of the optional package is reported, not raised
        hint = "; install it with `.venv/bin/pip install --no-deps ofa`" if getattr(err, "name", "") == "ofa" else ""
        return {}, f"the once-for-all package cannot be imported ({type(err).__name__}: {err}){hint}"
    finally:
        for name in stubbed:
            sys.modules.pop(name, None)
    return {"EvolutionFinder": search.EvolutionFinder, "AccuracyPredictor": accuracy.AccuracyPredictor,
            "MobileNetArchEncoder": accuracy.MobileNetArchEncoder, "Mbv3LatencyModel": efficiency.Mbv3LatencyModel,
            "MBv3LatencyTable": efficiency.MBv3LatencyTable, "OFAMobileNetV3": networks.OFAMobileNetV3}, ""


def _stub(name: str) -> types.ModuleType:
    """A module whose every attribute is an inert class (ofa subclasses torchvision transforms at import)."""
    module = types.ModuleType(name)

    def inert(attr: str) -> type:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return type(attr, (), {})

    setattr(module, "__getattr__", inert)  # noqa: B010 - a module-level __getattr__ (PEP 562)
    return module


class StandInLut(dict[str, dict[str, float]]):
    """once-for-all's latency lookup table (key -> {"mean": ms}), filled on first use from the key itself."""

    def __missing__(self, key: str) -> dict[str, float]:
        kind, *fields = key.split("-")
        info = dict(field.split(":") for field in fields)
        shape_in = [int(v) for v in info["input"].split("x")]
        shape_out = [int(v) for v in info["output"].split("x")]
        h, w, c = shape_in if len(shape_in) == 3 else (1, 1, shape_in[0])
        out = shape_out[-1]
        oh, ow = (shape_out[0], shape_out[1]) if len(shape_out) == 3 else (1, 1)
        if kind == "expanded_conv":
            mid, k = int(info["expand"]), int(info["kernel"])
            macs = (h * w * c * mid if mid != c else 0) + oh * ow * mid * (k * k + out) + (mid * mid // 2
                                                                                           if info["se"] == "1" else 0)
        elif kind == "Conv":
            macs = oh * ow * out * c * 9
        elif kind == "AvgPool2D":
            macs = h * w * c
        else:  # Conv_1, Conv_2, Logits: 1x1 convolutions / linear layers
            macs = h * w * c * out
        value = {"mean": 0.5e-6 * macs + 0.005}
        self[key] = value
        return value


@dataclass
class OfaSetup:
    """What one side-by-side run of `EvolutionFinder` needs."""

    parts: dict[str, Any]
    net: Any  # OFAMobileNetV3 (kernel 3/5/7, expand 3/4/6, depth 2/3/4)
    encoder: Any  # MobileNetArchEncoder over resolutions 160-224
    own_model: Any  # (a) Mbv3LatencyModel on the stand-in tables
    block_model: BlockTableModel  # (b) per-block table read directly

    @classmethod
    def build(cls, parts: dict[str, Any]) -> OfaSetup:
        resolutions = [160, 176, 192, 208, 224]
        net = parts["OFAMobileNetV3"](ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4])
        encoder = parts["MobileNetArchEncoder"](image_size_list=resolutions, ks_list=[3, 5, 7],
                                                expand_list=[3, 4, 6], depth_list=[2, 3, 4])
        own = object.__new__(parts["Mbv3LatencyModel"])  # its constructor downloads the tables
        own.ofa_net = net
        lut = StandInLut()
        own.latency_tables = {}
        for r in resolutions:
            table = object.__new__(parts["MBv3LatencyTable"])
            table.lut = lut
            own.latency_tables[r] = table
        return cls(parts, net, encoder, own, BlockTableModel(own, resolutions))


class BlockTableModel:
    """(b): latency = a fixed part per resolution + one entry per active block, keyed (resolution, block, kernel,
    expand) and read from the architecture dict with no subnet config built. Its entries are read once from (a)'s
    table through the package's own configs (every block at one kernel and expand ratio)."""

    def __init__(self, own: Any, resolutions: list[int]) -> None:
        self.blocks: dict[int, list[dict[tuple[int, int], float]]] = {}
        self.fixed: dict[int, float] = {}
        for r in resolutions:
            per_block: list[dict[tuple[int, int], float]] = [{} for _ in range(20)]
            for k in (3, 5, 7):
                for e in (3, 4, 6):
                    total, parts = _block_latencies(own, {"ks": [k] * 20, "e": [e] * 20, "d": [4] * 5,
                                                          "image_size": r})
                    for i, latency in enumerate(parts):
                        per_block[i][(k, e)] = latency
                    self.fixed[r] = total - sum(parts)
            self.blocks[r] = per_block

    def get_efficiency(self, arch: dict[str, Any]) -> float:
        table, ks, es = self.blocks[arch["image_size"]], arch["ks"], arch["e"]
        total = self.fixed[arch["image_size"]]
        for stage, depth in enumerate(arch["d"]):
            for i in range(4 * stage, 4 * stage + depth):
                total += table[i][(ks[i], es[i])]
        return total


def _block_latencies(own: Any, arch: dict[str, Any]) -> tuple[float, list[float]]:
    """(a)'s latency of `arch` and of each of its 20 searchable blocks (the table's per-layer entries)."""
    config, size = own.get_active_subnet_config(arch)
    table = own.latency_tables[size]
    total = table.predict_network_latency_given_config(config, size)
    fsize, parts = (size + 1) // 2, []
    for block in config["blocks"][1:]:  # the first block is fixed (16 channels, kernel 3, no expansion)
        conv = block["conv"]
        out = int((fsize - 1) / conv["stride"] + 1)
        parts.append(table.query("expanded_conv", [fsize, fsize, conv["in_channels"]],
                                 [out, out, conv["out_channels"]], mid=conv["mid_channels"],
                                 ks=conv["kernel_size"], stride=conv["stride"],
                                 id_skip=0 if block["shortcut"] is None else 1, se=1 if conv["use_se"] else 0,
                                 h_swish=1 if conv["act_func"] == "h_swish" else 0))
        fsize = out
    return total, parts


def arch_key(arch: dict[str, Any]) -> tuple[Any, ...]:
    """The architecture an arch dict describes (kernel and expand ratio of inactive blocks dropped)."""
    active = [i for stage, depth in enumerate(arch["d"]) for i in range(4 * stage, 4 * stage + depth)]
    return arch["image_size"], tuple(arch["d"]), tuple((arch["ks"][i], arch["e"][i]) for i in active)


@dataclass
class OfaRun:
    seconds: float
    cpu_seconds: float
    architectures: int  # children predicted (the initial population and every generation's), repeats included
    distinct: int
    best: float


def run_ofa(setup: OfaSetup, model: str, *, population: int, generations: int, seed: int,
            constraint: float | None = None) -> tuple[OfaRun, float]:
    """Time `EvolutionFinder.run_evolution_search` with efficiency model `model` ("own" or "block") at the paper's
    settings; `constraint`: latency bound (default: the median of 1,000 random architectures). Python's and
    numpy's global random states are seeded for the run and restored after it."""
    import torch

    efficiency = setup.own_model if model == "own" else setup.block_model
    saved = random.getstate(), np.random.get_state(), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if constraint is None:
            random.seed(seed + 1)
            constraint = float(np.median([setup.block_model.get_efficiency(setup.encoder.random_sample_arch())
                                          for _ in range(1000)]))
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        predictor = setup.parts["AccuracyPredictor"](setup.encoder, device="cpu")
        seen: list[dict[str, Any]] = []
        predict = predictor.predict_acc

        def counted(archs: list[dict[str, Any]]) -> Any:
            seen.extend(archs)
            return predict(archs)

        predictor.predict_acc = counted
        finder = setup.parts["EvolutionFinder"](efficiency, predictor, population_size=population,
                                                max_time_budget=generations, parent_ratio=0.25, mutation_ratio=0.5,
                                                arch_mutate_prob=0.1)
        started, cpu = time.perf_counter(), time.process_time()
        with contextlib.redirect_stdout(io.StringIO()):  # it prints every 100 generations
            best, _ = finder.run_evolution_search(constraint, verbose=False)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.set_num_threads(saved[2])
    distinct = len({arch_key(a) for a in seen})
    return OfaRun(seconds, cpu_seconds, len(seen), distinct, float(best[-1])), constraint


def check_equivalence(setup: OfaSetup, n: int = 200, seed: int = 0) -> float:
    """Largest |(a) - (b)| latency over `n` random architectures (0 up to rounding)."""
    saved = random.getstate()
    random.seed(seed)
    try:
        archs = [setup.encoder.random_sample_arch() for _ in range(n)]
    finally:
        random.setstate(saved)
    return max(abs(setup.own_model.get_efficiency(a) - setup.block_model.get_efficiency(a)) for a in archs)
