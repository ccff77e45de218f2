"""Search spaces: named choice sets, and the fixed-length gene vector that indexes them.

Genes (integers, one per choice): resolution, then per stage its family, depth and width, then per block
slot (up to the stage's largest depth) its kernel and expand ratio. A gene that does not matter (a slot
beyond the chosen depth, the expand ratio of a family without one) is 0 in canonical form, so one
architecture has exactly one canonical gene vector. Batches of genes make sampling, encoding and
analytic costs vectorised.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from search_spaces.arch import ArchConfig, BlockConfig, HeadConfig, StemConfig
from search_spaces.codec import block_to_str, explicit_tokens, format_ratio
from search_spaces.errors import ArchError, SpaceError
from search_spaces.families import get_family


def _nonempty(name: str, values: tuple[Any, ...]) -> tuple[Any, ...]:
    values = tuple(values)
    if not values:
        raise SpaceError(f"{name} has no choices")
    if len(set(values)) != len(values):
        raise SpaceError(f"{name} repeats a choice: {values}")
    return values


@dataclass(frozen=True)
class StageSpec:
    """Choices for one stage. All blocks of a stage share family and width; only the first block strides.

    `act` and `se` apply to families that let them vary (mbv3); other families use their fixed values.
    """

    families: tuple[str, ...]
    widths: tuple[int, ...]
    depths: tuple[int, ...]
    stride: int
    kernels: tuple[int, ...] = (3, 5, 7)
    expands: tuple[float, ...] = (3.0, 4.0, 6.0)
    act: str = "relu"
    se: float = 0.0

    def __post_init__(self) -> None:
        for name in ("families", "widths", "depths", "kernels"):
            object.__setattr__(self, name, _nonempty(f"stage {name}", getattr(self, name)))
        object.__setattr__(self, "expands", _nonempty("stage expands", tuple(float(e) for e in self.expands)))
        if min(self.depths) < 1:
            raise SpaceError(f"stage depths must be at least 1; got {self.depths}")
        for family in self.families:
            for kernel in self.kernels:
                for expand in self.expands:
                    for width in self.widths:
                        try:
                            self.block(family, kernel, expand, width, 0)
                            self.block(family, kernel, expand, width, 1)
                        except ArchError as err:
                            choice = f"{family}/k{kernel}/e{expand:g}/c{width}"
                            raise SpaceError(f"stage choice {choice} is invalid: {err}") from None

    def block(self, family: str, kernel: int, expand: float, width: int, index: int) -> BlockConfig:
        """The block this stage puts at position `index` for the given choices."""
        fam = get_family(family)
        return BlockConfig(
            family, kernel, expand if fam.has_expand else 1.0, width, self.stride if index == 0 else 1,
            se=self.se if fam.se_is_knob else None, act=self.act if fam.act_is_knob else None,
        )

    @property
    def max_depth(self) -> int:
        return max(self.depths)

    def size(self) -> int:
        """Distinct stages this spec allows."""
        total = 0
        for family in self.families:
            per_block = len(self.kernels) * (len(self.expands) if get_family(family).has_expand else 1)
            total += sum(per_block**d for d in self.depths)
        return total * len(self.widths)


@dataclass(frozen=True)
class GeneSpec:
    """One gene: what it chooses and how many choices it has."""

    name: str
    choices: int
    stage: int = -1
    slot: int = -1
    kind: str = "resolution"  # resolution | family | depth | width | kernel | expand


@dataclass(frozen=True)
class SearchSpace:
    """A named set of architectures. Sampling and mutation take an injected numpy Generator."""

    name: str
    resolutions: tuple[int, ...]
    in_channels: int
    num_classes: int
    stem: StemConfig
    stages: tuple[StageSpec, ...]
    head: HeadConfig
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "resolutions", _nonempty("resolutions", self.resolutions))
        object.__setattr__(self, "stages", tuple(self.stages))
        if not self.stages:
            raise SpaceError(f"space {self.name!r} has no stages")
        try:  # the largest member must be a valid architecture (checks input, stem and head)
            self.from_genes(self.gene_sizes - 1)
        except ArchError as err:
            raise SpaceError(f"space {self.name!r} is malformed: {err}") from None

    # ------------------------------------------------------------------------------------------ genes

    @cached_property
    def genes(self) -> tuple[GeneSpec, ...]:
        out = [GeneSpec("resolution", len(self.resolutions))]
        for j, st in enumerate(self.stages):
            out += [GeneSpec(f"s{j}.family", len(st.families), j, -1, "family"),
                    GeneSpec(f"s{j}.depth", len(st.depths), j, -1, "depth"),
                    GeneSpec(f"s{j}.width", len(st.widths), j, -1, "width")]
            for i in range(st.max_depth):
                out += [GeneSpec(f"s{j}.b{i}.kernel", len(st.kernels), j, i, "kernel"),
                        GeneSpec(f"s{j}.b{i}.expand", len(st.expands), j, i, "expand")]
        return tuple(out)

    @cached_property
    def gene_sizes(self) -> np.ndarray:
        return np.array([g.choices for g in self.genes], dtype=np.int64)

    @cached_property
    def stage_offsets(self) -> tuple[int, ...]:
        """Index of each stage's first gene (family; then depth, width, and kernel/expand per slot)."""
        return tuple(i for i, g in enumerate(self.genes) if g.kind == "family")

    def active_mask(self, genes: np.ndarray) -> np.ndarray:
        """Boolean mask of the genes that matter for each row of `genes` (shape (n, G))."""
        genes = np.atleast_2d(genes)
        mask = np.ones(genes.shape, dtype=bool)
        for j, st in enumerate(self.stages):
            base = self.stage_offsets[j]
            depth = np.asarray(st.depths)[genes[:, base + 1]]
            has_expand = np.array([get_family(f).has_expand for f in st.families])[genes[:, base]]
            for i in range(st.max_depth):
                live = depth > i
                mask[:, base + 3 + 2 * i] = live
                mask[:, base + 4 + 2 * i] = live & has_expand
        return mask

    def canonical_genes(self, genes: np.ndarray) -> np.ndarray:
        """Zero the genes that do not matter, so equal architectures have equal genes."""
        genes = np.array(np.atleast_2d(genes), dtype=np.int64)
        genes[~self.active_mask(genes)] = 0
        return genes

    def sample_genes(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """`n` canonical gene rows, each gene uniform over its choices."""
        return self.canonical_genes(self._random_genes(rng, n))

    def _random_genes(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.integers(0, self.gene_sizes, size=(n, len(self.genes)), dtype=np.int64)

    def _check_genes(self, genes: np.ndarray) -> np.ndarray:
        genes = np.asarray(genes)
        if genes.shape != (len(self.genes),) or not np.issubdtype(genes.dtype, np.integer):
            raise SpaceError(f"space {self.name!r} takes {len(self.genes)} integer genes; got shape {genes.shape}")
        bad = np.flatnonzero((genes < 0) | (genes >= self.gene_sizes))
        if bad.size:
            g = self.genes[bad[0]]
            raise SpaceError(f"gene {g.name} = {genes[bad[0]]} is out of range; allowed: 0 to {g.choices - 1}")
        return genes

    def from_genes(self, genes: np.ndarray) -> ArchConfig:
        """The architecture a gene vector describes."""
        g = self._check_genes(genes)
        stages = []
        for j, st in enumerate(self.stages):
            base = self.stage_offsets[j]
            family, depth, width = st.families[g[base]], st.depths[g[base + 1]], st.widths[g[base + 2]]
            stages.append(tuple(
                st.block(family, st.kernels[g[base + 3 + 2 * i]], st.expands[g[base + 4 + 2 * i]], width, i)
                for i in range(depth)
            ))
        return ArchConfig(self.resolutions[g[0]], self.in_channels, self.num_classes, self.stem, tuple(stages),
                          self.head)

    def to_genes(self, arch: ArchConfig) -> np.ndarray:
        """Canonical genes of `arch`; a `SpaceError` naming the first field outside the space otherwise."""
        self._check_frame(arch)
        genes = np.zeros(len(self.genes), dtype=np.int64)
        genes[0] = self._index("resolution", arch.resolution, self.resolutions)
        for j, (st, blocks) in enumerate(zip(self.stages, arch.stages, strict=True)):
            base, first = self.stage_offsets[j], blocks[0]
            genes[base] = self._index(f"stage {j} family", first.family, st.families)
            genes[base + 1] = self._index(f"stage {j} depth", len(blocks), st.depths)
            genes[base + 2] = self._index(f"stage {j} width", first.out_channels, st.widths)
            has_expand = get_family(first.family).has_expand
            for i, block in enumerate(blocks):
                where = f"stage {j} block {i}"
                if block.explicit:
                    raise SpaceError(
                        f"{where} {block_to_str(block)} states explicit widths ({', '.join(explicit_tokens(block))})"
                        f", which are off the search grid of space {self.name!r} (a pruned block is not in a space;"
                        " check the network it was pruned from with validate_parent)")
                genes[base + 3 + 2 * i] = self._index(f"{where} kernel", block.kernel, st.kernels)
                if has_expand:
                    genes[base + 4 + 2 * i] = self._index(f"{where} expand ratio", block.expand, st.expands)
                expected = st.block(first.family, block.kernel, block.expand, first.out_channels, i)
                if block != expected:
                    raise SpaceError(f"{where} is {_diff(block, expected)} in space {self.name!r}")
        return genes

    def _check_frame(self, arch: ArchConfig) -> None:
        if not isinstance(arch, ArchConfig):
            raise SpaceError(f"expected an ArchConfig; got {type(arch).__name__}")
        fixed = [("input channels", arch.in_channels, self.in_channels),
                 ("number of classes", arch.num_classes, self.num_classes),
                 ("stem", arch.stem, self.stem), ("head", arch.head, self.head),
                 ("number of stages", len(arch.stages), len(self.stages))]
        for what, got, want in fixed:
            if got != want:
                raise SpaceError(f"{what} is {got} but space {self.name!r} has {want}")

    @staticmethod
    def _index(what: str, value: Any, allowed: tuple[Any, ...]) -> int:
        if value not in allowed:
            shown = ", ".join(format_ratio(a) if isinstance(a, float) else str(a) for a in allowed)
            raise SpaceError(f"{what} {value!r} is outside the space; allowed: {shown}")
        return allowed.index(value)

    # ------------------------------------------------------------------------------------ the API

    def to_dict(self) -> dict[str, Any]:
        """The space's definition as plain data (for `hwnas space show --json` and checkpoint metadata)."""
        stages = [{"families": list(st.families), "widths": list(st.widths), "depths": list(st.depths),
                   "stride": st.stride, "kernels": list(st.kernels), "expands": list(st.expands), "act": st.act,
                   "se": st.se} for st in self.stages]
        return {"name": self.name, "description": self.description, "resolutions": list(self.resolutions),
                "in_channels": self.in_channels, "num_classes": self.num_classes, "stem": asdict(self.stem),
                "head": asdict(self.head), "stages": stages, "size": self.size(), "genes": len(self.genes),
                "encoding_length": self.encoding_length}

    def extreme(self, largest: bool = True, families: tuple[int, ...] | None = None) -> ArchConfig:
        """The largest (or smallest) member: every depth, width, kernel, expand ratio and the resolution at its
        maximum (minimum) value. `families` picks each stage's family by index (default: the first listed)."""
        pick = (lambda values: int(np.argmax(values))) if largest else (lambda values: int(np.argmin(values)))
        genes = np.zeros(len(self.genes), dtype=np.int64)
        genes[0] = pick(self.resolutions)
        for j, (st, base) in enumerate(zip(self.stages, self.stage_offsets, strict=True)):
            genes[base] = families[j] if families is not None else 0
            genes[base + 1], genes[base + 2] = pick(st.depths), pick(st.widths)
            genes[base + 3:base + 3 + 2 * st.max_depth:2] = pick(st.kernels)
            genes[base + 4:base + 4 + 2 * st.max_depth:2] = pick(st.expands)
        return self.from_genes(self.canonical_genes(genes)[0])

    def validate(self, arch: ArchConfig) -> ArchConfig:
        """Return `arch` if it is in this space; raise a `SpaceError` naming field, value and choices.

        Strict: a block with explicit widths (`m`, `q`, `b`, `noskip`) is off the grid and so not in the space.
        """
        self.to_genes(arch)
        return arch

    def validate_parent(self, arch: ArchConfig) -> ArchConfig:
        """The grid network `arch` was pruned from (every block's explicit widths dropped), if it is in this space;
        a `SpaceError` otherwise. An on-grid `arch` is its own parent. What a supernet checks before it
        materialises a pruned architecture."""
        if not isinstance(arch, ArchConfig):
            raise SpaceError(f"expected an ArchConfig; got {type(arch).__name__}")
        return self.validate(arch.on_grid())

    def sample(self, rng: np.random.Generator) -> ArchConfig:
        return self.from_genes(self.sample_genes(rng, 1)[0])

    def mutate(self, arch: ArchConfig, rng: np.random.Generator, p: float = 0.1) -> ArchConfig:
        """Resample each gene with probability `p` (once-for-all's mutation)."""
        return self.from_genes(self.mutate_genes(self.to_genes(arch)[None], rng, p)[0])

    def mutate_genes(self, genes: np.ndarray, rng: np.random.Generator, p: float = 0.1) -> np.ndarray:
        """`mutate` for a batch of gene rows (n, G): canonical mutated rows. A gene a row does not use gets a
        random value first, so a slot that becomes active gets a random choice."""
        genes = self._fill_inactive_rows(np.atleast_2d(genes), rng)
        fresh = self._random_genes(rng, len(genes))
        flip = rng.random(genes.shape) < p
        return self.canonical_genes(np.where(flip, fresh, genes))

    def crossover(self, a: ArchConfig, b: ArchConfig, rng: np.random.Generator) -> ArchConfig:
        """Each gene from either parent with equal chance (once-for-all's crossover).

        A gene one parent does not use is taken from the other parent, and is random only if neither uses it.
        """
        return self.from_genes(self.crossover_genes(self.to_genes(a)[None], self.to_genes(b)[None], rng)[0])

    def crossover_genes(self, a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """`crossover` of gene rows `a[i]` and `b[i]` (both (n, G)): canonical children."""
        ga, gb = np.atleast_2d(a), np.atleast_2d(b)
        ma, mb = self.active_mask(ga), self.active_mask(gb)
        fill = self._random_genes(rng, len(ga))
        ga, gb = np.where(ma, ga, np.where(mb, gb, fill)), np.where(mb, gb, np.where(ma, ga, fill))
        take_b = rng.random(ga.shape) < 0.5
        return self.canonical_genes(np.where(take_b, gb, ga))

    def _fill_inactive_rows(self, genes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Give don't-care genes random values, so a slot that becomes active gets a random choice."""
        return np.where(self.active_mask(genes), genes, self._random_genes(rng, len(genes)))

    @cached_property
    def encoding_length(self) -> int:
        return int(self.gene_sizes.sum())

    def encode_genes(self, genes: np.ndarray) -> np.ndarray:
        """One-hot encoding (float32, shape (n, encoding_length)); genes that do not matter encode as zeros."""
        genes = np.atleast_2d(genes)
        offsets = np.concatenate([[0], np.cumsum(self.gene_sizes)[:-1]])
        out = np.zeros((genes.shape[0], self.encoding_length), dtype=np.float32)
        rows, cols = np.nonzero(self.active_mask(genes))
        out[rows, offsets[cols] + genes[rows, cols]] = 1.0
        return out

    def encode(self, arch: ArchConfig) -> np.ndarray:
        """Fixed-length vector for predictors (one-hot of the canonical genes)."""
        return self.encode_genes(self.to_genes(arch))[0]

    def size(self) -> int:
        """Number of distinct architectures (exact, a Python int)."""
        return len(self.resolutions) * math.prod(st.size() for st in self.stages)


def _diff(block: BlockConfig, expected: BlockConfig) -> str:
    for name in ("stride", "out_channels", "se", "act", "family"):
        got, want = getattr(block, name), getattr(expected, name)
        if got != want:
            return f"{name}={got!r} but this stage needs {name}={want!r}"
    return f"{block} but the stage builds {expected}"
