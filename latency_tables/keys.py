"""Lookup-table keys, and the index that maps a space's genes to the keys an architecture is made of.

A key names one measurable piece of a network at batch 1 with everything a runtime fuses inside it
(conv + BN + activation): the stem, one block (family, input H x W x C, output channels, expand ratio,
kernel, stride, SE ratio, activation, and in `extra` its explicit widths, e.g. `m37-q8-noskip`), or the head
(1x1 conv, pool, optional hidden layer, classifier).
Network latency is predicted as the sum over its keys (plus a fitted network-level correction).

`SpaceIndex` enumerates every (piece, input width, input size) a space can produce once, so a batch of
gene rows turns into a matrix of key ids with numpy indexing; the analytic counts and the measured
latencies both gather and sum over it. Torch-free.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from latency_tables.counting import conv_out, stem_ops
from search_spaces import ArchConfig, BlockConfig, HeadConfig, SearchSpace, StemConfig
from search_spaces.codec import explicit_tokens, format_ratio
from search_spaces.errors import HwnasError

KINDS = ("stem", "block", "head")
#: CSV columns that make up a key, in order.
KEY_COLUMNS = ("kind", "family", "input", "out_channels", "expand", "kernel", "stride", "se", "act", "extra")


@dataclass(frozen=True, order=True)
class LutKey:
    """One lookup-table row's identity. `extra` holds what only the stem or head has (maxpool; hidden, classes) and a
    block's explicit widths (`m37-q8-b20-noskip`, in that order; empty for an on-grid block, so grid keys are
    unchanged)."""

    kind: str
    family: str
    height: int
    width: int
    in_channels: int
    out_channels: int
    expand: float = 1.0
    kernel: int = 1
    stride: int = 1
    se: float = 0.0
    act: str = "relu"
    extra: str = ""

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """NCHW input at batch 1."""
        return (1, self.in_channels, self.height, self.width)

    def to_str(self) -> str:
        """Canonical text, e.g. `block:mbv3-14x14x16-c24-e4-k5-s2-se0.25-relu` (the CSV's `key` column)."""
        head = f"{self.kind}:{self.family}-{self.height}x{self.width}x{self.in_channels}-c{self.out_channels}"
        body = (f"-e{format_ratio(self.expand)}-k{self.kernel}-s{self.stride}-se{format_ratio(self.se)}"
                f"-{self.act}")
        return head + body + (f"-{self.extra}" if self.extra else "")

    def to_row(self) -> dict[str, Any]:
        return {"kind": self.kind, "family": self.family, "input": f"{self.height}x{self.width}x{self.in_channels}",
                "out_channels": self.out_channels, "expand": format_ratio(self.expand), "kernel": self.kernel,
                "stride": self.stride, "se": format_ratio(self.se), "act": self.act, "extra": self.extra}

    @classmethod
    def from_row(cls, row: dict[str, str]) -> LutKey:
        """Parse the key columns of a CSV row; a `HwnasError` naming the column on bad values."""
        try:
            if row["kind"] not in KINDS:
                raise ValueError(f"kind {row['kind']!r} (allowed: {', '.join(KINDS)})")
            match = re.fullmatch(r"(\d+)x(\d+)x(\d+)", row["input"])
            if not match:
                raise ValueError(f"input {row['input']!r} (expected HxWxC, e.g. 14x14x16)")
            h, w, c = (int(v) for v in match.groups())
            return cls(row["kind"], row["family"], h, w, c, int(row["out_channels"]), float(row["expand"]),
                       int(row["kernel"]), int(row["stride"]), float(row["se"]), row["act"], row["extra"] or "")
        except KeyError as err:
            raise HwnasError(f"key column {err} is missing; key columns: {', '.join(KEY_COLUMNS)}") from None
        except (TypeError, ValueError) as err:
            raise HwnasError(f"bad key value: {err}") from None

    # ------------------------------------------------------------------------ what a key describes

    def block_config(self) -> BlockConfig:
        if self.kind != "block":
            raise HwnasError(f"{self.to_str()} is a {self.kind}, not a block")
        explicit = _explicit_widths(self.extra, self.to_str())
        try:
            return BlockConfig(self.family, self.kernel, self.expand, self.out_channels, self.stride, se=self.se,
                               act=self.act, **explicit)
        except HwnasError as err:
            raise HwnasError(f"key {self.to_str()}: {err}") from None

    def stem_config(self) -> StemConfig:
        if self.kind != "stem":
            raise HwnasError(f"{self.to_str()} is a {self.kind}, not a stem")
        return StemConfig(self.out_channels, self.kernel, self.stride, self.act, self.extra == "maxpool")

    def head_config(self) -> tuple[HeadConfig, int]:
        """The head and the number of classes."""
        if self.kind != "head":
            raise HwnasError(f"{self.to_str()} is a {self.kind}, not a head")
        hidden, classes = (int(v) for v in re.fullmatch(r"h(\d+)-o(\d+)", self.extra).groups())  # type: ignore[union-attr]
        return HeadConfig(self.out_channels, hidden, self.act), classes


_EXPLICIT_TOKEN = re.compile(r"([mqb])([0-9]{1,9})|noskip")
_EXPLICIT_FIELD = {"m": "mid", "q": "squeeze", "b": "branch"}


def _explicit_widths(extra: str, where: str) -> dict[str, Any]:
    """The explicit widths a block key's `extra` states (`m37-q8-b20-noskip`), as BlockConfig fields."""
    found: dict[str, Any] = {}
    for token in extra.split("-") if extra else ():
        match = _EXPLICIT_TOKEN.fullmatch(token)
        if not match:
            raise HwnasError(f"key {where}: cannot read explicit width {token!r}; a block's extra is empty or "
                             "tokens m<mid>, q<squeeze>, b<branch>, noskip joined by '-' (e.g. m37-q8-noskip)")
        name = "noskip" if token == "noskip" else _EXPLICIT_FIELD[match.group(1)]
        if name in found:
            raise HwnasError(f"key {where}: explicit width {name} is given twice")
        found[name] = True if name == "noskip" else int(match.group(2))
    return found


def stem_key(stem: StemConfig, in_channels: int, resolution: int) -> LutKey:
    return LutKey("stem", "stem", resolution, resolution, in_channels, stem.channels, 1.0, stem.kernel, stem.stride,
                  0.0, stem.act, "maxpool" if stem.maxpool else "")


def stem_out_size(stem: StemConfig, resolution: int) -> int:
    return stem_ops(stem, 1, resolution)[1]


def block_key(block: BlockConfig, in_channels: int, size: int) -> LutKey:
    return LutKey("block", block.family, size, size, in_channels, block.out_channels, block.expand, block.kernel,
                  block.stride, block.se_ratio, block.activation, "-".join(explicit_tokens(block)))


def head_key(head: HeadConfig, in_channels: int, size: int, num_classes: int) -> LutKey:
    return LutKey("head", "head", size, size, in_channels, head.channels, 1.0, 1, 1, 0.0, head.act,
                  f"h{head.hidden}-o{num_classes}")


def arch_keys(arch: ArchConfig) -> list[LutKey]:
    """The keys `arch` is made of, in execution order (a key may repeat)."""
    keys = [stem_key(arch.stem, arch.in_channels, arch.resolution)]
    size = stem_out_size(arch.stem, arch.resolution)
    for site in arch.sites():
        keys.append(block_key(site.block, site.in_channels, size))
        size = conv_out(size, site.block.kernel, site.block.stride)
    return keys + [head_key(arch.head, arch.last_channels, size, arch.num_classes)]


class SpaceIndex:
    """Every key a space needs, and gene-indexed arrays of key ids.

    `keys[i]` is key id i. `ids(genes)` gives an (n, parts) matrix of key ids for canonical gene rows, with
    -1 where a block slot is beyond the chosen depth; `parts` = 1 + sum of the stages' largest depths + 1.
    """

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        self.keys: list[LutKey] = []
        self._ids: dict[LutKey, int] = {}
        sizes = [stem_out_size(space.stem, r) for r in space.resolutions]
        self.stem = np.array([self._id(stem_key(space.stem, space.in_channels, r)) for r in space.resolutions])
        self.first: list[np.ndarray] = []
        self.rest: list[np.ndarray] = []
        prev_widths: tuple[int, ...] = (space.stem.channels,)
        for st in space.stages:
            shape = (len(sizes), len(st.families), len(st.kernels), len(st.expands))
            first = np.zeros((*shape, len(prev_widths), len(st.widths)), dtype=np.int64)
            rest = np.zeros((*shape, len(st.widths)), dtype=np.int64)
            for r, f, k, e, w in itertools.product(*(range(n) for n in shape), range(len(st.widths))):
                choice = (st.families[f], st.kernels[k], st.expands[e], st.widths[w])
                for p, cin in enumerate(prev_widths):
                    first[r, f, k, e, p, w] = self._id(block_key(st.block(*choice, 0), cin, sizes[r]))
                if st.max_depth > 1:
                    out_size = conv_out(sizes[r], st.kernels[k], st.stride)
                    rest[r, f, k, e, w] = self._id(block_key(st.block(*choice, 1), st.widths[w], out_size))
            self.first.append(first)
            self.rest.append(rest)
            sizes = [conv_out(s, 3, st.stride) for s in sizes]  # the same for every odd kernel
            prev_widths = st.widths
        self.head = np.array([[self._id(head_key(space.head, w, s, space.num_classes)) for w in prev_widths]
                              for s in sizes])

    def _id(self, key: LutKey) -> int:
        if key not in self._ids:
            self._ids[key] = len(self.keys)
            self.keys.append(key)
        return self._ids[key]

    @property
    def parts(self) -> int:
        return 2 + sum(st.max_depth for st in self.space.stages)

    def ids(self, genes: np.ndarray) -> np.ndarray:
        """(n, parts) key ids of canonical gene rows; -1 marks an unused block slot."""
        space, g = self.space, np.atleast_2d(np.asarray(genes, dtype=np.int64))
        r = g[:, 0]
        cols = [self.stem[r]]
        prev = np.zeros(len(g), dtype=np.int64)
        for j, (st, base) in enumerate(zip(space.stages, space.stage_offsets, strict=True)):
            f, w = g[:, base], g[:, base + 2]
            depth = np.asarray(st.depths)[g[:, base + 1]]
            cols.append(self.first[j][r, f, g[:, base + 3], g[:, base + 4], prev, w])
            for i in range(1, st.max_depth):
                ids = self.rest[j][r, f, g[:, base + 3 + 2 * i], g[:, base + 4 + 2 * i], w]
                cols.append(np.where(depth > i, ids, -1))
            prev = w
        cols.append(self.head[r, prev])
        return np.stack(cols, axis=1)
