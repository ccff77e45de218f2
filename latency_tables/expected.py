"""The lookup-table latency of a space's choices as independent categoricals: per-candidate latencies with the
table's network correction folded in, so that the expected latency of a distribution is a sum of products (exact,
and for a one-hot distribution equal to `LatencyTable.predict`), plus the k most probable architectures. Torch-free;
the differentiable search (`nas.strategies.differentiable`) takes the expectation over torch tensors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from latency_tables.keys import SpaceIndex
from latency_tables.table import LatencyTable, TableError
from search_spaces import ArchConfig, SearchSpace, get_family
from search_spaces.errors import HwnasError


class LayoutError(HwnasError):
    """A space the layout cannot describe (stage depths with gaps) or a fixed choice outside the space."""


@dataclass(frozen=True)
class Selection:
    """One value for every choice: resolution index, per stage the width and family index, and per stage and slot
    the candidate index (into the padded candidate list of the stage; `SearchLayout.skip(j)` is skip)."""

    resolution: int
    widths: tuple[int, ...]
    families: tuple[int, ...]
    ops: tuple[tuple[int, ...], ...]


class SearchLayout:
    """The choices of a space as categoricals, their masks, and the lookup table's latency of every candidate.

    `resolution` (pixels) or `widths` (one per stage; None entries are searched) fix those choices.
    """

    def __init__(self, space: SearchSpace, table: LatencyTable, *, resolution: int | None = None,
                 widths: Sequence[int | None] | None = None) -> None:
        self.space, self.table = space, table
        for j, st in enumerate(space.stages):
            low, high = min(st.depths), max(st.depths)
            if sorted(st.depths) != list(range(low, high + 1)):
                raise LayoutError(f"stage {j} allows depths {st.depths}; the differentiable search needs every depth "
                                  f"from {low} to {high} (a layer is either a block or skipped)")
        table.check(space=space.name)
        self.resolution_mask = self._fixed_mask("resolution", space.resolutions, resolution)
        if widths is not None and len(widths) != len(space.stages):
            raise LayoutError(f"widths gives {len(widths)} value(s); space {space.name!r} has {len(space.stages)} "
                              f"stages (use None for a width to search)")
        fixed = list(widths) if widths is not None else [None] * len(space.stages)
        self.width_masks = [self._fixed_mask(f"stage {j} width", st.widths, w)
                            for j, (st, w) in enumerate(zip(space.stages, fixed, strict=True))]
        # Per stage and family: the (kernel index, expand index) of each candidate; the last padded index is skip.
        self.options: list[list[list[tuple[int, int]]]] = []
        self.op_masks: list[np.ndarray] = []
        for st in space.stages:
            per_family = []
            for family in st.families:
                expands = range(len(st.expands)) if get_family(family).has_expand else range(1)
                per_family.append([(k, e) for k in range(len(st.kernels)) for e in expands])
            width = max(len(o) for o in per_family) + 1
            mask = np.zeros((st.max_depth, len(st.families), width), dtype=bool)
            for f, opts in enumerate(per_family):
                mask[:, f, :len(opts)] = True
            mask[min(st.depths):, :, -1] = True  # skip, beyond the smallest depth
            self.options.append(per_family)
            self.op_masks.append(mask)
        self._build_latencies()

    @staticmethod
    def _fixed_mask(what: str, allowed: tuple[int, ...], value: int | None) -> np.ndarray:
        if value is None:
            return np.ones(len(allowed), dtype=bool)
        if value not in allowed:
            raise LayoutError(f"{what} {value!r} is outside the space; allowed: {', '.join(map(str, allowed))}")
        return np.array([a == value for a in allowed])

    def skip(self, stage: int) -> int:
        return self.op_masks[stage].shape[2] - 1

    def _build_latencies(self) -> None:
        """Per-candidate latency (ms) with the network correction folded in; 0 for skip and padding."""
        space, table = self.space, self.table
        index = SpaceIndex(space)
        scale, per_piece, offset = table.correction
        missing = [k for k in index.keys if k not in table.rows]
        if missing:
            raise TableError(f"table {table.table_id} lacks {len(missing)} key(s) of space {space.name!r}, e.g. "
                             f"{missing[0].to_str()}; finish it with `hwnas lut build` (it resumes)")
        values = np.array([scale * table.rows[k][0] + per_piece for k in index.keys])
        self.offset_ms = offset
        self.stem_ms = values[index.stem]  # (R,)
        self.head_ms = values[index.head]  # (R, W_last)
        self.first_ms: list[np.ndarray] = []  # (R, P, W, F, C)
        self.rest_ms: list[np.ndarray] = []  # (R, W, F, C)
        for j, st in enumerate(space.stages):
            first_ids, rest_ids = index.first[j], index.rest[j]  # (R, F, K, E, P, W) and (R, F, K, E, W)
            n_res, n_fam, _, _, n_prev, n_width = first_ids.shape
            width = self.op_masks[j].shape[2]
            first = np.zeros((n_res, n_prev, n_width, n_fam, width))
            rest = np.zeros((n_res, n_width, n_fam, width))
            for f, opts in enumerate(self.options[j]):
                for c, (k, e) in enumerate(opts):
                    first[:, :, :, f, c] = values[first_ids[:, f, k, e]]
                    if st.max_depth > 1:
                        rest[:, :, f, c] = values[rest_ids[:, f, k, e]]
            self.first_ms.append(first)
            self.rest_ms.append(rest)

    # ------------------------------------------------------------------------------ selections <-> genes

    def genes_of(self, sel: Selection) -> np.ndarray:
        """Canonical genes of the architecture a selection describes (non-skip slots in order)."""
        space = self.space
        genes = np.zeros(len(space.genes), dtype=np.int64)
        genes[0] = sel.resolution
        for j, (st, base) in enumerate(zip(space.stages, space.stage_offsets, strict=True)):
            f = sel.families[j]
            kept = [c for c in sel.ops[j] if c != self.skip(j)]
            genes[base], genes[base + 1], genes[base + 2] = f, st.depths.index(len(kept)), sel.widths[j]
            for pos, c in enumerate(kept):
                genes[base + 3 + 2 * pos], genes[base + 4 + 2 * pos] = self.options[j][f][c]
        return space.canonical_genes(genes)[0]

    def arch_of(self, sel: Selection) -> ArchConfig:
        return self.space.from_genes(self.genes_of(sel))

    def selection_of(self, genes: np.ndarray) -> Selection:
        """A selection describing the architecture of a gene row (its blocks first, then skips)."""
        space = self.space
        g = space.canonical_genes(np.asarray(genes))[0]
        widths, families, ops = [], [], []
        for j, (st, base) in enumerate(zip(space.stages, space.stage_offsets, strict=True)):
            f, depth = int(g[base]), st.depths[g[base + 1]]
            opts = self.options[j][f]
            slots = [opts.index((int(g[base + 3 + 2 * i]), int(g[base + 4 + 2 * i]))) for i in range(depth)]
            ops.append(tuple(slots + [self.skip(j)] * (st.max_depth - depth)))
            widths.append(int(g[base + 2]))
            families.append(f)
        return Selection(int(g[0]), tuple(widths), tuple(families), tuple(ops))

    def allowed(self, sel: Selection) -> bool:
        """Whether a selection respects the masks (fixed resolution or widths)."""
        return bool(self.resolution_mask[sel.resolution]) and all(
            m[w] for m, w in zip(self.width_masks, sel.widths, strict=True))

    # --------------------------------------------------------------------------------------- latency

    def latency_ms(self, sel: Selection) -> float:
        """Table latency (ms) of a selection from the candidate latencies (equals `LatencyTable.predict`)."""
        r, total = sel.resolution, self.offset_ms + self.stem_ms[sel.resolution]
        prev = 0
        for j in range(len(self.space.stages)):
            w, f = sel.widths[j], sel.families[j]
            total += self.first_ms[j][r, prev, w, f, sel.ops[j][0]]
            total += sum(self.rest_ms[j][r, w, f, c] for c in sel.ops[j][1:])
            prev = w
        return float(total + self.head_ms[r, prev])

    def masks(self) -> dict[str, np.ndarray]:
        """Which values of each choice are allowed (same names and shapes as the probabilities)."""
        out = {"resolution": self.resolution_mask}
        for j, mask in enumerate(self.op_masks):
            out[f"s{j}.width"] = self.width_masks[j]
            out[f"s{j}.family"] = np.ones(mask.shape[1], dtype=bool)
            out[f"s{j}.ops"] = mask
        return out

    # ------------------------------------------------------------------------------ most probable ones

    def top_selections(self, log_probs: dict[str, np.ndarray], k: int) -> list[tuple[float, Selection]]:
        """The `k` most probable selections (exact k-best of a product of independent categoricals, the
        candidate choices conditional on the stage's family), best first; ties in a fixed order."""
        masks = self.masks()
        beam_scores, beam_rows = _options(log_probs["resolution"], masks["resolution"])
        beam_rows = beam_rows[:, None]
        for j in range(len(self.space.stages)):
            stage_scores, stage_rows = self._top_stage(j, log_probs, masks, k)
            beam_scores, beam_rows = _merge(beam_scores, beam_rows, stage_scores, stage_rows, k)
        out = []
        for score, row in zip(beam_scores, beam_rows, strict=True):
            res, rest, widths, families, ops = int(row[0]), row[1:], [], [], []
            for st in self.space.stages:
                widths.append(int(rest[0]))
                families.append(int(rest[1]))
                ops.append(tuple(int(c) for c in rest[2:2 + st.max_depth]))
                rest = rest[2 + st.max_depth:]
            out.append((float(score), Selection(res, tuple(widths), tuple(families), tuple(ops))))
        return out

    def _top_stage(self, j: int, log_probs: dict[str, np.ndarray], masks: dict[str, np.ndarray], k: int
                   ) -> tuple[np.ndarray, np.ndarray]:
        """k best (family, slot candidates) of stage j, times the width: rows (width, family, c_0 .. c_S-1)."""
        lp_ops, ops_mask = log_probs[f"s{j}.ops"], masks[f"s{j}.ops"]
        lp_fam = log_probs[f"s{j}.family"]
        all_scores, all_rows = [], []
        for f in range(lp_ops.shape[1]):
            scores, rows = np.array([lp_fam[f]]), np.array([[f]], dtype=np.int64)
            for i in range(lp_ops.shape[0]):
                s, r = _options(lp_ops[i, f], ops_mask[i, f])
                scores, rows = _merge(scores, rows, s, r[:, None], k)
            all_scores.append(scores)
            all_rows.append(rows)
        scores, rows = np.concatenate(all_scores), np.concatenate(all_rows)
        keep = _best(scores, k)
        s_w, r_w = _options(log_probs[f"s{j}.width"], masks[f"s{j}.width"])
        return _merge(s_w, r_w[:, None], scores[keep], rows[keep], k)


def _best(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores, highest first; ties by position (deterministic)."""
    order = np.lexsort((np.arange(len(scores)), -scores))
    return order[:k]


def _options(log_p: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    idx = np.flatnonzero(mask)
    return np.asarray(log_p, dtype=np.float64)[idx], idx.astype(np.int64)


def _merge(scores_a: np.ndarray, rows_a: np.ndarray, scores_b: np.ndarray, rows_b: np.ndarray, k: int
           ) -> tuple[np.ndarray, np.ndarray]:
    """The k best pairs of two ranked lists (sum of scores, concatenated rows). Exact: a pair among the k best has
    its parts among the k best of their own lists, and the lists come in pruned to k."""
    total = (scores_a[:, None] + scores_b[None, :]).ravel()
    keep = _best(total, k)
    a, b = np.divmod(keep, len(scores_b))
    return total[keep], np.concatenate([rows_a[a], rows_b[b]], axis=1)
