"""BatchNorm recalibration and accuracy of subnets taken from the supernet."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from search_spaces import ArchConfig
from supernets.data import Dataset, Split, batches, to_tensor
from supernets.supernet import Supernet


@torch.no_grad()
def recalibrate_bn(model: nn.Module, images: torch.Tensor, batch_size: int = 250) -> nn.Module:
    """Set every BatchNorm's running statistics to the exact mean and (unbiased) variance of its input over
    `images`, with the network in training mode (as once-for-all does); leaves `model` in eval mode.

    Statistics are summed per image, so uneven last batches weigh exactly as much as their images.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    sums: dict[nn.Module, tuple[torch.Tensor, torch.Tensor, int]] = {}

    def collect(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0].double().transpose(0, 1).reshape(inputs[0].shape[1], -1)
        total, squares, n = sums.get(module, (torch.zeros(()), torch.zeros(()), 0))
        sums[module] = (total + x.sum(1), squares + (x * x).sum(1), n + x.shape[1])

    hooks = [m.register_forward_pre_hook(collect) for m in norms]
    model.train()
    try:
        for start in range(0, len(images), batch_size):
            model(images[start:start + batch_size])
    finally:
        for hook in hooks:
            hook.remove()
    for m in norms:
        if m not in sums:  # a BatchNorm this model's forward does not use
            continue
        total, squares, n = sums[m]
        mean = total / n
        var = (squares / n - mean * mean).clamp_min(0) * (n / max(1, n - 1))
        assert m.running_mean is not None and m.running_var is not None
        m.running_mean.copy_(mean.float())
        m.running_var.copy_(var.float())
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, split: Split, resolution: int, mean: float, std: float, batch_size: int = 500) -> float:
    """Top-1 accuracy (a fraction) of `model` in eval mode on `split`."""
    model.eval()
    correct = 0
    for x, y in batches(split, batch_size, resolution, mean, std):
        correct += int((model(x).argmax(1) == y).sum())
    return correct / max(1, len(split))


def recalibration_images(data: Dataset, resolution: int, n: int, seed: int = 0) -> torch.Tensor:
    """A fixed, seeded subset of `n` training images at `resolution`."""
    idx = np.random.default_rng(seed).permutation(len(data.train))[:n]
    return to_tensor(data.train.images[np.sort(idx)], resolution, data.mean, data.std)


def evaluate_subnet(supernet: Supernet, arch: ArchConfig, data: Dataset, recal_images: int = 1000,
                    seed: int = 0) -> tuple[float, nn.Module]:
    """Validation accuracy of `arch` taken from the supernet after BN recalibration, and the recalibrated model."""
    model = supernet.materialize(arch)
    recalibrate_bn(model, recalibration_images(data, arch.resolution, recal_images, seed))
    return accuracy(model, data.val, arch.resolution, data.mean, data.std), model
