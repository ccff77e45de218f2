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
    """Recompute every BatchNorm's running statistics as the exact average over `images`; leaves `model` in eval."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: the plain mean over all batches
    model.train()
    for start in range(0, len(images), batch_size):
        model(images[start:start + batch_size])
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
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
