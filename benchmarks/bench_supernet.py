"""Supernet acceptance figures (issue 3), on this machine's CPU (all its cores):

1. the default recipe on mnist5k: wall time (target <= 20 min), then largest / smallest subnet validation
   accuracy after BN recalibration (targets >= 98.5% / >= 95%);
2. once-for-all quality: N random subnets taken from the supernet (BN recalibrated, no fine-tuning) against the
   same architectures trained alone for the recipe's number of epochs; both and the mean gap;
3. cost of elasticity: training-step time of the supernet on its largest subnet against that subnet's static
   model, same batch, measured interleaved in one run (target <= 1.5x).

Usage: .venv/bin/python benchmarks/bench_supernet.py [--config configs/mnist5k.yaml] [--run-dir DIR] [--reuse]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def step_times(space, arch, batch: int, rounds: int, steps: int) -> tuple[float, float]:  # noqa: ANN001
    """Median seconds per SGD step (forward, backward, update) of the supernet on `arch` and of its static model."""
    import torch
    import torch.nn.functional as F

    from supernets.models import build_model
    from supernets.supernet import Supernet

    torch.manual_seed(0)
    supernet, static = Supernet(space).train(), build_model(arch).train()
    x = torch.randn(batch, arch.in_channels, arch.resolution, arch.resolution)
    y = torch.randint(0, arch.num_classes, (batch,))
    runs = {"supernet": (supernet, lambda: supernet(x, arch)), "static": (static, lambda: static(x))}
    optimizers = {name: torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9) for name, (model, _) in runs.items()}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, (_, forward) in runs.items():  # interleaved: both see the same machine load
            for i in range(steps + 2):
                start = time.perf_counter()
                optimizers[name].zero_grad(set_to_none=True)
                F.cross_entropy(forward(), y).backward()
                optimizers[name].step()
                if i >= 2:  # two warm-up steps per round
                    times[name].append(time.perf_counter() - start)
    return statistics.median(times["supernet"]), statistics.median(times["static"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "mnist5k.yaml"))
    parser.add_argument("--run-dir", default=str(ROOT / "runs" / "bench-supernet"))
    parser.add_argument("--reuse", action="store_true", help="use a finished run in --run-dir (its logged times)")
    parser.add_argument("--subnets", type=int, default=5, help="random subnets to compare with training alone")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random subnets")
    parser.add_argument("--step-rounds", type=int, default=5)
    parser.add_argument("--step-n", type=int, default=10)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()

    import numpy as np
    import torch

    from supernets.config import TrainConfig
    from supernets.evaluation import accuracy, recalibrate_bn, recalibration_images
    from supernets.training import SupernetTrainer, evaluate_subnet, load_run, train_alone

    run_dir = Path(args.run_dir)
    train_seconds = float("nan")
    if not args.reuse:
        start = time.perf_counter()
        SupernetTrainer(TrainConfig.load(args.config), run_dir, progress=False).run()
        train_seconds = time.perf_counter() - start
    run = load_run(run_dir)  # with --reuse, the recipe the run was trained with (not --config)
    config, net, data = run.config, run.net, run.dataset()
    history = run.meta["metrics"]
    if args.reuse and len(history) >= config.total_epochs:  # a finished run: its epochs' recorded wall times
        train_seconds = sum(row["seconds"] for row in history)
    threads = torch.get_num_threads() if not config.threads else config.threads
    space = net.space
    torch.set_num_threads(threads)

    def recal_acc(model: torch.nn.Module, arch) -> float:  # noqa: ANN001
        recalibrate_bn(model, recalibration_images(data, arch.resolution, config.bn_recal_images, config.seed))
        return accuracy(model, data.val, arch.resolution, data.mean, data.std)

    largest, smallest = space.extreme(True), space.extreme(False)
    acc_largest = evaluate_subnet(net, largest, data, config.bn_recal_images, config.seed)[0]
    acc_smallest = evaluate_subnet(net, smallest, data, config.bn_recal_images, config.seed)[0]
    print(f"training {train_seconds / 60:.1f} min; largest {acc_largest:.2%}, smallest {acc_smallest:.2%}", flush=True)

    rng = np.random.default_rng(args.seed)
    rows, gaps = [], []
    for i in range(args.subnets):
        arch = space.sample(rng)
        from_supernet = evaluate_subnet(net, arch, data, config.bn_recal_images, config.seed)[0]
        started = time.perf_counter()
        alone = train_alone(arch, data, config, epochs=config.total_epochs, lr=config.phases[0].lr,
                            seed=config.seed + i)
        alone_acc = recal_acc(alone, arch)
        gaps.append(from_supernet - alone_acc)
        rows.append(f"| {i} | `{arch.to_str()}` | {from_supernet:.2%} | {alone_acc:.2%} | "
                    f"{100 * gaps[-1]:+.1f} | {time.perf_counter() - started:.0f} |")
        print(rows[-1], flush=True)

    sup_step, static_step = step_times(space, largest, config.batch_size, args.step_rounds, args.step_n)
    ratio = sup_step / static_step
    print(f"step: supernet {1000 * sup_step:.0f} ms, static {1000 * static_step:.0f} ms, ratio {ratio:.2f}x")

    body = f"""
Recipe `{Path(args.config).relative_to(ROOT) if Path(args.config).is_relative_to(ROOT) else args.config}`
({config.recipe}, phases {', '.join(f'{p.name} {p.epochs} ep @ lr {p.lr}' for p in config.phases)}; batch
{config.batch_size}; {threads} torch threads) on `{config.dataset}` ({len(data.train)} train / {len(data.val)}
validation images). Accuracies are on the validation split after BN recalibration on {config.bn_recal_images}
training images.

| figure | measured | target |
|---|---|---|
| training wall time (all epochs, with per-epoch evaluation and checkpoints) | {train_seconds / 60:.1f} min \
| <= 20 min |
| largest subnet `{largest.to_str()}` | {acc_largest:.2%} | >= 98.5% |
| smallest subnet `{smallest.to_str()}` | {acc_smallest:.2%} | >= 95% |
| training step, supernet on the largest subnet / its static model (batch {config.batch_size}) \
| {ratio:.2f}x ({1000 * sup_step:.0f} ms / {1000 * static_step:.0f} ms) | <= 1.5x |

Once-for-all quality: {args.subnets} random subnets (seed {args.seed}) taken from the supernet (BN recalibrated, no
fine-tuning) against the same architectures trained alone for {config.total_epochs} epochs (cosine from lr
{config.phases[0].lr}, same batch, optimizer and augmentation; BN recalibrated the same way).

| # | subnet | from supernet | trained alone | gap (points) | seconds alone |
|---|---|---|---|---|---|
{chr(10).join(rows)}

Mean gap (supernet - alone): **{100 * statistics.mean(gaps):+.2f} points**.
"""
    print(body)
    if not args.no_write:
        write_section("Supernet training (issue 3)", "python benchmarks/bench_supernet.py", body,
                      threads=f"{threads} torch threads")


if __name__ == "__main__":
    main()
