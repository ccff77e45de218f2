"""Search quality at an equal budget of true evaluations (issue 5): every strategy searches the trained
supernet's space for two objectives, accuracy (measured: the supernet with BN recalibration) and latency
(a shipped lookup table), with the same number of measured subnets, for 3 seeds; the hypervolume of each
run's measured front is reported side by side (target: evolution, NSGA-II and RL each above random search on
the mean).

Hypervolume reference point: accuracy `--hv-accuracy` (default 0.9: a subnet below it adds nothing) and the
table latency of the slowest of 10,000 random subnets; the volume is in accuracy x milliseconds.

Issue 17, before and after: with `--signals accuracy val_loss`, each strategy also runs ranking subnets by the
lower-variance signal, the validation cross-entropy, as `hwnas search --rank-by val_loss` does (`Search` with
`rank_by="val_loss"`: told to the strategy as the accuracy objective in the form exp(-val_loss), the geometric mean
probability of the true class: higher is better, the loss's ranking; studies `NAME-val_loss-ranked-sSEED`, whose
trial values are measured accuracies); the hypervolume of every run is computed on the measured accuracy of its
subnets, so that the two rows compare what each search found, not what it was told. That table goes to its own
section.

Each run is a study in RUN_DIR/study.db (resumable: run the script again after an interruption); measured
accuracies are cached by architecture key in one file, so a subnet two runs both ask for is measured once.

Usage: .venv/bin/python benchmarks/bench_hypervolume.py [--supernet runs/bench-supernet] [--budget 80]
       [--seeds 0 1 2] [--strategies ...] [--signals accuracy val_loss] [--no-write]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_section  # noqa: E402

DEFAULT = ["random", "evolution", "regularized-evolution", "nsga2", "nsga2-p10", "tpe", "rl"]
#: label -> (strategy, options sized for the budget: a population well under it). `nsga2-p10`: the setting that
#: did best for NSGA-II on the predictor surrogate (below), chosen there, not on the measured runs.
RUNS: dict[str, tuple[str, dict[str, object]]] = {
    "random": ("random", {}), "evolution": ("evolution", {"population": 20}),
    "regularized-evolution": ("regularized-evolution", {"population": 20, "sample_size": 5}),
    "nsga2": ("nsga2", {"population_size": 20}),
    "nsga2-p10": ("nsga2", {"population_size": 10, "mutation_prob": 0.1}),
    "tpe": ("tpe", {"n_startup_trials": 20}), "rl": ("rl", {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--supernet", default="runs/bench-supernet")
    parser.add_argument("--run-dir", default="runs/bench-hypervolume")
    parser.add_argument("--cache", help="accuracy cache to start from (default RUN_DIR/accuracy_cache.json; "
                                        "`hwnas predictor collect` writes one with the same settings)")
    parser.add_argument("--table", default="ort:fp32")
    parser.add_argument("--budget", type=int, default=80, help="measured subnets per run (default 80)")
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--strategies", nargs="+", default=DEFAULT)
    parser.add_argument("--signals", nargs="+", default=["accuracy"], choices=["accuracy", "val_loss"],
                        help="what the strategies rank by (issue 17: accuracy val_loss, before and after)")
    parser.add_argument("--hv-accuracy", type=float, default=0.9)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--predictor-data", default="runs/bench-predictor/data.csv",
                        help="measured subnets to fit the surrogate on (skip the surrogate table if missing)")
    parser.add_argument("--surrogate-seeds", type=int, default=10)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()

    import numpy as np
    import torch

    from nas.cli.common import resolve_table
    from nas.evaluators import CostEvaluator, SupernetEvaluator
    from nas.objectives import hypervolume, minimised, parse_objectives
    from nas.search import Search, SearchSettings
    from nas.study import open_study
    from search_spaces import ArchConfig

    torch.set_num_threads(args.threads)
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cache = run_dir / "accuracy_cache.json"
    if args.cache and not cache.exists():
        cache.write_text(Path(args.cache).read_text())
    evaluator = SupernetEvaluator.from_run(args.supernet, cache_path=cache, threads=args.threads)
    space = evaluator.space
    table = resolve_table(args.table, space.name)
    costs = CostEvaluator(space, [table])
    objectives = parse_objectives(["accuracy", "latency_ms"])
    sample = space.sample_genes(np.random.default_rng(12345), 10_000)
    slowest = float(np.round(costs.columns(sample)["latency_ms"].max(), 3))
    reference = np.array([-args.hv_accuracy, slowest])
    storage = f"sqlite:///{run_dir / 'study.db'}"

    results: dict[str, list[float]] = {}
    best: dict[str, list[float]] = {}
    for signal in args.signals:
        for name in args.strategies:
            strategy, options = RUNS[name]
            label = name if signal == "accuracy" else f"{name} ({signal})"
            for seed in args.seeds:
                study_name = f"{name}-s{seed}" if signal == "accuracy" else f"{name}-{signal}-ranked-s{seed}"
                settings = SearchSettings(strategy, objectives, (), budget=args.budget, batch=args.batch, seed=seed,
                                          options=options, rank_by=signal)
                by_loss = signal == "val_loss"  # accuracy alone otherwise: no loss measured for cached accuracies
                Search(space, settings, costs, None if by_loss else evaluator.accuracy,
                       scores=evaluator.scores if by_loss else None, storage=storage, study_name=study_name,
                       progress=True).run()
                study = open_study(storage, study_name, objectives, space)
                trials = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
                measured = np.stack([space.to_genes(ArchConfig.from_str(t.user_attrs["arch"])) for t in trials])
                columns = {"accuracy": evaluator.accuracy(measured),  # from the cache (measured again if not there)
                           "latency_ms": np.array([t.user_attrs["latency_ms"] for t in trials], dtype=np.float64)}
                hv = hypervolume(minimised(columns, objectives), reference)
                results.setdefault(label, []).append(hv)
                best.setdefault(label, []).append(float(columns["accuracy"].max()))
                print(f"{label:30s} seed {seed}: {len(trials)} measured, hypervolume {hv:.5f}, best accuracy "
                      f"{columns['accuracy'].max():.4f}", flush=True)

    base = {signal: results.get("random" if signal == "accuracy" else f"random ({signal})") for signal in args.signals}
    rows = ["| strategy | hypervolume per seed | mean | vs random | best accuracy per seed |", "|---|---|---|---|---|"]
    for label, values in results.items():
        signal = label.split("(")[-1].rstrip(")") if "(" in label else "accuracy"
        ratio = f"{np.mean(values) / np.mean(base[signal]):.3f}x" if base[signal] else "-"  # type: ignore[arg-type]
        rows.append(f"| {label} | {' / '.join(f'{v:.5f}' for v in values)} | {np.mean(values):.5f} | {ratio} | "
                    f"{' / '.join(f'{b:.3f}' for b in best[label])} |")
    signals = ("; the strategies rank by " + " and, in the rows marked so, by ".join(
        "measured accuracy" if s == "accuracy" else "exp(-validation cross-entropy)" for s in args.signals)
        + "; every hypervolume is on measured accuracy") if "val_loss" in args.signals else ""
    body = "\n".join([
        f"Two objectives, accuracy (measured on the supernet `{args.supernet}`, BN recalibrated, "
        f"{len(evaluator.data.val)} validation images) and latency (table `{table.table_id}`), "
        f"{args.budget} measured subnets per run in batches of {args.batch}, seeds {args.seeds}{signals}. Hypervolume "
        f"reference: accuracy {args.hv_accuracy}, latency {slowest:.3f} ms (the slowest of 10,000 random "
        f"subnets); units "
        f"accuracy x ms. Measured accuracies are cached by key across runs (evaluation is deterministic); each "
        f"run is a study in {run_dir}/study.db (`hwnas dashboard {run_dir}`).", "", *rows])
    if "val_loss" in args.signals:
        print(body)
        if not args.no_write:
            write_section("Search quality: accuracy signal before and after (issue 17)",
                          f"python benchmarks/bench_hypervolume.py --supernet {args.supernet} --table {args.table} "
                          f"--strategies {' '.join(args.strategies)} --signals {' '.join(args.signals)}", body,
                          threads=f"{args.threads} torch thread(s)")
        return
    surrogate = surrogate_table(args, space, costs, objectives, reference) if Path(args.predictor_data).is_file() \
        else ""
    body += surrogate
    print(body)
    if not args.no_write:
        write_section("Search quality: hypervolume at equal true evaluations (issue 5)",
                      "python benchmarks/bench_hypervolume.py", body, threads=f"{args.threads} torch thread(s)")


def surrogate_table(args: argparse.Namespace, space: object, costs: object, objectives: object,
                    reference: object) -> str:
    """The same runs with the accuracy predictor (fitted on measured subnets) in place of the supernet, over
    more seeds: a low-variance view of the same comparison (the predictor is not the supernet)."""
    import numpy as np

    from nas.objectives import hypervolume, minimised
    from nas.predictor import AccuracyPredictor, read_data
    from nas.strategies import get_strategy
    from nas.strategies.conformance import run

    genes, accuracy = read_data(args.predictor_data, space)  # type: ignore[arg-type]
    predictor = AccuracyPredictor(space, seed=0)  # type: ignore[arg-type]
    predictor.fit(genes, accuracy)

    def evaluate(rows: np.ndarray) -> dict[str, np.ndarray]:
        columns = dict(costs.columns(rows))  # type: ignore[attr-defined]
        columns["accuracy"] = predictor.predict(rows)
        return columns

    seeds = range(args.surrogate_seeds)
    rows = ["| strategy | mean hypervolume | min .. max | vs random |", "|---|---|---|---|"]
    means: dict[str, float] = {}
    for name in args.strategies:
        strategy, options = RUNS[name]
        values = []
        for seed in seeds:
            trace = run(get_strategy(strategy, space, objectives, (), seed=seed, **options), evaluate,
                        [args.batch] * (args.budget // args.batch))
            cols = {m: np.concatenate([c[m] for _, c in trace]) for m in ("accuracy", "latency_ms")}
            values.append(hypervolume(minimised(cols, objectives), reference))  # type: ignore[arg-type]
        means[name] = float(np.mean(values))
        ratio = f"{means[name] / means['random']:.3f}x" if "random" in means else "-"
        rows.append(f"| {name} | {means[name]:.5f} | {min(values):.5f} .. {max(values):.5f} | {ratio} |")
        print(rows[-1], flush=True)
    return "\n".join(["", "", f"The same budget with accuracy from the accuracy predictor (MLP fitted on the "
                       f"{len(genes)} measured subnets of `{args.predictor_data}`) instead of the supernet, "
                       f"{args.surrogate_seeds} seeds: a lower-variance view of the comparison (the predictor is not "
                       f"the supernet, so its fronts are not the measured ones).", "", *rows])


if __name__ == "__main__":
    main()
