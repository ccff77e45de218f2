"""`hwnas predictor collect|train`, `hwnas search`, `hwnas export`, `hwnas dashboard`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from nas.cli_lut import _log


def _threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def _predictor_dir(args: argparse.Namespace) -> Path:
    return Path(args.out) if args.out else Path(args.run_dir) / "predictor"


def cmd_predictor_collect(args: argparse.Namespace) -> None:
    from nas.evaluators import SupernetEvaluator
    from nas.predictor import collect

    out = _predictor_dir(args)  # (the evaluator runs torch with --threads)
    evaluator = SupernetEvaluator(args.run_dir, val_images=args.val_images, recal_images=args.recal_images,
                                  cache_path=out / "accuracy_cache.json", threads=args.threads)
    genes, accuracy = collect(evaluator.space, evaluator.accuracy, args.n, out / "data.csv", seed=args.seed,
                              progress=not args.no_progress)
    data = {"data": str(out / "data.csv"), "subnets": len(genes), "evaluated_now": evaluator.evaluated,
            "accuracy_mean": float(accuracy.mean()), "accuracy_min": float(accuracy.min()),
            "accuracy_max": float(accuracy.max())}
    lines = [f"{len(genes)} subnets in {out / 'data.csv'} ({evaluator.evaluated} evaluated now): accuracy "
             f"{accuracy.min():.2%} .. {accuracy.max():.2%}, mean {accuracy.mean():.2%}"]
    print(json.dumps(data, indent=2) if args.json else "\n".join(lines))


def cmd_predictor_train(args: argparse.Namespace) -> None:
    from nas.evaluators import supernet_space
    from nas.predictor import read_data, train_predictor

    out = _predictor_dir(args)
    space = supernet_space(args.run_dir)[0]
    genes, accuracy = read_data(Path(args.data) if args.data else out / "data.csv", space)
    predictor, figures = train_predictor(space, genes, accuracy, holdout=args.holdout,
                                         hidden=tuple(args.hidden), epochs=args.epochs, lr=args.lr,
                                         weight_decay=args.weight_decay, seed=args.seed)
    predictor.save(out)
    lines = [f"accuracy predictor -> {out}: trained on {len(genes) - args.holdout} subnets; on {args.holdout} "
             f"held-out ones RMSE {figures['held_out_rmse']:.4f}, Kendall tau {figures['held_out_kendall_tau']:.3f} "
             f"(train RMSE {figures['train_rmse']:.4f})"]
    print(json.dumps({"predictor": str(out), **figures}, indent=2) if args.json else "\n".join(lines))


def resolve_table(text: str, space: str) -> Any:
    """A latency table from a directory, or `RUNTIME:PRECISION` for the shipped table of this machine."""
    from latency_tables.table import LatencyTable, find_table

    if Path(text).is_dir():
        return LatencyTable.load(text)
    runtime, sep, precision = text.partition(":")
    if sep and runtime and precision:
        return find_table(space, runtime, precision)
    from search_spaces.errors import HwnasError

    raise HwnasError(f"--table {text!r} is neither a table directory nor RUNTIME:PRECISION (e.g. ort:fp32, "
                     f"litert:int8)")


def resolve_tables(args: argparse.Namespace, space: str, metrics: list[str]) -> list[Any]:
    """The --table list; when it is empty and `metrics` (of objectives and constraints) use `latency_ms`, this
    machine's shipped ort:fp32 table (said on the log)."""
    tables = [resolve_table(t, space) for t in args.table or []]
    if not tables and "latency_ms" in metrics:
        tables = [resolve_table("ort:fp32", space)]
        _log(args)(f"latency from the shipped table {tables[0].table_id} (choose one with --table)")
    return tables


def parse_options(texts: list[str] | None) -> dict[str, Any]:
    """`KEY=VALUE` strategy options; values are read as int, float, true/false, or kept as text."""
    from search_spaces.errors import HwnasError

    options: dict[str, Any] = {}
    for text in texts or []:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise HwnasError(f"--option {text!r} is not KEY=VALUE (e.g. population=50)")
        parsed: Any = value
        for convert in (int, float):
            try:
                parsed = convert(value)
                break
            except ValueError:
                continue
        if value.lower() in ("true", "false"):
            parsed = value.lower() == "true"
        options[key.strip().replace("-", "_")] = parsed
    return options


def search_objects(args: argparse.Namespace) -> tuple[Any, Any, Any, Any]:
    """(space, settings, costs, supernet evaluator) of a `hwnas search` command line."""
    from nas.evaluators import CostEvaluator, SupernetEvaluator
    from nas.objectives import parse_constraints, parse_objectives
    from nas.search import SearchSettings

    objectives = parse_objectives(args.objective or ["accuracy"])
    constraints = parse_constraints(args.constraint or [])
    evaluator = SupernetEvaluator(args.supernet, val_images=args.val_images, recal_images=args.recal_images,
                                  cache_path=Path(args.run_dir) / "search" / f"accuracy_cache-w{args.worker}.json",
                                  threads=args.threads)
    space = evaluator.space
    tables = resolve_tables(args, space.name, [o.metric for o in objectives] + [c.metric for c in constraints])
    costs = CostEvaluator(space, tables, dtype=args.dtype)
    options = parse_options(args.option)
    if args.strategy == "differentiable":  # it trains on the supernet and aims at the first table's latency
        if not tables:
            from search_spaces.errors import HwnasError

            raise HwnasError("--strategy differentiable aims at a latency: give --constraint latency_ms<=BOUND (or "
                             "--option target_ms=...) and a --table")
        options = {"supernet": args.supernet, "table": tables[0], "progress": not args.no_progress, **options}
    settings = SearchSettings(args.strategy, objectives, constraints, budget=args.budget, batch=args.batch,
                              seed=args.seed, worker=args.worker, picks=args.picks, options=options)
    return space, settings, costs, evaluator


def cmd_search(args: argparse.Namespace) -> None:
    from nas.search import Search, write_picks

    _threads(args)
    log = _log(args)
    space, settings, costs, evaluator = search_objects(args)
    predictor = None
    if args.predictor:
        from nas.predictor import AccuracyPredictor

        predictor = AccuracyPredictor.load(args.predictor, space).predict
    storage = args.storage or f"sqlite:///{Path(args.run_dir) / 'study.db'}"
    Path(args.run_dir).mkdir(parents=True, exist_ok=True)
    search = Search(space, settings, costs, evaluator.accuracy, storage=storage, study_name=args.study,
                    predictor=predictor, progress=not args.no_progress)
    result = search.run()
    picks_path = write_picks(Path(args.run_dir), result.picks)
    data = {"study": args.study, "storage": storage, "strategy": settings.strategy, "worker": settings.worker,
            "evaluated": result.evaluated, "replayed": result.replayed, "told": result.told, "trials": result.trials,
            "hypervolume": result.hypervolume, "picks": result.picks, "picks_csv": str(picks_path)}
    lines = [f"search {settings.strategy} (worker {settings.worker}, seed {settings.seed}): {result.told} told "
             f"({result.replayed} replayed from the study, {result.evaluated} measured now); study {args.study!r} "
             f"holds {result.trials} trials" + (f"; hypervolume {result.hypervolume:.5g}"
                                                 if result.hypervolume is not None else ""),
             f"picks ({picks_path}):"]
    for p in result.picks:
        lat = f"  latency {p['latency_ms']:.4f} ms" if "latency_ms" in p else ""
        lines.append(f"  {p['accuracy']:.2%}{lat}  macs {p['macs'] / 1e6:.2f}M  "
                     f"{'' if p['feasible'] else '(breaks a constraint) '}{p['key']}  {p['arch']}")
    if args.export and result.picks:
        lines += export_picks(args.supernet, Path(args.run_dir) / "subnets", result.picks, costs.tables,
                              settings.constraints, log)
        write_picks(Path(args.run_dir), result.picks)
        data["subnets"] = str(Path(args.run_dir) / "subnets")
    print(json.dumps(data, indent=2, default=str) if args.json else "\n".join(lines))


def export_picks(supernet: str, out_root: Path, picks: list[dict[str, Any]], tables: Any, constraints: Any,
                 log: Any, *, overwrite: bool = False) -> list[str]:
    """Export each pick to out_root/<key>/ (BN recalibrated weights, ONNX + TFLite with parity checks, metrics)
    and re-measure it on the runtime of the first table; a pick whose measured latency breaks the latency
    constraint is marked so (in the pick, its metrics.json and the lines returned). Exports already complete are
    re-measured, not rebuilt (unless `overwrite`)."""
    from nas.export import export_from_run, read_metrics, remeasure, remeasure_like_table
    from search_spaces import ArchConfig

    latency = next((c for c in constraints if c.metric == "latency_ms"), None)
    first = tables[0] if tables else None
    fp32 = first is not None and first.profile.precision == "fp32"
    lines = [f"exported to {out_root}/<key>/ (spec.json, model.safetensors, model.onnx, model.tflite, metrics.json):"]
    for pick in picks:
        arch = ArchConfig.from_str(pick["arch"])
        directory = out_root / arch.key
        if (directory / "metrics.json").is_file() and not overwrite:
            log(f"{arch.key}: exported before; measuring it again")
            remeasure(directory, tables=list(tables), constraint=latency if fp32 else None, progress=log)
        else:
            export_from_run(supernet, arch, out_root, tables=list(tables), accuracy=pick.get("accuracy"),
                            constraint=latency if fp32 else None, overwrite=overwrite, progress=log)
        if first is not None and not fp32:
            remeasure_like_table(directory, first, latency, progress=log)
        metrics = read_metrics(directory)
        verdict = metrics.get("latency", {}).get("constraint")
        parity = metrics.get("parity", {})
        worst = max((r["max_abs_diff"] for r in parity.get("runtimes", {}).values()), default=float("nan"))
        measured = verdict["measured_ms"] if verdict else None
        if verdict is None and first is not None:
            comparison = metrics.get("latency", {}).get("comparison", {}).get(first.table_id)
            like_table = metrics.get("latency", {}).get("measured_like_table")
            measured = comparison["measured_ms"] if comparison else like_table["measured_ms"] if like_table else None
        if measured is not None:  # (an export without a table keeps what an earlier one measured)
            pick["measured_latency_ms"] = measured
        if verdict is not None:
            pick["meets_constraint_measured"] = verdict["meets_constraint_measured"]
        top1 = float(metrics.get("accuracy", {}).get("top1", float("nan")))
        pick["exported_accuracy"] = top1
        state = ""
        if verdict is not None:
            state = "meets " + verdict["constraint"] if verdict["meets_constraint_measured"] else \
                f"BREAKS {verdict['constraint']} when measured: not a subnet that meets it"
        predicted = f"{float(pick['latency_ms']):.4f}" if pick.get("latency_ms") not in (None, "") else "-"
        lines.append(f"  {arch.key}: accuracy {top1:.2%}, latency predicted "
                     f"{predicted} ms, measured {measured if measured is None else f'{measured:.4f}'} ms {state}; "
                     f"parity max |diff| {worst:.1e}")
    return lines


def _csv_value(text: str) -> Any:
    """A CSV cell as what it was written from: None, a bool, a number, or the text."""
    if text in ("", "None"):
        return None
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def cmd_export(args: argparse.Namespace) -> None:
    import csv

    from nas.cli import load_arch
    from nas.evaluators import CostEvaluator, supernet_space
    from nas.objectives import parse_constraints
    from nas.search import picks_csv

    log = _log(args)
    space = supernet_space(args.supernet)[0]
    constraints = parse_constraints(args.constraint or [])
    tables = resolve_tables(args, space.name, [c.metric for c in constraints])
    costs = CostEvaluator(space, tables, dtype=args.dtype)
    rows: list[dict[str, Any]] = []  # every row of --picks, written back with the exported ones updated
    if args.picks:
        with open(args.picks, encoding="utf-8", newline="") as fh:
            rows = [dict(row) for row in csv.DictReader(fh)]
    picks = rows[: args.top] + [{"arch": space.validate(load_arch(text)).to_str()} for text in args.arch or []]
    if not picks:
        from search_spaces.errors import HwnasError

        raise HwnasError("nothing to export: give architectures (ARCH ...) or --picks RUN_DIR/search/picks.csv")
    for pick in picks:
        arch = space.validate(load_arch(pick["arch"]))
        pick["key"] = arch.key
        for name, value in list(pick.items()):  # numbers and flags read back from the CSV
            if name not in ("arch", "key", "evaluator") and isinstance(value, str):
                pick[name] = _csv_value(value)
        pick.update({k: v[0].item() for k, v in costs.columns(space.to_genes(arch)[None]).items()})
        if pick.get("accuracy") is None:
            pick.pop("accuracy", None)
    lines = export_picks(args.supernet, Path(args.out), picks, tables, constraints, log, overwrite=args.overwrite)
    if args.picks:
        from latency_tables.table import atomic_write

        atomic_write(Path(args.picks), picks_csv(rows))
    print(json.dumps({"subnets": str(args.out), "picks": picks}, indent=2, default=str) if args.json
          else "\n".join(lines))


def cmd_dashboard(args: argparse.Namespace) -> None:
    from nas.study import serve_dashboard

    storage = args.storage or f"sqlite:///{Path(args.run_dir) / 'study.db'}"
    if not args.storage and not (Path(args.run_dir) / "study.db").is_file():
        from search_spaces.errors import HwnasError

        raise HwnasError(f"no study in {args.run_dir} (no study.db); run `hwnas search --run-dir {args.run_dir}` "
                         f"first, or give --storage URL")
    print(f"optuna-dashboard for {storage} on http://{args.host}:{args.port}/ (Ctrl-C stops it)", flush=True)
    serve_dashboard(storage, args.host, args.port)


def register(groups: Any, command: Any) -> None:
    """Add the `predictor` group (and the search commands) to the top-level parser."""
    pred = groups.add_parser("predictor", help="the accuracy predictor a search can use").add_subparsers(
        dest="command", required=True)
    col = command(pred, "collect", cmd_predictor_collect,
                  "measure random subnets with the supernet (BN recalibrated) for the accuracy predictor; "
                  "continues an interrupted collection")
    col.add_argument("run_dir", help="run directory of `hwnas supernet train`")
    col.add_argument("--n", type=int, default=1000, help="subnets to measure (default 1000)")
    col.add_argument("--seed", type=int, default=0, help="seed of the subnets (default 0)")
    col.add_argument("--val-images", type=int, help="validation images per subnet (default: all)")
    col.add_argument("--recal-images", type=int, help="training images for BN recalibration (default: the recipe's)")
    col.add_argument("--threads", type=int, help="torch threads")
    col.add_argument("--out", help="predictor directory (default RUN_DIR/predictor)")
    col.add_argument("--no-progress", action="store_true", help="no progress bar")
    tr = command(pred, "train", cmd_predictor_train,
                 "fit the predictor on collected data; report RMSE and Kendall tau on held-out subnets")
    tr.add_argument("run_dir", help="run directory of `hwnas supernet train` (for its space)")
    tr.add_argument("--data", help="predictor data CSV (default RUN_DIR/predictor/data.csv)")
    tr.add_argument("--out", help="predictor directory (default RUN_DIR/predictor)")
    tr.add_argument("--holdout", type=int, default=200, help="last N subnets held out for the figures (default 200)")
    tr.add_argument("--hidden", type=int, nargs="+", default=[400, 400, 400], help="hidden layer sizes")
    tr.add_argument("--epochs", type=int, default=300, help="training epochs (default 300)")
    tr.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    tr.add_argument("--weight-decay", type=float, default=1e-2, help="L2 weight decay (default 1e-2)")
    tr.add_argument("--seed", type=int, default=0, help="seed (default 0)")

    from nas.strategies import STRATEGY_NAMES

    se = command(groups, "search", cmd_search,
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
    se.add_argument("--option", action="append", metavar="KEY=VALUE", help="strategy option, e.g. population=50")
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

    ex = command(groups, "export", cmd_export, "export subnets of a trained supernet to DIR/<key>/ (BN recalibrated "
                 "safetensors, ONNX, TFLite, parity checks, costs, predicted and measured latency)")
    ex.add_argument("arch", nargs="*", help="architectures (strings, reference names or files)")
    ex.add_argument("--supernet", required=True, help="run directory of `hwnas supernet train`")
    ex.add_argument("--picks", help="also export the picks of a search (RUN_DIR/search/picks.csv; updated with "
                                    "the measured latency)")
    ex.add_argument("--top", type=int, default=5, help="how many of --picks (default 5)")
    ex.add_argument("--out", default="runs/search/subnets", help="output root (default %(default)s)")
    ex.add_argument("--table", action="append", metavar="DIR|RUNTIME:PRECISION",
                    help="latency tables to predict with (the first is the constrained one)")
    ex.add_argument("--constraint", action="append", metavar="latency_ms<=BOUND",
                    help="check the measured latency against this limit")
    ex.add_argument("--overwrite", action="store_true", help="export again subnets exported before")
    ex.add_argument("--dtype", default="fp32", help="element type of the byte counts (default fp32)")

    da = command(groups, "dashboard", cmd_dashboard, "serve optuna-dashboard for a search's study (history, "
                 "Pareto front, trial attributes) on this machine only")
    da.add_argument("run_dir", nargs="?", default="runs/search", help="search run directory (default %(default)s)")
    da.add_argument("--storage", help="Optuna storage URL (default sqlite:///RUN_DIR/study.db)")
    da.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    da.add_argument("--port", type=int, default=8080, help="port (default %(default)s)")
