"""The `hwnas` command line. Bad input prints one line naming what was wrong and exits with code 2."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from latency_tables import DTYPE_BYTES, AnalyticCostModel
from search_spaces import REFERENCES, SPACES, ArchConfig, HwnasError, SearchSpace, get_space, reference
from search_spaces.codec import format_ratio


def load_arch(text: str) -> ArchConfig:
    """An architecture from a canonical string, a reference network name, or a path to a JSON/text file."""
    if text in REFERENCES:
        return reference(text)
    if "|" not in text and not text.lstrip().startswith("{"):
        path = Path(text)
        if not path.is_file():
            raise HwnasError(
                f"{text!r} is not an architecture string, a reference network ({', '.join(REFERENCES)}) "
                "or an existing file"
            )
        text = path.read_text(encoding="utf-8")
    return ArchConfig.from_json(text) if text.lstrip().startswith("{") else ArchConfig.from_str(text)


def _print(data: dict[str, Any], as_json: bool, lines: list[str]) -> None:
    print(json.dumps(data, indent=2) if as_json else "\n".join(lines))


def _space(args: argparse.Namespace, name: str) -> SearchSpace:
    return get_space(name, in_channels=args.in_channels, num_classes=args.num_classes)


def cmd_space_show(args: argparse.Namespace) -> None:
    space = _space(args, args.name)
    data = space.to_dict()
    lines = [f"space {space.name}: {' '.join(space.description.split())}",
             f"  resolutions  {', '.join(map(str, space.resolutions))}",
             f"  input        {space.in_channels} channels, {space.num_classes} classes",
             f"  stem         {data['stem']}", f"  head         {data['head']}"]
    for j, st in enumerate(space.stages):
        lines.append(
            f"  stage {j}  stride {st.stride}  families {'/'.join(st.families)}  widths {_join(st.widths)}  "
            f"depths {_join(st.depths)}  kernels {_join(st.kernels)}  expands {_join(st.expands)}"
            f"  act {st.act}  se {format_ratio(st.se)}"
        )
    lines.append(f"  subnets      {space.size():,} ({space.size():.3e})")
    lines.append(f"  genes        {len(space.genes)} (one-hot encoding length {space.encoding_length})")
    _print(data, args.json, lines)


def _join(values: Sequence[Any]) -> str:
    return "/".join(format_ratio(v) if isinstance(v, float) else str(v) for v in values)


def cmd_space_list(args: argparse.Namespace) -> None:
    spaces = {name: get_space(name) for name in SPACES}
    data = {name: {"size": sp.size(), "description": " ".join(sp.description.split())} for name, sp in spaces.items()}
    _print(data, args.json, [f"{name:10s} {sp.size():.3e} subnets  {data[name]['description']}"
                             for name, sp in spaces.items()])


def cmd_space_sample(args: argparse.Namespace) -> None:
    space, rng = _space(args, args.name), np.random.default_rng(args.seed)
    archs = [space.sample(rng) for _ in range(args.n)]
    _print({"archs": [a.to_str() for a in archs]}, args.json, [a.to_str() for a in archs])


def cmd_arch_reference(args: argparse.Namespace) -> None:
    if args.name is None:
        _print({"references": list(REFERENCES)}, args.json, list(REFERENCES))
        return
    arch = reference(args.name)
    _print(arch.to_dict() | {"arch": arch.to_str(), "key": arch.key}, args.json, [arch.to_str()])


def cmd_arch_cost(args: argparse.Namespace) -> None:
    arch = load_arch(args.arch)
    if args.space:
        _space(args, args.space).validate(arch)
    cost = AnalyticCostModel(args.dtype).estimate(arch)
    if args.table:
        from dataclasses import replace

        from latency_tables import LatencyTable

        tables = [LatencyTable.load(path) for path in args.table]
        cost = replace(cost, latency_ms={t.table_id: round(t.predict_arch(arch), 6) for t in tables})
    data = {"arch": arch.to_str(), "key": arch.key} | cost.to_dict()
    mib, dtype = 1 << 20, cost.dtype
    lines = [
        f"arch             {arch.to_str()}",
        f"key              {arch.key}",
        f"params           {cost.params:,}",
        f"macs             {cost.macs:,}  ({cost.macs / 1e6:.2f} M multiply-accumulates)",
        f"flops            {cost.flops:,}  (= 2 x MACs)",
        f"memory_access    {cost.memory_access:,} elements  ({cost.memory_access_bytes / mib:.2f} MiB at {dtype})",
        f"peak_activation  {cost.peak_activation:,} elements  ({cost.peak_activation_bytes / mib:.2f} MiB at {dtype})",
    ] + [f"latency_ms       {ms:.4f}  (predicted, table {table_id})" for table_id, ms in cost.latency_ms.items()]
    _print(data, args.json, lines)


def cmd_arch_validate(args: argparse.Namespace) -> None:
    arch = load_arch(args.arch)
    if args.space:
        _space(args, args.space).validate(arch)
    where = f" and in space {args.space}" if args.space else ""
    _print({"arch": arch.to_str(), "key": arch.key, "valid": True}, args.json,
           [f"valid{where}: {arch.to_str()} (key {arch.key})"])


def _train_config(args: argparse.Namespace) -> Any:
    from supernets.config import TrainConfig

    config = TrainConfig.load(args.config) if args.config else TrainConfig()
    overrides = {k: v for k, v in (("space", args.space), ("dataset", args.dataset), ("data_path", args.data_path),
                                   ("seed", args.seed), ("threads", args.threads)) if v is not None}
    return TrainConfig.from_dict({**config.to_dict(), **overrides}) if overrides else config


def cmd_supernet_train(args: argparse.Namespace) -> None:
    from supernets.training import SupernetTrainer

    config = _train_config(args)
    log = (lambda line: print(line, file=sys.stderr)) if args.json else print
    trainer = SupernetTrainer(config, args.run_dir, progress=not args.no_progress, log=log)
    history = trainer.run(resume=args.resume)
    if trainer.world.rank != 0:
        return
    last = history[-1] if history else {}
    _print({"run_dir": str(args.run_dir), "epochs": config.total_epochs, "history": history}, args.json,
           [f"trained {args.run_dir} ({config.total_epochs} epochs): largest {last.get('acc_largest', 0):.2%}, "
            f"smallest {last.get('acc_smallest', 0):.2%} validation accuracy after BN recalibration"])


def cmd_supernet_eval(args: argparse.Namespace) -> None:
    from supernets.data import load_dataset
    from supernets.evaluation import evaluate_subnet
    from supernets.training import load_supernet

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    net, meta = load_supernet(args.run_dir)
    space, cfg = net.space, meta["config"]
    data = load_dataset(cfg["dataset"], args.data_path or cfg["data_path"], val_fraction=cfg["val_fraction"],
                        seed=cfg["seed"])
    named: list[tuple[str, ArchConfig]] = [(text, space.validate(load_arch(text))) for text in args.arch or []]
    rng = np.random.default_rng(args.seed)
    named += [(f"random{i}", space.sample(rng)) for i in range(args.random)]
    if not named:
        named = [("largest", space.extreme(True)), ("smallest", space.extreme(False))]
    rows = []
    for name, arch in named:
        acc = evaluate_subnet(net, arch, data, args.recal_images or cfg["bn_recal_images"], cfg["seed"])[0]
        rows.append({"name": name, "arch": arch.to_str(), "key": arch.key, "accuracy": acc})
    _print({"run_dir": str(args.run_dir), "epoch": meta["epoch"], "dataset": data.name, "subnets": rows}, args.json,
           [f"{r['accuracy']:7.2%}  {r['name'] if r['name'] != r['arch'] else ''}  {r['arch']}" for r in rows])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hwnas", description="Hardware-aware neural architecture search.")
    groups = parser.add_subparsers(dest="group", required=True)

    def command(group: argparse._SubParsersAction, name: str, func: Any, help_text: str) -> argparse.ArgumentParser:
        sub = group.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--json", action="store_true", help="print JSON")
        sub.set_defaults(func=func)
        return sub

    def space_options(sub: argparse.ArgumentParser, positional: bool) -> None:
        if positional:
            sub.add_argument("name", help=f"space name: {', '.join(SPACES)}")
        sub.add_argument("--in-channels", type=int, help="input channels (default: the space's)")
        sub.add_argument("--num-classes", type=int, help="classes (default: the space's)")

    space = groups.add_parser("space", help="search spaces").add_subparsers(dest="command", required=True)
    space_options(command(space, "show", cmd_space_show, "print a space's choice sets and its number of subnets"),
                  True)
    command(space, "list", cmd_space_list, "list the named spaces")
    sample = command(space, "sample", cmd_space_sample, "print random architectures of a space")
    space_options(sample, True)
    sample.add_argument("--n", type=int, default=5, help="how many (default 5)")
    sample.add_argument("--seed", type=int, default=0, help="random seed (default 0)")

    arch = groups.add_parser("arch", help="architectures").add_subparsers(dest="command", required=True)
    ref = command(arch, "reference", cmd_arch_reference, "print a published network in the architecture language")
    ref.add_argument("name", nargs="?", choices=list(REFERENCES), help="network (omit to list them)")
    for name, func, text in (("cost", cmd_arch_cost, "analytic costs: params, MACs, FLOPs, memory access, peak"),
                             ("validate", cmd_arch_validate, "check an architecture (and its membership of a space)")):
        sub = command(arch, name, func, text)
        sub.add_argument("arch", help="architecture string, reference network name, or file (string or JSON)")
        sub.add_argument("--space", metavar="SPACE", help="also check membership of this space")
        space_options(sub, False)
        if name == "cost":
            sub.add_argument("--dtype", default="fp32", choices=list(DTYPE_BYTES), help="element type for bytes")
            sub.add_argument("--table", action="append", metavar="DIR",
                             help="also predict latency with this lookup table (repeatable)")

    supernet = groups.add_parser("supernet", help="train and evaluate once-for-all supernets").add_subparsers(
        dest="command", required=True)
    train = command(supernet, "train", cmd_supernet_train,
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
    ev = command(supernet, "eval", cmd_supernet_eval,
                 "validation accuracy of subnets taken from a trained supernet, after BN recalibration")
    ev.add_argument("run_dir", help="run directory of `hwnas supernet train`")
    ev.add_argument("--arch", action="append", help="architecture (string, reference name or file); repeatable. "
                    "Default: the largest and the smallest subnet")
    ev.add_argument("--random", type=int, default=0, help="also evaluate this many random subnets")
    ev.add_argument("--seed", type=int, default=0, help="seed for --random (default 0)")
    ev.add_argument("--recal-images", type=int, help="training images for BN recalibration (default: the recipe's)")
    ev.add_argument("--data-path", help="dataset directory, if it moved since training")
    ev.add_argument("--threads", type=int, help="torch threads")

    from nas import cli_lut, cli_search

    cli_lut.register(groups, command)
    cli_search.register(groups, command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        print("hwnas: interrupted; finished work is kept (a training run continues with --resume, a table "
              "build or validation continues when run again)", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed early
        sys.stderr.close()
        return 0
    except (HwnasError, OSError) as err:
        print(f"hwnas: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
