"""Validating a table stores nothing unless asked, and never writes into the package's shipped tables."""

import hashlib
import json

import pytest

from latency_tables.table import LatencyTable, TableError, shipped_tables
from latency_tables.validation import validate_table, wilson_interval
from nas.cli import main

pytest.importorskip("onnxruntime", reason="validating the shipped ORT table needs the runtimes extra")


def shipped_ort():
    return next(p for p in shipped_tables() if p.name == "small-amd-epyc-2c-ort-fp32-t1")


def snapshot(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))}


def test_cli_validate_on_a_shipped_table_leaves_it_byte_identical(capsys, tmp_path):
    table = shipped_ort()
    before, meta = snapshot(table), (table / "meta.json").read_bytes()
    code = main(["lut", "validate", "--table", str(table), "--samples", "2", "--seed", "7", "--no-progress",
                 "--json", "--pin-cpu", "0"])
    out, _ = capsys.readouterr()
    assert code == 0 and json.loads(out)["samples"] == 2 and json.loads(out)["pin_cpu"] == 0
    assert (table / "meta.json").read_bytes() == meta and snapshot(table) == before

    code = main(["lut", "validate", "--table", str(table), "--samples", "2", "--no-progress", "--save"])
    _, err = capsys.readouterr()
    assert code == 2 and "shipped tables" in err and "--out DIR" in err and "Traceback" not in err
    assert snapshot(table) == before


def test_saving_a_shipped_tables_validation_goes_to_a_copy_elsewhere(tmp_path):
    table, copy = shipped_ort(), tmp_path / "copy"
    before = snapshot(table)
    summary = validate_table(table, samples=2, seed=7, progress=False, save=True, out=copy, pin_cpu=0,
                             drift_check=3)
    assert snapshot(table) == before
    stored = LatencyTable.load(copy)
    assert stored.meta["validation"] == summary and summary["samples"] == 2 and summary["seed"] == 7
    # the interval of the share as counted, per seed beside the latest, and where and under what load it was timed
    assert summary["within_10_ci95"] == [round(v, 6) for v in wilson_interval(round(2 * summary["within_10"]), 2)]
    assert stored.meta["validations"]["7"] == summary
    assert set(stored.meta["validations"]) == set(LatencyTable.load(table).meta["validations"]) | {"7"}  # kept
    assert summary["pin_cpu"] == 0 and len(summary["load_1min"]) == 2 and min(summary["load_1min"]) >= 0
    assert summary["key_drift"]["keys"] == 3 and 0.2 < summary["key_drift"]["ratio"] < 5  # 3 keys timed again
    assert stored.rows == LatencyTable.load(table).rows and stored.table_id == "amd-epyc-2c-ort-fp32-t1"
    assert len((copy / "validation-s7.csv").read_text().splitlines()) == 3  # header + 2 subnets
    with pytest.raises(TableError, match="shipped tables"):
        validate_table(table, samples=2, save=True, out=table.parent / "elsewhere-inside")
    assert not (table.parent / "elsewhere-inside").exists()


def test_the_library_stores_nothing_unless_asked(tmp_path):
    table, copy = shipped_ort(), tmp_path / "copy"
    before = snapshot(table)
    summary = validate_table(table, samples=2, seed=7, progress=False, out=copy)
    assert summary["samples"] == 2 and snapshot(table) == before and not copy.exists()


def test_a_validation_times_its_first_subnets_again_and_says_how_far_they_repeat(tmp_path, monkeypatch, capsys):
    import numpy as np

    from latency_tables import validation

    real, timed = validation.measured_like, {}

    def measured_like(table, csv_path, archs, progress, desc, jobs=1, pin_cpu=None):
        got = real(table, csv_path, archs, progress, desc, jobs, pin_cpu)
        timed[desc] = got
        # the second timing: the first subnet as before, the second 20% slower (a burst of load elsewhere)
        return timed["validate"][: len(archs)] * np.array([1.0, 1.2]) if desc == "repeat" else got

    monkeypatch.setattr(validation, "measured_like", measured_like)
    summary = validate_table(shipped_ort(), samples=3, seed=7, progress=False, pin_cpu=0, repeat=2)
    assert len(timed["validate"]) == 3 and len(timed["repeat"]) == 2  # the first 2 of the 3 timed again
    assert summary["repeat"] == {"subnets": 2, "within_10": 0.5, "median_ratio": 1.1}
    code = main(["lut", "validate", "--table", str(shipped_ort()), "--samples", "2", "--seed", "7", "--repeat",
                 "2", "--no-progress", "--pin-cpu", "0"])
    out, _ = capsys.readouterr()
    assert code == 0 and "2 subnets timed twice agree within +-10% for 50% (median 1.100x)" in out
    assert "this machine does not repeat its own timings to +-10%" in out
