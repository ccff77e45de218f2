"""Differentiable search acceptance figure (issue 5): the derived architecture is within 10% of its latency
target, measured on the runtime.

On the trained supernet (default runs/bench-supernet, mnist5k), for each loss form (FBNet's multiplicative and
ProxylessNAS's additive latency term) and each seed (0, 1, 2 by default), one search aims at the median table
latency of 1,000 random subnets on the shipped ONNX Runtime fp32 1-thread table. Printed and written: the
expected latency the search ends on, the table latency of the argmax and of the derived architecture (after the
bounded adjustment, when one was needed), the derived architecture measured end to end on ONNX Runtime (the
table's protocol: 1 thread, batch 1, warm-up + timed runs in round-robin rounds, lowest round median), its
error, its validation accuracy taken from the *original* supernet with BN recalibration (as any other
strategy's subnets are evaluated), and the search's wall time. For context: the accuracy of random subnets
within +-10% of the target, and how far the machine has drifted since the table was measured (reference
networks from the table's networks.csv measured in the same rounds).

Usage: .venv/bin/python benchmarks/bench_differentiable.py [--run-dir DIR] [--epochs N] [--seeds S ...] [--no-write]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import pin_one_core, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HEADER = ("| form | seed | expected ms (end) | argmax, table ms | derived, table ms | adjusted | measured ms | "
          "error, measured | accuracy | search time |\n|---|---|---|---|---|---|---|---|---|---|")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", default=str(ROOT / "runs" / "bench-supernet"))
    parser.add_argument("--epochs", type=int, default=4, help="search epochs (passes over the weights' split)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="search seeds (default 0 1 2)")
    parser.add_argument("--random", type=int, default=10, help="random subnets near the target, for context")
    parser.add_argument("--references", type=int, default=6, help="networks.csv rows re-measured for drift")
    parser.add_argument("--repeats", type=int, default=5, help="measurement rounds (lowest round median kept)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    pin_one_core()

    import numpy as np
    import torch

    from latency_tables.build import measure_targets
    from latency_tables.runtimes import Protocol
    from latency_tables.table import find_table
    from nas.strategies.differentiable import DifferentiableSearch
    from search_spaces import ArchConfig
    from supernets.evaluation import evaluate_subnet
    from supernets.training import load_run

    torch.set_num_threads(1)
    run = load_run(args.run_dir)
    net, config, data = run.net, run.config, run.dataset()
    space, table = net.space, find_table(net.space.name, "ort", "fp32")
    sample = space.sample_genes(np.random.default_rng(0), 1000)
    sample_ms = table.predict(space, sample).latency_ms
    target = float(np.median(sample_ms))
    print(f"target {target:.4f} ms (median of 1,000 random subnets on {table.table_id})", flush=True)

    def accuracy(arch: ArchConfig) -> float:
        return evaluate_subnet(net, arch, data, config.bn_recal_images, config.seed)[0]

    results = {}
    for seed in args.seeds:
        for form in ("fbnet", "proxyless"):
            search = DifferentiableSearch(net, data, table, target_ms=target, form=form, epochs=args.epochs,
                                          seed=seed)
            r = results[form, seed] = search.run()
            print(f"{form} seed {seed}: {r.seconds:.0f} s, argmax {r.argmax_predicted_ms:.4f} ms, derived "
                  f"{r.predicted_ms:.4f} ms (adjusted: {r.adjusted}) {r.arch}", flush=True)

    near = sample[np.abs(sample_ms / target - 1) <= 0.10][: args.random]
    random_acc = [accuracy(space.from_genes(g)) for g in near]

    assert table.path is not None
    with (table.path / "networks.csv").open() as fh:
        rows = sorted(csv.DictReader(fh), key=lambda row: float(row["latency_ms_median"]))
    picks = [rows[round(i * (len(rows) - 1) / max(1, args.references - 1))] for i in range(args.references)]
    references = [ArchConfig.from_str(row["arch"]) for row in picks]
    protocol = Protocol.from_dict({**table.meta["protocol"], "repeats": args.repeats})
    derived = [r.arch for r in results.values()]
    measured = measure_targets("ort", "fp32", derived + references, protocol)
    drift = statistics.median(m.median_ms / float(row["latency_ms_median"])
                              for m, row in zip(measured[len(derived):], picks, strict=True))

    lines, errors = [], []
    for ((form, seed), r), m in zip(results.items(), measured, strict=False):
        errors.append(m.median_ms / target - 1)
        acc = accuracy(r.arch)
        lines.append(f"| {form} | {seed} | {r.expected_ms:.4f} | {r.argmax_predicted_ms:.4f} "
                     f"({r.argmax_predicted_ms / target - 1:+.1%}) | {r.predicted_ms:.4f} ({r.error:+.1%}) | "
                     f"{'yes' if r.adjusted else 'no'} | {m.median_ms:.4f} | **{errors[-1]:+.1%}** | {acc:.2%} | "
                     f"{r.seconds:.0f} s |")
        print(lines[-1], flush=True)
    inside = sum(abs(e) <= 0.10 for e in errors)
    archs = "\n".join(f"- {form}, seed {seed}: `{r.arch}`" for (form, seed), r in results.items())
    body = f"""
`nas.strategies.differentiable.DifferentiableSearch` on `{Path(args.run_dir).name}` (mnist5k), {args.epochs} epochs
over the weights' 80% of the training split (one theta step on the other 20% after every weight step), default options,
aiming at **{target:.4f} ms**: the median table latency of 1,000 random subnets on `{table.table_id}`.
Measured: the derived architecture exported to ONNX and timed end to end on ONNX Runtime fp32, 1 thread, batch 1
({protocol.warmup} warm-up + {protocol.runs} runs per round, {protocol.repeats} rounds, lowest round median).
Accuracy: validation accuracy of the derived subnet taken from the original supernet after BN recalibration
({config.bn_recal_images} images), as every strategy's subnets are evaluated. Target: the derived architecture
within +-10% of its latency target, measured.

{HEADER}
{chr(10).join(lines)}

**{inside} of {len(errors)}** derived architectures within +-10% measured (mean |error| {np.mean(np.abs(errors)):.1%});
the table's own error on them is the measured minus the table column. Derived architectures:
{archs}

Context: {len(random_acc)} random subnets within +-10% of the target (by the table): accuracy mean
{np.mean(random_acc):.2%}, best {max(random_acc):.2%}. Machine drift since the table was measured: {args.references}
of its correction networks, re-measured in the same rounds, ran at {drift:.2f}x their recorded latency (errors
above are raw, not drift-corrected).
"""
    print(body)
    if not args.no_write:
        write_section("Differentiable search (issue 5)", "python benchmarks/bench_differentiable.py", body)


if __name__ == "__main__":
    main()
