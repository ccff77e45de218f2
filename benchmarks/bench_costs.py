"""Analytic cost speed: 100,000 sampled architectures of the ImageNet-scale space on one core, against
building the torch module and counting it (parameters + FlopCounterMode). Target: under 2 s.

Usage: .venv/bin/python benchmarks/bench_costs.py [--n 100000] [--torch-n 20] [--objects-n 10000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import pin_one_core, write_section  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--objects-n", type=int, default=10_000)
    parser.add_argument("--torch-n", type=int, default=20)
    parser.add_argument("--space", default="imagenet")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    pin_one_core()

    import numpy as np
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from latency_tables import AnalyticCostModel
    from search_spaces import get_space
    from supernets import build_model

    torch.set_num_threads(1)
    space, rng = get_space(args.space), np.random.default_rng(0)

    t0 = time.perf_counter()
    genes = space.sample_genes(rng, args.n)
    t_sample = time.perf_counter() - t0
    model = AnalyticCostModel()
    t0 = time.perf_counter()
    model.estimate_genes(space, genes[:1])  # builds the space's per-block tables once
    t_tables = time.perf_counter() - t0
    t0 = time.perf_counter()
    costs = model.estimate_genes(space, genes)
    t_batch = time.perf_counter() - t0

    archs = [space.from_genes(g) for g in genes[: args.objects_n]]
    single = AnalyticCostModel()
    t0 = time.perf_counter()
    for arch in archs:
        single.estimate(arch)
    per_object = (time.perf_counter() - t0) / len(archs)

    t0 = time.perf_counter()
    for arch in archs[: args.torch_n]:
        net = build_model(arch).eval()
        params = sum(p.numel() for p in net.parameters())
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            net(torch.zeros(1, arch.in_channels, arch.resolution, arch.resolution))
        assert params == single.estimate(arch).params and counter.get_total_flops() == single.estimate(arch).flops
    per_torch = (time.perf_counter() - t0) / args.torch_n

    end_to_end = t_sample + t_tables + t_batch
    per_batch = t_batch / args.n
    rows = [
        ("sample genes (vectorised)", f"{t_sample:.3f} s", f"{t_sample / args.n * 1e6:.2f} us"),
        ("build per-block tables (once per space)", f"{t_tables:.3f} s", "-"),
        ("costs from genes (vectorised)", f"{t_batch:.3f} s", f"{per_batch * 1e6:.2f} us"),
        (f"costs of ArchConfig objects, one by one ({args.objects_n:,} measured)",
         f"{per_object * args.n:.2f} s (projected)", f"{per_object * 1e6:.1f} us"),
        (f"torch: build module + count params + FlopCounterMode ({args.torch_n} measured)",
         f"{per_torch * args.n:.0f} s (projected)", f"{per_torch * 1e3:.1f} ms"),
    ]
    table = "| what | 100,000 architectures | per architecture |\n|---|---|---|\n"
    table += "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows)
    summary = (
        f"Space `{args.space}` ({space.size():.2e} subnets). Sample + tables + costs of {args.n:,} architectures: "
        f"**{end_to_end:.2f} s** on one core (target: under 2 s). "
        f"Speed-up over building and counting the torch module: **{per_torch / per_batch:,.0f}x** (vectorised), "
        f"**{per_torch / per_object:,.0f}x** (one ArchConfig at a time). Mean MACs of the sample: "
        f"{costs['macs'].mean() / 1e6:.1f} M; the torch counts agreed exactly on the {args.torch_n} built."
    )
    print(table)
    print(summary)
    if not args.no_write:
        write_section("Analytic costs (issue 2)", "python benchmarks/bench_costs.py", table + "\n\n" + summary)


if __name__ == "__main__":
    main()
