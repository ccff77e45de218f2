import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from supernets.data import DatasetError, augment, batches, load_dataset, stratified_split, to_tensor


def write_cifar10(root, n=6):
    rng = np.random.default_rng(0)
    root.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = [int(v) for v in rng.integers(0, 10, n)]  # python ints, as in the real files
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": labels}
        with open(root / name, "wb") as fh:
            pickle.dump(batch, fh)
    return root


def test_mnist5k_is_the_embedded_default_with_a_fixed_stratified_split():
    data = load_dataset("mnist5k")
    assert (len(data.train), len(data.val), data.num_classes, data.in_channels) == (4000, 1000, 10, 1)
    assert data.train.images.shape[1:] == (1, 28, 28) and data.train.images.dtype == np.uint8
    assert np.bincount(data.val.labels).tolist() == [100] * 10
    again = load_dataset("mnist5k")
    assert np.array_equal(again.val.images, data.val.images)
    other = load_dataset("mnist5k", seed=1)
    assert not np.array_equal(other.val.images, data.val.images)
    assert 0.1 < data.mean < 0.2 and 0.25 < data.std < 0.4  # MNIST: ~0.13 and ~0.31


def test_digits_and_batches_resize_and_normalise():
    data = load_dataset("digits")
    assert data.train.images.shape[1:] == (1, 8, 8) and len(data.train) + len(data.val) == 1797
    x, y = next(batches(data.train, 16, 12, data.mean, data.std, np.random.default_rng(0)))
    assert x.shape == (16, 1, 12, 12) and x.dtype == torch.float32 and y.dtype == torch.int64
    plain = to_tensor(data.train.images[:64], 8, data.mean, data.std)
    assert abs(float(plain.mean())) < 0.5
    seen = np.concatenate([b[1].numpy() for b in batches(data.val, 50, 8, 0.0, 1.0)])
    assert np.array_equal(seen, data.val.labels)


def test_cifar10_from_a_local_directory(tmp_path):
    data = load_dataset("cifar10", write_cifar10(tmp_path / "cifar-10-batches-py"))
    assert (len(data.train), len(data.val), data.in_channels, data.num_classes) == (30, 6, 3, 10)
    assert data.train.images.shape[1:] == (3, 32, 32)


def test_cifar_errors_name_the_path_and_the_format(tmp_path):
    with pytest.raises(DatasetError, match="is not a directory; expected the CIFAR python-format directory"):
        load_dataset("cifar10", tmp_path / "nope")
    root = write_cifar10(tmp_path / "c")
    (root / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match="data_batch_3 is not a CIFAR python-format batch"):
        load_dataset("cifar10", root)
    os.remove(root / "data_batch_3")
    with pytest.raises(DatasetError, match="data_batch_3 is missing"):
        load_dataset("cifar10", root)


def test_cifar_reader_refuses_code_in_pickles(tmp_path):
    root = write_cifar10(tmp_path / "c")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(root / "test_batch", "wb") as fh:
        pickle.dump({b"data": Evil(), b"labels": [0]}, fh)
    with pytest.raises(DatasetError, match="is not allowed in a CIFAR batch file"):
        load_dataset("cifar10", root)


def test_image_folder_with_and_without_train_val(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("cat", "dog", "eel"):
            (tmp_path / "tv" / split / cls).mkdir(parents=True)
            for i in range(3 if split == "train" else 1):
                Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(
                    tmp_path / "tv" / split / cls / f"{i}.png")
    data = load_dataset("imagefolder", tmp_path / "tv", image_size=16)
    assert (len(data.train), len(data.val), data.num_classes) == (9, 3, 3)
    assert data.train.images.shape[1:] == (3, 16, 16)
    flat = load_dataset("imagefolder", tmp_path / "tv" / "train", image_size=8, val_fraction=0.34)
    assert (len(flat.train), len(flat.val)) == (6, 3)
    (tmp_path / "tv" / "train" / "cat" / "bad.png").write_text("not an image")
    with pytest.raises(DatasetError, match="cannot read image .*bad.png"):
        load_dataset("imagefolder", tmp_path / "tv")


def test_bad_names_paths_and_fractions():
    with pytest.raises(DatasetError, match="unknown dataset 'mnist'; known: mnist5k, digits, cifar10"):
        load_dataset("mnist")
    with pytest.raises(DatasetError, match="give its path"):
        load_dataset("imagefolder")
    with pytest.raises(DatasetError, match="between 0 and 1"):
        stratified_split(np.zeros(10, dtype=np.int64), 1.5, 0)


def test_shift_augment_translates_each_image_and_fills_with_black():
    x = torch.randn(6, 2, 9, 9)
    out = augment(x, torch.Generator().manual_seed(3), shift=2, fill=-1.5)
    padded = torch.nn.functional.pad(x, (2,) * 4, value=-1.5)
    offsets = []
    for i in range(6):  # each output is one whole-pixel crop of its padded input, the same for all channels
        found = [(dy, dx) for dy in range(5) for dx in range(5)
                 if torch.equal(out[i], padded[i, :, dy:dy + 9, dx:dx + 9])]
        assert len(found) == 1
        offsets.append(found[0])
    assert len(set(offsets)) > 1  # images move independently
    assert torch.equal(augment(x, torch.Generator().manual_seed(3), shift=2, fill=-1.5), out)  # seeded


def test_rotate_and_scale_keep_a_centred_digit_centred_on_its_background():
    x = torch.full((8, 1, 16, 16), -0.5)
    x[:, :, 6:10, 6:10] = 2.0  # a bright square in the middle of a black image
    out = augment(x, torch.Generator().manual_seed(0), rotate=30, scale=0.1, fill=-0.5)
    assert not torch.equal(out, x) and not torch.equal(out[0], out[1])
    assert torch.allclose(out[:, :, :3], torch.tensor(-0.5)) and torch.allclose(out[:, :, :, -3:], torch.tensor(-0.5))
    weight = out[:, 0] + 0.5
    grid = torch.arange(16.0)
    centre_y = (weight.sum(2) * grid).sum(1) / weight.sum((1, 2))
    centre_x = (weight.sum(1) * grid).sum(1) / weight.sum((1, 2))
    centre = torch.tensor(7.5)
    assert torch.allclose(centre_y, centre, atol=0.05) and torch.allclose(centre_x, centre, atol=0.05)
    area = weight.sum((1, 2)) / 2.5  # the square's area, 16 px, times the zoom squared (0.81 to 1.21)
    assert ((area > 16 * 0.8) & (area < 16 * 1.22)).all()
    assert torch.equal(augment(x, torch.Generator().manual_seed(0), rotate=0.0, scale=0.0), x)
