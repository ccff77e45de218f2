"""Recalibrating a table times its correction's networks again now and refits the correction on those timings;
the keys stay, earlier validations are set aside, a shipped table is recalibrated into a copy only."""

import csv
import json

import numpy as np
import pytest

from latency_tables.build import build_table
from latency_tables.runtimes import Protocol
from latency_tables.table import LatencyTable, TableError, fit_correction, shipped_tables
from latency_tables.validation import RECALIBRATION_CSV, recalibrate_table, validate_table
from search_spaces import ArchConfig

pytest.importorskip("onnxruntime", reason="building a table needs the runtimes extra")
FAST = Protocol(threads=1, warmup=2, runs=5)


def rows(path):
    return list(csv.DictReader(path.open()))


@pytest.mark.runtime
def test_recalibration_times_the_fit_networks_again_and_fits_on_them(tiny_space, tmp_path, monkeypatch):
    out = tmp_path / "table"
    build_table(tiny_space, "ort", "fp32", out, protocol=FAST, device="box", fit_networks=4, progress=False,
                log=lambda _: None)
    validate_table(out, samples=3, seed=5, progress=False, save=True)
    built = LatencyTable.load(out)
    keys_before, fit_before = (out / "table.csv").read_text(), dict(built.meta["correction"])

    fit = recalibrate_table(out, progress=False, drift_check=3)
    table = LatencyTable.load(out)
    timed = rows(out / RECALIBRATION_CSV)
    # the same 4 networks as the build's fit (networks.csv), timed again into their own file
    assert [r["arch"] for r in timed] == [r["arch"] for r in rows(out / "networks.csv")]
    assert (out / "table.csv").read_text() == keys_before
    assert table.meta["correction"] == fit and table.meta["corrections"] == [fit_before]
    # fitted on those timings: the build's fit applied to the networks timed now
    genes = np.stack([tiny_space.to_genes(ArchConfig.from_str(r["arch"])) for r in timed])
    measured = [float(r["latency_ms_median"]) for r in timed]
    want = fit_correction(table.raw_sum(tiny_space, genes).latency_ms, table.pieces(tiny_space, genes), measured)
    assert {k: v for k, v in fit.items() if k not in ("seed", "recalibrated")} == want
    assert fit["seed"] == fit_before["seed"] and fit["recalibrated"].startswith("20")
    record = table.meta["recalibration"]
    assert record["status"] == "complete" and record["networks"] == 4 and record["key_drift"]["keys"] == 3
    # the earlier validation judged the old correction with timings of another session: set aside, not deleted
    assert "validations" not in table.meta and not list(out.glob("validation-s*.csv"))
    (old,) = out.glob("superseded-*")
    assert (old / "validation-s5.csv").is_file() and "5" in json.loads((old / "validations.json").read_text())[
        "validations"]

    # a second recalibration keeps the first one's timings and times the networks afresh
    monkeypatch.setattr("latency_tables.validation.utc_stamp", lambda: "20261201T000000Z")
    recalibrate_table(out, progress=False, drift_check=0)
    assert rows(out / "recalibration-20261201T000000Z.csv") == timed
    assert len(rows(out / RECALIBRATION_CSV)) == 4 and len(LatencyTable.load(out).meta["corrections"]) == 2


@pytest.mark.runtime
def test_an_interrupted_recalibration_times_only_what_is_missing(tiny_space, tmp_path, monkeypatch):
    out = tmp_path / "table"
    build_table(tiny_space, "ort", "fp32", out, protocol=FAST, device="box", fit_networks=4, progress=False,
                log=lambda _: None)
    import latency_tables.validation as validation

    real = validation.correction_on  # interrupted after timing every network, before the fit
    monkeypatch.setattr(validation, "correction_on", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        recalibrate_table(out, progress=False, drift_check=0)
    first = rows(out / RECALIBRATION_CSV)
    assert len(first) == 4 and LatencyTable.load(out).meta["recalibration"]["status"] == "running"
    monkeypatch.setattr(validation, "correction_on", real)
    fit = recalibrate_table(out, progress=False, drift_check=0)
    assert rows(out / RECALIBRATION_CSV) == first  # nothing timed twice
    assert fit == fit_correction_of(out)


def fit_correction_of(out):
    meta = LatencyTable.load(out).meta
    assert meta["recalibration"]["status"] == "complete"
    return meta["correction"]


def test_a_shipped_table_is_recalibrated_into_a_copy_only(tmp_path):
    table = shipped_tables()[0]
    before = (table / "meta.json").read_bytes()
    with pytest.raises(TableError, match="never rewritten; recalibrate a copy elsewhere with --out"):
        recalibrate_table(table, progress=False)
    with pytest.raises(TableError, match="never rewritten"):
        recalibrate_table(tmp_path / "x", out=table, progress=False)
    assert (table / "meta.json").read_bytes() == before
