"""Gradual pruning during fine-tuning: the share of a target `PrunePlan`'s channels that is masked ramps from 0 to
all of them over k epochs, then `nas.export.prune.prune_model` removes them for real.

Schedules (`SCHEDULES`, the fraction of the plan's pruned channels masked while epoch e (0-based) trains):
- `cubic`: 1 - (1 - min(e + 1, k) / k)^3 (Zhu and Gupta, "To prune, or not to prune", 2017, eq. 1 with initial
  sparsity 0): prunes fast while redundancy is high, slowly near the target;
- `linear`: min(e + 1, k) / k.
The mask of an epoch is set before it trains, so with k equal to the number of epochs the last epoch still
trains at the target. Within each group the channels the plan drops are masked lowest-scored first, so the
masked set only grows and ends as the plan's complement.

A mask zeroes a channel at the output of every layer that writes its group (`group_writers`: the conv + BN +
activation unit, a bare SE conv, the hidden layer's activation), so each later layer reads zero where the pruned
model has no channel, and a residual add keeps it zero: the masked model computes what the pruned model does.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping

import numpy as np
import torch
from torch import nn

from search_spaces.errors import HwnasError
from search_spaces.plans import PrunePlan


def _cubic(progress: float) -> float:
    return 1.0 - (1.0 - progress) ** 3


def _linear(progress: float) -> float:
    return progress


#: Pruning schedules by name: progress through the ramp in (0, 1] -> fraction of the target pruned.
SCHEDULES: dict[str, Callable[[float], float]] = {"cubic": _cubic, "linear": _linear}


def pruned_fraction(epoch: int, ramp_epochs: int, schedule: str = "cubic") -> float:
    """The fraction of the plan's pruned channels masked while `epoch` (0-based) trains (see the module docstring);
    `ramp_epochs` 0 prunes everything from the first epoch."""
    if schedule not in SCHEDULES:
        raise HwnasError(f"unknown pruning schedule {schedule!r}; allowed: {', '.join(SCHEDULES)}")
    if ramp_epochs <= 0:
        return 1.0
    return SCHEDULES[schedule](min(epoch + 1, ramp_epochs) / ramp_epochs)


def _order(group: str, width: int, kept: tuple[int, ...], scores: Mapping[str, np.ndarray]) -> list[int]:
    """The channels of `group` the plan drops, lowest score first (ties: lower index first)."""
    if group not in scores:
        raise HwnasError(f"gradual pruning: no channel scores for group {group}; give scores for every group the "
                         f"plan prunes (nas.compress.channel_importance)")
    values = np.asarray(scores[group], dtype=np.float64)
    if values.shape != (width,):
        raise HwnasError(f"gradual pruning: group {group} has {width} channels but {values.size} scores")
    dropped = sorted(set(range(width)) - set(kept))
    return sorted(dropped, key=lambda i: (values[i], i))


class GradualPruning:
    """Masks on a static model's channel groups that follow a schedule towards `plan` (see the module docstring).
    `attach(model)` hooks the model's writers; `set_epoch(e)` sets the masks for epoch e; `detach()` removes the
    hooks. No I/O; the model's weights are never changed."""

    def __init__(self, plan: PrunePlan, scores: Mapping[str, np.ndarray], ramp_epochs: int,
                 schedule: str = "cubic") -> None:
        pruned_fraction(0, ramp_epochs, schedule)  # refuses an unknown schedule now
        self.plan, self.ramp_epochs, self.schedule = plan, ramp_epochs, schedule
        self._scores = scores
        self._order: dict[str, list[int]] = {}
        self._masks: dict[str, torch.Tensor] = {}
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []

    def attach(self, model: nn.Module) -> None:
        """Hook every layer writing a group the plan prunes (all channels pass until `set_epoch`)."""
        from nas.compress.importance import group_writers

        arch = getattr(model, "arch", None)
        if arch is None:
            raise HwnasError(f"gradual pruning masks a static model (build_model); got a {type(model).__name__}")
        widths = self.plan.check(arch)
        writers = group_writers(arch)
        for group, kept in self.plan.keep.items():
            self._order[group] = _order(group, widths[group], kept, self._scores)
            self._masks[group] = torch.ones(widths[group])
            for layer in writers[group]:
                module = model.get_submodule("hidden_act" if layer == "hidden" else layer)
                self._hooks.append(module.register_forward_hook(self._hook(group)))

    def _hook(self, group: str) -> Callable[[nn.Module, object, torch.Tensor], torch.Tensor]:
        def apply(_module: nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
            mask = self._masks[group]
            return output * mask.view(1, -1, *([1] * (output.dim() - 2)))
        return apply

    def set_epoch(self, epoch: int) -> dict[str, int]:
        """Mask the scheduled share of each group's dropped channels for `epoch`; returns the count per group."""
        fraction = pruned_fraction(epoch, self.ramp_epochs, self.schedule)
        counts = {}
        for group, order in self._order.items():
            count = math.floor(fraction * len(order) + 0.5)
            mask = torch.ones_like(self._masks[group])
            mask[order[:count]] = 0.0
            self._masks[group] = mask
            counts[group] = count
        return counts

    def masked(self) -> dict[str, list[int]]:
        """The channels masked now, per group (sorted)."""
        return {g: torch.nonzero(m == 0).flatten().tolist() for g, m in self._masks.items()}

    def scores_digest(self) -> str:
        """sha256 of the scores of the groups the plan prunes (what orders the masks), for resuming."""
        h = hashlib.sha256()
        for group in self.plan.keep:
            h.update(group.encode())
            h.update(np.asarray(self._scores.get(group, ()), dtype=np.float64).tobytes())
        return h.hexdigest()

    def share(self) -> float:
        """The fraction of the plan's dropped channels masked now (1.0 when the plan drops none)."""
        total = sum(len(order) for order in self._order.values())
        masked = sum(int((m == 0).sum()) for m in self._masks.values())
        return masked / total if total else 1.0

    def detach(self) -> None:
        """Remove the hooks (the masks stop applying)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

