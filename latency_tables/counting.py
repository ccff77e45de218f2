"""Analytic costs from an `ArchConfig` alone (no torch): a per-layer trace of every block, then sums.

Each layer becomes an `Op` with what it reads and writes. From the ops:

- params = sum of trainable parameters (convolution weights, BatchNorm scale + shift, biases);
- macs = sum over convolutions of Hout*Wout*Cout*(Cin/groups)*k*k plus, for linear layers, Cin*Cout;
  bias additions, BatchNorm, activations, the SE multiply, residual adds and pooling are not counted
  (this is what `torch.utils.flop_counter.FlopCounterMode` counts, divided by 2);
- memory_access = sum over ops of inputs + weights + outputs (ShuffleNetV2's MAC, general form of
  Sun et al. 2024, A.1.4: Cin*Hin*Win + k^2*Cin*Cout/groups + Cout*Hout*Wout). BatchNorm is folded into
  the convolution before it, as runtimes do, so a conv+BN reads its weights plus one bias per output
  channel. Element-wise ops are not free: a residual add reads two tensors and writes one, the SE scale
  reads the tensor and the gate, pooling and channel concat+shuffle read and write;
- peak_activation = max over ops of inputs + outputs + tensors held for later (a residual's input, the
  other half of a ShuffleNet split, the finished branch of a two-branch unit), layers running in order.

Every layer's op is named by its layer id (`stem`, `s0.b1.dw`, `s2.b0.right.pw1`, `head`, `hidden`,
`classifier`), the same name as the layer's submodule in the static torch model; the other ops (pools, adds, SE
scale, concat+shuffle) have descriptive names and are priced at the precision of the layer that produced their
input. Widths come from the block's resolved helpers, so explicit (pruned) widths are honoured everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import lru_cache

from latency_tables.cost import Cost, check_precision, dtype_bytes
from search_spaces import ArchConfig, BlockConfig, HwnasError, StemConfig, get_family


@dataclass(frozen=True)
class Op:
    """One op of the trace. Element counts are for batch 1.

    A layer's op (conv, linear) is named by its layer id. Any other op (pool, add, SE scale, concat+shuffle)
    names in `layer` the layer that produced its input, whose precision prices it.
    """

    name: str
    kind: str  # conv | linear | add | scale | pool | maxpool | shuffle
    in_elems: int
    out_elems: int
    weights: int = 0
    params: int = 0
    macs: int = 0
    held: int = 0
    layer: str = ""

    @property
    def memory_access(self) -> int:
        return self.in_elems + self.weights + self.out_elems

    @property
    def live(self) -> int:
        return self.in_elems + self.out_elems + self.held

    @property
    def is_layer(self) -> bool:
        """A prunable, quantisable layer (its name is a layer id)."""
        return self.kind in ("conv", "linear")

    @property
    def priced_as(self) -> str:
        """The layer whose precision this op runs at: itself, or the layer that produced its input."""
        return self.layer or self.name


def conv_out(size: int, kernel: int, stride: int) -> int:
    """Output size of a conv or pool with padding kernel // 2 (odd kernels)."""
    return (size + 2 * (kernel // 2) - kernel) // stride + 1


def conv_op(name: str, cin: int, cout: int, kernel: int, stride: int, h: int, w: int, *, groups: int = 1,
            bn: bool = True, bias: bool = False, held: int = 0) -> Op:
    """A k x k convolution on a Cin x h x w input. `bn` adds BatchNorm (2 params per channel, folded to a bias)."""
    ho, wo = conv_out(h, kernel, stride), conv_out(w, kernel, stride)
    kernel_weights = kernel * kernel * (cin // groups) * cout
    params = kernel_weights + (cout if bias else 0) + (2 * cout if bn else 0)
    weights = kernel_weights + (cout if (bias or bn) else 0)
    return Op(name, "conv", cin * h * w, cout * ho * wo, weights, params, ho * wo * cout * (cin // groups) * kernel**2,
              held)


def linear_op(name: str, cin: int, cout: int) -> Op:
    return Op(name, "linear", cin, cout, cin * cout + cout, cin * cout + cout, cin * cout)


def _inverted_residual(block: BlockConfig, cin: int, h: int, w: int) -> list[Op]:
    mid, k, s = block.mid_channels(cin), block.kernel, block.stride
    ho, wo = conv_out(h, k, s), conv_out(w, k, s)
    keep = cin * h * w if block.has_residual(cin) else 0
    ops = []
    if block.expand != 1.0:
        ops.append(conv_op("expand", cin, mid, 1, 1, h, w))
    ops.append(conv_op("dw", mid, mid, k, s, h, w, groups=mid, held=keep if ops else 0))
    if block.se_ratio > 0:
        squeeze, body = block.squeeze_channels(cin), mid * ho * wo
        ops += [
            Op("se.pool", "pool", body, mid, held=keep, layer="dw"),
            conv_op("se.reduce", mid, squeeze, 1, 1, 1, 1, bn=False, bias=True, held=keep + body),
            conv_op("se.expand", squeeze, mid, 1, 1, 1, 1, bn=False, bias=True, held=keep + body),
            Op("se.scale", "scale", body + mid, body, held=keep, layer="dw"),
        ]
    ops.append(conv_op("project", mid, block.out_channels, 1, 1, ho, wo, held=keep))
    if keep:
        out = block.out_channels * ho * wo
        ops.append(Op("add", "add", 2 * out, out, layer="project"))
    return ops


def _fused(block: BlockConfig, cin: int, h: int, w: int) -> list[Op]:
    k, s, cout = block.kernel, block.stride, block.out_channels
    ho, wo = conv_out(h, k, s), conv_out(w, k, s)
    residual = block.has_residual(cin)
    if block.expand == 1.0:
        ops = [conv_op("conv", cin, cout, k, s, h, w)]
    else:
        mid = block.mid_channels(cin)
        ops = [conv_op("expand", cin, mid, k, s, h, w),
               conv_op("project", mid, cout, 1, 1, ho, wo, held=cin * h * w if residual else 0)]
    if residual:
        ops.append(Op("add", "add", 2 * cout * ho * wo, cout * ho * wo, layer=ops[-1].name))
    return ops


def _shuffle(block: BlockConfig, cin: int, h: int, w: int) -> list[Op]:
    k, s, cout = block.kernel, block.stride, block.out_channels
    mid, branch = block.mid_channels(cin), block.branch_channels
    ho, wo = conv_out(h, k, s), conv_out(w, k, s)
    if block.is_split_unit(cin):  # the odd half is transformed while the even half waits
        half = cin // 2
        kept = (cin - half) * h * w
        ops = [conv_op("right.pw1", half, mid, 1, 1, h, w, held=kept),
               conv_op("right.dw", mid, mid, k, 1, h, w, groups=mid, held=kept),
               conv_op("right.pw2", mid, branch, 1, 1, h, w, held=kept)]
    else:  # two branches over the whole input; the left result waits for the right one
        left = (cout - branch) * ho * wo
        ops = [conv_op("left.dw", cin, cin, k, s, h, w, groups=cin),
               conv_op("left.pw", cin, cout - branch, 1, 1, ho, wo, held=cin * h * w),
               conv_op("right.pw1", cin, mid, 1, 1, h, w, held=left),
               conv_op("right.dw", mid, mid, k, s, h, w, groups=mid, held=left),
               conv_op("right.pw2", mid, branch, 1, 1, ho, wo, held=left)]
    ops.append(Op("concat_shuffle", "shuffle", cout * ho * wo, cout * ho * wo, layer="right.pw2"))
    return ops


#: The tracer of each family kind (`search_spaces.families.KINDS`): a family of an existing kind needs no entry.
TRACERS: dict[str, Callable[[BlockConfig, int, int, int], list[Op]]] = {
    "inverted_residual": _inverted_residual, "fused": _fused, "shuffle": _shuffle,
}


def trace_block(block: BlockConfig, cin: int, h: int, w: int) -> list[Op]:
    """The ops of one block on a cin x h x w input, named by their layer within the block (`dw`, `right.pw1`)."""
    return TRACERS[get_family(block.family).kind](block, cin, h, w)


def stem_ops(stem: StemConfig, in_channels: int, resolution: int) -> tuple[list[Op], int]:
    """The stem's ops and the feature-map size it hands to the first block."""
    size = resolution
    ops = [conv_op("stem", in_channels, stem.channels, stem.kernel, stem.stride, size, size)]
    size = conv_out(size, stem.kernel, stem.stride)
    if stem.maxpool:
        out = conv_out(size, 3, 2)
        ops.append(Op("stem_pool", "maxpool", stem.channels * size * size, stem.channels * out * out, layer="stem"))
        size = out
    return ops, size


def head_ops(cin: int, channels: int, hidden: int, classes: int, size: int) -> list[Op]:
    """1x1 conv, global pool, optional hidden linear layer, classifier."""
    ops = [conv_op("head", cin, channels, 1, 1, size, size),
           Op("head_pool", "pool", channels * size * size, channels, layer="head")]
    if hidden:
        ops.append(linear_op("hidden", channels, hidden))
    ops.append(linear_op("classifier", hidden or channels, classes))
    return ops


def trace_arch(arch: ArchConfig) -> list[Op]:
    """Every op of the network in execution order; a layer's op is named by its layer id (`s1.b0.dw`)."""
    ops, size = stem_ops(arch.stem, arch.in_channels, arch.resolution)
    for site in arch.sites():
        prefix = f"s{site.stage}.b{site.position}."
        ops += [replace(op, name=prefix + op.name, layer=prefix + op.layer if op.layer else "")
                for op in trace_block(site.block, site.in_channels, size, size)]
        size = conv_out(size, site.block.kernel, site.block.stride)
    head = arch.head
    return ops + head_ops(arch.last_channels, head.channels, head.hidden, arch.num_classes, size)


def layer_ops(arch: ArchConfig) -> list[Op]:
    """The ops of the prunable, quantisable layers, in network order; each is named by its layer id."""
    return [op for op in trace_arch(arch) if op.is_layer]


def layer_ids(arch: ArchConfig) -> list[str]:
    """The layer ids of `arch` in network order (the static module's submodule paths of those layers)."""
    return [op.name for op in layer_ops(arch)]


Summary = tuple[int, int, int, int]


def summarize(ops: list[Op]) -> Summary:
    """(params, macs, memory_access, peak_activation) of a list of ops."""
    return (sum(o.params for o in ops), sum(o.macs for o in ops), sum(o.memory_access for o in ops),
            max((o.live for o in ops), default=0))


def combine(parts: list[Summary]) -> Summary:
    """Summaries of consecutive parts: sums, and the largest peak."""
    return (sum(p[0] for p in parts), sum(p[1] for p in parts), sum(p[2] for p in parts), max(p[3] for p in parts))


@lru_cache(maxsize=1 << 16)
def block_summary(block: BlockConfig, cin: int, size: int) -> Summary:
    """Cached summary of one block on a square input (blocks repeat across sampled architectures)."""
    return summarize(trace_block(block, cin, size, size))


@lru_cache(maxsize=1 << 12)
def head_summary(cin: int, channels: int, hidden: int, classes: int, size: int) -> Summary:
    return summarize(head_ops(cin, channels, hidden, classes, size))


def count_arch(arch: ArchConfig) -> Summary:
    """(params, macs, memory_access, peak_activation) of `arch`, from cached per-block summaries."""
    pre, size = stem_ops(arch.stem, arch.in_channels, arch.resolution)
    parts = [summarize(pre)]
    for site in arch.sites():
        parts.append(block_summary(site.block, site.in_channels, size))
        size = conv_out(size, site.block.kernel, site.block.stride)
    head = arch.head
    parts.append(head_summary(arch.last_channels, head.channels, head.hidden, arch.num_classes, size))
    return combine(parts)


def analytic_cost(arch: ArchConfig, dtype: str = "fp32", precision: Mapping[str, str] | None = None) -> Cost:
    """Exact analytic `Cost` of `arch` (no latency). `precision` gives layers (by layer id) another precision
    than `dtype`; bytes then price every op at its layer's precision (docs/costs.md)."""
    dtype_bytes(dtype)
    params, macs, mem, peak = count_arch(arch)
    if not precision:
        return Cost(params, macs, mem, peak, dtype)
    layers = resolve_precision(arch, dtype, precision)
    used = set(layers.values())
    if len(used) == 1:  # every layer at one precision: that is the network's dtype
        return Cost(params, macs, mem, peak, used.pop(), precision=layers)
    return Cost(params, macs, mem, peak, dtype, precision=layers, mixed_bytes=priced_bytes(trace_arch(arch), layers))


def resolve_precision(arch: ArchConfig, dtype: str, precision: Mapping[str, str]) -> dict[str, str]:
    """Every layer id of `arch` with its precision: `precision`'s where it names the layer, else `dtype`."""
    if not isinstance(precision, Mapping):
        raise HwnasError(f"precision must map layer ids to precisions; got {type(precision).__name__}")
    ids = layer_ids(arch)
    unknown = sorted(set(precision) - set(ids), key=str)
    if unknown:
        raise HwnasError(f"precision names layer(s) {', '.join(map(repr, unknown))} that this architecture does "
                         f"not have; its layers: {', '.join(ids)}")
    for layer, value in precision.items():
        check_precision(value, f"precision of layer {layer!r}")
    return {layer: precision.get(layer, dtype) for layer in ids}


def priced_bytes(ops: list[Op], precision: Mapping[str, str]) -> tuple[int, int]:
    """(memory access, peak activation) in bytes: each op's elements at the precision of the layer it is priced
    as (`Op.priced_as`)."""
    widths = [dtype_bytes(precision[op.priced_as]) for op in ops]
    return (sum(op.memory_access * b for op, b in zip(ops, widths, strict=True)),
            max((op.live * b for op, b in zip(ops, widths, strict=True)), default=0))
