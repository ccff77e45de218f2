"""The architecture language of hwnas: blocks, architectures, their codec, search spaces. Pure Python + numpy."""

from search_spaces.arch import ArchConfig, BlockConfig, BlockSite, HeadConfig, StemConfig
from search_spaces.errors import ArchError, HwnasError, SpaceError
from search_spaces.families import (
    ACTIVATIONS,
    FAMILIES,
    KINDS,
    Family,
    block_revisions,
    changed_families,
    get_family,
    make_divisible,
)
from search_spaces.references import REFERENCES, reference
from search_spaces.space import GeneSpec, SearchSpace, StageSpec
from search_spaces.spaces import SPACES, get_space

__all__ = [
    "ACTIVATIONS", "FAMILIES", "KINDS", "REFERENCES", "SPACES",
    "ArchConfig", "ArchError", "BlockConfig", "BlockSite", "Family", "GeneSpec", "HeadConfig", "HwnasError",
    "SearchSpace", "SpaceError", "StageSpec", "StemConfig",
    "block_revisions", "changed_families", "get_family", "get_space", "make_divisible", "reference",
]
