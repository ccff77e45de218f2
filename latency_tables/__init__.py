"""Cost models: analytic counts from an ArchConfig (torch-free); measured lookup tables as they arrive."""

from latency_tables.analytic import AnalyticCostModel
from latency_tables.cost import DTYPE_BYTES, Cost, dtype_bytes, flops_from_macs
from latency_tables.counting import Op, analytic_cost, conv_op, linear_op, trace_arch, trace_block

__all__ = [
    "DTYPE_BYTES", "AnalyticCostModel", "Cost", "Op", "analytic_cost", "conv_op", "dtype_bytes", "flops_from_macs",
    "linear_op", "trace_arch", "trace_block",
]
