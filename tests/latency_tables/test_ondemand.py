"""Keys a table lacks (pruned, off-grid widths) measured on demand into a copy of the table (tiny torch table)."""

import hashlib
import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from latency_tables import ondemand
from latency_tables.build import LOCK_NAME, build_table
from latency_tables.keys import arch_keys
from latency_tables.ondemand import CannotMeasure, measure_missing, measured_or_source, on_demand_keys
from latency_tables.runtimes import Protocol, RuntimeMissing, TorchRuntime
from latency_tables.table import SHIPPED, LatencyTable, TableError, read_rows
from search_spaces import spaces as spaces_module
from search_spaces.errors import HwnasError
from search_spaces.plans import PrunePlan, channel_groups
from tests.latency_tables.conftest import tiny

FAST = Protocol(threads=1, warmup=2, runs=5)


def digest(path: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())
            if p.is_file() and p.name != LOCK_NAME}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A finished tiny torch table, built once for the module (read-only for tests)."""
    out = tmp_path_factory.mktemp("ondemand") / "table"
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(spaces_module.SPACES, "tiny", tiny)
        build_table(tiny(), "torch", "fp32", out, protocol=FAST, device="box", fit_networks=3, progress=False,
                    log=lambda _: None)
    return out


def pruned_archs():
    """Three pruned subnets of sampled tiny subnets: every second channel, and all but the last three."""
    space, rng = tiny(), np.random.default_rng(3)
    out = []
    for cut in (lambda w: range(0, w, 2), lambda w: range(max(1, w - 3)), lambda w: range(0, w, 2)):
        arch = space.sample(rng)
        out.append(PrunePlan(arch.key, {g: list(cut(w)) for g, w in channel_groups(arch).items()}).apply_to(arch))
    return out


def missing_keys(table, archs):
    return sorted({k for a in archs for k in arch_keys(a) if k not in table.rows})


@pytest.mark.runtime
def test_missing_keys_are_measured_into_a_copy_and_the_source_is_untouched(source, tmp_path):
    before, src = digest(source), LatencyTable.load(source)
    archs = pruned_archs()
    missing = missing_keys(src, archs)
    assert len(missing) >= 5
    for arch in archs:
        with pytest.raises(TableError, match="lacks"):
            src.predict_arch(arch)
    copy = measure_missing(source, archs, tmp_path / "copy", progress=False, drift_check=4, drift_tolerance=0.9)
    assert digest(source) == before
    assert all(k in copy.rows for a in archs for k in arch_keys(a))
    assert set(copy.rows) == set(src.rows) | set(missing)
    assert not copy.predict_archs(tiny(), archs).estimated.any()  # no estimate needed, none made
    assert (tmp_path / "copy" / "table.csv").read_bytes().startswith((source / "table.csv").read_bytes())
    assert set(on_demand_keys(copy)) == {k.to_str() for k in missing}
    assert on_demand_keys(src) == {}
    meta = json.loads((tmp_path / "copy" / "meta.json").read_text())
    assert meta["on_demand"]["source"] == {"path": str(source), "table_id": src.table_id, "rows": len(src.rows)}
    (run,) = meta["on_demand"]["runs"]
    assert run["keys_measured"] == len(missing) and 0.1 < run["drift"] < 1.9 and run["seconds_per_key"] > 0
    assert meta["correction"] == src.meta["correction"] and meta["profile"] == src.meta["profile"]
    assert (tmp_path / "copy" / "networks.csv").read_bytes() == (source / "networks.csv").read_bytes()
    assert not (tmp_path / "copy" / "models").exists()


@pytest.mark.runtime
def test_an_interrupted_run_resumes_without_measuring_twice_and_a_second_run_measures_nothing(
        source, tmp_path, monkeypatch):
    archs, out = pruned_archs(), tmp_path / "copy"
    missing = missing_keys(LatencyTable.load(source), archs)
    real, measured = TorchRuntime.measure_many, []

    def flaky(self, paths, protocol, seed=0):
        if measured:  # the second group is cut off
            raise KeyboardInterrupt
        measured.extend(paths)
        return real(self, paths, protocol, seed)

    monkeypatch.setattr(ondemand, "GROUP", 2)
    monkeypatch.setattr(TorchRuntime, "measure_many", flaky)
    with pytest.raises(KeyboardInterrupt):
        measure_missing(source, archs, out, progress=False, drift_check=0)
    assert len(measured) == 2 and len(list((out / "models").iterdir())) == len(missing) - 2  # converted, kept
    first = (out / "table.csv").read_bytes()

    def counting(self, paths, protocol, seed=0):
        measured.extend(paths)
        return real(self, paths, protocol, seed)

    monkeypatch.setattr(TorchRuntime, "measure_many", counting)
    copy = measure_missing(source, archs, out, progress=False, drift_check=0)
    assert len(measured) == len(missing) and len({p.name for p in measured}) == len(missing)
    assert (out / "table.csv").read_bytes().startswith(first)
    assert set(on_demand_keys(copy)) == {k.to_str() for k in missing}
    runs = copy.meta["on_demand"]["runs"]
    assert [r["keys_measured"] for r in runs] == [len(missing) - 2]
    after = digest(out)
    again = measure_missing(source, archs, out, progress=False)  # nothing to measure: no drift check either
    assert len(measured) == len(missing) and digest(out) == after and again.rows == copy.rows


def test_a_machine_that_cannot_measure_the_table_says_why_before_writing(source, tmp_path, monkeypatch):
    src, archs = LatencyTable.load(source), pruned_archs()
    other_version = replace(src, meta={**src.meta, "profile": {**src.meta["profile"], "runtime_version": "torch 0.1"}})
    with pytest.raises(CannotMeasure, match=r"measured with torch 0\.1, this machine has torch"):
        measure_missing(other_version, archs, tmp_path / "a")
    other_device = replace(src, meta={**src.meta, "profile": {**src.meta["profile"], "device": "phone",
                                                              "cpu_model": "Cortex-A76"}})
    with pytest.raises(CannotMeasure, match="measured on device 'phone' .CPU Cortex-A76., not on this machine"):
        measure_missing(other_device, archs, tmp_path / "b")

    # rows 20x slower than this machine measures them: even a busy moment here (keys 2-5x slower) is a drift of
    # -75% or more, far past the 10% allowed
    slower_then = replace(src, rows={k: (20 * v[0], v[1], v[2]) for k, v in src.rows.items()}, path=None)
    with pytest.raises(CannotMeasure, match=r"keys of table box-torch-fp32-t1 now measure -(\d+)% .median.") as err:
        measure_missing(slower_then, archs, tmp_path / "d", progress=False, drift_check=4)
    assert int(re.search(r"now measure -(\d+)%", str(err.value)).group(1)) >= 75
    assert not read_rows(tmp_path / "d" / "table.csv").keys() - slower_then.rows.keys()  # copied, nothing added

    def missing(self):
        raise RuntimeMissing("runtime 'torch' needs the package torch, which is not installed")

    monkeypatch.setattr(TorchRuntime, "version", missing)
    table, why = measured_or_source(src, archs, tmp_path / "c")
    assert table is src and "needs the package torch" in why
    assert not any((tmp_path / d).exists() for d in "abc")


def test_the_source_a_shipped_table_and_another_table_are_never_written(source, tmp_path):
    before = digest(source)
    with pytest.raises(TableError, match="is the source table; .*into a copy"):
        measure_missing(source, pruned_archs(), source)
    with pytest.raises(TableError, match="inside hwnas's shipped tables"):
        measure_missing(source, pruned_archs(), SHIPPED / "copy")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(TableError, match="not a copy of table .* holds notes.txt"):
        measure_missing(source, [], other)
    with pytest.raises(HwnasError, match="takes architectures"):
        measure_missing(source, ["r12"], tmp_path / "x")
    assert digest(source) == before and (other / "notes.txt").read_text() == "mine"
    assert not (SHIPPED / "copy").exists()



@pytest.mark.runtime
def test_pruned_subnets_of_the_shipped_small_ort_table_are_priced_from_measured_keys(tmp_path):
    from search_spaces.spaces import SPACES

    shipped = SHIPPED / "small-amd-epyc-2c-ort-fp32-t1"
    src = LatencyTable.load(shipped)
    try:
        ondemand._measurable(src)
    except CannotMeasure as err:
        pytest.skip(f"this machine cannot measure the shipped table's keys: {err}")
    space, rng, before = SPACES["small"](), np.random.default_rng(0), digest(shipped)
    archs = []
    for keep in (0.5, 0.75):
        arch = space.sample(rng)
        archs.append(PrunePlan(arch.key, {g: list(range(max(1, int(w * keep)))) for g, w in
                                          channel_groups(arch).items()}).apply_to(arch))
    missing = missing_keys(src, archs)
    copy = measure_missing(shipped, archs, tmp_path / "copy", progress=False, drift_check=0)
    assert digest(shipped) == before and len(missing) >= 10
    assert set(copy.rows) == set(src.rows) | set(missing)
    assert not copy.predict_archs(space, archs).estimated.any()
    assert copy.meta["on_demand"]["runs"][0]["keys_measured"] == len(missing)


@pytest.mark.runtime
def test_a_copy_of_a_copy_keeps_saying_which_keys_were_measured_on_demand(source, tmp_path):
    first, second = pruned_archs()[:1], pruned_archs()[1:]
    copy = measure_missing(source, first, tmp_path / "one", progress=False, drift_check=0)
    again = measure_missing(copy, second, tmp_path / "two", progress=False, drift_check=0)
    src = LatencyTable.load(source)
    assert set(on_demand_keys(again)) == {k.to_str() for k in missing_keys(src, first + second)}
    assert [r["keys_measured"] for r in again.meta["on_demand"]["runs"]] == [
        len(missing_keys(src, first)), len(missing_keys(copy, second))]
    assert again.meta["on_demand"]["source"]["path"] == str(tmp_path / "one")
