"""Refitting a finished table's correction on more networks measures only the new ones and drops stale summaries."""

import csv

import pytest

from latency_tables.build import build_table, refit_correction
from latency_tables.runtimes import Protocol
from latency_tables.table import LatencyTable, TableError, shipped_tables
from latency_tables.validation import validate_table

pytest.importorskip("onnxruntime", reason="building a table needs the runtimes extra")
FAST = Protocol(threads=1, warmup=2, runs=5)


def network_rows(path):
    return list(csv.DictReader((path / "networks.csv").open()))


@pytest.mark.runtime
def test_refit_measures_only_the_new_networks_and_validation_reuses_its_subnets(tiny_space, tmp_path):
    out, logged = tmp_path / "table", []
    build_table(tiny_space, "ort", "fp32", out, protocol=FAST, device="box", fit_networks=4, progress=False,
                log=lambda _: None)
    first = validate_table(out, samples=3, seed=5, progress=False, save=True)
    before_fit, before_val = network_rows(out), (out / "validation-s5.csv").read_text()

    fit = refit_correction(out, 7, progress=False, pin_cpu=0, log=logged.append)
    table = LatencyTable.load(out)
    rows = network_rows(out)
    assert fit["networks"] == 7 == len(rows) and rows[:4] == before_fit  # the 4 measured ones kept as they were
    assert table.meta["correction"] == fit and fit["seed"] == 0
    assert "validation" not in table.meta and "validations" not in table.meta  # computed with the old correction
    assert "refitted on 7 networks (was 4)" in logged[0]

    again = validate_table(out, samples=3, seed=5, progress=False, save=True)
    assert (out / "validation-s5.csv").read_text() == before_val  # the same subnets, not measured again
    assert again["samples"] == first["samples"] == 3 and again["measured_ms_range"] == first["measured_ms_range"]
    with pytest.raises(TableError, match="fitted on 7 networks; refit on as many or more"):
        refit_correction(out, 5, progress=False)


def test_a_shipped_table_is_not_refitted_in_place():
    table = shipped_tables()[0]
    before = (table / "meta.json").read_bytes()
    with pytest.raises(TableError, match="never rewritten; refit a copy"):
        refit_correction(table, 100, progress=False)
    assert (table / "meta.json").read_bytes() == before
