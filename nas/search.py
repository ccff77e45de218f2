"""The search loop behind `hwnas search`: a strategy asks for architectures, evaluators measure them, every true
evaluation becomes a trial of the Optuna study, and the best are picked from the whole study.

Two ways to evaluate:

- **supernet** (default): every architecture the strategy asks for is measured with the supernet (BN
  recalibrated accuracy and validation cross-entropy from one pass, cached by key) and priced by the cost
  evaluator; each is one trial. `budget` trials
  per worker. A search that was cut off resumes from its study: its recorded batches are replayed into a fresh
  strategy with the same seed (nothing is evaluated again) and the loop goes on; a batch cut off half-recorded
  is completed.
- **predictor**: the strategy is told predicted accuracies (thousands of architectures per second), for
  `budget` evaluations; each generation (batch) is summarised in the study's user attributes (not one trial
  each); then the `picks` best are measured with the supernet and recorded as trials (`evaluator=pick`). Such a
  search is repeated from its seed when run again (cheap), and picks already in the study are not measured
  twice.

Several workers share one study: worker `w` runs its own strategy with a seed derived from (`seed`, `w`)
(worker 0 uses `seed` itself) and records its batches under its number, so no trial is lost or written twice.
Constraints on costs (analytic counts or table latency) screen candidates before they are asked for; a
constraint on accuracy is applied when ranking.

What ranks the subnets (`SearchSettings.rank_by`, one per study): `val_loss` (the default where the
evaluator gives it), the validation cross-entropy, told to the strategy for the objective `accuracy` as
exp(-val_loss), the geometric-mean probability of the true class (in (0, 1], higher is better, the loss's order);
its split-half Kendall tau is 0.81 against accuracy's 0.72, and at 80 measured subnets evolution ranked by it
reached 1.098x random search's hypervolume against 1.065x ranked by accuracy (docs/benchmarks.md, issue 17).
Or `accuracy`, the measured accuracy. Either way a trial's objective value, the picks' `accuracy` and the
hypervolume are the MEASURED accuracy; the trial keeps what the strategy was told in `rank_score`, and a
resumed search replays exactly that. With a lower bound on accuracy (`accuracy>=0.97`, on the measured
accuracy), a subnet that meets it is told floor + (1 - floor) * exp(-val_loss) (inside the bound, in the
loss's order) and one that breaks it its measured accuracy (so the strategy sees by how much); an upper bound
on accuracy needs `rank_by="accuracy"`. A predictor-driven search tells the predictor's accuracy estimate as
before; its measured picks are ranked like a true search's.

The study's user attributes say what made it: the latency tables' ids (`latency_tables`), the command line
(`command`, or `command:wN` for worker N; the caller's, or this process's arguments) and whatever else the caller
gives in `study_attrs`; `note_measured` adds the latencies measured on the runtime.
"""

from __future__ import annotations

import csv
import io
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nas.evaluators import CostEvaluator
from nas.objectives import Columns, Constraint, Objective, hypervolume, minimised
from nas.strategies import get_strategy, strategy_config
from nas.strategies.base import Strategy, rank_rows
from nas.study import claim_setting, history, note_measured, open_study, record
from search_spaces import SearchSpace
from search_spaces.errors import HwnasError

#: Accuracy evaluator: gene rows -> accuracy (a fraction) per row.
AccuracyFn = Callable[[np.ndarray], np.ndarray]
#: Score evaluator: gene rows -> `accuracy`, `val_loss` (nats) and optionally `val_robust_loss`, one value per row
#: (`SupernetEvaluator.scores`).
ScoresFn = Callable[[np.ndarray], Mapping[str, np.ndarray]]
#: What a search can rank subnets by (`SearchSettings.rank_by`).
RANK_SIGNALS = ("val_loss", "accuracy")
#: The evaluator's columns a true search records beside accuracy.
_LOSS_COLUMNS = ("val_loss", "val_robust_loss")


@dataclass(frozen=True)
class SearchSettings:
    """What one worker of a search does."""

    strategy: str
    objectives: tuple[Objective, ...]
    constraints: tuple[Constraint, ...] = ()
    budget: int = 100  # evaluations by this worker (true ones; with a predictor, predicted ones)
    batch: int = 10
    seed: int = 0
    worker: int = 0
    picks: int = 5  # how many to pick (and, with a predictor, to measure at the end)
    options: Any = field(default_factory=dict)  # the strategy's options: its config object, or them by name
    rank_by: str | None = None  # one of RANK_SIGNALS; None: val_loss when the search is given scores, else accuracy
    config: Any = field(init=False, repr=False, compare=False)  # the strategy's typed options

    def __post_init__(self) -> None:
        object.__setattr__(self, "config", strategy_config(self.strategy, self.options))
        for label, value, low in (("budget", self.budget, 1), ("batch", self.batch, 1), ("picks", self.picks, 1),
                                  ("worker", self.worker, 0)):
            if value < low:
                raise HwnasError(f"{label} must be at least {low} (got {value})")
        if self.rank_by is not None and self.rank_by not in RANK_SIGNALS:
            raise HwnasError(f"rank_by {self.rank_by!r} is not a ranking signal; use one of {', '.join(RANK_SIGNALS)}")

    @property
    def strategy_seed(self) -> int:
        """The seed of this worker's strategy: `seed` for worker 0, a distinct stream for the others."""
        if self.worker == 0:
            return self.seed
        return int(np.random.SeedSequence([self.seed, self.worker]).generate_state(1)[0] & 0x7FFFFFFF)


@dataclass
class SearchResult:
    evaluated: int  # true evaluations this worker made now (not replayed, not cached)
    replayed: int  # rows replayed from the study
    told: int  # rows the strategy was told in all
    picks: list[dict[str, Any]]  # best first: arch, key, and every metric
    trials: int  # trials in the study (all workers)
    hypervolume: float | None = None
    generations: list[dict[str, Any]] = field(default_factory=list)  # predictor mode: one summary per batch
    stopped: str | None = None  # why the strategy stopped before the budget (`Strategy.stopped`), or None
    rank_by: str = "accuracy"  # what ranked the subnets (RANK_SIGNALS)


def cost_screen(costs: CostEvaluator, constraints: Sequence[Constraint]) -> Callable[[np.ndarray], np.ndarray] | None:
    """The cheap pre-check of candidates: the constraints the cost evaluator can price, or None."""
    priced = [c for c in constraints if c.metric in costs.metrics]
    if not priced:
        return None

    def screen(genes: np.ndarray) -> np.ndarray:
        columns = costs.columns(genes)
        ok = np.ones(len(genes), dtype=bool)
        for c in priced:
            ok &= c.satisfied(columns[c.metric])
        return ok

    return screen


def hv_reference(objectives: Sequence[Objective], constraints: Sequence[Constraint],
                 columns: Columns) -> np.ndarray:
    """Hypervolume reference point, in the minimised sign: accuracy 0; a cost at its `<=` bound if one is
    constrained, else at the largest value seen."""
    ref = []
    for o in objectives:
        bound = next((c.bound for c in constraints if c.metric == o.metric and c.op in ("<=", "<")), None)
        if o.metric == "accuracy":
            ref.append(0.0)
        elif bound is not None:
            ref.append(o.sign * bound)
        else:
            ref.append(o.sign * float(np.nanmax(columns[o.metric])))
    return np.array(ref)


class Search:
    """One worker of a search. `scores` measures subnets' accuracy and validation losses in one pass
    (`SupernetEvaluator.scores`); or `accuracy` measures accuracy alone (`SupernetEvaluator.accuracy`; then the
    search ranks by accuracy). `predictor`, if given, is what the strategy is told instead
    (`AccuracyPredictor.predict`). `progress`: bars on a terminal (never in a log file); `study_attrs`: user
    attributes for the study (`command`: the command line that runs this search, by default this process's)."""

    def __init__(self, space: SearchSpace, settings: SearchSettings, costs: CostEvaluator,
                 accuracy: AccuracyFn | None = None, *, scores: ScoresFn | None = None, storage: str,
                 study_name: str, predictor: AccuracyFn | None = None, progress: bool = True,
                 strategy_inputs: dict[str, Any] | None = None, study_attrs: dict[str, Any] | None = None) -> None:
        if accuracy is None and scores is None:
            raise HwnasError("a search measures subnets: give it scores (SupernetEvaluator.scores) or accuracy")
        self.space, self.settings, self.costs, self.accuracy, self.scores = space, settings, costs, accuracy, scores
        self.rank_by = settings.rank_by or ("val_loss" if scores is not None else "accuracy")
        if self.rank_by == "val_loss" and scores is None:
            raise HwnasError("rank_by val_loss needs each subnet's validation loss: give the search scores= "
                             "(SupernetEvaluator.scores), or rank by accuracy (rank_by='accuracy', --rank-by accuracy)")
        for c in settings.constraints:
            if self.rank_by == "val_loss" and c.metric == "accuracy" and c.op in ("<=", "<"):
                raise HwnasError(f"constraint {c} bounds accuracy from above, which a search ranked by val_loss "
                                 f"cannot tell its strategy; rank by accuracy (--rank-by accuracy) or bound it below")
        self.strategy_inputs = dict(strategy_inputs or {})  # what a strategy needs besides options (a supernet)
        self.predictor, self.progress = predictor, progress
        self.study_attrs = dict(study_attrs or {})
        self.storage, self.study_name = storage, study_name
        self.evaluated = 0
        for c in settings.constraints:
            if c.metric != "accuracy" and c.metric not in costs.metrics:
                raise HwnasError(f"constraint {c} needs {c.metric}, which this search does not price "
                                 f"(priced: {', '.join(costs.metrics)}; latency needs a --table)")
        for o in settings.objectives:
            if o.metric != "accuracy" and o.metric not in costs.metrics:
                raise HwnasError(f"objective {o} needs {o.metric}, which this search does not price "
                                 f"(priced: accuracy, {', '.join(costs.metrics)}; latency needs a --table)")

    # ------------------------------------------------------------------------------------------ pieces

    def make_strategy(self) -> Strategy:
        s = self.settings
        return get_strategy(s.strategy, self.space, s.objectives, s.constraints, seed=s.strategy_seed,
                            screen=cost_screen(self.costs, s.constraints), config=s.config, **self.strategy_inputs)

    def measure(self, genes: np.ndarray, accuracy: AccuracyFn | None = None) -> dict[str, np.ndarray]:
        """Costs and accuracy of gene rows, from `accuracy` (the predictor) when given; else measured, with the
        validation losses and, ranked by val_loss, `rank_score` (what the strategy is told for accuracy)."""
        columns = dict(self.costs.columns(genes))
        if accuracy is not None:
            columns["accuracy"] = np.asarray(accuracy(genes), dtype=np.float64)
            return columns
        if self.scores is None:
            assert self.accuracy is not None
            columns["accuracy"] = np.asarray(self.accuracy(genes), dtype=np.float64)
            return columns
        scores = self.scores(genes)
        for name in ("accuracy", *_LOSS_COLUMNS):
            if name in scores:
                columns[name] = np.asarray(scores[name], dtype=np.float64)
        if self.rank_by == "val_loss":
            columns["rank_score"] = self.rank_score(columns)
        return columns

    def rank_score(self, columns: Columns) -> np.ndarray:
        """What the strategy is told for the objective accuracy when ranking by val_loss: exp(-val_loss), placed
        inside a lower bound on accuracy for the rows that meet it, the measured accuracy for those that break it
        (the module docstring says why)."""
        signal = np.exp(-np.asarray(columns["val_loss"], dtype=np.float64))
        floors = [c for c in self.settings.constraints if c.metric == "accuracy"]
        if not floors:
            return signal
        floor = max(c.bound for c in floors)
        measured = np.asarray(columns["accuracy"], dtype=np.float64)
        meets = np.logical_and.reduce([c.satisfied(measured) for c in floors])
        return np.where(meets, floor + (1.0 - floor) * signal, measured)

    def told(self, columns: Columns) -> Columns:
        """The columns the strategy is told: `columns`, with the ranking signal as accuracy when ranking by
        val_loss (a replayed batch's recorded `rank_score`, so a resumed strategy is told what it was before)."""
        if self.rank_by != "val_loss":
            return columns
        return {**columns, "accuracy": np.asarray(columns["rank_score"], dtype=np.float64)}

    def _record(self, study: Any, genes: np.ndarray, columns: Columns, batch: int, *, first_row: int = 0,
                evaluator: str = "supernet", extra: dict[str, np.ndarray] | None = None) -> None:
        s = self.settings
        record(study, self.space, genes, columns, s.objectives, s.constraints, strategy=s.strategy,
               seed=s.strategy_seed, batch=batch, worker=s.worker, evaluator=evaluator, first_row=first_row,
               extra=extra, latency_table=self.costs.tables[0].table_id if self.costs.tables else None)

    def _label(self, study: Any) -> None:
        """The study's user attributes: the tables, the command line and the caller's `study_attrs`."""
        attrs = {"latency_tables": [t.table_id for t in self.costs.tables], **self.study_attrs}
        command = attrs.pop("command", None) or shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])
        attrs["command" if self.settings.worker == 0 else f"command:w{self.settings.worker}"] = command
        for key, value in attrs.items():
            if study.user_attrs.get(key) != value:
                study.set_user_attr(key, value)

    def note_measured(self, picks: Sequence[dict[str, Any]]) -> int:
        """Record the picks' runtime-measured latencies (`measured_latency_ms`, set by the export) in the study;
        returns how many."""
        return note_measured(open_study(self.storage, self.study_name, self.settings.objectives, self.space), picks)

    # -------------------------------------------------------------------------------------------- run

    def run(self) -> SearchResult:
        study = open_study(self.storage, self.study_name, self.settings.objectives, self.space)
        claim_setting(study, self.study_name, "rank_by", self.rank_by, before="accuracy")
        self._label(study)
        if self.predictor is None:
            replayed, strategy = self._run_true(study)
            generations: list[dict[str, Any]] = []
        else:
            replayed, strategy, generations = 0, *self._run_predicted(study)
        picks, hv = self.picks(study)
        return SearchResult(self.evaluated, replayed, strategy.told, picks, len(study.get_trials(deepcopy=False)), hv,
                            generations, strategy.stopped, self.rank_by)

    def _run_true(self, study: Any) -> tuple[int, Strategy]:
        from tqdm import tqdm

        s = self.settings
        strategy = self.make_strategy()
        batches = history(study, self.space, strategy=s.strategy, seed=s.strategy_seed, worker=s.worker)
        cut = None
        if batches and "batch_rows" in batches[-1][1] and len(batches[-1][0]) < int(batches[-1][1]["batch_rows"][0]):
            cut = batches.pop()  # cut off while it was recorded: completed below
        replayed = strategy.replay([(genes, self.told(columns)) for genes, columns in batches])
        index = len(batches)
        with tqdm(total=s.budget, initial=min(replayed, s.budget), desc=f"search {s.strategy} w{s.worker}",
                  unit="subnet", disable=None if self.progress else True) as bar:
            while strategy.told < s.budget:
                size = min(s.batch, s.budget - strategy.told)
                if cut is not None:
                    size = int(cut[1]["batch_rows"][0])
                genes = strategy.ask(size)
                if not len(genes):  # the strategy stopped (`strategy.stopped` says why)
                    break
                done = 0
                if cut is not None:
                    done = len(cut[0])
                    if not np.array_equal(genes[:done], cut[0]):
                        raise HwnasError(f"batch {index} of worker {s.worker} in study {self.study_name!r} does not "
                                         f"follow from its settings; resume with the settings it started with")
                fresh = self.measure(genes[done:])
                self.evaluated += len(genes) - done
                self._record(study, genes[done:], fresh, index, first_row=done,
                             extra={"batch_rows": np.full(len(genes) - done, len(genes))})
                if cut is not None:
                    columns = {k: np.concatenate([np.asarray(cut[1][k], dtype=np.float64),
                                                  np.asarray(v, dtype=np.float64)])
                               for k, v in fresh.items() if k in cut[1]}
                    cut = None
                else:
                    columns = fresh
                strategy.tell(genes, self.told(columns))
                index += 1
                bar.update(len(genes) - done)
                if strategy.stopped is not None:
                    break
        return replayed, strategy

    def _run_predicted(self, study: Any) -> tuple[Strategy, list[dict[str, Any]]]:
        from tqdm import tqdm

        assert self.predictor is not None
        s = self.settings
        strategy = self.make_strategy()
        generations: list[dict[str, Any]] = []
        last_write = time.monotonic()
        attr = f"predictor_generations/w{s.worker}/{s.strategy}/s{s.strategy_seed}"
        with tqdm(total=s.budget, desc=f"search {s.strategy} (predictor) w{s.worker}", unit="subnet",
                  disable=None if self.progress else True) as bar:
            while strategy.told < s.budget:
                genes = strategy.ask(min(s.batch, s.budget - strategy.told))
                if not len(genes):  # the strategy stopped (`strategy.stopped` says why)
                    break
                columns = self.measure(genes, self.predictor)
                strategy.tell(genes, columns)
                generations.append(self._summary(len(generations), columns, strategy.told))
                if time.monotonic() - last_write > 5:
                    study.set_user_attr(attr, generations)
                    last_write = time.monotonic()
                bar.update(len(genes))
                if strategy.stopped is not None:
                    break
        study.set_user_attr(attr, generations)
        self._measure_picks(study, strategy)
        return strategy, generations

    def _summary(self, generation: int, columns: Columns, told: int) -> dict[str, Any]:
        s = self.settings
        ok = np.ones(len(columns["accuracy"]), dtype=bool)
        for c in s.constraints:
            ok &= c.satisfied(columns[c.metric])
        out: dict[str, Any] = {"generation": generation, "told": told, "evaluated": int(len(ok)),
                               "feasible": float(ok.mean())}
        if ok.any():
            for o in s.objectives:
                values = np.asarray(columns[o.metric], dtype=np.float64)[ok]
                out[f"best_{o.metric}"] = float(values.max() if o.direction == "max" else values.min())
        return out

    def _measure_picks(self, study: Any, strategy: Strategy) -> None:
        """Measure the strategy's best `picks` (by predicted accuracy) with the supernet, as trials; skip those
        the study holds a measurement of already (from any worker or search)."""
        s = self.settings
        done = {t.user_attrs.get("key") for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"}
        order = strategy.ranking()[: s.picks]
        genes = strategy.genes[order]
        fresh = np.array([self.space.from_genes(row).key not in done for row in genes], dtype=bool)
        if fresh.any():
            assert self.predictor is not None
            predicted = np.asarray(self.predictor(genes[fresh]), dtype=np.float64)
            columns = self.measure(genes[fresh])
            self.evaluated += int(fresh.sum())
            self._record(study, genes[fresh], columns, -1, evaluator="pick", extra={"predicted_accuracy": predicted})

    # ------------------------------------------------------------------------------------------ picks

    def picks(self, study: Any) -> tuple[list[dict[str, Any]], float | None]:
        """The best true-evaluated architectures of the whole study (all workers), best first: feasible before
        infeasible (on measured values); one objective: top `picks`; several: the first Pareto front by crowding;
        accuracy ranked by the search's signal (exp(-val_loss) or the measured accuracy; a pick without a
        val_loss comes last). With the study's hypervolume (feasible true evaluations, measured accuracy;
        reference from `hv_reference`)."""
        s = self.settings
        rows: dict[str, dict[str, Any]] = {}
        for t in study.get_trials(deepcopy=False):
            attrs = t.user_attrs
            if t.state.name == "COMPLETE" and "key" in attrs and attrs["key"] not in rows:
                rows[attrs["key"]] = {k: v for k, v in attrs.items() if k not in (
                    "strategy", "seed", "worker", "batch", "row", "batch_rows", "latency_table", "feasible",
                    "rank_score")}
        if not rows:
            return [], None
        records = list(rows.values())

        def column(metric: str) -> np.ndarray:
            return np.array([np.nan if r.get(metric) is None else r[metric] for r in records], dtype=np.float64)

        columns = {m: column(m) for m in {*(o.metric for o in s.objectives), *(c.metric for c in s.constraints)}}
        scores = minimised(columns, s.objectives)
        ranked = scores
        if self.rank_by == "val_loss":
            ranked = minimised({**columns, "accuracy": np.exp(-column("val_loss"))}, s.objectives)
        violation = np.zeros(len(records))
        for c in s.constraints:
            violation += c.violation(columns[c.metric])
        violation = np.where(np.isnan(violation), np.inf, violation)
        order = rank_rows(ranked, np.where(np.isnan(ranked).any(axis=1), np.inf, violation))[: s.picks]
        feasible = violation == 0
        hv = None
        if feasible.any():
            hv = hypervolume(scores[feasible], hv_reference(s.objectives, s.constraints, columns))
        picks = []
        for i in order:
            picks.append({**records[i], "feasible": bool(feasible[i])})
        return picks, hv


def picks_csv(picks: Sequence[dict[str, Any]]) -> str:
    """The picks as CSV text (every column any pick has; arch last)."""
    if not picks:
        return ""
    names = [k for k in dict.fromkeys(k for p in picks for k in p) if k != "arch"] + ["arch"]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=names, extrasaction="ignore")
    writer.writeheader()
    for p in picks:
        writer.writerow(p)
    return out.getvalue()


def write_picks(run_dir: Path, picks: Sequence[dict[str, Any]]) -> Path:
    from search_spaces.files import atomic_write_text

    path = Path(run_dir) / "search" / "picks.csv"
    atomic_write_text(path, picks_csv(picks))
    return path
