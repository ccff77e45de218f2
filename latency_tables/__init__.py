"""Cost models: analytic counts from an ArchConfig and measured latency lookup tables (both torch-free; the
converters and runtimes import torch or the runtime packages lazily)."""

from latency_tables.analytic import AnalyticCostModel
from latency_tables.cost import DTYPE_BYTES, Cost, dtype_bytes, flops_from_macs
from latency_tables.counting import Op, analytic_cost, conv_op, linear_op, trace_arch, trace_block
from latency_tables.keys import LutKey, SpaceIndex, arch_keys
from latency_tables.runtimes import RUNTIMES, RuntimeSpec, get_runtime, runtime_spec
from latency_tables.table import (
    DeviceMismatchWarning,
    DeviceProfile,
    LatencyTable,
    Prediction,
    TableError,
    find_table,
    shipped_tables,
)

__all__ = [
    "DTYPE_BYTES", "RUNTIMES", "AnalyticCostModel", "Cost", "DeviceMismatchWarning", "DeviceProfile", "LatencyTable",
    "LutKey", "Op", "Prediction", "RuntimeSpec", "SpaceIndex", "TableError", "analytic_cost", "arch_keys", "conv_op",
    "dtype_bytes", "find_table", "flops_from_macs", "get_runtime", "linear_op", "runtime_spec", "shipped_tables",
    "trace_arch", "trace_block",
]
