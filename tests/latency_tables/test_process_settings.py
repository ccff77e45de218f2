"""Measuring and converting leave the process as they found it: CPU affinity and torch's thread count."""

import os

import pytest
import torch

from latency_tables import runtimes
from latency_tables.build import convert_all, measure_targets
from latency_tables.keys import SpaceIndex
from latency_tables.runtimes import Protocol

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")


def test_measuring_pins_while_timing_and_restores_affinity_and_threads(tiny_space, monkeypatch):
    seen, real = [], runtimes.time_session

    def spy(session, protocol, seed=0):
        seen.append((os.sched_getaffinity(0), torch.get_num_threads()))
        return real(session, protocol, seed)

    monkeypatch.setattr(runtimes, "time_session", spy)
    cpus, threads = os.sched_getaffinity(0), torch.get_num_threads()
    protocol = Protocol(threads=3 if threads != 3 else 2, warmup=0, runs=3, pin_cpu=min(cpus), repeats=2)
    keys = SpaceIndex(tiny_space).keys[:2]
    measured = measure_targets("torch", "fp32", keys, protocol)
    assert len(measured) == 2 and all(m.median_ms > 0 and m.runs == 3 for m in measured)
    assert seen == [({min(cpus)}, protocol.threads)] * 4  # pinned, protocol's threads, during all 2 x 2 timings
    assert os.sched_getaffinity(0) == cpus and torch.get_num_threads() == threads


@pytest.mark.runtime
def test_converting_in_process_restores_torch_threads(tiny_space, tmp_path):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        key = SpaceIndex(tiny_space).keys[0]
        convert_all("ort", "fp32", [(key, tmp_path / "k.onnx")], jobs=1, progress=False)
        assert (tmp_path / "k.onnx").is_file() and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
