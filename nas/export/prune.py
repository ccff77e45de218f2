"""A prune plan replayed on a static model's weights: the pruned architecture built fresh, each tensor holding the
kept channels of the parent's (torch; imported on its own, not by `nas.export`)."""

from __future__ import annotations

import torch
from torch import nn

from search_spaces.errors import HwnasError
from search_spaces.plans import LayerGroups, PrunePlan, layer_groups


def _layer_of(name: str, groups: dict[str, LayerGroups]) -> str | None:
    """The layer id a state-dict entry belongs to (its longest prefix that is a layer id)."""
    parts = name.split(".")
    for end in range(len(parts) - 1, 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in groups:
            return candidate
    return None


def _kept(tensor: torch.Tensor, groups: LayerGroups, plan: PrunePlan, depthwise: bool) -> torch.Tensor:
    """`tensor` cut to the kept output channels (dim 0) and, for a weight that reads its input channels, the kept
    input channels (dim 1)."""
    if tensor.dim() == 0:
        return tensor
    outputs, inputs = plan.keep.get(groups.outputs or ""), plan.keep.get(groups.inputs or "")
    if outputs is not None:
        tensor = tensor.index_select(0, torch.tensor(outputs))
    if inputs is not None and tensor.dim() >= 2 and not depthwise:
        tensor = tensor.index_select(1, torch.tensor(inputs))
    return tensor


def prune_model(model: nn.Module, plan: PrunePlan) -> nn.Module:
    """The static model of `plan.apply_to(model.arch)` (eval mode), holding the channels `plan` keeps of `model`'s
    weights and BatchNorm statistics. `model` is a static model (`build_model`, `Supernet.materialize`) of the
    plan's parent architecture; it is not changed."""
    from supernets.models import build_model

    arch = getattr(model, "arch", None)
    if arch is None:
        raise HwnasError(f"a prune plan replays on a static model (build_model); got a {type(model).__name__}")
    pruned = build_model(plan.apply_to(arch))
    groups = layer_groups(arch)
    source = model.state_dict()
    state = {}
    for name, want in pruned.state_dict().items():
        value, layer = source[name], _layer_of(name, groups)
        if layer is not None:
            owner = pruned.get_submodule(name.rsplit(".", 1)[0])
            depthwise = isinstance(owner, nn.Conv2d) and owner.groups > 1
            value = _kept(value, groups[layer], plan, depthwise)
        if value.shape != want.shape:
            raise HwnasError(f"prune plan {plan.key}: {name} of {arch.key} cut to {tuple(value.shape)}, but the "
                             f"pruned model's is {tuple(want.shape)}")
        state[name] = value.detach().clone()
    pruned.load_state_dict(state, strict=True)
    return pruned.eval()
