"""Building, resuming, validating and importing tables on real runtimes (a tiny space keeps it quick)."""

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from latency_tables import build as build_module
from latency_tables.build import LOCK_NAME, build_table, table_lock
from latency_tables.keys import SpaceIndex
from latency_tables.kit import export_kit, import_kit
from latency_tables.runtimes import Protocol, RuntimeMissing, get_runtime
from latency_tables.table import LatencyTable, TableError, read_rows
from latency_tables.validation import validate_table

FAST = Protocol(threads=1, warmup=2, runs=5)


def digest(path: Path) -> dict[str, str]:
    """Hashes of a table directory's files (not the build lock, which names its latest holder)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())
            if p.is_file() and p.name != LOCK_NAME}


@pytest.mark.runtime
def test_build_measures_every_key_and_fits_the_correction(tiny_space, tmp_path):
    out = tmp_path / "table"
    table = build_table(tiny_space, "ort", "fp32", out, protocol=FAST, device="box", fit_networks=6, jobs=2,
                        progress=False, log=lambda _: None)
    assert not (out / "models").exists()  # converted files are removed once measured
    keys = SpaceIndex(tiny_space).keys
    assert set(table.rows) == set(keys) and table.meta["keys"] == len(keys) == 48  # 2 stems, 32 + 12 blocks, 2 heads
    assert table.meta["status"] == "complete" and table.table_id == "box-ort-fp32-t1"
    assert table.meta["profile"]["runtime_version"] == get_runtime("ort").version()
    assert all(median > 0 and runs == 5 for median, _, runs in table.rows.values())
    fit = table.meta["correction"]
    assert fit["networks"] == 6 and fit["scale"] > 0 and fit["fit_mape"] < 0.5
    assert len((out / "networks.csv").read_text().splitlines()) == 7
    # the table predicts what it was fitted on to within its own fit error
    summary = validate_table(out, samples=8, seed=5, progress=False, save=True)
    assert set(summary) >= {"mape", "rmspe", "within_5", "within_10", "within_15", "kendall_tau",
                            "macs_kendall_tau"}
    assert all(0 <= summary[k] <= 1 for k in ("within_5", "within_10", "within_15"))
    assert summary["within_5"] <= summary["within_10"] <= summary["within_15"]
    assert LatencyTable.load(out).meta["validation"] == summary


def test_an_interrupted_build_resumes_without_rewriting_finished_rows(tiny_space, tmp_path, monkeypatch):
    out, real, calls = tmp_path / "table", build_module.measure_targets, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the second group of keys: the first group's 32 rows are written
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(build_module, "measure_targets", flaky)
    with pytest.raises(KeyboardInterrupt):
        build_table(tiny_space, "torch", "fp32", out, protocol=FAST, device="box", fit_networks=3,
                    progress=False, log=lambda _: None)
    before = (out / "table.csv").read_bytes()
    assert len(read_rows(out / "table.csv")) == 32
    with (out / "table.csv").open("a") as fh:  # an append cut off mid-line
        fh.write("block:mbv3-6x6x8-c8-e2-k3")
    monkeypatch.setattr(build_module, "measure_targets", real)
    table = build_table(tiny_space, "torch", "fp32", out, protocol=FAST, device="box", fit_networks=3,
                        progress=False, log=lambda _: None, drift_check=0)  # the drift check has its own test
    after = (out / "table.csv").read_bytes()
    assert after.startswith(before) and len(table.rows) == 48


def test_a_directory_with_another_table_is_refused_and_left_alone(tiny_space, tmp_path):
    out = tmp_path / "table"
    build_table(tiny_space, "torch", "fp32", out, protocol=FAST, device="box", fit_networks=3, progress=False,
                log=lambda _: None)
    before = digest(out)
    with pytest.raises(TableError, match="holds another table.*pick another output directory"):
        build_table(tiny_space, "torch", "fp32", out, protocol=Protocol(threads=2, warmup=2, runs=5),
                    device="box", fit_networks=3, progress=False, log=lambda _: None)
    with pytest.raises(TableError, match="holds another table"):
        build_table(tiny_space, "torch", "fp32", out, protocol=FAST, device="phone", fit_networks=3,
                    progress=False, log=lambda _: None)
    assert digest(out) == before


def test_unknown_runtime_and_precision_are_named(tiny_space, tmp_path):
    from search_spaces import HwnasError

    with pytest.raises(HwnasError, match="unknown runtime 'tvm'; allowed: ort, litert, torch"):
        build_table(tiny_space, "tvm", "fp32", tmp_path / "t", protocol=FAST)
    with pytest.raises(HwnasError, match="runtime 'ort' has no precision 'fp16'; allowed: fp32, int8"):
        build_table(tiny_space, "ort", "fp16", tmp_path / "t", protocol=FAST)
    assert not (tmp_path / "t").exists()


def test_a_missing_runtime_package_says_what_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ort(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ort)
    with pytest.raises(RuntimeMissing, match="needs the package onnxruntime.*pip install"):
        get_runtime("ort").version()


def poisoned_path(tmp_path: Path) -> str:
    """A directory of packages named torch, hwnas's packages and tensorflow that fail on import."""
    for name in ("torch", "search_spaces", "supernets", "latency_tables", "nas", "tensorflow"):
        (tmp_path / "poison" / name).mkdir(parents=True)
        (tmp_path / "poison" / name / "__init__.py").write_text(f"raise ImportError('runner imported {name}')\n")
    return str(tmp_path / "poison")


@pytest.mark.runtime
def test_device_kit_round_trip_with_a_torch_free_runner(tiny_space, tmp_path):
    kit = tmp_path / "kit"
    manifest = export_kit(tiny_space, "ort", "fp32", kit, protocol=FAST, fit_networks=4, validate=5,
                          progress=False)
    assert len(manifest["entries"]) == 48 + 4 + 5
    assert all((kit / e["file"]).is_file() for e in manifest["entries"])
    env = {**os.environ, "PYTHONPATH": poisoned_path(tmp_path)}
    # the runner runs from inside the kit, as on a device, with torch and hwnas unimportable
    done = subprocess.run([sys.executable, "runner.py", "--device", "pi5"], cwd=kit, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    device_meta = json.loads((kit / "results_meta.json").read_text())
    assert device_meta["torch_loaded"] is False and device_meta["device"] == "pi5"
    # a results file with missing rows is refused and no table is written
    results = (kit / "results.csv").read_text().splitlines(keepends=True)
    (kit / "results.csv").write_text("".join(results[:-3]))
    with pytest.raises(TableError, match="lacks 3 of 57 models.*run `python3 runner.py`"):
        import_kit(kit)
    assert not (kit / "table").exists()
    (kit / "results.csv").write_text("".join(results))
    table = import_kit(kit)
    assert table.table_id == "pi5-ort-fp32-t1" and len(table.rows) == 48
    assert table.meta["validation"]["samples"] == 5 and table.meta["correction"]["networks"] == 4
    genes = tiny_space.sample_genes(np.random.default_rng(0), 10)
    assert np.isfinite(table.predict(tiny_space, genes).latency_ms).all()
    with pytest.raises(TableError, match="already holds a table"):
        import_kit(kit)


@pytest.mark.slow
def test_device_kit_for_litert_int8_feeds_int8_inputs(tiny_space, tmp_path):
    """The runner builds each model's own input (channels-last, int8 for a fully quantized model)."""
    kit = tmp_path / "kit"
    export_kit(tiny_space, "litert", "int8", kit, protocol=FAST, fit_networks=3, progress=False)
    env = {**os.environ, "PYTHONPATH": poisoned_path(tmp_path)}
    done = subprocess.run([sys.executable, "runner.py", "--device", "pi5"], cwd=kit, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    table = import_kit(kit)
    assert table.table_id == "pi5-litert-int8-t1" and len(table.rows) == 48
    assert table.meta["correction"]["networks"] == 3


def test_a_changed_block_is_measured_again_and_the_rest_kept(tiny_space, tmp_path):
    """A table measured before a family's block changed is refused on load, and a build re-measures just that
    family's keys and the networks that use it."""
    import csv

    out = tmp_path / "table"
    build_table(tiny_space, "torch", "fp32", out, protocol=FAST, device="box", fit_networks=6, progress=False,
                log=lambda _: None)
    validate_table(out, samples=6, seed=5, progress=False, save=True)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["revisions"]["blocks"]["shufflev2"] == 2
    meta["revisions"]["blocks"] = {}  # as measured before the ShuffleNet split changed (revision 1)
    (out / "meta.json").write_text(json.dumps(meta))
    before = read_rows(out / "table.csv")
    nets = {p.name: list(csv.DictReader(p.open())) for p in (out / "networks.csv", out / "validation-s5.csv")}
    uses = {name: [r["arch_key"] for r in rows if "shufflev2" in r["arch"]] for name, rows in nets.items()}
    assert all(uses.values()) and all(len(u) < len(nets[n]) for n, u in uses.items())  # some of each kind
    with pytest.raises(TableError, match="older version of the shufflev2 blocks.*re-measures just those"):
        LatencyTable.load(out)
    said: list[str] = []
    table = build_table(tiny_space, "torch", "fp32", out, protocol=FAST, device="box", fit_networks=6,
                        progress=False, log=said.append, drift_check=0)
    shuffle = {k for k in before if k.family == "shufflev2"}
    dropped_nets = len(uses["networks.csv"]) + len(uses["validation-s5.csv"])
    assert shuffle and f"dropped {len(shuffle)} key row(s) and {dropped_nets} measured network(s)" in said[0]
    assert set(table.rows) == set(before) and table.meta["status"] == "complete"
    assert all(table.rows[k] == before[k] for k in before if k not in shuffle)  # untouched rows are kept
    assert sum(table.rows[k] != before[k] for k in shuffle) > 0  # measured again
    assert "validation" not in table.meta and len(list(csv.DictReader((out / "networks.csv").open()))) == 6
    kept = [r for r in csv.DictReader((out / "validation-s5.csv").open())]
    assert len(kept) == 6 - len(uses["validation-s5.csv"])
    validate_table(out, samples=6, seed=5, progress=False, save=True)
    assert len(list(csv.DictReader((out / "validation-s5.csv").open()))) == 6


def test_a_changed_conversion_measures_every_key_and_network_again(tiny_space, tmp_path):
    """Pieces and networks go through the same conversion: when it changes, the build measures every key and
    every network again, and its build figures are those of the new measurement alone."""
    out = tmp_path / "table"
    build_table(tiny_space, "torch", "fp32", out, protocol=FAST, device="box", fit_networks=6, progress=False,
                log=lambda _: None)
    validate_table(out, samples=4, seed=5, progress=False, save=True)
    meta = json.loads((out / "meta.json").read_text())
    keys = meta["build"]["keys_measured"]
    assert keys == len(SpaceIndex(tiny_space).keys) and meta["revisions"]["conversion"] == 1
    meta["revisions"]["conversion"] = 0  # as measured with an older conversion
    (out / "meta.json").write_text(json.dumps(meta))
    said: list[str] = []
    table = build_table(tiny_space, "torch", "fp32", out, protocol=FAST, device="box", fit_networks=6,
                        progress=False, log=said.append, drift_check=0)
    assert f"dropped {keys} key row(s) and 10 measured network(s)" in said[0]  # 6 fitted on, 4 validated
    assert table.meta["build"]["keys_measured"] == keys and table.meta["revisions"]["conversion"] == 1
    assert table.meta["status"] == "complete" and len(table.rows) == keys and "validation" not in table.meta
    assert len((out / "networks.csv").read_text().splitlines()) == 7
    assert len((out / "validation-s5.csv").read_text().splitlines()) == 1  # the header: measured again on demand


def test_a_resumed_build_on_a_drifted_machine_measures_the_whole_table_again(tiny_space, tmp_path):
    """Rows measured when the machine was 3x slower no longer add up with new ones: the resumed build notices
    (re-measuring a sample of earlier keys), keeps the old files aside and measures everything again."""
    out = tmp_path / "table"
    kwargs = dict(protocol=FAST, device="box", fit_networks=3, progress=False)
    build_table(tiny_space, "torch", "fp32", out, log=lambda _: None, **kwargs)
    lines = (out / "table.csv").read_text().splitlines()
    header, rows = lines[0], [line.split(",") for line in lines[1:]]
    col = header.split(",").index("latency_ms_median")
    for row in rows:
        row[col] = f"{3 * float(row[col]):.6g}"
    slow = header + "\n" + "".join(",".join(row) + "\n" for row in rows)
    (out / "table.csv").write_text(slow)
    # A generous tolerance keeps the rows.
    kept = build_table(tiny_space, "torch", "fp32", out, log=lambda _: None, drift_tolerance=10.0, **kwargs)
    assert (out / "table.csv").read_text() == slow and len(kept.rows) == 48
    said: list[str] = []
    table = build_table(tiny_space, "torch", "fp32", out, log=said.append, drift_check=8, **kwargs)
    assert re.search(r"8 keys measured earlier now measure -\d+% \(median\).*measured again", said[0]), said[0]
    (old,) = out.glob("superseded-*")
    assert (old / "table.csv").read_text() == slow and (old / "networks.csv").is_file()
    assert len(table.rows) == 48 and table.meta["status"] == "complete" and "correction" in table.meta
    fresh = read_rows(out / "table.csv")
    slow_rows = read_rows(old / "table.csv")
    assert set(fresh) == set(slow_rows) and all(fresh[k] != slow_rows[k] for k in fresh)  # every row is new


HOLD_LOCK = """
import sys, time
from pathlib import Path
from latency_tables.build import table_lock
with table_lock(Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes stdin
"""


def test_a_second_build_on_the_same_directory_exits_naming_the_running_one(tiny_space, tmp_path):
    out = tmp_path / "table"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(TableError, match=rf"{out} is in use by another hwnas run \(pid {holder.pid} on host "
                                             r".+, started 20\d\d-.+\); run this again once that one finishes"):
            build_table(tiny_space, "torch", "fp32", out, protocol=FAST, device="box", fit_networks=3,
                        progress=False, log=lambda _: None)
        assert [p.name for p in out.iterdir()] == [LOCK_NAME]  # the refused run wrote nothing
    finally:
        holder.communicate("", timeout=30)
    with table_lock(out):  # released when its holder exits
        assert str(os.getpid()) in (out / LOCK_NAME).read_text()
