"""The search loop: every true evaluation is a trial, a cut-off search resumes from its study with the same
trace (also when cut off half-way through recording a batch), predictor searches summarise generations,
and two worker processes share one study without lost or duplicated trials."""

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from latency_tables.table import find_table
from nas.evaluators import CostEvaluator
from nas.objectives import parse_constraints, parse_objectives
from nas.search import Search, SearchSettings, cost_screen
from nas.study import open_study
from search_spaces import get_space
from search_spaces.errors import HwnasError

SPACE = get_space("small")
COSTS = CostEvaluator(SPACE, [find_table("small", "ort", "fp32")])
ROOT = Path(__file__).resolve().parents[2]


def stand_in(genes):
    """A deterministic accuracy: grows with log MACs."""
    return 0.8 + 0.02 * np.log(COSTS.columns(genes)["macs"] / 1e6)


class Counting:
    def __init__(self):
        self.rows = 0

    def __call__(self, genes):
        self.rows += len(genes)
        return stand_in(genes)


def settings(**kw):
    base = dict(strategy="evolution", objectives=parse_objectives(["accuracy"]),
                constraints=parse_constraints(["latency_ms<=0.2"]), budget=24, batch=8, seed=3,
                options={"population": 8})
    return SearchSettings(**{**base, **kw})


def search(tmp_path, accuracy=stand_in, name="s", db="study.db", **kw):
    return Search(SPACE, settings(**kw), COSTS, accuracy, storage=f"sqlite:///{tmp_path / db}", study_name=name,
                  progress=False)


def keys_in_order(study, worker=0):
    trials = [t for t in study.get_trials() if t.user_attrs.get("worker") == worker]
    return [t.user_attrs["key"] for t in sorted(trials, key=lambda t: (t.user_attrs["batch"], t.user_attrs["row"]))]


def test_trials_picks_and_resume_with_the_same_trace(tmp_path):
    whole = search(tmp_path, db="whole.db", budget=40).run()
    assert whole.evaluated == 40 and whole.trials == 40 and whole.replayed == 0
    counting = Counting()
    first = search(tmp_path, counting).run()
    assert (first.evaluated, first.trials, counting.rows) == (24, 24, 24)
    resumed = search(tmp_path, counting, budget=40).run()
    assert (resumed.replayed, resumed.evaluated, resumed.trials, counting.rows) == (24, 16, 40, 40)
    ours = open_study(f"sqlite:///{tmp_path / 'study.db'}", "s", settings().objectives, SPACE)
    theirs = open_study(f"sqlite:///{tmp_path / 'whole.db'}", "s", settings().objectives, SPACE)
    assert keys_in_order(ours) == keys_in_order(theirs) and len(set(keys_in_order(ours))) == 40
    # picks: feasible first, best accuracy first, all of them true evaluations of the study
    picks = resumed.picks
    assert len(picks) == 5 and all(p["feasible"] for p in picks)
    accuracies = [p["accuracy"] for p in picks]
    assert accuracies == sorted(accuracies, reverse=True)
    feasible = [t.user_attrs["accuracy"] for t in ours.get_trials() if t.user_attrs["latency_ms"] <= 0.2]
    assert accuracies[0] == max(feasible) and resumed.hypervolume == pytest.approx(max(feasible))


def test_a_batch_cut_off_while_recorded_is_completed_not_duplicated(tmp_path):
    search(tmp_path, db="whole.db", budget=16).run()
    whole = open_study(f"sqlite:///{tmp_path / 'whole.db'}", "s", settings().objectives, SPACE)
    ordered = sorted(whole.get_trials(), key=lambda t: (t.user_attrs["batch"], t.user_attrs["row"]))
    cut = open_study(f"sqlite:///{tmp_path / 'cut.db'}", "s", settings().objectives, SPACE)
    cut.add_trials(ordered[:11])  # batch 0 and 3 of batch 1's 8 rows
    counting = Counting()
    resumed = search(tmp_path, counting, db="cut.db", budget=16).run()
    assert (resumed.replayed, counting.rows, resumed.trials) == (8, 5, 16)
    assert keys_in_order(cut) == keys_in_order(whole)


def test_a_study_from_other_settings_is_refused(tmp_path):
    search(tmp_path, budget=16).run()
    with pytest.raises(HwnasError, match="does not follow from seed 3"):
        search(tmp_path, budget=24, options={"population": 4}).run()


def test_constraints_screen_candidates_and_unpriced_metrics_are_refused():
    screen = cost_screen(COSTS, parse_constraints(["latency_ms<=0.2", "accuracy>=0.9"]))
    genes = SPACE.sample_genes(np.random.default_rng(0), 200)
    assert np.array_equal(screen(genes), COSTS.columns(genes)["latency_ms"] <= 0.2)
    with pytest.raises(HwnasError, match="needs latency_ms, which this search does not price"):
        Search(SPACE, settings(), CostEvaluator(SPACE), stand_in, storage="sqlite://", study_name="s")


def test_a_predictor_search_summarises_generations_and_measures_its_picks(tmp_path):
    counting = Counting()

    def predictor(genes):  # a predictor that is close to, but not, the measured accuracy
        return stand_in(genes) + 0.001 * np.sin(genes.sum(axis=1))

    s = Search(SPACE, settings(budget=400, batch=50, options={"population": 50}), COSTS, counting,
               storage=f"sqlite:///{tmp_path / 'p.db'}", study_name="p", predictor=predictor, progress=False)
    result = s.run()
    assert counting.rows == 5 and result.trials == 5 and result.told == 400 and len(result.generations) == 8
    study = open_study(f"sqlite:///{tmp_path / 'p.db'}", "p", settings().objectives, SPACE)
    generations = study.user_attrs[f"predictor_generations/w0/evolution/s{s.settings.strategy_seed}"]
    assert [g["told"] for g in generations] == list(range(50, 401, 50))
    assert all(t.user_attrs["evaluator"] == "pick" for t in study.get_trials())
    for t in study.get_trials():
        assert abs(t.user_attrs["predicted_accuracy"] - t.user_attrs["accuracy"]) <= 0.001
    # the best generation's predicted accuracy is what the best pick was predicted to have
    assert max(g["best_accuracy"] for g in generations) == pytest.approx(
        max(t.user_attrs["predicted_accuracy"] for t in study.get_trials()))
    again = Search(SPACE, settings(budget=400, batch=50, options={"population": 50}), COSTS, counting,
                   storage=f"sqlite:///{tmp_path / 'p.db'}", study_name="p", predictor=predictor, progress=False)
    assert again.run().trials == 5 and counting.rows == 5  # the same picks: not measured or recorded twice


WORKER = textwrap.dedent("""
    import sys
    from tests.nas.test_search import search
    from pathlib import Path
    result = search(Path(sys.argv[1]), worker=int(sys.argv[2]), budget=48).run()
    print(result.evaluated)
""")


def test_two_worker_processes_share_one_study(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path), str(w)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for w in (0, 1)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    assert [o[0].strip() for o in outs] == ["48", "48"]
    study = open_study(f"sqlite:///{tmp_path / 'study.db'}", "s", settings().objectives, SPACE)
    trials = study.get_trials()
    places = [(t.user_attrs["worker"], t.user_attrs["batch"], t.user_attrs["row"]) for t in trials]
    assert len(trials) == 96 and len(set(places)) == 96 and len({t.number for t in trials}) == 96
    # each worker's trials are exactly what that worker asks for alone: nothing lost, nothing written twice
    for w in (0, 1):
        alone = search(tmp_path, db=f"alone{w}.db", worker=w, budget=48)
        alone.run()
        solo = open_study(f"sqlite:///{tmp_path / f'alone{w}.db'}", "s", settings().objectives, SPACE)
        assert keys_in_order(study, w) == keys_in_order(solo, w)
    assert keys_in_order(study, 0) != keys_in_order(study, 1)
    assert json.loads(json.dumps(trials[0].user_attrs))["strategy"] == "evolution"


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_dashboard_serves_the_study_and_its_trials(tmp_path):
    import urllib.request

    search(tmp_path, budget=16).run()
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "nas.cli", "dashboard", str(tmp_path), "--port", str(port)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        studies = None
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as reply:
                    studies = json.loads(reply.read())["study_summaries"]
                break
            except OSError:
                assert proc.poll() is None, proc.communicate()[1][-2000:]
                time.sleep(0.5)
        assert studies is not None, "the dashboard did not answer within 60 s"
        (study,) = [s for s in studies if s["study_name"] == "s"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{study['study_id']}?after=0",
                                    timeout=10) as reply:
            detail = json.loads(reply.read())
        trials = detail["trials"]
        assert len(trials) == 16
        attrs = {a["key"]: a["value"] for a in trials[0]["user_attrs"]}
        assert attrs["strategy"] == "evolution" and len(attrs["key"]) == 12 and "|" in attrs["arch"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.runtime
def test_hwnas_search_and_export_on_a_trained_supernet(trained_supernet, tmp_path, capsys):
    from nas.cli import main

    supernet = trained_supernet
    run = tmp_path / "search"
    args = ["search", "--supernet", str(supernet), "--budget", "8", "--batch", "4", "--picks", "1", "--constraint",
            "latency_ms<=0.3", "--run-dir", str(run), "--val-images", "48", "--recal-images", "64", "--json",
            "--no-progress", "--strategy", "regularized-evolution", "--option", "population=4",
            "--option", "sample_size=2"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["trials"] == 8 and out["evaluated"] == 8 and len(out["picks"]) == 1
    (pick,) = out["picks"]
    assert pick["latency_ms"] <= 0.3 and pick["feasible"]
    # ranked by the validation loss (the default): told exp(-val_loss), the trials' values measured accuracies
    assert out["rank_by"] == "val_loss"
    study = open_study(f"sqlite:///{run / 'study.db'}", "search", settings().objectives, SPACE)
    feasible = [t for t in study.get_trials() if t.user_attrs["feasible"]]
    assert pick["val_loss"] == min(t.user_attrs["val_loss"] for t in feasible) > 0
    for t in study.get_trials():
        assert t.user_attrs["rank_score"] == pytest.approx(np.exp(-t.user_attrs["val_loss"]), abs=1e-12)
        assert t.values[0] == t.user_attrs["accuracy"] and 0 <= t.values[0] <= 1  # a chance-level subnet may score 0
    metrics = json.loads((run / "subnets" / pick["key"] / "metrics.json").read_text())
    verdict = metrics["latency"]["constraint"]
    assert verdict["meets_constraint_measured"] == (verdict["measured_ms"] <= 0.3) == pick["meets_constraint_measured"]
    assert pick["measured_latency_ms"] == verdict["measured_ms"] > 0
    assert all(r["max_abs_diff"] <= 1e-4 for r in metrics["parity"]["runtimes"].values())
    picks_csv = (run / "search" / "picks.csv").read_text()
    assert "measured_latency_ms" in picks_csv.splitlines()[0] and pick["key"] in picks_csv
    # run again: everything replayed from the study, nothing measured, the export re-measured, not rebuilt
    assert main(args) == 0
    again = json.loads(capsys.readouterr().out)
    assert (again["evaluated"], again["replayed"], again["trials"]) == (0, 8, 8)
    # hwnas export of the search's picks without a table: re-exported, picks.csv keeps its rows and figures
    extra = run / "search" / "picks.csv"
    before = extra.read_text()
    assert main(["export", "--supernet", str(supernet), "--picks", str(extra), "--out", str(run / "subnets"),
                 "--json"]) == 0
    exported = json.loads(capsys.readouterr().out)["picks"]
    assert [p["key"] for p in exported] == [pick["key"]]
    assert extra.read_text() == before
    # a malformed constraint: exit code 2 and a message naming what is allowed
    assert main([*args[:10], "latency<=1", *args[11:]]) == 2
    assert "unknown metric 'latency'" in capsys.readouterr().err


def test_a_locked_database_is_retried_not_fatal(tmp_path):
    import sqlite3
    import threading

    import optuna

    from nas.study import _add_trial

    search(tmp_path, db="other.db", budget=8, batch=8).run()
    trial = open_study(f"sqlite:///{tmp_path / 'other.db'}", "s", settings().objectives, SPACE).get_trials()[0]
    open_study(f"sqlite:///{tmp_path / 'lock.db'}", "s", settings().objectives, SPACE)
    # SQLite gives up on a lock after 0.1 s here, so the error reaches hwnas's own retries
    quick = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'lock.db'}",
                                       engine_kwargs={"connect_args": {"timeout": 0.1}})
    study = optuna.load_study(study_name="s", storage=quick)
    holder = sqlite3.connect(tmp_path / "lock.db", isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    release = threading.Timer(1.5, lambda: holder.execute("COMMIT"))
    release.start()
    started = time.monotonic()
    try:
        _add_trial(study, trial)
    finally:
        release.join()
        holder.close()
    assert time.monotonic() - started >= 1.4
    assert [t.user_attrs["key"] for t in study.get_trials()] == [trial.user_attrs["key"]]


@pytest.mark.parametrize("mode", ["true", "predictor"])
def test_a_search_that_exhausts_its_space_ends_with_its_picks_and_says_why(tmp_path, mode):
    """A budget larger than the feasible space: the loop ends cleanly when the strategy stops (no error, no
    spinning on empty asks), every feasible architecture told once, the reason in the result; run again, the
    study replays and stops the same way without measuring anything."""
    from tests.nas.test_strategies import every_architecture, tiny_space

    space = tiny_space()
    costs = CostEvaluator(space)
    everything = every_architecture(space)
    median = float(np.median(costs.columns(everything)["macs"]))
    feasible = int((costs.columns(everything)["macs"] <= median).sum())

    def accuracy(genes):
        return 0.8 + 0.02 * np.log(costs.columns(genes)["macs"] / 1e6)

    chosen = settings(constraints=parse_constraints([f"macs<={median}"]), budget=200, batch=8)

    def run():
        return Search(space, chosen, costs, accuracy, storage=f"sqlite:///{tmp_path / 'study.db'}",
                      study_name="s", progress=False,
                      predictor=accuracy if mode == "predictor" else None).run()

    result = run()
    assert result.told == feasible == 40
    assert result.stopped is not None and result.stopped.startswith("the space under these constraints is exhausted")
    assert result.picks and result.picks[0]["macs"] <= median
    if mode == "true":
        assert result.evaluated == 40 and result.trials == 40
        again = run()
        assert again.evaluated == 0 and again.replayed == 40 and again.stopped == result.stopped


# ---------------------------------------------------------------------------------- the ranking signal (issue 17)

def loss_stand_in(genes):
    """A deterministic validation loss per architecture, in another order than `stand_in`'s accuracy."""
    canonical = SPACE.canonical_genes(np.atleast_2d(genes))
    code = canonical @ (np.arange(canonical.shape[1]) + 1.0)
    return 0.05 + 0.3 * np.modf(code * 0.6180339887)[0]


def scores_stand_in(genes):
    return {"accuracy": stand_in(genes), "val_loss": loss_stand_in(genes), "val_robust_loss": loss_stand_in(genes) / 2}


class Spy(Search):
    """A search that keeps its strategy, to read what it was told."""

    def make_strategy(self):
        self.strategy = super().make_strategy()
        return self.strategy


def scored(tmp_path, db="study.db", **kw):
    return Spy(SPACE, settings(**kw), COSTS, scores=scores_stand_in, storage=f"sqlite:///{tmp_path / db}",
               study_name="s", progress=False)


def test_a_search_given_scores_ranks_by_the_validation_loss_and_reports_measured_accuracy(tmp_path):
    first = scored(tmp_path, budget=16)
    result = first.run()
    assert result.rank_by == "val_loss" and result.evaluated == 16
    told = first.strategy
    # the strategy was told exp(-val_loss) for the objective accuracy, row by row
    assert np.allclose(-told.scores[:, 0], np.exp(-loss_stand_in(told.genes)), rtol=0, atol=1e-12)
    study = open_study(f"sqlite:///{tmp_path / 'study.db'}", "s", settings().objectives, SPACE)
    assert study.user_attrs["rank_by"] == "val_loss"
    for t in study.get_trials():
        genes = SPACE.to_genes(SPACE.from_genes(np.array([t.params[g.name] for g in SPACE.genes])))[None]
        assert t.values[0] == pytest.approx(stand_in(genes)[0], abs=1e-12) == t.user_attrs["accuracy"]
        assert t.user_attrs["val_loss"] == pytest.approx(loss_stand_in(genes)[0], abs=1e-12)
        assert t.user_attrs["rank_score"] == pytest.approx(np.exp(-t.user_attrs["val_loss"]), abs=1e-12)
    # picks: feasible, by the loss; the hypervolume on measured accuracy
    feasible = [t.user_attrs for t in study.get_trials() if t.user_attrs["latency_ms"] <= 0.2]
    losses = [p["val_loss"] for p in result.picks]
    assert len(losses) == 5 and all(p["feasible"] for p in result.picks) and losses == sorted(losses)
    assert losses[0] == min(a["val_loss"] for a in feasible)
    assert [p["key"] for p in result.picks] != [a["key"] for a in sorted(feasible, key=lambda a: -a["accuracy"])][:5]
    assert result.hypervolume == pytest.approx(max(a["accuracy"] for a in feasible))
    assert all("rank_score" not in p for p in result.picks)
    # resumed: the recorded batches replay exactly what was told; the trace is the uncut search's
    resumed = scored(tmp_path, budget=24)
    again = resumed.run()
    assert (again.replayed, again.evaluated) == (16, 8)
    assert np.array_equal(resumed.strategy.scores[:16], told.scores)
    whole = scored(tmp_path, db="whole.db", budget=24)
    whole.run()
    assert np.array_equal(resumed.strategy.genes, whole.strategy.genes)
    assert np.array_equal(resumed.strategy.scores, whole.strategy.scores)


def test_a_search_ranked_by_accuracy_tells_the_measured_accuracy_and_keeps_the_loss(tmp_path):
    spy = scored(tmp_path, budget=16, rank_by="accuracy")
    result = spy.run()
    assert result.rank_by == "accuracy"
    assert np.allclose(-spy.strategy.scores[:, 0], stand_in(spy.strategy.genes), rtol=0, atol=1e-12)
    accuracies = [p["accuracy"] for p in result.picks]
    assert accuracies == sorted(accuracies, reverse=True) and all(p["val_loss"] > 0 for p in result.picks)
    study = open_study(f"sqlite:///{tmp_path / 'study.db'}", "s", settings().objectives, SPACE)
    assert all("rank_score" not in t.user_attrs for t in study.get_trials())


def test_a_lower_bound_on_accuracy_is_kept_on_the_measured_accuracy():
    s = Search(SPACE, settings(constraints=parse_constraints(["latency_ms<=0.2", "accuracy>=0.8"])), COSTS,
               scores=scores_stand_in, storage="sqlite://", study_name="s")
    told = s.rank_score({"accuracy": np.array([0.9, 0.7, 0.8]), "val_loss": np.array([0.2, 0.1, 3.0])})
    assert told == pytest.approx([0.8 + 0.2 * np.exp(-0.2), 0.7, 0.8 + 0.2 * np.exp(-3.0)], abs=1e-12)


def test_a_study_ranked_by_another_signal_is_refused_and_bad_settings_named(tmp_path):
    scored(tmp_path, budget=8).run()
    with pytest.raises(HwnasError, match="holds a search with rank_by 'val_loss', not 'accuracy'.*--rank-by val_loss"):
        scored(tmp_path, budget=8, rank_by="accuracy").run()
    # a study made before rank_by was recorded was ranked by accuracy
    old = open_study(f"sqlite:///{tmp_path / 'old.db'}", "s", settings().objectives, SPACE)
    old.add_trials(open_study(f"sqlite:///{tmp_path / 'study.db'}", "s", settings().objectives, SPACE).get_trials())
    with pytest.raises(HwnasError, match="holds a search with rank_by 'accuracy', not 'val_loss'"):
        scored(tmp_path, db="old.db", budget=8).run()
    with pytest.raises(HwnasError, match="rank_by val_loss needs each subnet's validation loss"):
        search(tmp_path, rank_by="val_loss")
    with pytest.raises(HwnasError, match="constraint accuracy<=0.99 bounds accuracy from above"):
        scored(tmp_path, constraints=parse_constraints(["accuracy<=0.99"]))
    with pytest.raises(HwnasError, match="rank_by 'loss' is not a ranking signal; use one of val_loss, accuracy"):
        settings(rank_by="loss")
