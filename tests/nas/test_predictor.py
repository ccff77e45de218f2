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


def stand_in_loss(genes):
    """A loss falling as the stand-in accuracy rises (so the two rank subnets alike, as measured ones nearly do)."""
    return np.exp(-30 * (stand_in_accuracy(genes) - 0.9)) * 0.1


def test_fit_calibration_recovers_a_known_line_and_stays_decreasing():
    from nas.predictor import _EPS, fit_calibration

    log_loss = np.linspace(-3, 0, 7)
    accuracy = 1 + _EPS - np.exp(-(2.0 - 0.5 * log_loss))  # log error = 2 - 0.5 ln(loss)
    a, b = fit_calibration(np.exp(log_loss), accuracy)
    assert a == pytest.approx(2.0) and b == pytest.approx(-0.5)
    assert fit_calibration(np.exp(log_loss), accuracy[::-1])[1] == -1e-6  # a rising fit is clamped to falling
    with pytest.raises(HwnasError, match="2 or more distinct losses; got 1"):
        fit_calibration(np.ones(3), accuracy[:3])


def test_a_loss_labelled_predictor_ranks_by_loss_and_predicts_accuracy(tmp_path):
    from nas.predictor import train_predictor

    genes = SPACE.sample_genes(np.random.default_rng(0), 700)
    accuracy, loss = stand_in_accuracy(genes), stand_in_loss(genes)
    predictor, figures = train_predictor(SPACE, genes, accuracy, holdout=200, hidden=(64, 64), epochs=100, lr=3e-3,
                                         target="log_val_loss", losses={"val_loss": loss})
    assert predictor.label == "val_loss" and figures["target"] == "log_val_loss"
    assert figures["held_out_kendall_tau"] >= 0.8 and figures["held_out_accuracy_kendall_tau"] >= 0.8, figures
    held = genes[-200:]
    predicted_loss, predicted_accuracy = predictor.predict_label(held), predictor.predict(held)
    assert np.all(np.diff(predicted_accuracy[np.argsort(predicted_loss)]) < 0)  # the loss's ranking, reversed
    assert np.abs(predicted_accuracy - accuracy[-200:]).mean() < 0.01  # on the accuracy scale
    predictor.save(tmp_path / "p")
    loaded = AccuracyPredictor.load(tmp_path / "p", SPACE)
    assert loaded.calibration == predictor.calibration and np.array_equal(loaded.predict(held), predicted_accuracy)
    with pytest.raises(HwnasError, match="needs the subnets' val_loss"):
        train_predictor(SPACE, genes, accuracy, target="val_loss")
    with pytest.raises(HwnasError, match="needs the subnets' accuracies too"):
        AccuracyPredictor(SPACE, hidden=(8,), target="val_loss").fit(genes, loss, epochs=1)
    missing = loss.copy()
    missing[3] = np.nan
    with pytest.raises(HwnasError, match="1 of the val_loss labels are missing"):
        AccuracyPredictor(SPACE, hidden=(8,), target="val_loss").fit(genes, missing, epochs=1, accuracy=accuracy)


def test_select_target_chooses_on_the_validation_rows_only():
    from nas.predictor import select_target

    genes = SPACE.sample_genes(np.random.default_rng(2), 300)
    accuracy, loss = stand_in_accuracy(genes), stand_in_loss(genes)
    best, taus = select_target(SPACE, genes, accuracy, label="val_loss", validation=100, losses={"val_loss": loss},
                               hidden=(16,), epochs=20, lr=3e-3)
    assert set(taus) == {"val_loss", "log_val_loss"} and taus[best] == max(taus.values())
    assert all(-1 <= t <= 1 for t in taus.values())
    with pytest.raises(HwnasError, match="label 'latency' is not one of accuracy, val_loss, val_robust_loss"):
        select_target(SPACE, genes, accuracy, label="latency")


def test_collect_records_losses_and_an_old_data_file_still_reads_and_grows(tmp_path):
    from nas.predictor import collect, read_data, read_data_columns

    def measure(genes):
        return {"accuracy": stand_in_accuracy(genes), "val_loss": stand_in_loss(genes),
                "val_robust_loss": np.log1p(stand_in_loss(genes))}

    old = tmp_path / "old.csv"
    genes, _ = collect(SPACE, stand_in_accuracy, 5, tmp_path / "new.csv", seed=3, progress=False)
    lines = (tmp_path / "new.csv").read_text().splitlines()
    assert lines[0] == "key,accuracy,val_loss,val_robust_loss,arch"
    assert all(",,," in line for line in lines[1:])  # no loss given
    rows = [line.split(",", 4) for line in lines[1:]]
    old.write_text("key,accuracy,arch\n" + "".join(f"{k},{a},{arch}\n" for k, a, _, _, arch in rows))
    old_genes, old_columns = read_data_columns(old, SPACE)
    assert np.array_equal(old_genes, genes) and np.isnan(old_columns["val_loss"]).all()
    assert np.allclose(read_data(old, SPACE)[1], stand_in_accuracy(genes))
    grown, acc = collect(SPACE, measure, 8, old, seed=3, progress=False)
    assert old.read_text().splitlines()[0] == "key,accuracy,val_loss,val_robust_loss,arch"
    assert np.array_equal(grown[:5], genes) and np.allclose(acc, stand_in_accuracy(grown))
    got_genes, got = read_data_columns(old, SPACE)
    assert np.array_equal(got_genes, grown) and np.isnan(got["val_loss"][:5]).all()
    assert np.allclose(got["val_loss"][5:], stand_in_loss(grown[5:]))
    assert np.allclose(got["val_robust_loss"][5:], np.log1p(stand_in_loss(grown[5:])))
    middle = tmp_path / "middle.csv"  # a header with some of the losses reads too
    middle.write_text("key,accuracy,val_loss,arch\n" + "".join(f"{k},{a},0.5,{arch}\n" for k, a, _, _, arch in rows))
    assert np.array_equal(read_data_columns(middle, SPACE)[1]["val_loss"], np.full(5, 0.5))
    middle.write_text("key,accuracy,latency,arch\n")
    with pytest.raises(HwnasError, match="is not predictor data: its header should be key,accuracy,val_loss"):
        read_data_columns(middle, SPACE)
