"""Data-parallel supernet training under torchrun (gloo, 2 CPU processes) on tiny data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from supernets.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def test_two_processes_keep_equal_weights_and_follow_the_single_process_run(tmp_path, trained_supernet):
    run = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(ROOT / "tests" / "supernets" / "ddp_worker.py"), str(run)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((run / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["weights"] == ranks[1]["weights"], "gradient averaging must keep the replicas identical"
    # One checkpoint, written by rank 0, in the same layout as a single-process run, and it resumes alone.
    ckpt = load_checkpoint(run)
    assert ckpt.meta["epoch"] == 2 and [row["phase"] for row in ckpt.meta["metrics"]] == ["full", "depth"]
    alone = load_checkpoint(trained_supernet)  # tiny_config() on tiny_digits() in one process, as ddp_worker trains
    history = alone.meta["metrics"]
    assert sorted(p.name for p in (run / "checkpoint").iterdir()) == \
        sorted(p.name for p in (trained_supernet / "checkpoint").iterdir())
    assert set(ckpt.weights) == set(alone.weights)
    # Same data order and subnets; only BatchNorm sees half batches, so the losses agree closely.
    for two, one in zip(ranks[0]["history"], history, strict=True):
        assert abs(two["loss"] - one["loss"]) <= 0.05 * one["loss"], (two, one)
