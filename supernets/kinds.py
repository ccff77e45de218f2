"""One registry of torch block implementations per `Family.kind`: the static block and the elastic (supernet) block.

A family of an existing kind needs nothing here; a new kind adds its static block (supernets.blocks), its elastic
block (supernets.elastic_layers) and one line below, and the per-family conformance test covers it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from search_spaces import KINDS, BlockConfig, get_family
from search_spaces.errors import HwnasError
from supernets.blocks import FusedMBConv, InvertedResidual, ShuffleV2Unit
from supernets.elastic_layers import ElasticBlock, ElasticFused, ElasticInvertedResidual, ElasticShuffle


@dataclass(frozen=True)
class BlockKind:
    """The torch implementations of one block kind: `static(block, in_channels)` builds a fixed block;
    `elastic.from_stage(family, stage, in_widths, index)` builds a supernet slot holding shared weights."""

    static: Callable[[BlockConfig, int], nn.Module]
    elastic: type[ElasticBlock]


#: One entry per `Family.kind`: a family of an existing kind needs nothing here.
BLOCK_KINDS: dict[str, BlockKind] = {
    "inverted_residual": BlockKind(InvertedResidual, ElasticInvertedResidual),
    "fused": BlockKind(FusedMBConv, ElasticFused),
    "shuffle": BlockKind(ShuffleV2Unit, ElasticShuffle),
}


def block_kind(family: str) -> BlockKind:
    """The torch implementations of `family`'s kind."""
    kind = get_family(family).kind
    try:
        return BLOCK_KINDS[kind]
    except KeyError:
        raise HwnasError(f"family {family} is of kind {kind!r}, which has no torch blocks; "
                         f"kinds with blocks: {', '.join(k for k in KINDS if k in BLOCK_KINDS)}") from None


def build_block(block: BlockConfig, in_channels: int) -> nn.Module:
    """The static module for `block` receiving `in_channels` channels."""
    return block_kind(block.family).static(block, in_channels)
