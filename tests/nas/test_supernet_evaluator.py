"""Supernet accuracy as a search evaluator: BN-recalibrated accuracy, cached by architecture key on disk; the
space of a run directory read without torch."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nas.evaluators import SupernetEvaluator, supernet_space
from search_spaces.errors import HwnasError
from supernets.checkpoint import checkpoint_dir, read_meta
from supernets.evaluation import evaluate_subnet
from supernets.training import load_supernet
from tests.supernets.test_training import tiny_digits


@pytest.fixture(scope="module")
def run_dir(trained_supernet):
    """The session's shared tiny supernet (tests/conftest.py); read only."""
    return trained_supernet


def test_accuracy_is_the_recalibrated_subnet_accuracy_and_is_cached(run_dir, tmp_path):
    data = tiny_digits()
    cache = tmp_path / "accuracy.json"
    evaluator = SupernetEvaluator.from_run(run_dir, data=data, val_images=40, cache_path=cache)
    genes = evaluator.space.sample_genes(np.random.default_rng(0), 3)
    got = evaluator.accuracy(genes)
    assert evaluator.evaluated == 3 and got.shape == (3,)
    net, _ = load_supernet(run_dir)
    subset = evaluator.data
    assert len(subset.val) == 40
    for row, value in zip(genes, got, strict=True):
        arch = evaluator.space.from_genes(row)
        assert value == evaluate_subnet(net, arch, subset, evaluator.recal_images, 0)[0]
    # the same rows again: from the cache; a new evaluator on the same cache file evaluates nothing
    assert np.array_equal(evaluator.accuracy(genes[::-1]), got[::-1]) and evaluator.evaluated == 3
    again = SupernetEvaluator.from_run(run_dir, data=data, val_images=40, cache_path=cache)
    assert np.array_equal(again.columns(genes)["accuracy"], got) and again.evaluated == 0
    stored = json.loads(cache.read_text())
    assert len(stored["accuracy"]) == 3 and stored["settings"]["val_images"] == 40


def test_a_cache_from_other_settings_or_corrupt_is_refused(run_dir, tmp_path):
    cache = tmp_path / "accuracy.json"
    evaluator = SupernetEvaluator.from_run(run_dir, data=tiny_digits(), val_images=40, cache_path=cache)
    evaluator.accuracy(evaluator.space.sample_genes(np.random.default_rng(1), 1))
    with pytest.raises(HwnasError, match="was made with .*'val_images': 40.*another supernet or evaluation"):
        SupernetEvaluator.from_run(run_dir, data=tiny_digits(), val_images=20, cache_path=cache)
    cache.write_text("{not json")
    with pytest.raises(HwnasError, match="accuracy cache .* is corrupt"):
        SupernetEvaluator.from_run(run_dir, data=tiny_digits(), cache_path=cache)
    with pytest.raises(HwnasError, match="val_images must be at least 1"):
        SupernetEvaluator.from_run(run_dir, data=tiny_digits(), val_images=0)


def test_the_constructor_reads_nothing_and_threads_are_restored(run_dir, tmp_path):
    import torch

    net, _ = load_supernet(run_dir)
    cache = tmp_path / "accuracy.json"
    cache.write_text("{not json")  # from_run would refuse it; the constructor does not look
    evaluator = SupernetEvaluator(net, tiny_digits(), recal_images=16, seed=0, cache_path=cache, threads=1)
    assert evaluator.cache == {} and cache.read_text() == "{not json"
    cache.unlink()  # a write would refuse the corrupt file (see the test below)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        evaluator.accuracy(evaluator.space.sample_genes(np.random.default_rng(2), 1))
        assert torch.get_num_threads() == 2 and evaluator.evaluated == 1
        assert list(json.loads(cache.read_text())["accuracy"]) == [evaluator.space.from_genes(
            evaluator.space.sample_genes(np.random.default_rng(2), 1)[0]).key]
    finally:
        torch.set_num_threads(before)


def test_supernet_eval_leaves_torch_threads_as_they_were(run_dir, capsys):
    import torch

    from nas.cli import main

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        code = main(["supernet", "eval", str(run_dir), "--threads", "1", "--recal-images", "16", "--json"])
        assert code == 0 and torch.get_num_threads() == 2
        assert [row["name"] for row in json.loads(capsys.readouterr().out)["subnets"]] == ["largest", "smallest"]
    finally:
        torch.set_num_threads(before)


def test_a_directly_built_evaluator_keeps_the_cache_files_entries_and_refuses_other_settings(run_dir, tmp_path):
    cache = tmp_path / "accuracy.json"
    first = SupernetEvaluator.from_run(run_dir, data=tiny_digits(), val_images=40, cache_path=cache)
    genes = first.space.sample_genes(np.random.default_rng(3), 2)
    keys = [first.space.from_genes(row).key for row in genes]
    assert keys[0] != keys[1]
    stored = first.accuracy(genes[:1])[0]

    def direct(weights_sha256: str) -> SupernetEvaluator:  # no `cache=`: the file is not read when built
        return SupernetEvaluator(first.net, first.data, recal_images=first.recal_images, seed=0,
                                 weights_sha256=weights_sha256, cache_path=cache)

    second = direct(first.weights_sha256)
    fresh = second.accuracy(genes[1:])[0]
    assert json.loads(cache.read_text())["accuracy"] == {keys[0]: stored, keys[1]: fresh}
    assert second.cache == {keys[0]: stored, keys[1]: fresh}
    before = cache.read_text()
    other = direct("another-supernet")
    with pytest.raises(HwnasError, match="was made with .*another supernet or evaluation"):
        other.accuracy(genes[:1])
    assert cache.read_text() == before


def test_supernet_space_loads_no_torch(trained_supernet):
    root = Path(__file__).resolve().parents[2]
    code = ("import sys; import supernets.checkpoint_files; from nas.evaluators import supernet_space; "
            "space, meta = supernet_space(sys.argv[1]); print(space.name, meta['epoch'], 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(trained_supernet)], capture_output=True, text=True,
                         cwd=root, check=True)
    assert out.stdout.split() == ["small", "2", "False"]


def test_supernet_space_skips_an_incomplete_checkpoint_as_checkpoint_dir_does(trained_supernet, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_supernet, run)
    shutil.copytree(run / "checkpoint", run / "checkpoint.old")
    meta = json.loads((run / "checkpoint.old" / "supernet.json").read_text())
    (run / "checkpoint.old" / "supernet.json").write_text(json.dumps({**meta, "epoch": 1}))  # marks the older copy
    (run / "checkpoint" / "rng.json").unlink()  # listed in checkpoint/supernet.json: that copy is incomplete
    assert checkpoint_dir(run) == run / "checkpoint.old"
    space, got = supernet_space(run)
    assert got["epoch"] == 1 and got == read_meta(run) and space.name == "small"
    shutil.rmtree(run / "checkpoint.old")
    with pytest.raises(HwnasError, match="no supernet checkpoint in .*rng.json listed in supernet.json missing"):
        supernet_space(run)


def test_val_loss_is_the_subnets_cross_entropy_cached_beside_accuracy(run_dir, tmp_path):
    from supernets.evaluation import evaluate_subnet_score

    cache = tmp_path / "accuracy.json"
    evaluator = SupernetEvaluator.from_run(run_dir, data=tiny_digits(), val_images=40, cache_path=cache)
    genes = evaluator.space.sample_genes(np.random.default_rng(4), 2)
    columns = evaluator.columns(genes)
    assert set(columns) == {"accuracy", "val_loss", "val_robust_loss"} and evaluator.evaluated == 2
    for i, row in enumerate(genes):
        score = evaluate_subnet_score(evaluator.net, evaluator.space.from_genes(row), evaluator.data,
                                      evaluator.recal_images, 0)
        assert columns["accuracy"][i] == score.accuracy and columns["val_loss"][i] == score.loss
        assert columns["val_robust_loss"][i] == score.robust_loss and 0 < score.robust_loss < score.loss
    stored = json.loads(cache.read_text())
    keys = [evaluator.space.from_genes(row).key for row in genes]
    for name in ("val_loss", "val_robust_loss"):
        assert stored[name] == dict(zip(keys, columns[name], strict=True))
    again = SupernetEvaluator.from_run(run_dir, data=tiny_digits(), val_images=40, cache_path=cache)
    assert np.array_equal(again.val_loss(genes), columns["val_loss"]) and again.evaluated == 0


def test_an_old_cache_without_losses_still_serves_accuracy_and_measures_a_missing_loss(run_dir, tmp_path):
    cache = tmp_path / "accuracy.json"
    first = SupernetEvaluator.from_run(run_dir, data=tiny_digits(), val_images=40, cache_path=cache)
    genes = first.space.sample_genes(np.random.default_rng(5), 2)
    columns = first.columns(genes)
    stored = json.loads(cache.read_text())
    del stored["val_loss"], stored["val_robust_loss"]  # as written before losses were kept
    cache.write_text(json.dumps(stored))
    old = SupernetEvaluator.from_run(run_dir, data=tiny_digits(), val_images=40, cache_path=cache)
    assert np.array_equal(old.accuracy(genes), columns["accuracy"]) and old.evaluated == 0
    assert np.isnan(old.scores(genes, need_loss=False)["val_loss"]).all() and old.evaluated == 0
    assert np.isnan(old.scores(genes, need_loss=False)["val_robust_loss"]).all()
    assert np.array_equal(old.val_loss(genes[:1]), columns["val_loss"][:1]) and old.evaluated == 1
    assert len(json.loads(cache.read_text())["val_loss"]) == 1
    assert np.array_equal(old.accuracy(genes), columns["accuracy"])  # measured again: the same accuracy


def test_outcomes_are_per_image_and_fill_the_cache(run_dir, tmp_path):
    cache = tmp_path / "accuracy.json"
    evaluator = SupernetEvaluator.from_run(run_dir, data=tiny_digits(), val_images=40, cache_path=cache)
    genes = evaluator.space.sample_genes(np.random.default_rng(6), 2)
    outcomes = evaluator.outcomes(genes)
    assert [len(o.nll) for o in outcomes] == [40, 40] and evaluator.evaluated == 2
    again = SupernetEvaluator.from_run(run_dir, data=tiny_digits(), val_images=40, cache_path=cache)
    columns = again.columns(genes)
    assert again.evaluated == 0
    assert list(columns["accuracy"]) == [o.score().accuracy for o in outcomes]
    assert list(columns["val_loss"]) == [o.score().loss for o in outcomes]


def test_predictor_collect_records_losses_and_train_chooses_the_loss_target(run_dir, tmp_path, capsys):
    from nas.cli import main
    from nas.predictor import AccuracyPredictor, read_data_columns

    out = tmp_path / "predictor"
    assert main(["predictor", "collect", str(run_dir), "--n", "8", "--val-images", "20", "--recal-images", "16",
                 "--threads", "1", "--out", str(out), "--no-progress", "--json"]) == 0
    collected = json.loads(capsys.readouterr().out)
    assert collected["subnets"] == 8 and collected["without_val_loss"] == 0
    genes, columns = read_data_columns(out / "data.csv", supernet_space(run_dir)[0])
    assert columns["val_loss"].mean() == pytest.approx(collected["val_loss_mean"]) and len(genes) == 8
    assert main(["predictor", "train", str(run_dir), "--out", str(out), "--holdout", "2", "--epochs", "2",
                 "--hidden", "8", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["target"] in ("val_robust_loss", "log_val_robust_loss") and figures["held_out_n"] == 2
    predictor = AccuracyPredictor.load(out, supernet_space(run_dir)[0])
    assert predictor.label == "val_robust_loss" and predictor.calibration is not None
    assert main(["predictor", "train", str(run_dir), "--out", str(out), "--holdout", "2", "--target", "loss"]) == 2
    assert "predictor target 'loss' is not one of accuracy, log_error, val_loss" in capsys.readouterr().err
