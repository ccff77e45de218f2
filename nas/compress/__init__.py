"""Compression of chosen subnets: the library behind `hwnas compress` (`nas.compress.pipeline.compress_subnet`).

- Structured pruning: channel importance by criterion (`channel_importance`: L1, BN scale, first-order Taylor) and a
  NetAdapt-style greedy allocation of the channels each dependency group keeps against a latency table, model
  size, MACs or BitOPs (`allocate_budget`, `allocate_latency`; every point of the walk: `prune_path`), giving a
  `search_spaces.plans.PrunePlan` that `nas.export.prune.prune_model`
  replays on the parent's weights; `latency_tables.ondemand.measure_missing` measures the off-grid keys it needs.
- Bit widths: per-layer quantisation sensitivity (`measured_sensitivity`, Hutchinson `hessian_trace`, HAWQ-V3
  `hawq_scores`) and an exact dynamic programme choosing each block's precision under a latency, size or BitOPs
  budget from the runtime's per-precision tables (`allocate_bits`), giving a `BitWidthPlan`.
- Distillation and fine-tuning: Hinton `kd_loss`, stage-feature distillation, teachers (`load_teacher`), a gradual
  pruning schedule (`GradualPruning`) and a resumable `finetune`.

The torch-free names (allocators) are bound on import; the torch ones are imported on first use (PEP 562), so a
torch-free caller does not pay for torch. `nas.compress.allocate` is the function, which shadows its module of the
same name: import the module's other names with `from nas.compress.allocate import ...`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nas.compress.allocate import (
    METHODS,
    PRUNE_METRICS,
    Allocation,
    AllocationError,
    PathPoint,
    allocate,
    allocate_budget,
    allocate_latency,
    predicted_latency,
    prune_cost,
    prune_path,
    width_options,
)
from nas.compress.bits import BitAllocation, allocate_bits, solve_chain
from search_spaces.lazy import lazy_names

if TYPE_CHECKING:
    from nas.compress.distill import FeatureDistiller, kd_loss, load_teacher, teacher_from_run, teacher_from_subnet
    from nas.compress.finetune import FinetuneConfig, FinetuneResult, finetune
    from nas.compress.gradual import GradualPruning, pruned_fraction
    from nas.compress.importance import IMPORTANCE, channel_importance, group_writers
    from nas.compress.sensitivity import hawq_scores, hessian_trace, measured_sensitivity, rank_agreement

#: Lazily imported name -> the module that defines it.
_HOMES = {
    **{name: "nas.compress.importance" for name in ("IMPORTANCE", "channel_importance", "group_writers")},
    **{name: "nas.compress.distill" for name in ("FeatureDistiller", "kd_loss", "load_teacher", "teacher_from_run",
                                                 "teacher_from_subnet")},
    **{name: "nas.compress.finetune" for name in ("FinetuneConfig", "FinetuneResult", "finetune")},
    **{name: "nas.compress.gradual" for name in ("GradualPruning", "pruned_fraction")},
    **{name: "nas.compress.sensitivity" for name in ("hawq_scores", "hessian_trace", "measured_sensitivity",
                                                     "rank_agreement")},
}

__all__ = [
    "IMPORTANCE", "METHODS", "PRUNE_METRICS", "Allocation", "AllocationError", "PathPoint", "allocate_budget",
    "prune_cost", "prune_path", "BitAllocation", "FeatureDistiller", "FinetuneConfig",
    "FinetuneResult", "GradualPruning", "allocate", "allocate_bits", "allocate_latency", "channel_importance",
    "finetune", "group_writers", "hawq_scores", "hessian_trace", "kd_loss", "load_teacher", "measured_sensitivity",
    "predicted_latency", "pruned_fraction", "rank_agreement", "solve_chain", "teacher_from_run", "teacher_from_subnet",
    "width_options",
]


__getattr__, __dir__ = lazy_names(__name__, globals(), _HOMES)
