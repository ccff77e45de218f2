"""BatchNorm recalibration and accuracy of subnets taken from the supernet.

Beside top-1 accuracy, an evaluation gives, from the same forward pass, the validation cross-entropy (mean negative
log-likelihood of the true class: lower variance, since every image moves it a little instead of only the few near
the decision boundary moving the accuracy by a whole image) and a robust cross-entropy, the mean of ln(1 + NLL)
per image (lower variance still: the few confidently wrong images, whose NLL runs to several nats, no longer
dominate it). `benchmarks/bench_signal.py` measures how reliably each ranks subnets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

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


@dataclass(frozen=True)
class ImageOutcomes:
    """Per validation image, in the split's order: whether the top-1 class is right, and the cross-entropy (nats)."""

    correct: np.ndarray  # bool
    nll: np.ndarray  # float64

    def score(self, index: np.ndarray | slice = slice(None)) -> SubnetScore:
        """The score over the images `index` selects (all by default)."""
        correct, nll = self.correct[index], self.nll[index]
        n = max(1, len(correct))
        return SubnetScore(float(correct.sum()) / n, float(nll.sum()) / n, float(np.log1p(nll).sum()) / n)


@dataclass(frozen=True)
class SubnetScore:
    """Top-1 accuracy (a fraction), validation cross-entropy (mean NLL of the true class, nats) and robust
    cross-entropy (mean ln(1 + NLL))."""

    accuracy: float
    loss: float
    robust_loss: float


@torch.no_grad()
def image_outcomes(model: nn.Module, split: Split, resolution: int, mean: float, std: float,
                   batch_size: int = 500) -> ImageOutcomes:
    """Top-1 correctness and cross-entropy of `model` (in eval mode) on each image of `split`, in one pass."""
    model.eval()
    correct, nll = [], []
    for x, y in batches(split, batch_size, resolution, mean, std):
        logits = model(x).double()  # float64: sums over thousands of images stay exact enough to compare
        correct.append((logits.argmax(1) == y).numpy())
        nll.append(F.cross_entropy(logits, y, reduction="none").numpy())
    if not correct:
        return ImageOutcomes(np.zeros(0, dtype=bool), np.zeros(0))
    return ImageOutcomes(np.concatenate(correct), np.concatenate(nll))


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


def evaluate_subnet_outcomes(supernet: Supernet, arch: ArchConfig, data: Dataset, recal_images: int = 1000,
                             seed: int = 0) -> tuple[ImageOutcomes, nn.Module]:
    """Per-image outcomes on the validation split of `arch` taken from the supernet after BN recalibration (as
    `evaluate_subnet`), and the recalibrated model."""
    model = supernet.materialize(arch)
    recalibrate_bn(model, recalibration_images(data, arch.resolution, recal_images, seed))
    return image_outcomes(model, data.val, arch.resolution, data.mean, data.std), model


def evaluate_subnet_score(supernet: Supernet, arch: ArchConfig, data: Dataset, recal_images: int = 1000,
                          seed: int = 0) -> SubnetScore:
    """Validation accuracy and cross-entropy of `arch` (as `evaluate_subnet`, from the same forward pass)."""
    return evaluate_subnet_outcomes(supernet, arch, data, recal_images, seed)[0].score()


#: The signals an evaluation gives: name -> the `SubnetScore` field; `accuracy` is higher-better, the rest lower.
SIGNALS = {"accuracy": "accuracy", "val_loss": "loss", "val_robust_loss": "robust_loss"}


def split_half_reliability(outcomes: list[ImageOutcomes], images: int | None = None) -> dict[str, float]:
    """How reliably each signal ranks subnets: Kendall tau between its values on the even- and the odd-indexed
    images (two independent halves) of the first `images` validation images (all by default), over the subnets
    whose `outcomes` are given. Returns each signal's tau (`SIGNALS`), each one's tau against the accuracy on the
    other half (`NAME_vs_accuracy`: how well it predicts accuracy on images it has not seen, the mean of both
    directions, sign-adjusted so that higher is better) and `images_per_half`."""
    from scipy.stats import kendalltau

    from search_spaces.errors import HwnasError

    def kendall_tau(a: np.ndarray, b: np.ndarray) -> float:  # tau-b, as latency_tables (a layer above) uses
        return float(kendalltau(a, b).statistic)

    if len(outcomes) < 2:
        raise HwnasError(f"split-half reliability needs at least 2 subnets; got {len(outcomes)}")
    total = min(len(o.correct) for o in outcomes)
    images = total if images is None else images
    if not 2 <= images <= total:
        raise HwnasError(f"split-half reliability needs 2 .. {total} images (the outcomes' shortest split); "
                         f"got {images}")
    halves = [[o.score(slice(start, images, 2)) for o in outcomes] for start in (0, 1)]
    values = {name: [np.array([getattr(s, field) for s in h]) for h in halves] for name, field in SIGNALS.items()}
    out: dict[str, float] = {name: kendall_tau(*pair) for name, pair in values.items()}
    acc = values["accuracy"]
    for name, (even, odd) in values.items():
        sign = 1.0 if name == "accuracy" else -1.0
        out[f"{name}_vs_accuracy"] = sign * (kendall_tau(even, acc[1]) + kendall_tau(odd, acc[0])) / 2
    out["images_per_half"] = images // 2
    return out
