"""The smallest supernet training recipe the tests use: scikit-learn's digits, two one-epoch phases."""

from __future__ import annotations

from dataclasses import replace

from supernets.config import PhaseConfig, TrainConfig
from supernets.data import Dataset, Split, load_dataset


def tiny_digits(n_train: int = 96, n_val: int = 48) -> Dataset:
    """A small, fixed subset of scikit-learn's 8x8 digits (resized to the space's 24-32 px on the fly)."""
    full = load_dataset("digits", seed=0)
    return replace(full, train=Split(full.train.images[:n_train], full.train.labels[:n_train]),
                   val=Split(full.val.images[:n_val], full.val.labels[:n_val]))


def tiny_config(**overrides) -> TrainConfig:
    """The `small` space on digits: one `full` epoch, then one `depth` epoch (2 subnets, with a teacher)."""
    base = dict(dataset="digits", batch_size=32, bn_recal_images=64, threads=1,
                phases=(PhaseConfig("full", 1, 0.05), PhaseConfig("depth", 1, 0.02, subnets=2)))
    return TrainConfig(**{**base, **overrides})


def quiet(_: str) -> None:
    """A training log that prints nothing."""
