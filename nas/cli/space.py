"""`hwnas space show|list|sample`: the named search spaces."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import numpy as np

from nas.cli.common import add_command, add_group, emit, space_of
from search_spaces import SPACES, get_space
from search_spaces.codec import format_ratio


def _join(values: Sequence[Any]) -> str:
    return "/".join(format_ratio(v) if isinstance(v, float) else str(v) for v in values)


def cmd_space_show(args: argparse.Namespace) -> None:
    space = space_of(args, args.name)
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
    emit(data, args.json, lines)


def cmd_space_list(args: argparse.Namespace) -> None:
    spaces = {name: get_space(name) for name in SPACES}
    data = {name: {"size": sp.size(), "description": " ".join(sp.description.split())} for name, sp in spaces.items()}
    emit(data, args.json, [f"{name:10s} {sp.size():.3e} subnets  {data[name]['description']}"
                           for name, sp in spaces.items()])


def cmd_space_sample(args: argparse.Namespace) -> None:
    space, rng = space_of(args, args.name), np.random.default_rng(args.seed)
    archs = [space.sample(rng) for _ in range(args.n)]
    emit({"archs": [a.to_str() for a in archs]}, args.json, [a.to_str() for a in archs])


def space_options(sub: argparse.ArgumentParser, positional: bool) -> None:
    """--in-channels / --num-classes (and the space's name, when `positional`)."""
    if positional:
        sub.add_argument("name", help=f"space name: {', '.join(SPACES)}")
    sub.add_argument("--in-channels", type=int, help="input channels (default: the space's)")
    sub.add_argument("--num-classes", type=int, help="classes (default: the space's)")


def register(groups: Any) -> None:
    """Add the `space` group to the top-level parser."""
    space = add_group(groups, "space", "search spaces")
    space_options(add_command(space, "show", cmd_space_show, "print a space's choice sets and its number of subnets"),
                  True)
    add_command(space, "list", cmd_space_list, "list the named spaces")
    sample = add_command(space, "sample", cmd_space_sample, "print random architectures of a space")
    space_options(sample, True)
    sample.add_argument("--n", type=int, default=5, help="how many (default 5)")
    sample.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
