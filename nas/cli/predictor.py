"""`hwnas predictor collect|train`: the accuracy predictor a search can use."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from nas.cli.common import add_command


def _predictor_dir(args: argparse.Namespace) -> Path:
    return Path(args.out) if args.out else Path(args.run_dir) / "predictor"


def cmd_predictor_collect(args: argparse.Namespace) -> None:
    import numpy as np

    from nas.evaluators import SupernetEvaluator
    from nas.predictor import collect, read_data_columns

    out = _predictor_dir(args)  # (the evaluator runs torch with --threads)
    evaluator = SupernetEvaluator.from_run(args.run_dir, val_images=args.val_images, recal_images=args.recal_images,
                                           cache_path=out / "accuracy_cache.json", threads=args.threads)
    genes, accuracy = collect(evaluator.space, evaluator.scores, args.n, out / "data.csv", seed=args.seed,
                              progress=not args.no_progress)
    columns = read_data_columns(out / "data.csv", evaluator.space)[1]
    loss = columns["val_loss"][:len(genes)]
    known = loss[~np.isnan(loss)]
    data = {"data": str(out / "data.csv"), "subnets": len(genes), "evaluated_now": evaluator.evaluated,
            "accuracy_mean": float(accuracy.mean()), "accuracy_min": float(accuracy.min()),
            "accuracy_max": float(accuracy.max()), "val_loss_mean": float(known.mean()) if len(known) else None,
            "without_val_loss": int(len(loss) - len(known))}
    lines = [f"{len(genes)} subnets in {out / 'data.csv'} ({evaluator.evaluated} evaluated now): accuracy "
             f"{accuracy.min():.2%} .. {accuracy.max():.2%}, mean {accuracy.mean():.2%}"
             + (f"; validation loss {known.min():.4f} .. {known.max():.4f}" if len(known) else "")
             + (f"; {data['without_val_loss']} rows from an older collection have no loss" if len(known) < len(loss)
                else "")]
    print(json.dumps(data, indent=2) if args.json else "\n".join(lines))


def cmd_predictor_train(args: argparse.Namespace) -> None:
    import numpy as np

    from nas.evaluators import supernet_space
    from nas.predictor import LOSS_LABELS, read_data_columns, select_target, train_predictor

    out = _predictor_dir(args)
    space = supernet_space(args.run_dir)[0]
    genes, columns = read_data_columns(Path(args.data) if args.data else out / "data.csv", space)
    losses = {name: columns[name] for name in LOSS_LABELS if np.isfinite(columns[name]).all()}
    options = {"hidden": tuple(args.hidden), "epochs": args.epochs, "lr": args.lr, "weight_decay": args.weight_decay,
               "seed": args.seed}
    target, chosen = args.target, ""
    if target == "auto":  # the target for the label that ranks a validation split best (never the held-out rows)
        label = args.label if args.label == "accuracy" or args.label in losses else "accuracy"
        if label != args.label:
            chosen = f"; {args.label} labels missing from some rows (an older collection): accuracy labels used"
        target, taus = select_target(space, genes[:-args.holdout], columns["accuracy"][:-args.holdout], label=label,
                                     validation=args.holdout,
                                     losses={k: v[:-args.holdout] for k, v in losses.items()}, **options)
        chosen += f"; target {target} chosen on a validation split (tau " + ", ".join(
            f"{t} {v:.3f}" for t, v in taus.items()) + ")"
    predictor, figures = train_predictor(space, genes, columns["accuracy"], holdout=args.holdout, target=target,
                                         losses=losses, **options)
    predictor.save(out)
    lines = [f"accuracy predictor -> {out}: {predictor.label} labels, trained on {len(genes) - args.holdout} subnets; "
             f"on {args.holdout} held-out ones RMSE {figures['held_out_rmse']:.4f}, Kendall tau "
             f"{figures['held_out_kendall_tau']:.3f} (its accuracy estimate against measured accuracy: "
             f"{figures['held_out_accuracy_kendall_tau']:.3f}; train RMSE {figures['train_rmse']:.4f}){chosen}"]
    print(json.dumps({"predictor": str(out), **figures}, indent=2) if args.json else "\n".join(lines))


def register(groups: Any) -> None:
    """Add the `predictor` group to the top-level parser."""
    pred = groups.add_parser("predictor", help="the accuracy predictor a search can use").add_subparsers(
        dest="command", required=True)
    col = add_command(pred, "collect", cmd_predictor_collect,
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
    tr = add_command(pred, "train", cmd_predictor_train,
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
    tr.add_argument("--label", default="val_robust_loss",
                    help="what the predictor learns: accuracy, val_loss or val_robust_loss (default: the robust "
                         "validation cross-entropy, the most reliable label; accuracy for data without it)")
    tr.add_argument("--target", default="auto",
                    help="the form the MLP regresses, which sets the label: accuracy, log_error, val_loss, "
                         "log_val_loss, val_robust_loss or log_val_robust_loss (default auto: the form of --label "
                         "that ranks a validation split best)")
