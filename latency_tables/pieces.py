"""The torch modules behind lookup-table pieces and seeded networks, and the JSON specs that name them.

A piece (stem, block or head, by its `LutKey`) or a whole network (`ArchConfig`) is built untrained and given seeded
weights and non-trivial BatchNorm statistics, which is all latency depends on. The torch runtime's model file is
such a spec; the converters (latency_tables.convert) turn the same modules into runtime files.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from latency_tables.keys import LutKey
from search_spaces import ArchConfig
from search_spaces.codec import arch_from_str
from search_spaces.errors import HwnasError
from supernets.kinds import build_block
from supernets.models import HeadNet, build_model, build_stem


def piece_module(key: LutKey) -> nn.Module:
    """The torch module a lookup-table key names (stem, block or head), untrained."""
    if key.kind == "stem":
        return build_stem(key.stem_config(), key.in_channels)
    if key.kind == "head":
        head, classes = key.head_config()
        return HeadNet(head, key.in_channels, classes)
    return build_block(key.block_config(), key.in_channels)


@torch.no_grad()
def seeded(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give `module` seeded weights and BatchNorm statistics away from the identity; return it in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.copy_(torch.randn(p.shape, generator=gen) * (0.5 / max(1, p[0].numel()) ** 0.5 if p.dim() > 1 else 0.1))
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert m.running_mean is not None and m.running_var is not None
            m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return module.eval()


def spec_of(target: LutKey | ArchConfig, seed: int = 0) -> dict[str, Any]:
    """JSON spec of a piece or a network (the torch runtime's model file)."""
    if isinstance(target, LutKey):
        return {"key": target.to_row(), "seed": seed}
    return {"arch": target.to_str(), "seed": seed}


def target_from_spec(spec: dict[str, Any]) -> LutKey | ArchConfig:
    if "key" in spec:
        return LutKey.from_row(spec["key"])
    if "arch" in spec:
        return arch_from_str(spec["arch"])
    raise HwnasError("a torch-runtime spec needs a 'key' or an 'arch' entry")


def target_module(target: LutKey | ArchConfig, seed: int = 0) -> nn.Module:
    """The seeded eval-mode module of a piece or a network."""
    return seeded(piece_module(target) if isinstance(target, LutKey) else build_model(target), seed)


def module_from_spec(spec: dict[str, Any]) -> nn.Module:
    """The seeded eval-mode module a spec describes."""
    return target_module(target_from_spec(spec), int(spec.get("seed", 0)))


def input_shape(target: LutKey | ArchConfig) -> tuple[int, int, int, int]:
    if isinstance(target, LutKey):
        return target.input_shape
    return (1, target.in_channels, target.resolution, target.resolution)
