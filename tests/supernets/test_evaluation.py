"""Subnet evaluation: accuracy and validation cross-entropy from one pass, per-image outcomes, and the split-half
reliability of each signal."""

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from search_spaces.errors import HwnasError
from supernets.data import to_tensor
from supernets.evaluation import (
    ImageOutcomes,
    evaluate_subnet,
    evaluate_subnet_outcomes,
    evaluate_subnet_score,
    recalibrate_bn,
    recalibration_images,
    split_half_reliability,
)
from supernets.training import load_supernet
from tests.supernets.tiny import tiny_digits


def test_the_loss_is_the_cross_entropy_of_the_materialised_models_logits(trained_supernet):
    net, _ = load_supernet(trained_supernet)
    data = tiny_digits()
    for row in net.space.sample_genes(np.random.default_rng(0), 2):
        arch = net.space.from_genes(row)
        score = evaluate_subnet_score(net, arch, data, 64, 0)
        model = net.materialize(arch)
        recalibrate_bn(model, recalibration_images(data, arch.resolution, 64, 0))
        with torch.no_grad():
            logits = model(to_tensor(data.val.images, arch.resolution, data.mean, data.std))
        labels = torch.from_numpy(data.val.labels)
        assert score.loss == pytest.approx(float(F.cross_entropy(logits, labels)), rel=1e-5)
        per_image = F.cross_entropy(logits, labels, reduction="none")
        assert score.robust_loss == pytest.approx(float(torch.log1p(per_image).mean()), rel=1e-5)
        assert score.accuracy == evaluate_subnet(net, arch, data, 64, 0)[0]
        assert score.accuracy == int((logits.argmax(1) == labels).sum()) / 48
        outcomes = evaluate_subnet_outcomes(net, arch, data, 64, 0)[0]
        assert len(outcomes.nll) == 48 and outcomes.score() == score
        assert outcomes.nll == pytest.approx(F.cross_entropy(logits, labels, reduction="none").numpy(), rel=1e-5)


def test_image_outcomes_score_a_subset():
    outcomes = ImageOutcomes(np.array([True, False, True, True]), np.array([0.1, 2.0, 0.3, 0.5]))
    assert outcomes.score().accuracy == 0.75 and outcomes.score().loss == pytest.approx(0.725)
    assert outcomes.score().robust_loss == pytest.approx(np.log([1.1, 3.0, 1.3, 1.5]).mean())
    even = outcomes.score(slice(0, 4, 2))
    assert even.accuracy == 1.0 and even.loss == pytest.approx(0.2)


def test_split_half_reliability_on_a_known_input():
    # even images (0, 2) and odd ones (1, 3): accuracy ranks the three subnets in reverse on the two halves,
    # cross-entropy ranks them alike
    correct = [[1, 0, 1, 0], [0, 1, 0, 1], [1, 1, 0, 0]]
    nll = [[0.1, 0.2, 0.1, 0.2], [0.3, 0.3, 0.3, 0.3], [0.5, 0.6, 0.5, 0.6]]
    outcomes = [ImageOutcomes(np.array(c, dtype=bool), np.array(n)) for c, n in zip(correct, nll, strict=True)]
    got = split_half_reliability(outcomes)
    assert got["accuracy"] == pytest.approx(-1.0) and got["val_loss"] == pytest.approx(1.0)
    assert got["val_robust_loss"] == pytest.approx(1.0) and got["accuracy_vs_accuracy"] == pytest.approx(-1.0)
    # the even half's loss against the odd half's accuracy: tau 1/3 (sign flipped: -1/3); the other way -1/3 (1/3)
    assert got["val_loss_vs_accuracy"] == pytest.approx(0.0, abs=1e-12)
    assert got["images_per_half"] == 2
    first_two = split_half_reliability(outcomes, images=2)  # image 0 against image 1
    assert first_two["images_per_half"] == 1 and first_two["val_loss"] == pytest.approx(1.0)
    assert first_two["accuracy"] == pytest.approx(-0.5)  # (1, 0, 1) against (0, 1, 1): tau-b with ties
    with pytest.raises(HwnasError, match="needs 2 .. 4 images"):
        split_half_reliability(outcomes, images=5)
    with pytest.raises(HwnasError, match="at least 2 subnets; got 1"):
        split_half_reliability(outcomes[:1])
