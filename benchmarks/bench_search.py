"""Search acceptance figures (issue 5) that need no trained supernet, on one pinned core:

1. throughput of the evolutionary search when it is priced by the accuracy predictor and a latency table
   (target >= 10,000 architectures per second; once-for-all's search runs about 2,200 per second): the whole
   loop (ask, predictor, analytic costs + table latency, constraint, tell), for each evolutionary strategy.

The predictor here is fitted on a stand-in accuracy (log MACs) so that its cost, not its quality, is measured.

Usage: .venv/bin/python benchmarks/bench_search.py [--evaluations N] [--no-write]
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
    parser.add_argument("--evaluations", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=500, help="architectures per ask (one generation)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    pin_one_core()

    import numpy as np

    from latency_tables.table import find_table
    from nas.evaluators import CostEvaluator
    from nas.objectives import parse_constraints, parse_objectives
    from nas.predictor import AccuracyPredictor
    from nas.strategies import get_strategy
    from search_spaces import get_space

    space = get_space("small")
    table = find_table("small", "litert", "int8")
    costs = CostEvaluator(space, [table])
    genes = space.sample_genes(np.random.default_rng(0), 2000)
    sample = costs.columns(genes)
    predictor = AccuracyPredictor(space, hidden=(400, 400, 400), seed=0)
    predictor.fit(genes, 0.9 + 0.02 * np.log(sample["macs"] / 1e6), epochs=5)
    limit = float(np.median(sample["latency_ms"]))
    objectives, constraints = parse_objectives(["accuracy"]), parse_constraints([f"latency_ms<={limit:.4f}"])

    def evaluate(rows: np.ndarray) -> dict[str, np.ndarray]:
        columns = costs.columns(rows)
        columns["accuracy"] = predictor.predict(rows)
        return columns

    rows = []
    for name, options in (("evolution", {"population": args.batch}),
                          ("regularized-evolution", {"population": args.batch, "sample_size": 25})):
        strategy = get_strategy(name, space, objectives, constraints, seed=0, **options)
        done, started = 0, time.perf_counter()
        while done < args.evaluations:
            asked = strategy.ask(args.batch)
            strategy.tell(asked, evaluate(asked))
            done += len(asked)
        seconds = time.perf_counter() - started
        best = strategy.ranking()[0]
        rows.append(f"| {name} | {done:,} | {seconds:.2f} s | **{done / seconds:,.0f}** | "
                    f"{-strategy.scores[best, 0]:.4f} |")
        print(rows[-1], flush=True)

    body = f"""
The search loop priced by the accuracy predictor (MLP 400-400-400 on the one-hot encoding, numpy) and the
shipped table `{table.table_id}` (analytic costs too), under `latency_ms<={limit:.4f}` (the median of 2,000
random subnets), {args.batch} architectures per ask, on one core. Target: >= 10,000 architectures per second.

| strategy | architectures | time | per second | best predicted accuracy |
|---|---|---|---|---|
{chr(10).join(rows)}
"""
    print(body)
    if not args.no_write:
        write_section("Search (issue 5)", "python benchmarks/bench_search.py", body)


if __name__ == "__main__":
    main()
