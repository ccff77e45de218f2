"""How much each channel of a static model matters, per prunable channel group, by a named criterion.

A channel group (`search_spaces.plans.channel_groups`) is written by every layer whose output channels it is
(`layer_groups(arch)[layer].outputs == group`): a block's middle channels by its expand, depthwise and SE-expand
layers, a residual chain's channels by the stem or first project and every project that adds into it. A score is
summed over those writers, so a channel kept or cut is judged by all the weights that produce it.

Criteria (`IMPORTANCE`, by name):
- `l1`: L1 norm of each writer's weights for that output channel (Li et al., "Pruning Filters for Efficient
  ConvNets", ICLR 2017).
- `bn`: |gamma| of the writers' BatchNorm for that channel (Liu et al., "Network Slimming", ICCV 2017); a group
  none of whose writers has BatchNorm (an SE squeeze, the hidden layer) falls back to `l1`.
- `taylor`: first-order Taylor estimate of the loss change when the channel is removed, |sum over calibration
  images and positions of activation x gradient| at each writer's output (Molchanov et al., "Importance
  Estimation for Neural Network Pruning", CVPR 2019), summed over writers. Needs real batches (images, labels).

Scores are float64 numpy arrays, one value per channel, all >= 0; the allocator normalises them per group, so
their scale across groups does not matter.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from search_spaces import ArchConfig
from search_spaces.errors import HwnasError
from search_spaces.plans import channel_groups, layer_groups

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
Scores = dict[str, np.ndarray]


def group_writers(arch: ArchConfig) -> dict[str, list[str]]:
    """Each prunable channel group of `arch` with the layer ids that write its channels, in network order."""
    writers: dict[str, list[str]] = {group: [] for group in channel_groups(arch)}
    for layer, groups in layer_groups(arch).items():
        if groups.outputs in writers:
            writers[groups.outputs].append(layer)
    return writers


def _arch_of(model: nn.Module) -> ArchConfig:
    arch = getattr(model, "arch", None)
    if not isinstance(arch, ArchConfig):
        raise HwnasError(f"channel importance needs a static model (supernets.models.build_model); got a "
                         f"{type(model).__name__}")
    return arch


def _weighted(module: nn.Module) -> nn.Conv2d | nn.Linear:
    """The conv or linear layer of a layer module (a ConvBNAct's conv, or the module itself)."""
    return module[0] if isinstance(module, nn.Sequential) else module  # type: ignore[return-value]


def _l1_rows(module: nn.Module) -> np.ndarray:
    weight = _weighted(module).weight.detach()
    return weight.abs().flatten(1).sum(1).double().numpy()


def l1_importance(model: nn.Module, batches: Batches | None = None) -> Scores:
    """L1 norm of the writers' weights per output channel, summed over each group's writers (`batches` unused)."""
    arch = _arch_of(model)
    return {group: np.sum([_l1_rows(model.get_submodule(layer)) for layer in layers], axis=0)
            for group, layers in group_writers(arch).items()}


def _bn_of(module: nn.Module) -> nn.BatchNorm2d | None:
    if isinstance(module, nn.Sequential) and len(module) > 1 and isinstance(module[1], nn.BatchNorm2d):
        return module[1]
    return None


def bn_importance(model: nn.Module, batches: Batches | None = None) -> Scores:
    """|BatchNorm gamma| per channel, summed over each group's writers that have BatchNorm; L1 of the writers'
    weights for a group without any (`batches` unused)."""
    arch = _arch_of(model)
    scores = {}
    for group, layers in group_writers(arch).items():
        norms = [bn for bn in (_bn_of(model.get_submodule(layer)) for layer in layers) if bn is not None]
        if norms:
            scores[group] = np.sum([bn.weight.detach().abs().double().numpy() for bn in norms], axis=0)
        else:
            scores[group] = np.sum([_l1_rows(model.get_submodule(layer)) for layer in layers], axis=0)
    return scores


def _checked_batch(batch: object, arch: ArchConfig, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(batch, Sequence) and len(batch) == 2 and all(isinstance(t, torch.Tensor) for t in batch)):
        raise HwnasError(f"taylor importance batch {index} must be a pair (images, labels) of tensors; got "
                         f"{type(batch).__name__}")
    images, labels = batch
    if images.dim() != 4 or images.shape[1] != arch.in_channels or labels.shape != images.shape[:1]:
        raise HwnasError(f"taylor importance batch {index}: images must be N x {arch.in_channels} x H x W and labels "
                         f"N class indices; got images {tuple(images.shape)}, labels {tuple(labels.shape)}")
    return images, labels.long()


def _activation_x_gradient(model: nn.Module, modules: dict[str, nn.Module], images: torch.Tensor,
                           labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per layer, sum over images and positions of its output times the loss's gradient there (one batch)."""
    outputs: dict[str, torch.Tensor] = {}
    hooks = [module.register_forward_hook(lambda _m, _i, out, name=name: outputs.__setitem__(name, out))
             for name, module in modules.items()]
    try:
        with torch.enable_grad():
            logits = model(images.detach().float().requires_grad_(True))  # a graph even if weights are frozen
            loss = F.cross_entropy(logits, labels, reduction="sum")  # every image counts once, however batched
            names = list(outputs)
            grads = torch.autograd.grad(loss, [outputs[n] for n in names])
    finally:
        for hook in hooks:
            hook.remove()
    dims = {n: [d for d in range(outputs[n].dim()) if d != 1] for n in names}
    return {n: (outputs[n] * g).detach().sum(dims[n]).double() for n, g in zip(names, grads, strict=True)}


def taylor_importance(model: nn.Module, batches: Batches | None = None) -> Scores:
    """First-order Taylor importance (see the module's docstring) on calibration `batches` of (images, labels).
    The model runs in eval mode (BatchNorm statistics are not changed) and its mode is restored."""
    arch = _arch_of(model)
    writers = group_writers(arch)
    modules = {layer: model.get_submodule(layer) for layers in writers.values() for layer in layers}
    totals: dict[str, torch.Tensor] = {}
    was_training = model.training
    model.eval()
    try:
        for index, batch in enumerate(batches or ()):
            images, labels = _checked_batch(batch, arch, index)
            for layer, value in _activation_x_gradient(model, modules, images, labels).items():
                totals[layer] = totals[layer] + value if layer in totals else value
    finally:
        model.train(was_training)
    if not totals:
        raise HwnasError("taylor importance needs at least one calibration batch of (images, labels)")
    return {group: np.sum([totals[layer].abs().numpy() for layer in layers], axis=0)
            for group, layers in writers.items()}


Criterion = Callable[[nn.Module, Batches | None], Scores]

#: Importance criteria by name: (static model, calibration batches or None) -> score per channel of each group.
IMPORTANCE: dict[str, Criterion] = {"l1": l1_importance, "bn": bn_importance, "taylor": taylor_importance}


def channel_importance(model: nn.Module, criterion: str, batches: Batches | None = None) -> Scores:
    """Channel scores of every prunable group of a static model by the criterion named (see `IMPORTANCE`)."""
    if criterion not in IMPORTANCE:
        raise HwnasError(f"unknown importance criterion {criterion!r}; allowed: {', '.join(IMPORTANCE)}")
    return IMPORTANCE[criterion](model, batches)
