"""Accuracy predictor on real supernet measurements (issue 5; issue 17: held-out Kendall tau >= 0.8 on labels whose
split-half reliability is >= 0.85).

The data are random subnets of the trained supernet measured with BN recalibration, as a search measures
them, each with its accuracy and validation cross-entropy: `hwnas predictor collect SUPERNET --n 1000 --out DIR`
(resumable; about 1 s per subnet on an idle core). The predictor is trained on the first N of all but the last
`--holdout` subnets, in sampling order, and ranks the held-out ones, on accuracy labels (log-error target) and on
each loss label, cross-entropy and robust cross-entropy (the target, loss or log loss, chosen on a validation
split: the last `--validation` training subnets, never the held-out ones); the figures for several N show how
much data it needs. The labels' split-half reliability comes from `benchmarks/bench_signal.py`'s per-image
outcomes (`--outcomes`).

Usage: .venv/bin/python benchmarks/bench_predictor.py [--supernet runs/qs-supernet] [--data runs/signal]
       [--no-write]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import pin_one_core, write_section  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--supernet", default="runs/qs-supernet")
    parser.add_argument("--data", default="runs/signal", help="directory holding data.csv")
    parser.add_argument("--outcomes", default="runs/signal/outcomes.npz",
                        help="bench_signal.py's per-image outcomes, for the labels' split-half reliability")
    parser.add_argument("--holdout", type=int, default=200)
    parser.add_argument("--validation", type=int, default=200, help="training subnets that choose the loss target")
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 400, 800],
                        help="training-set sizes (the first N subnets; capped at what was collected)")
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    pin_one_core()

    import numpy as np

    from latency_tables.analytic import AnalyticCostModel
    from latency_tables.table import kendall_tau
    from nas.evaluators import supernet_space
    from nas.predictor import read_data_columns, select_target, train_predictor

    space = supernet_space(args.supernet)[0]
    genes, columns = read_data_columns(Path(args.data) / "data.csv", space)
    accuracy, loss, robust = columns["accuracy"], columns["val_loss"], columns["val_robust_loss"]
    losses = {"val_loss": loss, "val_robust_loss": robust}
    if len(genes) <= args.holdout + args.validation + 10 or not np.isfinite(loss + robust).all():
        sys.exit(f"{len(genes)} subnets in {args.data}/data.csv, or some without a loss; collect more first")
    train = len(genes) - args.holdout
    macs = AnalyticCostModel().estimate_genes(space, genes[train:])["macs"]
    options = {"epochs": args.epochs, "lr": args.lr, "seed": 0}
    targets, chosen = {"accuracy": "log_error"}, []
    for label in losses:
        start = time.perf_counter()
        targets[label], taus = select_target(space, genes[:train], accuracy[:train], label=label,
                                             validation=args.validation,
                                             losses={k: v[:train] for k, v in losses.items()}, **options)
        chosen.append(f"{label}: " + ", ".join(f"{t} {v:.3f}" for t, v in taus.items()))
        print(f"{label} target {targets[label]} ({taus}) in {time.perf_counter() - start:.0f} s", flush=True)
    rows = ["| training subnets | labels (target) | held-out Kendall tau vs labels | its accuracy estimate vs measured "
            "accuracy | held-out RMSE of labels | fit time (s) |", "|---|---|---|---|---|---|"]
    for size in sorted({min(s, train) for s in args.sizes}):
        keep = np.r_[0:size, train:len(genes)]  # the first `size` subnets, then the held-out ones
        for label, name in targets.items():
            start = time.perf_counter()
            _, figures = train_predictor(space, genes[keep], accuracy[keep], holdout=args.holdout, target=name,
                                         losses={k: v[keep] for k, v in losses.items()}, **options)
            rows.append(f"| {size} | {label} ({name}) | {figures['held_out_kendall_tau']:.3f} | "
                        f"{figures['held_out_accuracy_kendall_tau']:.3f} | {figures['held_out_rmse']:.4f} | "
                        f"{time.perf_counter() - start:.1f} |")
            print(rows[-1], flush=True)
    body = "\n".join([
        f"{len(genes)} random subnets of `{args.supernet}` measured with BN recalibration (accuracy "
        f"{accuracy.min():.3f} .. {accuracy.max():.3f}, mean {accuracy.mean():.3f}; validation cross-entropy "
        f"{loss.min():.4f} .. {loss.max():.4f} nats; robust cross-entropy {robust.min():.4f} .. {robust.max():.4f}); "
        f"the last {args.holdout} held out. MLP 400-400-400 on the one-hot encoding, Adam lr {args.lr}, weight decay "
        f"0.01, {args.epochs} epochs, seed 0. Accuracy labels: the log error -ln(1 - accuracy + 0.005) regressed. "
        f"Loss labels: the target chosen on the last {args.validation} training subnets (validation Kendall tau "
        + "; ".join(chosen) + "); a loss predictor's accuracy estimate is its predicted loss through a fitted "
        f"decreasing calibration, so it ranks as the loss does. For scale: MACs alone rank the held-out subnets with "
        f"Kendall tau {kendall_tau(macs, accuracy[train:]):.3f} (accuracy), {kendall_tau(-macs, loss[train:]):.3f} "
        f"(cross-entropy) and {kendall_tau(-macs, robust[train:]):.3f} (robust).", "", *rows, "",
        reliability(args.outcomes)])
    print(body)
    if not args.no_write:
        write_section("Accuracy predictor on supernet accuracies (issue 5)",
                      f"hwnas predictor collect {args.supernet} --n 1000 --out {args.data} && "
                      f"python benchmarks/bench_predictor.py --supernet {args.supernet} --data {args.data}", body)


def reliability(outcomes_path: str) -> str:
    """The labels' split-half reliability, from bench_signal.py's per-image outcomes."""
    import numpy as np

    from supernets.evaluation import ImageOutcomes, split_half_reliability

    if not Path(outcomes_path).is_file():
        return f"(No split-half reliability: {outcomes_path} is missing; run benchmarks/bench_signal.py first.)"
    stored = np.load(outcomes_path, allow_pickle=False)
    outcomes = [ImageOutcomes(c, n) for c, n in zip(stored["correct"], stored["nll"], strict=True)]
    r = split_half_reliability(outcomes)
    return (f"Reliability of the labels (`benchmarks/bench_signal.py`, {len(outcomes)} random subnets of the same "
            f"supernet): two independent halves of the validation set ({r['images_per_half']} images each) rank them "
            f"with Kendall tau {r['accuracy']:.3f} by accuracy, {r['val_loss']:.3f} by cross-entropy and "
            f"{r['val_robust_loss']:.3f} by robust cross-entropy. The labels use the whole set, twice the images, so "
            f"they are at least this reliable.")


if __name__ == "__main__":
    main()
