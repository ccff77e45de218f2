"""Torch-Pruning (DepGraph, Fang et al. CVPR 2023; the `bench` extra pins the version) run side by side with hwnas's
pruning for the compression benchmark: the same exported subnet, the same MACs target, the same fine-tune, the
same runtime and timing protocol.

Its setting is the one the issue names as its only correct one: magnitude importance (L1), `round_to` 8, every
ShuffleNet unit (and the classifier) among its ignored layers. The ratio of its uniform per-layer pruning is
scanned until its MACs (counted by its own `count_ops_and_params`, which also counts the hwnas result) reach the
target. The pruned model keeps the parent's `arch` attribute (Torch-Pruning edits the modules in place), which is
all `nas.compress.finetune.finetune` reads from it: resolution, classes and input channels.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

#: Pruning ratios tried, in order (one step each, on a fresh copy of the parent).
RATIOS = np.round(np.arange(0.01, 0.91, 0.01), 2)
RESULT_FILE = "torch-pruning.json"


@dataclass(frozen=True)
class SideBySide:
    """What one Torch-Pruning run gives: its MACs, ratio, accuracy (PyTorch after the fine-tune, and ONNX Runtime
    top-1 on the validation split, which checks its export), and its ONNX file."""

    ratio: float
    macs: int
    params: int
    target_macs: int
    accuracy: float
    ort_top1: float
    onnx: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def tp_macs(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """(MACs, parameters) of `model` by Torch-Pruning's counter (used for both sides, so the targets compare)."""
    import torch_pruning as tp

    macs, params = tp.utils.count_ops_and_params(model, example)
    return int(macs), int(params)


def ignored_layers(model: nn.Module) -> list[nn.Module]:
    """Every ShuffleNet unit and the classifier: what Torch-Pruning must not prune."""
    from supernets.blocks import ShuffleV2Unit

    ignored: list[nn.Module] = [m for m in model.modules() if isinstance(m, ShuffleV2Unit)]
    classifier = getattr(model, "classifier", None)
    if isinstance(classifier, nn.Module):
        ignored.append(classifier)
    return ignored


def prune_once(parent: nn.Module, example: torch.Tensor, ratio: float, round_to: int = 8) -> nn.Module:
    """A copy of `parent` pruned by Torch-Pruning at `ratio` (L1 magnitude, one step)."""
    import torch_pruning as tp

    model = copy.deepcopy(parent).eval()
    pruner = tp.pruner.MetaPruner(model, example, importance=tp.importance.MagnitudeImportance(p=1),
                                  pruning_ratio=ratio, round_to=round_to, ignored_layers=ignored_layers(model))
    pruner.step()
    return model


def prune_to_macs(parent: nn.Module, example: torch.Tensor, target_macs: int, round_to: int = 8
                  ) -> tuple[nn.Module, float]:
    """The least-pruned Torch-Pruning model with at most `target_macs`, and its ratio, from a scan of ratios (its
    MACs are not monotone in the ratio: past about 0.8, rounding tiny widths up to `round_to` grows the network);
    the model with the fewest MACs when none reaches the target."""
    fewest: tuple[int, nn.Module, float] | None = None
    for ratio in RATIOS:
        model = prune_once(parent, example, float(ratio), round_to)
        macs = tp_macs(model, example)[0]
        if macs <= target_macs:
            return model, float(ratio)
        if fewest is None or macs < fewest[0]:
            fewest = (macs, model, float(ratio))
    assert fewest is not None
    return fewest[1], fewest[2]


def ort_top1(path: Path, data: Any, resolution: int) -> float:
    """Top-1 of an ONNX model on ONNX Runtime (1 thread) over the validation split."""
    from latency_tables.runtimes import get_runtime
    from supernets.data import to_tensor

    session = get_runtime("ort").load(path, 1)
    x = to_tensor(data.val.images, resolution, data.mean, data.std).numpy()
    predicted = [int(np.argmax(session(x[i:i + 1]))) for i in range(len(x))]
    return float(np.mean(np.array(predicted) == data.val.labels))


def run_side(parent: nn.Module, data: Any, target_macs: int, out_dir: Path, tune: Any, teacher: nn.Module | None,
             log: Callable[[str], None]) -> SideBySide:
    """Prune `parent` with Torch-Pruning to `target_macs`, fine-tune it with `tune` (a `FinetuneConfig`) and
    `teacher`, export it to ONNX (fp32, the converter hwnas's tables use) in `out_dir`. Cached: a finished
    `out_dir` is read back."""
    from latency_tables.convert import export_model_file
    from nas.compress.finetune import finetune

    done = out_dir / RESULT_FILE
    if done.is_file():
        return SideBySide(**json.loads(done.read_text(encoding="utf-8")))
    arch: Any = parent.arch
    example = torch.zeros(1, arch.in_channels, arch.resolution, arch.resolution)
    pruned, ratio = prune_to_macs(parent, example, target_macs)
    macs, params = tp_macs(pruned, example)
    log(f"torch-pruning: ratio {ratio:.3f} -> {macs:,} MACs (target {target_macs:,}); fine-tuning")
    result = finetune(pruned, data, out_dir / "finetune", tune, teacher=teacher, log=log)
    onnx = export_model_file("ort", "fp32", result.model, example.shape, out_dir / "model.onnx")
    side = SideBySide(ratio, macs, params, target_macs, result.val_accuracy,
                      ort_top1(onnx, data, arch.resolution), str(onnx))
    done.write_text(json.dumps(side.to_dict(), indent=2) + "\n", encoding="utf-8")
    return side


def measure_side_by_side(paths: list[Path], protocol: Any) -> list[float]:
    """Median ms of each ONNX model on ONNX Runtime, timed round-robin (`measure_many`) by `protocol`, pinned as
    the tables' protocol says."""
    from latency_tables.runtimes import get_runtime
    from search_spaces.files import pinned_to_cpu

    with pinned_to_cpu(protocol.pin_cpu):
        return [m.median_ms for m in get_runtime("ort").measure_many(paths, protocol)]
