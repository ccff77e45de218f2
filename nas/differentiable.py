"""Differentiable search (FBNet / ProxylessNAS style) over a trained once-for-all supernet, with the expected
latency from a measured lookup table in the loss and a latency target to land on.

The method
----------
Every choice of the space becomes a categorical distribution with learnable logits (the architecture
parameters theta): the resolution, each stage's width and family, and in each stage one *candidate block per
layer slot*: the (kernel, expand ratio) pairs the stage allows for that family, plus "skip" for the slots
beyond the stage's smallest depth (FBNet's skip operator). A family has its own candidate logits per slot
(all blocks of a stage share one family in these spaces, so the family is a stage-level choice and the slot
candidates are conditional on it). The architecture a configuration describes keeps its non-skip slots in
order, so its depth is the number of non-skip slots (stage depths must therefore be a contiguous range).
`resolution=` / `widths=` fix the frame instead of searching it (FBNet fixes it; here it is optional).

Expected latency. A block's lookup-table key depends on its input size and width, its output width, stride
and the candidate, and on nothing else in the network, so with independent categoricals the expected table
latency is exact and cheap: per resolution, the stem and head keys, and per stage the first slot's keys over
(previous width, width, family, candidate) and the other slots' keys over (width, family, candidate), each
weighted by the product of their probabilities (`SearchLayout.expected_ms`). Keys come from the table's own
`SpaceIndex`, and the table's network-level correction (`scale * sum + per_piece_ms * pieces + offset_ms`)
is folded in (every non-skip candidate carries `scale * median + per_piece_ms`), so for a one-hot
distribution the expected latency *is* `LatencyTable.predict` of that architecture.

Training in turns (single path, so it is cheap on CPU). Each step (1) draws one architecture and trains the
supernet's weights on it on a training batch (cross-entropy, SGD; `train_weights`), then (2) draws again and
updates theta (Adam, learning rate cosine-annealed to 0) on a batch of the *architecture split*, a stratified
part of the training set held out from the weight steps (the validation set stays untouched for the final
evaluation). Draws are Gumbel-max from the sharpened distribution softmax(theta / tau), tau annealed
exponentially from `tau_start` to `tau_end` per step, so the search explores at first and ends on its argmax.
In (2) each drawn choice multiplies the output it selects (block, stage, logits) by its straight-through gate:
1 in the forward pass, the gradient of the relaxed draw y = softmax(theta / tau + g) (Gumbel-softmax, same
noise g) backward. Only the drawn path is computed (GDAS, Dong & Yang 2019; ProxylessNAS's binarised paths,
Cai et al. 2019). The supernet is deep-copied first; the caller's weights are never changed.

The latency in the loss (`latency_term`). "sampled" (default, FBNet's): the expected latency under the relaxed
draw y, `LAT(y) = expected_ms(y)`, i.e. the table latency of the drawn architecture made differentiable; its
mean over draws is the expected latency term. "expected" (ProxylessNAS's E[LAT]): the expected latency under
softmax(theta / tau) itself. Measured on runs/bench-supernet, "expected" lets the search meet the target with a
*mixture*: it balances a near-tied choice whose two sides are, say, -20% and +20%, and the argmax then misses by
20% (the additive form did this on 2 of 2 seeds). With "sampled" every draw pays its own deviation, so the
distribution has to concentrate on architectures at the target: the argmax landed within 1% on 4 of 4 runs
(both forms, two seeds).

Losses with a target T (both two-sided, so T is reached from above and from below; `L` = that latency):

- `form="fbnet"` (Wu et al. 2019, multiplicative): `CE * alpha * (1 + |ln(L / T)|) ** beta`. FBNet's
  `alpha * (log LAT) ** beta` multiplies the cross-entropy by a power of log latency; here the log of the
  latency's *ratio to the target* takes its place, so the factor is `alpha` at T and grows like FBNet's on
  either side (defaults alpha = 0.2, beta = 0.6, FBNet's). Latencies of 0.05-2 ms have negative logs, which
  is why the raw form cannot be used as such.
- `form="proxyless"` (Cai et al. 2019, additive): `CE + lam * |L / T - 1|`: ProxylessNAS's `lambda * E[LAT]`,
  relative to the target and mirrored below it.

A one-sided penalty (only above T) would leave the latency wherever the weak accuracy pull of a well-trained
supernet stops below T; the two-sided one pins it.

Derived architecture. The most probable value of every choice (argmax of theta), compacted as above. If its
table latency misses T by more than `tolerance` (default 5%, half of the 10% asked, leaving room for the
table's own error), a bounded adjustment picks, among the `adjust_top` most probable architectures under
softmax(theta / tau_end), the most probable one within the tolerance (or the closest one when none is);
`DifferentiableResult.adjusted` says whether it happened (it did not in the runs above).

`Differentiable` adapts the search to the `Strategy` ask/tell interface: the first `ask` runs the search
(seeded by the strategy's seed), and asks then hand out the derived architecture, then the most probable
other architectures, each once. Torch is imported only when a search is built, so importing this module
does not need it.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from latency_tables.keys import SpaceIndex
from latency_tables.table import LatencyTable, TableError, atomic_write
from nas.objectives import Constraint, Objective
from nas.strategies.base import Columns, Screen, Strategy, StrategyError
from search_spaces import ArchConfig, SearchSpace, get_family
from search_spaces.errors import HwnasError

if TYPE_CHECKING:
    import torch

    from supernets.data import Dataset, Split
    from supernets.supernet import Supernet

FORMS = ("fbnet", "proxyless")
LATENCY_TERMS = ("sampled", "expected")


#: Rounds of `top`'s deepening search (16 x 4^9, about 4 million selections, at most).
_TOP_ROUNDS = 10


class SearchError(HwnasError):
    """Bad options for the differentiable search, or a space it cannot search."""


# ------------------------------------------------------------------------------------------- the layout


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

    `resolution` (pixels) or `widths` (one per stage; None entries are searched) fix those choices. Torch-free
    except `expected_ms`.
    """

    def __init__(self, space: SearchSpace, table: LatencyTable, *, resolution: int | None = None,
                 widths: Sequence[int | None] | None = None) -> None:
        self.space, self.table = space, table
        for j, st in enumerate(space.stages):
            low, high = min(st.depths), max(st.depths)
            if sorted(st.depths) != list(range(low, high + 1)):
                raise SearchError(f"stage {j} allows depths {st.depths}; the differentiable search needs every depth "
                                  f"from {low} to {high} (a layer is either a block or skipped)")
        table.check(space=space.name)
        self.resolution_mask = self._fixed_mask("resolution", space.resolutions, resolution)
        if widths is not None and len(widths) != len(space.stages):
            raise SearchError(f"widths gives {len(widths)} value(s); space {space.name!r} has {len(space.stages)} "
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
            raise SearchError(f"{what} {value!r} is outside the space; allowed: {', '.join(map(str, allowed))}")
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

    def expected_ms(self, probs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Expected table latency (ms, a differentiable scalar) under independent categoricals `probs`
        (`resolution`: (R,); per stage j `s{j}.width`: (W,), `s{j}.family`: (F,), `s{j}.ops`: (slots, F, C))."""
        import torch

        def t(a: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(a, dtype=probs["resolution"].dtype)

        per_res = t(self.stem_ms)
        prev = torch.ones(1, dtype=per_res.dtype)
        for j in range(len(self.space.stages)):
            pw, pf, pc = probs[f"s{j}.width"], probs[f"s{j}.family"], probs[f"s{j}.ops"]
            per_res = per_res + torch.einsum("p,w,f,fc,rpwfc->r", prev, pw, pf, pc[0], t(self.first_ms[j]))
            if pc.shape[0] > 1:
                per_res = per_res + torch.einsum("w,f,sfc,rwfc->r", pw, pf, pc[1:], t(self.rest_ms[j]))
            prev = pw
        per_res = per_res + t(self.head_ms) @ prev
        return self.offset_ms + probs["resolution"] @ per_res

    def one_hot(self, sel: Selection, dtype: Any = None) -> dict[str, torch.Tensor]:
        """The probabilities of a distribution certain of `sel` (for checks)."""
        import torch

        dtype = dtype or torch.float64
        out = {"resolution": torch.zeros(len(self.resolution_mask), dtype=dtype)}
        out["resolution"][sel.resolution] = 1
        for j, mask in enumerate(self.op_masks):
            out[f"s{j}.width"] = torch.zeros(len(self.width_masks[j]), dtype=dtype)
            out[f"s{j}.width"][sel.widths[j]] = 1
            out[f"s{j}.family"] = torch.zeros(mask.shape[1], dtype=dtype)
            out[f"s{j}.family"][sel.families[j]] = 1
            ops = torch.zeros(mask.shape, dtype=dtype)
            for i, c in enumerate(sel.ops[j]):
                ops[i, :, c] = 1  # the unchosen families' rows do not matter (their family has probability 0)
            out[f"s{j}.ops"] = ops
        return out

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


# ------------------------------------------------------------------------------------------ the search


@dataclass
class DifferentiableResult:
    """What a search found. `genes` / `arch` are the derived architecture (after the bounded adjustment, if
    one was needed); `argmax_*` the most probable one before it. Latencies are in ms."""

    arch: ArchConfig
    genes: np.ndarray
    target_ms: float
    predicted_ms: float  # table latency of `arch`
    expected_ms: float  # expected latency at the end (softmax(theta / tau_end))
    argmax_arch: ArchConfig
    argmax_predicted_ms: float
    adjusted: bool
    form: str
    seed: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)  # per epoch
    expected_trace: list[float] = field(default_factory=list)  # after every theta step, under softmax(theta / tau)
    theta: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def error(self) -> float:
        """Relative error of the derived architecture's table latency to the target."""
        return self.predicted_ms / self.target_ms - 1

    def to_dict(self) -> dict[str, Any]:
        return {"arch": self.arch.to_str(), "genes": self.genes.tolist(), "target_ms": self.target_ms,
                "predicted_ms": self.predicted_ms, "expected_ms": self.expected_ms,
                "argmax_arch": self.argmax_arch.to_str(), "argmax_predicted_ms": self.argmax_predicted_ms,
                "adjusted": self.adjusted, "form": self.form, "seed": self.seed, "seconds": self.seconds,
                "history": self.history, "expected_trace": self.expected_trace, "theta": self.theta}

    def save(self, path: str | Path) -> None:
        """Write the result as JSON (atomically)."""
        atomic_write(Path(path), json.dumps(self.to_dict(), indent=1) + "\n")


class DifferentiableSearch:
    """FBNet / ProxylessNAS-style search of `net.space` against `table`, aiming at `target_ms` (see the module
    docstring). Construction builds the layout and copies the supernet; `run()` searches.

    Options: `form` "fbnet" | "proxyless"; `epochs` (passes over the weights' part of the training set; one theta
    step follows every weight step); `batch_size`; `lr_theta` (Adam), `lr_weights` (SGD, momentum 0.9);
    `train_weights` (False: theta steps only); `arch_fraction` (share of the training set held out for theta);
    `tau_start` -> `tau_end` (exponential per step); `alpha`, `beta` (fbnet), `lam` (proxyless); `latency_term`
    "sampled" | "expected"; `resolution`, `widths` (fix them; "largest" for the largest); `tolerance` and
    `adjust_top` (the final adjustment); `seed`; `progress` (tqdm).
    """

    def __init__(self, net: Supernet, data: Dataset, table: LatencyTable, *, target_ms: float,
                 form: str = "fbnet", epochs: int = 4, batch_size: int = 64, lr_theta: float = 0.05,
                 lr_weights: float = 0.005, train_weights: bool = True, arch_fraction: float = 0.2,
                 tau_start: float = 5.0, tau_end: float = 0.02, alpha: float = 0.2, beta: float = 0.6,
                 lam: float = 1.0, resolution: int | str | None = None,
                 widths: Sequence[int | None] | str | None = None,
                 latency_term: str = "sampled", tolerance: float = 0.05, adjust_top: int = 100, seed: int = 0,
                 progress: bool = False) -> None:
        import torch

        if form not in FORMS:
            raise SearchError(f"unknown loss form {form!r}; allowed: {', '.join(FORMS)}")
        if not (math.isfinite(target_ms) and target_ms > 0):
            raise SearchError(f"target_ms must be a positive number of milliseconds (got {target_ms!r})")
        for name, count in (("epochs", epochs), ("batch_size", batch_size), ("adjust_top", adjust_top)):
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise SearchError(f"{name} must be a whole number >= 1 (got {count!r})")
        for name, value in (("lr_theta", lr_theta), ("tau_start", tau_start), ("tau_end", tau_end),
                            ("alpha", alpha), ("beta", beta), ("lam", lam), ("tolerance", tolerance)):
            if not (math.isfinite(value) and value > 0):
                raise SearchError(f"{name} must be a positive number (got {value!r})")
        if not 0 < arch_fraction < 1:
            raise SearchError(f"arch_fraction must be between 0 and 1 (got {arch_fraction!r})")
        if latency_term not in LATENCY_TERMS:
            raise SearchError(f"unknown latency_term {latency_term!r}; allowed: {', '.join(LATENCY_TERMS)}")
        if lr_weights < 0:
            raise SearchError(f"lr_weights must be >= 0 (got {lr_weights!r})")
        space = net.space
        if data.in_channels != space.in_channels or data.num_classes > space.num_classes:
            raise SearchError(f"dataset {data.name!r} ({data.in_channels} channel(s), {data.num_classes} classes) does "
                              f"not fit space {space.name!r} ({space.in_channels}, {space.num_classes})")
        if resolution == "largest":
            resolution = max(space.resolutions)
        if widths == "largest":
            widths = [max(st.widths) for st in space.stages]
        if isinstance(resolution, str) or isinstance(widths, str):
            raise SearchError("resolution and widths take a number (a sequence of them), None or 'largest'")
        self.layout = SearchLayout(space, table, resolution=resolution, widths=widths)
        self.space, self.table, self.data, self.target_ms, self.form = space, table, data, float(target_ms), form
        self.epochs, self.batch_size, self.lr_theta, self.lr_weights = epochs, batch_size, lr_theta, lr_weights
        self.train_weights, self.arch_fraction = train_weights and lr_weights > 0, arch_fraction
        self.tau_start, self.tau_end, self.alpha, self.beta, self.lam = tau_start, tau_end, alpha, beta, lam
        self.tolerance, self.adjust_top, self.seed, self.progress = tolerance, adjust_top, seed, progress
        self.latency_term = latency_term
        self.net = copy.deepcopy(net)  # the caller's supernet is never changed
        self.masks = {name: torch.as_tensor(mask) for name, mask in self.layout.masks().items()}
        self.theta = {name: torch.zeros(mask.shape, dtype=torch.float64, requires_grad=True)
                      for name, mask in self.masks.items()}
        self.result: DifferentiableResult | None = None

    # --------------------------------------------------------------------------------- distributions

    def probabilities(self, tau: float = 1.0) -> dict[str, np.ndarray]:
        """softmax(theta / tau) of every choice over its allowed values (0 elsewhere)."""
        return {name: p.detach().numpy() for name, p in self._probs(tau).items()}

    def _probs(self, tau: float) -> dict[str, torch.Tensor]:
        import torch

        return {name: torch.softmax(self._masked(name) / tau, dim=-1) for name in self.theta}

    def _masked(self, name: str) -> torch.Tensor:
        return self.theta[name].masked_fill(~self.masks[name], -math.inf)

    def expected_ms(self, tau: float = 1.0) -> float:
        """Expected table latency (ms) under softmax(theta / tau)."""
        import torch

        with torch.no_grad():
            return float(self.layout.expected_ms(self._probs(tau)))

    def argmax(self) -> Selection:
        """The most probable value of every choice (theta's argmax; the first on ties)."""
        best = {name: self._masked(name).detach().argmax(dim=-1).numpy() for name in self.theta}
        ops = []
        for j in range(len(self.space.stages)):
            f = int(best[f"s{j}.family"])
            ops.append(tuple(int(c) for c in best[f"s{j}.ops"][:, f]))
        return Selection(int(best["resolution"]), tuple(int(best[f"s{j}.width"]) for j in range(len(ops))),
                         tuple(int(best[f"s{j}.family"]) for j in range(len(ops))), tuple(ops))

    def top(self, n: int, tau: float | None = None) -> list[tuple[np.ndarray, float]]:
        """The `n` most probable distinct architectures under softmax(theta / tau) (default tau: `tau_end`, the
        distribution the latency term ends on, whose most probable architecture is `argmax()`), best first, as
        (canonical genes, log-probability of its most probable selection); fewer if the frame has fewer."""
        import torch

        tau = self.tau_end if tau is None else tau
        log_probs = {name: torch.log_softmax(self._masked(name) / tau, dim=-1).detach().numpy()
                     for name in self.theta}
        k = max(2 * n, 16)
        found: dict[bytes, tuple[np.ndarray, float]] = {}
        for _ in range(_TOP_ROUNDS):  # bounded: each round looks 4x deeper into the ranked selections
            found = {}
            selections = self.layout.top_selections(log_probs, k)
            for score, sel in selections:
                genes = self.layout.genes_of(sel)
                found.setdefault(genes.tobytes(), (genes, score))
            if len(found) >= n or len(selections) < k:
                return list(found.values())[:n]
            k *= 4
        raise SearchError(f"the {k // 4:,} most probable selections give only {len(found)} distinct architectures; "
                          f"asked for {n}")

    # ------------------------------------------------------------------------------------------- steps

    def _sample(self, gen: torch.Generator, tau: float, gates: bool
                ) -> tuple[Selection, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """A hard Gumbel-max draw of every choice from softmax(theta / tau). With `gates`, also each choice's relaxed
        draw y = softmax(theta / tau + g) (Gumbel-softmax, same noise g) and the straight-through gate of the drawn
        value (1 forward, y's gradient backward)."""
        import torch

        drawn, gate, relaxed = {}, {}, {}
        for name in self.theta:
            u = torch.rand(self.theta[name].shape, generator=gen, dtype=torch.float64).clamp_(1e-12, 1 - 1e-12)
            logits = self._masked(name) / tau + (-torch.log(-torch.log(u)))
            index = logits.detach().argmax(dim=-1)
            drawn[name] = index.numpy()
            if gates:
                soft = relaxed[name] = torch.softmax(logits, dim=-1)
                hard = torch.zeros_like(soft).scatter_(-1, index.unsqueeze(-1), 1.0)
                gate[name] = (hard - soft.detach() + soft).gather(-1, index.unsqueeze(-1)).squeeze(-1)
        ops, fams = [], []
        for j in range(len(self.space.stages)):
            f = int(drawn[f"s{j}.family"])
            fams.append(f)
            ops.append(tuple(int(c) for c in drawn[f"s{j}.ops"][:, f]))
        sel = Selection(int(drawn["resolution"]), tuple(int(drawn[f"s{j}.width"]) for j in range(len(ops))),
                        tuple(fams), tuple(ops))
        return sel, gate, relaxed

    def _gated_forward(self, x: torch.Tensor, sel: Selection, gate: dict[str, torch.Tensor]) -> torch.Tensor:
        """The supernet on the sampled architecture, each drawn choice's output scaled by its gate."""
        from supernets.training import resized

        arch = self.layout.arch_of(sel)
        net = self.net
        h = net.stem_forward(resized(x, arch.resolution), arch)
        for j, blocks in enumerate(arch.stages):
            slots, skip, pos = net.stages[j][blocks[0].family], self.layout.skip(j), 0  # type: ignore[index]
            ops_gate = gate[f"s{j}.ops"]
            for i, c in enumerate(sel.ops[j]):
                g = ops_gate[i, sel.families[j]].to(h.dtype)
                if c == skip:
                    h = h * g
                else:
                    h = slots[pos](h, blocks[pos]) * g
                    pos += 1
            h = h * (gate[f"s{j}.family"].to(h.dtype) * gate[f"s{j}.width"].to(h.dtype))
        return net.head_forward(h, arch) * gate["resolution"].to(h.dtype)

    def _latency_loss(self, ce: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
        import torch

        ratio = expected / self.target_ms
        if self.form == "fbnet":
            return ce.double() * self.alpha * (1 + torch.log(ratio).abs()) ** self.beta
        return ce.double() + self.lam * (ratio - 1).abs()

    def _tau(self, step: int, total: int) -> float:
        return self.tau_start * (self.tau_end / self.tau_start) ** (step / max(1, total - 1))

    def _splits(self, rng: np.random.Generator) -> tuple[Split, Split]:
        from supernets.data import Split, stratified_split

        train = self.data.train
        weights_idx, arch_idx = stratified_split(train.labels, self.arch_fraction, int(rng.integers(2**31)))
        return (Split(train.images[weights_idx], train.labels[weights_idx]),
                Split(train.images[arch_idx], train.labels[arch_idx]))

    # --------------------------------------------------------------------------------------------- run

    def run(self) -> DifferentiableResult:
        """Search; the result is also kept as `self.result`. Seeded: the same options give the same result."""
        import torch
        import torch.nn.functional as F
        from tqdm import tqdm

        from supernets.data import batches
        from supernets.training import resized

        started = time.perf_counter()
        rng, gen = np.random.default_rng(self.seed), torch.Generator().manual_seed(self.seed)
        weight_split, arch_split = self._splits(rng)
        data, native = self.data, self.data.train.images.shape[-1]
        steps = math.ceil(len(weight_split) / self.batch_size)
        total = self.epochs * steps
        theta_opt = torch.optim.Adam(list(self.theta.values()), lr=self.lr_theta, betas=(0.5, 0.999))
        params = [p for p in self.net.parameters()]
        weight_opt = torch.optim.SGD(params, lr=self.lr_weights, momentum=0.9) if self.train_weights else None
        self.net.train()

        def arch_batches() -> Any:
            while True:
                yield from batches(arch_split, self.batch_size, native, data.mean, data.std, rng)

        arch_iter = arch_batches()
        history: list[dict[str, float]] = []
        trace: list[float] = []
        bar = tqdm(total=total, disable=not self.progress, desc=f"differentiable search ({self.form})", leave=False)
        step = 0
        for epoch in range(self.epochs):
            sums = {"ce": 0.0, "loss": 0.0}
            for x, y in batches(weight_split, self.batch_size, native, data.mean, data.std, rng):
                tau = self._tau(step, total)
                for group in theta_opt.param_groups:  # cosine to 0: theta settles as tau sharpens the latency term
                    group["lr"] = 0.5 * self.lr_theta * (1 + math.cos(math.pi * step / total))
                if weight_opt is not None:
                    for p in params:
                        p.requires_grad_(True)
                    sel, _, _ = self._sample(gen, tau, gates=False)
                    arch = self.layout.arch_of(sel)
                    weight_opt.zero_grad(set_to_none=True)
                    F.cross_entropy(self.net(resized(x, arch.resolution), arch), y).backward()
                    weight_opt.step()
                for p in params:
                    p.requires_grad_(False)
                xa, ya = next(arch_iter)
                sel, gate, relaxed = self._sample(gen, tau, gates=True)
                ce = F.cross_entropy(self._gated_forward(xa, sel, gate), ya)
                probs = relaxed if self.latency_term == "sampled" else self._probs(tau)
                loss = self._latency_loss(ce, self.layout.expected_ms(probs))
                theta_opt.zero_grad(set_to_none=True)
                loss.backward()
                theta_opt.step()
                trace.append(self.expected_ms(tau))
                sums["ce"] += float(ce.detach())
                sums["loss"] += float(loss.detach())
                step += 1
                bar.update(1)
                bar.set_postfix(expected_ms=f"{trace[-1]:.4f}", tau=f"{tau:.3f}")
            argmax_ms = self.layout.latency_ms(self.argmax())
            history.append({"epoch": epoch + 1, "tau": self._tau(step - 1, total), "ce": sums["ce"] / steps,
                            "loss": sums["loss"] / steps, "expected_ms": trace[-1], "argmax_ms": argmax_ms})
        bar.close()
        for p in params:
            p.requires_grad_(True)
        self.net.eval()
        self.result = self._derive(history, trace, time.perf_counter() - started)
        return self.result

    def _derive(self, history: list[dict[str, float]], trace: list[float], seconds: float) -> DifferentiableResult:
        """The argmax architecture, or the bounded adjustment when it misses the target by more than `tolerance`."""
        best = self.argmax()
        argmax_genes = self.layout.genes_of(best)
        argmax_ms = self._table_ms(argmax_genes)
        genes, predicted, adjusted = argmax_genes, argmax_ms, False
        if abs(argmax_ms / self.target_ms - 1) > self.tolerance:
            candidates = [g for g, _ in self.top(self.adjust_top)]
            latencies = np.array([self._table_ms(g) for g in candidates])
            errors = np.abs(latencies / self.target_ms - 1)
            inside = np.flatnonzero(errors <= self.tolerance)
            pick = int(inside[0]) if inside.size else int(np.argmin(errors))
            if errors[pick] < abs(argmax_ms / self.target_ms - 1):
                genes, predicted, adjusted = candidates[pick], float(latencies[pick]), True
        theta = {name: t.detach().numpy().round(6).tolist() for name, t in self.theta.items()}
        return DifferentiableResult(
            self.space.from_genes(genes), genes, self.target_ms, predicted, self.expected_ms(self.tau_end),
            self.space.from_genes(argmax_genes), argmax_ms, adjusted, self.form, self.seed, seconds, history, trace,
            theta)

    def _table_ms(self, genes: np.ndarray) -> float:
        return float(self.table.predict(self.space, genes[None]).latency_ms[0])


# ----------------------------------------------------------------------------------- the strategy adapter


class Differentiable(Strategy):
    """The differentiable search behind ask()/tell(). The first `ask` runs `DifferentiableSearch` once (seeded by
    `seed`); asks then give the derived architecture first, then the most probable other architectures of the
    searched distribution, each once (those the screen turns down are passed over). `tell` changes nothing.

    Options beyond `Strategy`'s: `supernet` (a run directory of `hwnas supernet train`, or a `Supernet`; needed),
    `data` (a `Dataset`; default: the run directory's dataset, split as it was trained), `table` (the
    `LatencyTable` or its directory whose latency is targeted; needed), `target_ms` (default: the bound of a
    `latency_ms` <= / < constraint), and any `DifferentiableSearch` option (form, epochs, ...). Nothing is
    read until the first ask.
    """

    name = "differentiable"
    needs_torch = True

    def __init__(self, space: SearchSpace, objectives: Sequence[Objective], constraints: Sequence[Constraint] = (),
                 *, seed: int = 0, screen: Screen | None = None, retry_budget: int = 100,
                 supernet: Any = None, data: Any = None, table: LatencyTable | str | Path | None = None,
                 target_ms: float | None = None, progress: bool = False, **options: Any) -> None:
        super().__init__(space, objectives, constraints, seed=seed, screen=screen, retry_budget=retry_budget)
        if supernet is None:
            raise StrategyError("strategy 'differentiable' needs a trained supernet: supernet=RUN_DIR (of `hwnas "
                                "supernet train`) or a Supernet object")
        if table is None:
            raise StrategyError("strategy 'differentiable' needs the latency table to aim at: table=LatencyTable or "
                                "its directory")
        if target_ms is None:
            bounds = [c.bound for c in self.constraints if c.metric == "latency_ms" and c.op in ("<=", "<")]
            if not bounds:
                raise StrategyError("strategy 'differentiable' needs a latency target: target_ms=..., or a "
                                    "latency_ms<=BOUND constraint (its bound is the target)")
            target_ms = min(bounds)
        if "seed" in options:
            raise StrategyError("strategy 'differentiable' takes its seed from the strategy's seed")
        self.supernet, self.data, self.table, self.target_ms = supernet, data, table, float(target_ms)
        self.options, self.progress = options, progress
        self.search: DifferentiableSearch | None = None
        self._ranked: list[np.ndarray] = []
        self._complete = False  # the ranked list holds every architecture the distribution has
        self._cursor = 0

    def _start(self) -> DifferentiableSearch:
        if self.search is not None:
            return self.search
        net, data = self.supernet, self.data
        if isinstance(net, (str, Path)):
            from supernets.config import TrainConfig
            from supernets.data import load_dataset
            from supernets.training import load_supernet

            net, meta = load_supernet(net)
            if data is None:
                config = TrainConfig.from_dict(meta["config"])
                data = load_dataset(config.dataset, config.data_path, val_fraction=config.val_fraction,
                                    seed=config.seed)
        if data is None:
            raise StrategyError("strategy 'differentiable' with a Supernet object needs data= (a Dataset)")
        if net.space != self.space:
            raise StrategyError(f"the supernet was trained on space {net.space.name!r} ({net.space.size():,} "
                                f"architectures), not the one searched ({self.space.name!r}, {self.space.size():,})")
        table = self.table if isinstance(self.table, LatencyTable) else LatencyTable.load(self.table)
        try:
            self.search = DifferentiableSearch(net, data, table, target_ms=self.target_ms, seed=self.seed,
                                               progress=self.progress, **self.options)
        except TypeError as err:
            raise StrategyError(f"strategy 'differentiable': {err}") from None
        result = self.search.run()
        self._ranked = [result.genes]
        return self.search

    def _propose(self, n: int) -> np.ndarray:
        search = self._start()
        need = self._cursor + n
        if len(self._ranked) < need and not self._complete:
            derived = self._ranked[0]
            tops = [g for g, _ in search.top(need + 1)]
            self._complete = len(tops) < need + 1
            self._ranked = [derived, *(g for g in tops if not np.array_equal(g, derived))][:need]
        rows = self._ranked[self._cursor:need]
        if not rows:
            raise StrategyError(f"{self.name}: every architecture of the searched distribution has been asked for "
                                f"({len(self._ranked)})")
        self._cursor += len(rows)
        return np.stack(rows)

    def _learn(self, genes: np.ndarray, columns: Columns) -> None:
        """The search is done before the first ask; what is told does not change it."""

    @property
    def result(self) -> DifferentiableResult | None:
        return self.search.result if self.search is not None else None

    def describe(self) -> dict[str, Any]:
        out = {**super().describe(), "target_ms": self.target_ms, **self.options}
        if self.result is not None:
            out.update(derived=self.result.arch.to_str(), derived_latency_ms=self.result.predicted_ms,
                       adjusted=self.result.adjusted)
        return out
