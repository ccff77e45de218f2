"""`hwnas search`: search a trained supernet's space under cost limits."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from nas.cli.common import add_command, log_for, resolve_tables
from nas.export.picks import export_picks
from search_spaces import HwnasError

#: How the output names each ranking signal (`nas.search.RANK_SIGNALS`).
RANKED_BY = {"val_loss": "exp(-validation cross-entropy) (--rank-by val_loss; accuracies shown are measured)",
             "accuracy": "measured accuracy (--rank-by accuracy)"}


def search_settings(args: argparse.Namespace) -> Any:
    """The `SearchSettings` of a `hwnas search` command line: objectives, constraints and the strategy's typed
    options, all checked before anything is opened."""
    from nas.objectives import parse_constraints, parse_objectives
    from nas.search import SearchSettings
    from nas.strategies import strategy_config

    config = strategy_config(args.strategy, args.option or [])
    return SearchSettings(args.strategy, parse_objectives(args.objective or ["accuracy"]),
                          parse_constraints(args.constraint or []), budget=args.budget, batch=args.batch,
                          seed=args.seed, worker=args.worker, picks=args.picks, options=config, rank_by=args.rank_by)


def strategy_inputs(args: argparse.Namespace, tables: list[Any]) -> dict[str, Any]:
    """What the strategy needs besides its options: the differentiable search trains on the supernet and aims at
    the first table's latency."""
    if args.strategy != "differentiable":
        return {}
    if not tables:
        raise HwnasError("--strategy differentiable aims at a latency: give --constraint latency_ms<=BOUND (or "
                         "--option target_ms=...) and a --table")
    return {"supernet": args.supernet, "table": tables[0], "progress": not args.no_progress}


def cmd_search(args: argparse.Namespace) -> None:
    from supernets.threads import torch_threads

    with torch_threads(args.threads):  # the search's evaluations and the picks' export
        _search(args)


def _search(args: argparse.Namespace) -> None:
    from nas.evaluators import CostEvaluator, SupernetEvaluator, supernet_space
    from nas.search import Search, write_picks

    log = log_for(args)
    settings = search_settings(args)  # the command line, then the tables, then the supernet: cheap checks first
    if args.compress and not args.compress_constraint:
        raise HwnasError("--compress needs its budget: --compress-constraint METRIC<=X (e.g. latency_ms<=0.1)")
    if args.compress and not args.export:
        raise HwnasError("--compress compresses the exported picks; it cannot be used with --no-export")
    space = supernet_space(args.supernet)[0]
    tables = resolve_tables(args, space.name, [m.metric for m in (*settings.objectives, *settings.constraints)])
    costs = CostEvaluator(space, tables, dtype=args.dtype)
    inputs = strategy_inputs(args, tables)
    evaluator = SupernetEvaluator.from_run(
        args.supernet, val_images=args.val_images, recal_images=args.recal_images, threads=args.threads,
        cache_path=Path(args.run_dir) / "search" / f"accuracy_cache-w{args.worker}.json")
    predictor = None
    if args.predictor:
        from nas.predictor import AccuracyPredictor

        predictor = AccuracyPredictor.load(args.predictor, space).predict
    storage = args.storage or f"sqlite:///{Path(args.run_dir) / 'study.db'}"
    Path(args.run_dir).mkdir(parents=True, exist_ok=True)
    search = Search(space, settings, costs, scores=evaluator.scores, storage=storage, study_name=args.study,
                    predictor=predictor, progress=not args.no_progress, strategy_inputs=inputs)
    result = search.run()
    picks_path = write_picks(Path(args.run_dir), result.picks)
    data = {"study": args.study, "storage": storage, "strategy": settings.strategy, "worker": settings.worker,
            "evaluated": result.evaluated, "replayed": result.replayed, "told": result.told, "trials": result.trials,
            "hypervolume": result.hypervolume, "picks": result.picks, "picks_csv": str(picks_path),
            "stopped": result.stopped, "rank_by": result.rank_by}
    lines = [f"search {settings.strategy} (worker {settings.worker}, seed {settings.seed}): {result.told} told "
             f"({result.replayed} replayed from the study, {result.evaluated} measured now); study {args.study!r} "
             f"holds {result.trials} trials" + (f"; hypervolume {result.hypervolume:.5g}"
                                                 if result.hypervolume is not None else ""),
             f"ranked by {RANKED_BY[result.rank_by]}",
             *([f"stopped before the budget: {result.stopped}"] if result.stopped else []),
             f"picks ({picks_path}):"]
    for p in result.picks:
        lat = f"  latency {p['latency_ms']:.4f} ms" if "latency_ms" in p else ""
        loss = f"  val_loss {p['val_loss']:.4f}" if p.get("val_loss") is not None else ""
        lines.append(f"  {p['accuracy']:.2%}{loss}{lat}  macs {p['macs'] / 1e6:.2f}M  "
                     f"{'' if p['feasible'] else '(breaks a constraint) '}{p['key']}  {p['arch']}")
    if args.export and result.picks:
        lines += export_picks(args.supernet, Path(args.run_dir) / "subnets", result.picks, costs.tables,
                              settings.constraints, log)
        write_picks(Path(args.run_dir), result.picks)
        search.note_measured(result.picks)  # the study shows the runtime's latency beside the table's
        data["subnets"] = str(Path(args.run_dir) / "subnets")
        if args.compress:
            from nas.cli.compress import compress_picks
            from search_spaces import ArchConfig

            picked = [Path(args.run_dir) / "subnets" / ArchConfig.from_str(p["arch"]).key for p in result.picks]
            table = args.compress_table or (args.table or [None])[0]
            if table is None:
                raise HwnasError("--compress needs a latency table: give --compress-table RUNTIME:PRECISION|DIR")
            lines += compress_picks(picked, Path(args.run_dir) / "compressed", args.compress_constraint, table,
                                    space.name, args, log)
            data["compressed"] = str(Path(args.run_dir) / "compressed")
    print(json.dumps(data, indent=2, default=str) if args.json else "\n".join(lines))


def register(groups: Any) -> None:
    """Add the `search` command to the top-level parser."""
    from nas.strategies import STRATEGY_NAMES

    se = add_command(groups, "search", cmd_search,
                     "search a trained supernet's space for the best subnets under cost limits; every true evaluation "
                     "is a trial of an Optuna study (resumes from it; several workers can share it)")
    se.add_argument("--supernet", required=True, help="run directory of `hwnas supernet train`")
    se.add_argument("--strategy", default="evolution", choices=STRATEGY_NAMES, help="default evolution")
    se.add_argument("--objective", action="append", metavar="METRIC[:max|min]",
                    help="repeatable (default: accuracy); e.g. --objective accuracy --objective latency_ms")
    se.add_argument("--constraint", action="append", metavar="METRIC<=BOUND",
                    help="hard limit, repeatable: latency_ms<=0.5, params<=300k, macs<5M, accuracy>=0.97")
    se.add_argument("--table", action="append", metavar="DIR|RUNTIME:PRECISION",
                    help="latency table (repeatable; the first is latency_ms, the others are reported as "
                         "latency_ms@ID). Default with a latency metric: this machine's shipped ort:fp32")
    se.add_argument("--dtype", default="fp32", help="element type of the byte counts (default fp32)")
    se.add_argument("--budget", type=int, default=100,
                    help="evaluations by this worker: measured ones, or with --predictor predicted ones (default 100)")
    se.add_argument("--batch", type=int, default=10, help="architectures per ask (default 10)")
    se.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    se.add_argument("--worker", type=int, default=0, help="this worker's number when several share a study")
    se.add_argument("--picks", type=int, default=5, help="how many best subnets to pick and export (default 5)")
    se.add_argument("--option", action="append", metavar="KEY=VALUE",
                    help="strategy option, e.g. population=50 (a wrong one lists the strategy's options and types)")
    se.add_argument("--rank-by", choices=("val_loss", "accuracy"), default="val_loss",
                    help="what ranks the measured subnets: the validation cross-entropy, told as exp(-val_loss) "
                         "(split-half Kendall tau 0.81 against accuracy's 0.72), or the accuracy; the study keeps "
                         "one (default val_loss)")
    se.add_argument("--predictor", metavar="DIR",
                    help="tell the strategy predicted accuracy (`hwnas predictor train`); the picks are measured")
    se.add_argument("--run-dir", default="runs/search",
                    help="where study.db, search/picks.csv and subnets/ go (default %(default)s)")
    se.add_argument("--storage", help="Optuna storage URL (default sqlite:///RUN_DIR/study.db)")
    se.add_argument("--study", default="search", help="study name (default search)")
    se.add_argument("--val-images", type=int, help="validation images per subnet (default: all)")
    se.add_argument("--recal-images", type=int, help="training images for BN recalibration (default: the recipe's)")
    se.add_argument("--threads", type=int, help="torch threads")
    se.add_argument("--export", action=argparse.BooleanOptionalAction, default=True,
                    help="re-measure the picks on the runtime and export them to RUN_DIR/subnets (default yes)")
    se.add_argument("--no-progress", action="store_true", help="no progress bars")
    se.add_argument("--compress", choices=("joint", "sequential", "prune", "quantize"),
                    help="compress each exported pick by this method (as `hwnas compress`) into RUN_DIR/compressed")
    se.add_argument("--compress-constraint", action="append", metavar="METRIC<=X",
                    help="the compression budget (latency_ms, size_bytes, macs or bitops); needed with --compress")
    se.add_argument("--compress-table", metavar="RUNTIME:PRECISION|DIR",
                    help="the table the compression budget is on (default: the first --table)")
    se.add_argument("--compress-epochs", type=int, default=1, help="fine-tune epochs of --compress (default 1)")
