"""Accuracy predictor on real supernet accuracies (issue 5; target Kendall tau >= 0.8 on held-out subnets).

The data are random subnets of the trained supernet measured with BN recalibration, as a search measures
them: `hwnas predictor collect runs/bench-supernet --n 2000 --out runs/bench-predictor` (resumable; about
1.1 s per subnet on one core). The predictor is trained on all but the last `--holdout` of them, in sampling
order, and ranks the held-out ones; the figures for several training-set sizes show how much data it needs.

Usage: .venv/bin/python benchmarks/bench_predictor.py [--data runs/bench-predictor] [--no-write]
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
    parser.add_argument("--supernet", default="runs/bench-supernet")
    parser.add_argument("--data", default="runs/bench-predictor", help="directory holding data.csv")
    parser.add_argument("--holdout", type=int, default=200)
    parser.add_argument("--sizes", type=int, nargs="+", default=[250, 500, 1000],
                        help="training-set sizes (the first N subnets; capped at what was collected)")
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--no-reliability", action="store_true",
                        help="skip re-measuring the held-out subnets on two halves of the validation set")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    pin_one_core()

    from latency_tables.analytic import AnalyticCostModel
    from latency_tables.table import kendall_tau
    from nas.evaluators import supernet_space
    from nas.predictor import AccuracyPredictor, read_data

    space = supernet_space(args.supernet)[0]
    genes, accuracy = read_data(Path(args.data) / "data.csv", space)
    if len(genes) <= args.holdout + 10:
        sys.exit(f"only {len(genes)} subnets in {args.data}/data.csv; collect more first (see the docstring)")
    test_genes, test_acc = genes[-args.holdout:], accuracy[-args.holdout:]
    train_genes, train_acc = genes[:-args.holdout], accuracy[:-args.holdout]
    macs = AnalyticCostModel().estimate_genes(space, test_genes)["macs"]
    rows = ["| training subnets | held-out RMSE | held-out Kendall tau | fit time (s) |", "|---|---|---|---|"]
    figures = []
    for size in sorted({min(s, len(train_genes)) for s in args.sizes}):
        predictor = AccuracyPredictor(space, seed=0)
        start = time.perf_counter()
        predictor.fit(train_genes[:size], train_acc[:size], epochs=args.epochs, lr=args.lr)
        seconds = time.perf_counter() - start
        held = predictor.evaluate(test_genes, test_acc)
        figures.append((size, held))
        rows.append(f"| {size} | {held['rmse']:.4f} | {held['kendall_tau']:.3f} | {seconds:.1f} |")
        print(rows[-1], flush=True)
    reliability = ""
    if not args.no_reliability:
        reliability = measurement_reliability(args.supernet, test_genes, test_acc)
        print(reliability, flush=True)
    body = "\n".join([
        f"{len(genes)} random subnets of `{args.supernet}` measured with BN recalibration (accuracy "
        f"{accuracy.min():.3f} .. {accuracy.max():.3f}, mean {accuracy.mean():.3f}, std {accuracy.std():.3f}); the "
        f"last {args.holdout} held out. MLP 400-400-400 on the one-hot encoding regressing the log error "
        f"-ln(1 - accuracy + 0.005), Adam lr {args.lr}, weight decay 0.01, {args.epochs} epochs, seed 0. "
        f"For scale: MACs alone rank the held-out subnets with Kendall tau "
        f"{kendall_tau(macs, test_acc):.3f}.", "", *rows, "", reliability])
    print(body)
    if not args.no_write:
        write_section("Accuracy predictor on supernet accuracies (issue 5)",
                      "hwnas predictor collect runs/bench-supernet --n 2000 --out runs/bench-predictor && "
                      "python benchmarks/bench_predictor.py", body)


def measurement_reliability(supernet: str, genes: object, accuracy: object) -> str:
    """How well the measured accuracy itself ranks the held-out subnets: each measured again on the two halves of
    the validation set (the full measurement is their mean); the Kendall tau between the halves bounds what any
    predictor can show against such labels."""
    from dataclasses import replace

    from latency_tables.table import kendall_tau
    from nas.evaluators import SupernetEvaluator
    from supernets.data import Split

    full = SupernetEvaluator.from_run(supernet, threads=1)
    data = full.data
    half = len(data.val) // 2
    halves = [replace(data, val=Split(data.val.images[part], data.val.labels[part]))
              for part in (slice(None, half), slice(half, None))]
    a, b = (SupernetEvaluator.from_run(supernet, data=d, threads=1).accuracy(genes) for d in halves)  # type: ignore[arg-type]
    return (f"Reliability of the labels: the {len(a)} held-out subnets measured again on each half of the validation "
            f"set ({half} images each) rank alike with Kendall tau {kendall_tau(a, b):.3f} (one half against the "
            f"full measurement, which shares it: {kendall_tau(a, accuracy):.3f}).")


if __name__ == "__main__":
    main()
