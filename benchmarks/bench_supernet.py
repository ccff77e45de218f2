"""Supernet acceptance figures (issues 3 and 17), on this machine's CPU:

1. the recipe on mnist5k: wall time (default recipe: target <= 20 min), then largest / smallest subnet validation
   accuracy after BN recalibration (targets >= 98.5% / >= 96%);
2. once-for-all quality: N seeded random subnets of the space (at least 3 with a ShuffleNet stage and 2 from the
   smallest quartile of MACs, when N >= 10) taken from the supernet (BN recalibrated, no fine-tuning) against the
   same architectures trained alone for the recipe's number of epochs with its optimiser, batch and augmentation:
   every subnet, the mean and the worst gap (targets >= -1.0 and >= -3.0 points) and the Kendall tau between the
   two rankings (target >= 0.6);
3. cost of elasticity: training-step time of the supernet on its largest subnet against that subnet's static
   model, same batch, measured interleaved in one run (target <= 1.5x).

The subnets trained alone are kept in `--alone-dir` (one JSON result and one safetensors file per subnet, named by
a hash of the architecture and of every setting that shapes its training), so a second recipe with the same
number of epochs, or a rerun after an interruption, trains only what is missing. `--alone-only` trains them
without a supernet (the recipe file says the epochs and settings).

Usage: .venv/bin/python benchmarks/bench_supernet.py [--config configs/mnist5k.yaml] [--run-dir DIR] [--reuse]
       [--subnets 10] [--seed 1] [--alone-dir runs/bench-alone] [--alone-only] [--threads N] [--no-write]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: The settings of a recipe that shape a subnet trained alone (with the epochs and the learning rate).
ALONE_FIELDS = ("dataset", "data_path", "batch_size", "momentum", "weight_decay", "label_smoothing", "augment_shift",
                "augment_rotate", "augment_scale", "val_fraction", "seed")


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


def select_subnets(space, n: int, seed: int) -> tuple[list[Any], float]:  # noqa: ANN001
    """`n` seeded random subnets: drawn in order from `seed`, the first 3 with a ShuffleNet stage and the first 2
    from the smallest quartile of MACs (of 10,000 random subnets) are taken, then the first draws of any kind fill
    the rest (quotas scale down for n < 10). Returns them (in draw order) and the quartile's MACs bound."""
    import numpy as np

    from latency_tables.analytic import AnalyticCostModel

    model = AnalyticCostModel("fp32")
    macs_of = lambda genes: model.estimate_genes(space, space.canonical_genes(genes))["macs"]  # noqa: E731
    quartile = float(np.quantile(macs_of(space.sample_genes(np.random.default_rng(10_000 + seed), 10_000)), 0.25))
    rng = np.random.default_rng(seed)
    want_shuffle, want_small = round(0.3 * n), round(0.2 * n)
    draws: list[tuple[int, Any, bool, bool]] = []
    chosen: set[int] = set()
    while len(chosen) < n:
        genes = space.sample_genes(rng, 1)
        arch = space.from_genes(space.canonical_genes(genes)[0])
        shuffle = any(stage[0].family == "shufflev2" for stage in arch.stages)
        small = float(macs_of(genes)[0]) <= quartile
        index = len(draws)
        draws.append((index, arch, shuffle, small))
        if any(arch.key == d[1].key for d in draws[:-1]):
            continue
        have_shuffle = sum(draws[i][2] for i in chosen)
        have_small = sum(draws[i][3] for i in chosen)
        free = n - len(chosen) - max(0, want_shuffle - have_shuffle) - max(0, want_small - have_small)
        if (shuffle and have_shuffle < want_shuffle) or (small and have_small < want_small) or free > 0:
            chosen.add(index)
    return [draws[i][1] for i in sorted(chosen)], quartile


def alone_result(arch, config, data, epochs: int, lr: float, seed: int, directory: Path,  # noqa: ANN001
                 threads: int) -> dict[str, Any]:
    """The subnet `arch` trained alone (its weights cached in `directory`): accuracy after BN recalibration on the
    recipe's number of images (evaluated from the saved weights every time), training seconds."""
    import torch
    from safetensors.torch import load_file, save_file

    from supernets.evaluation import accuracy, recalibrate_bn, recalibration_images
    from supernets.models import build_model
    from supernets.training import train_alone

    settings = {"arch": arch.key, "epochs": epochs, "lr": lr, "train_seed": seed,
                **{name: getattr(config, name) for name in ALONE_FIELDS}}
    name = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    result_path, weights_path = directory / f"{name}.json", directory / f"{name}.safetensors"
    result: dict[str, Any] = {}
    if result_path.is_file() and weights_path.is_file():
        result = json.loads(result_path.read_text())
    if result.get("settings") != settings:
        started = time.perf_counter()
        model = train_alone(arch, data, config, epochs=epochs, lr=lr, seed=seed)
        seconds = time.perf_counter() - started
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights_path))
        result = {"settings": settings, "seconds": round(seconds, 1), "threads": threads,
                  "torch_threads": torch.get_num_threads()}
        tmp = result_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(result_path)
    model = build_model(arch)  # evaluated from the saved weights, fresh or cached alike
    model.load_state_dict(load_file(str(weights_path)))
    recalibrate_bn(model, recalibration_images(data, arch.resolution, config.bn_recal_images, config.seed))
    return {**result, "accuracy": accuracy(model, data.val, arch.resolution, data.mean, data.std)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "mnist5k.yaml"))
    parser.add_argument("--run-dir", default=str(ROOT / "runs" / "bench-supernet"))
    parser.add_argument("--reuse", action="store_true", help="use a finished run in --run-dir (its logged times)")
    parser.add_argument("--subnets", type=int, default=10, help="random subnets to compare with training alone")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random subnets")
    parser.add_argument("--alone-dir", default=str(ROOT / "runs" / "bench-alone"))
    parser.add_argument("--alone-only", action="store_true", help="only train (or find) the subnets trained alone")
    parser.add_argument("--alone-order", type=int, nargs="+", help="with --alone-only: the subnets to train, in this "
                        "order (indices; a second process can start from the other end)")
    parser.add_argument("--alone-epochs", type=int, help="train the subnets alone for this many epochs instead of the "
                        "recipe's (the section says so: the comparison is then not at equal epochs)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: the recipe's)")
    parser.add_argument("--step-rounds", type=int, default=5)
    parser.add_argument("--step-n", type=int, default=10)
    parser.add_argument("--note", default="", help="a sentence for the section (how the run was made, its load)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()

    from supernets.config import TrainConfig
    from supernets.threads import torch_threads

    recipe = TrainConfig.load(args.config)
    with torch_threads(args.threads or recipe.threads):  # restored afterwards, as the package does
        measure(args, recipe)


def measure(args: argparse.Namespace, recipe: Any) -> None:
    """The benchmark's body, run with the torch threads `main` chose."""
    import torch
    from scipy.stats import kendalltau

    from search_spaces import get_space
    from supernets.data import load_dataset
    from supernets.training import SupernetTrainer, evaluate_subnet, load_run

    threads = torch.get_num_threads()
    alone_dir = Path(args.alone_dir)
    if args.alone_only:
        data = load_dataset(recipe.dataset, recipe.data_path, val_fraction=recipe.val_fraction, seed=recipe.seed)
        space = get_space(recipe.space, in_channels=data.in_channels, num_classes=data.num_classes)
        archs, _ = select_subnets(space, args.subnets, args.seed)
        for i in args.alone_order or range(len(archs)):
            arch = archs[i]
            result = alone_result(arch, recipe, data, args.alone_epochs or recipe.total_epochs, recipe.phases[0].lr,
                                  recipe.seed + i, alone_dir, threads)
            print(f"{i} {arch.key} alone {result['accuracy']:.2%} ({result['seconds']:.0f} s)", flush=True)
        return

    run_dir = Path(args.run_dir)
    train_seconds = float("nan")
    if not args.reuse:
        start = time.perf_counter()
        SupernetTrainer(recipe, run_dir, progress=False).run()
        train_seconds = time.perf_counter() - start
    run = load_run(run_dir)  # with --reuse, the recipe the run was trained with (not --config)
    config, net, data = run.config, run.net, run.dataset()
    history = run.meta["metrics"]
    if args.reuse and len(history) >= config.total_epochs:  # a finished run: its epochs' recorded wall times
        train_seconds = sum(row["seconds"] for row in history)
    space = net.space

    largest, smallest = space.extreme(True), space.extreme(False)
    acc_largest = evaluate_subnet(net, largest, data, config.bn_recal_images, config.seed)[0]
    acc_smallest = evaluate_subnet(net, smallest, data, config.bn_recal_images, config.seed)[0]
    print(f"training {train_seconds / 60:.1f} min; largest {acc_largest:.2%}, smallest {acc_smallest:.2%}", flush=True)

    archs, quartile = select_subnets(space, args.subnets, args.seed)
    from latency_tables.analytic import AnalyticCostModel

    costs = AnalyticCostModel("fp32")
    alone_epochs = args.alone_epochs or config.total_epochs
    epochs_note = ("" if alone_epochs == config.total_epochs else
                   f" (**not the recipe's {config.total_epochs}**: the comparison is not at equal epochs)")
    rows, gaps, ours, theirs = [], [], [], []
    for i, arch in enumerate(archs):
        from_supernet = evaluate_subnet(net, arch, data, config.bn_recal_images, config.seed)[0]
        alone = alone_result(arch, config, data, alone_epochs, config.phases[0].lr, config.seed + i, alone_dir,
                             threads)
        ours.append(from_supernet)
        theirs.append(alone["accuracy"])
        gaps.append(from_supernet - alone["accuracy"])
        shuffle = "yes" if any(stage[0].family == "shufflev2" for stage in arch.stages) else ""
        macs = float(costs.estimate_genes(space, space.to_genes(arch)[None])["macs"][0])
        rows.append(f"| {i} | `{arch.to_str()}` | {macs / 1e6:.2f}{' (q1)' if macs <= quartile else ''} | {shuffle} | "
                    f"{from_supernet:.2%} | {alone['accuracy']:.2%} | {100 * gaps[-1]:+.1f} | {alone['seconds']:.0f} |")
        print(rows[-1], flush=True)
    tau = float(kendalltau(ours, theirs).statistic)
    mean_gap, worst = 100 * statistics.mean(gaps), 100 * min(gaps)

    sup_step, static_step = step_times(space, largest, config.batch_size, args.step_rounds, args.step_n)
    ratio = sup_step / static_step
    print(f"step: supernet {1000 * sup_step:.0f} ms, static {1000 * static_step:.0f} ms, ratio {ratio:.2f}x")

    config_path = Path(args.config).resolve()
    shown = config_path.relative_to(ROOT) if config_path.is_relative_to(ROOT) else config_path
    verdict = lambda ok: "met" if ok else "**not met**"  # noqa: E731
    body = f"""
Recipe `{shown}` ({config.recipe}, phases {', '.join(f'{p.name} {p.epochs} ep @ lr {p.lr}' for p in config.phases)};
{config.total_epochs} epochs; batch {config.batch_size}; {threads} torch threads) on `{config.dataset}`
({len(data.train)} train / {len(data.val)} validation images). Accuracies are on the validation split after BN
recalibration on {config.bn_recal_images} training images.

| figure | measured | target | |
|---|---|---|---|
| training wall time (all epochs, with per-epoch evaluation and checkpoints) | {train_seconds / 60:.1f} min \
| <= 20 min (default recipe), <= 60 min (long) | |
| largest subnet `{largest.to_str()}` | {acc_largest:.2%} | >= 98.5% | {verdict(acc_largest >= 0.985)} |
| smallest subnet `{smallest.to_str()}` | {acc_smallest:.2%} | >= 96% | {verdict(acc_smallest >= 0.96)} |
| mean gap, supernet - alone, {len(archs)} subnets | {mean_gap:+.2f} points | >= -1.0 | {verdict(mean_gap >= -1.0)} |
| worst gap | {worst:+.1f} points | >= -3.0 | {verdict(worst >= -3.0)} |
| Kendall tau, supernet ranking vs alone ranking | {tau:.2f} | >= 0.6 | {verdict(tau >= 0.6)} |
| training step, supernet on the largest subnet / its static model (batch {config.batch_size}) \
| {ratio:.2f}x ({1000 * sup_step:.0f} ms / {1000 * static_step:.0f} ms) | <= 1.5x | {verdict(ratio <= 1.5)} |

Once-for-all quality: {len(archs)} random subnets (seed {args.seed}; the first draws with a ShuffleNet stage and from
the smallest quartile of MACs, <= {quartile / 1e6:.2f} M, marked q1, are taken first) from the supernet (BN
recalibrated, no fine-tuning) against the same architectures trained alone for {alone_epochs}
epochs{epochs_note} (cosine from lr {config.phases[0].lr}, same batch, optimiser and augmentation; BN recalibrated
the same way; seconds are the training's wall time, on a shared machine).

| # | subnet | MMACs | ShuffleNet | from supernet | trained alone | gap (points) | seconds alone |
|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

{args.note}
"""
    print(body)
    if not args.no_write:
        write_section(f"Supernet quality: {shown.stem} (issue 17)",
                      f"python benchmarks/bench_supernet.py --config {shown}", body,
                      threads=f"{threads} torch threads")


if __name__ == "__main__":
    main()
