"""`hwnas supernet train|eval`: once-for-all supernets."""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from nas.cli.common import add_command, add_group, emit, load_arch, log_for
from search_spaces import SPACES, ArchConfig


def _train_config(args: argparse.Namespace) -> Any:
    from supernets.config import TrainConfig

    config = TrainConfig.load(args.config) if args.config else TrainConfig()
    overrides = {k: v for k, v in (("space", args.space), ("dataset", args.dataset), ("data_path", args.data_path),
                                   ("seed", args.seed), ("threads", args.threads)) if v is not None}
    return TrainConfig.from_dict({**config.to_dict(), **overrides}) if overrides else config


def cmd_supernet_train(args: argparse.Namespace) -> None:
    from supernets.training import SupernetTrainer

    config = _train_config(args)
    trainer = SupernetTrainer(config, args.run_dir, progress=not args.no_progress, log=log_for(args))
    history = trainer.run(resume=args.resume)
    if trainer.world.rank != 0:
        return
    last = history[-1] if history else {}
    emit({"run_dir": str(args.run_dir), "epochs": config.total_epochs, "history": history}, args.json,
         [f"trained {args.run_dir} ({config.total_epochs} epochs): largest {last.get('acc_largest', 0):.2%}, "
          f"smallest {last.get('acc_smallest', 0):.2%} validation accuracy after BN recalibration"])


def cmd_supernet_eval(args: argparse.Namespace) -> None:
    from supernets.threads import torch_threads

    with torch_threads(args.threads):
        _supernet_eval(args)


def _supernet_eval(args: argparse.Namespace) -> None:
    from supernets.evaluation import evaluate_subnet
    from supernets.training import load_run

    run = load_run(args.run_dir)
    space, config = run.net.space, run.config
    data = run.dataset(args.data_path)
    named: list[tuple[str, ArchConfig]] = [(text, space.validate(load_arch(text))) for text in args.arch or []]
    rng = np.random.default_rng(args.seed)
    named += [(f"random{i}", space.sample(rng)) for i in range(args.random)]
    if not named:
        named = [("largest", space.extreme(True)), ("smallest", space.extreme(False))]
    rows = []
    for name, arch in named:
        acc = evaluate_subnet(run.net, arch, data, args.recal_images or config.bn_recal_images, config.seed)[0]
        rows.append({"name": name, "arch": arch.to_str(), "key": arch.key, "accuracy": acc})
    emit({"run_dir": str(args.run_dir), "epoch": run.meta["epoch"], "dataset": data.name, "subnets": rows},
         args.json, [f"{r['accuracy']:7.2%}  {r['name'] if r['name'] != r['arch'] else ''}  {r['arch']}"
                     for r in rows])


def register(groups: Any) -> None:
    """Add the `supernet` group to the top-level parser."""
    supernet = add_group(groups, "supernet", "train and evaluate once-for-all supernets")
    train = add_command(supernet, "train", cmd_supernet_train,
                        "train a supernet (progressive shrinking or sandwich rule); checkpoints every epoch")
    train.add_argument("--config", help="YAML recipe (default: the built-in recipe, see configs/mnist5k.yaml)")
    train.add_argument("--run-dir", default="runs/supernet", help="where checkpoints and logs go (default %(default)s)")
    train.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    train.add_argument("--space", help=f"override the recipe's search space ({', '.join(SPACES)})")
    train.add_argument("--dataset", help="override the dataset: mnist5k, digits, cifar10, cifar100, imagefolder")
    train.add_argument("--data-path", help="local directory of a cifar10/cifar100/imagefolder dataset")
    train.add_argument("--seed", type=int, help="override the seed")
    train.add_argument("--threads", type=int, help="torch threads per process (default: torch's choice)")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    ev = add_command(supernet, "eval", cmd_supernet_eval,
                     "validation accuracy of subnets taken from a trained supernet, after BN recalibration")
    ev.add_argument("run_dir", help="run directory of `hwnas supernet train`")
    ev.add_argument("--arch", action="append", help="architecture (string, reference name or file); repeatable. "
                    "Default: the largest and the smallest subnet")
    ev.add_argument("--random", type=int, default=0, help="also evaluate this many random subnets")
    ev.add_argument("--seed", type=int, default=0, help="seed for --random (default 0)")
    ev.add_argument("--recal-images", type=int, help="training images for BN recalibration (default: the recipe's)")
    ev.add_argument("--data-path", help="dataset directory, if it moved since training")
    ev.add_argument("--threads", type=int, help="torch threads")
