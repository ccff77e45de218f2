"""The accuracy predictor: learns a function of the architecture, ranks held-out subnets, saves pickle-free."""

import json

import numpy as np
import pytest

from latency_tables.analytic import AnalyticCostModel
from nas.predictor import AccuracyPredictor
from search_spaces import get_space
from search_spaces.errors import HwnasError

SPACE = get_space("small")


def stand_in_accuracy(genes):
    """A smooth, non-linear function of the architecture (log MACs and resolution), like accuracy."""
    costs = AnalyticCostModel().estimate_genes(SPACE, genes)
    return 0.9 + 0.02 * np.log(costs["macs"] / 1e6) - 0.01 * (genes[:, 0] == 0)


@pytest.fixture(scope="module")
def trained():
    rng = np.random.default_rng(0)
    genes = SPACE.sample_genes(rng, 1700)
    y = stand_in_accuracy(genes)
    predictor = AccuracyPredictor(SPACE, hidden=(128, 128), seed=0)
    fit = predictor.fit(genes[:1500], y[:1500], epochs=300, lr=3e-3)
    return predictor, genes, y, fit


def test_it_ranks_held_out_subnets(trained):
    predictor, genes, y, fit = trained
    held_out = predictor.evaluate(genes[1500:], y[1500:])
    assert held_out["kendall_tau"] >= 0.8 and held_out["n"] == 200, held_out
    assert held_out["rmse"] < y.std() / 2 and fit["train_rmse"] < y.std() / 2
    untrained = AccuracyPredictor(SPACE, hidden=(128, 128), seed=0, target="accuracy")
    untrained.mean = float(y.mean())
    assert untrained.evaluate(genes[1500:], y[1500:])["rmse"] > held_out["rmse"]


def test_save_and_load_give_the_same_predictions_without_pickle(trained, tmp_path):
    predictor, genes, _, _ = trained
    predictor.save(tmp_path / "p")
    loaded = AccuracyPredictor.load(tmp_path / "p", SPACE)
    assert np.array_equal(loaded.predict(genes[:50]), predictor.predict(genes[:50]))
    np.load(tmp_path / "p" / "predictor.npz", allow_pickle=False)  # plain arrays
    assert json.loads((tmp_path / "p" / "predictor.json").read_text())["hidden"] == [128, 128]
    with pytest.raises(HwnasError, match="trained for space 'small' as defined then, not for 'imagenet'"):
        AccuracyPredictor.load(tmp_path / "p", get_space("imagenet"))
    (tmp_path / "p" / "predictor.npz").write_bytes(b"garbage")
    with pytest.raises(HwnasError, match="is corrupt"):
        AccuracyPredictor.load(tmp_path / "p", SPACE)
    with pytest.raises(HwnasError, match="no accuracy predictor in .*predictor.json is missing"):
        AccuracyPredictor.load(tmp_path / "nothing", SPACE)


def test_seeded_training_repeats():
    genes = SPACE.sample_genes(np.random.default_rng(1), 100)
    y = stand_in_accuracy(genes)
    a, b = (AccuracyPredictor(SPACE, hidden=(16,), seed=3) for _ in range(2))
    a.fit(genes, y, epochs=5)
    b.fit(genes, y, epochs=5)
    assert np.array_equal(a.predict(genes), b.predict(genes))


def test_collect_appends_resumes_after_a_torn_line_and_grows(tmp_path):
    from nas.predictor import collect, read_data

    measured = []

    def accuracy(genes):
        measured.append(len(genes))
        return stand_in_accuracy(genes)

    path = tmp_path / "data.csv"
    genes, acc = collect(SPACE, accuracy, 25, path, seed=1, chunk=10, progress=False)
    assert sum(measured) == 25 and len({g.tobytes() for g in genes}) == 25
    assert np.allclose(acc, stand_in_accuracy(genes))
    text = path.read_text()
    path.write_text(text[: text.rindex("\n", 0, len(text) - 1) + 20])  # the last row cut off mid-line
    again, _ = collect(SPACE, accuracy, 40, path, seed=1, chunk=10, progress=False)
    assert sum(measured) == 25 + 16 and np.array_equal(again[:24], genes[:24])  # the torn row measured again
    stored_genes, stored_acc = read_data(path, SPACE)
    assert len(stored_genes) == 40 and np.allclose(stored_acc, stand_in_accuracy(stored_genes))
    path.write_text(path.read_text().replace(",0.", ",zero.", 1))
    with pytest.raises(HwnasError, match="line 2 is malformed"):
        read_data(path, SPACE)
