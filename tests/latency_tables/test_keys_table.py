"""Lookup-table keys, the space index, the table format and vectorised prediction (no runtime needed)."""

import json

import numpy as np
import pytest

from latency_tables.analytic import AnalyticCostModel, key_summary
from latency_tables.build import accuracy_summary
from latency_tables.keys import LutKey, SpaceIndex, arch_keys
from latency_tables.table import (
    DeviceProfile,
    LatencyTable,
    TableError,
    current_revisions,
    fit_correction,
    header_line,
    kendall_tau,
    row_line,
)
from search_spaces import ArchConfig, HwnasError, get_space


def test_space_index_ids_are_the_keys_of_each_architecture():
    space = get_space("small")
    index = SpaceIndex(space)
    assert len(index.keys) == len(set(index.keys)) == 1207
    genes = space.sample_genes(np.random.default_rng(0), 200)
    ids = index.ids(genes)
    assert ids.shape == (200, index.parts)
    for row, g in zip(ids, genes, strict=True):
        assert [index.keys[i] for i in row if i >= 0] == arch_keys(space.from_genes(g))


def test_key_round_trips_through_its_csv_row_and_names_bad_values():
    for key in SpaceIndex(get_space("imagenet")).keys[::97]:
        assert LutKey.from_row({k: str(v) for k, v in key.to_row().items()}) == key
    row = {k: str(v) for k, v in SpaceIndex(get_space("small")).keys[5].to_row().items()}
    with pytest.raises(HwnasError, match="input '12x12' .*expected HxWxC"):
        LutKey.from_row({**row, "input": "12x12"})
    with pytest.raises(HwnasError, match="kind 'layer'"):
        LutKey.from_row({**row, "kind": "layer"})


def test_explicit_widths_make_their_own_key_and_round_trip():
    pruned = ArchConfig.from_str("r32_i1_n10|stem_c16_k3_s2_relu|mbv3_k3_e4_m50_c16_s1_se0.25_q5_hswish_noskip,"
                                 "shufflev2_k3_m20_b10_c24_s2|head_c64_relu")
    keys, grid_keys = arch_keys(pruned), arch_keys(pruned.on_grid())
    assert keys[0] == grid_keys[0] and keys[-1] == grid_keys[-1]
    assert [k.extra for k in keys[1:3]] == ["m50-q5-noskip", "m20-b10"]
    assert [k.extra for k in grid_keys[1:3]] == ["", ""]
    assert keys[1].to_str() == "block:mbv3-16x16x16-c16-e4-k3-s1-se0.25-hswish-m50-q5-noskip"
    assert grid_keys[1].to_str() == "block:mbv3-16x16x16-c16-e4-k3-s1-se0.25-hswish"
    for key, block in zip(keys[1:3], [b for stage in pruned.stages for b in stage], strict=True):
        assert LutKey.from_row({k: str(v) for k, v in key.to_row().items()}) == key
        assert key.block_config() == block
    assert key_summary(keys[1]) != key_summary(grid_keys[1])
    row = {k: str(v) for k, v in keys[1].to_row().items()}
    for extra, message in [("m50-x3", "cannot read explicit width 'x3'"), ("m5-m6", "mid is given twice"),
                           ("b4", r"-b4: branch channels \(b4\) belong to ShuffleNet units")]:
        with pytest.raises(HwnasError, match=message):
            LutKey.from_row({**row, "extra": extra}).block_config()


def fake_latency(key: LutKey) -> float:
    """A deterministic stand-in for a measurement: grows with the piece's MACs."""
    return 0.01 + key_summary(key)[1] * 1e-6


def write_table(path, space, profile=None, drop=(), correction=None):
    index = SpaceIndex(space)
    path.mkdir(parents=True, exist_ok=True)
    lines = [header_line()] + [row_line(k, fake_latency(k), 0.001, 50) for i, k in enumerate(index.keys)
                               if i not in drop]
    (path / "table.csv").write_text("".join(lines))
    profile = profile or DeviceProfile("testbox", "ort", "fp32", 1, "onnxruntime 1", "cpu")
    meta = {"space": space.name, "profile": profile.to_dict(), "protocol": {"threads": 1, "warmup": 1, "runs": 5},
            "keys": len(index.keys), "revisions": current_revisions(profile.runtime, profile.precision)}
    if correction:
        meta["correction"] = correction
    (path / "meta.json").write_text(json.dumps(meta))
    return path


def test_vectorised_prediction_equals_the_per_architecture_sum_with_the_correction(tmp_path):
    space = get_space("small")
    table = LatencyTable.load(write_table(tmp_path / "t", space, correction={"scale": 1.5, "per_piece_ms": -0.002,
                                                                             "offset_ms": 0.2}))
    genes = space.sample_genes(np.random.default_rng(1), 300)
    pred = table.predict(space, genes)
    assert not pred.estimated.any()
    expected = [1.5 * sum(fake_latency(k) for k in arch_keys(space.from_genes(g)))
                - 0.002 * len(arch_keys(space.from_genes(g))) + 0.2 for g in genes]
    np.testing.assert_allclose(pred.latency_ms, expected, rtol=1e-5)
    assert table.predict_arch(space.from_genes(genes[7])) == pytest.approx(expected[7], rel=1e-5)
    # MACs and the fake latency agree on order, so the rank correlation is exact
    macs = AnalyticCostModel().estimate_genes(space, genes)["macs"]
    assert kendall_tau(macs, table.raw_sum(space, genes).latency_ms) > 0.99


def test_missing_keys_raise_or_are_estimated_and_flagged(tmp_path):
    space = get_space("small")
    index = SpaceIndex(space)
    dropped = 40
    table = LatencyTable.load(write_table(tmp_path / "t", space, drop={dropped}))
    assert table.missing_keys(space) == [index.keys[dropped]]
    genes = space.sample_genes(np.random.default_rng(2), 2000)
    uses = (index.ids(genes) == dropped).any(axis=1)
    assert uses.any() and not uses.all()
    with pytest.raises(TableError, match=f"lacks 1 key.*{index.keys[dropped].to_str()}.*estimate"):
        table.predict(space, genes)
    pred = table.predict(space, genes, estimate_missing=True)
    np.testing.assert_array_equal(pred.estimated, uses)
    full = LatencyTable.load(write_table(tmp_path / "full", space)).predict(space, genes).latency_ms
    np.testing.assert_array_equal(pred.latency_ms[~uses], full[~uses])
    # the estimate comes from a model fitted on the measured keys: close to the truth for a smooth latency
    assert np.abs(pred.latency_ms[uses] / full[uses] - 1).max() < 0.1


@pytest.mark.parametrize("damage, message", [
    (lambda t: t[:-7], "truncated"),
    (lambda t: t.replace(",50\n", ",fifty\n", 1), "line 2 is corrupt"),
    (lambda t: t.replace("latency_ms_iqr", "iqr", 1), "has columns"),
    (lambda t: t + t.splitlines(keepends=True)[1], "repeats key"),
    (lambda t: t.replace(",0.001,", ",-0.001,", 1), "line 2 is corrupt.*not a valid measurement"),
])
def test_corrupt_tables_are_refused_with_the_file_and_line(tmp_path, damage, message):
    path = write_table(tmp_path / "t", get_space("small"))
    csv_path = path / "table.csv"
    csv_path.write_text(damage(csv_path.read_text()))
    with pytest.raises(TableError, match=message):
        LatencyTable.load(path)


def test_missing_or_foreign_table_files(tmp_path):
    with pytest.raises(TableError, match="does not exist"):
        LatencyTable.load(tmp_path / "nowhere")
    path = write_table(tmp_path / "t", get_space("small"))
    (path / "meta.json").write_text("{not json")
    with pytest.raises(TableError, match="meta.json is not valid UTF-8 JSON"):
        LatencyTable.load(path)


def test_a_table_for_another_setting_is_refused_naming_each_difference(tmp_path):
    table = LatencyTable.load(write_table(tmp_path / "t", get_space("small")))
    assert table.table_id == "testbox-ort-fp32-t1"
    table.check(space="small", runtime="ort", precision="fp32", device="testbox", threads=1)
    with pytest.raises(TableError, match="runtime is 'ort', not 'litert'; precision is 'fp32', not 'int8'"):
        table.check(runtime="litert", precision="int8")
    with pytest.raises(TableError, match="space is 'small', not 'imagenet'"):
        table.check(space="imagenet")


def test_correction_fit_and_accuracy_summary():
    raw, pieces = np.array([1.0, 2.0, 3.0, 5.0, 4.0]), np.array([10, 12, 9, 14, 11])
    fit = fit_correction(raw, pieces, 1.25 * raw - 0.005 * pieces + 0.1)
    assert fit["scale"] == pytest.approx(1.25) and fit["offset_ms"] == pytest.approx(0.1)
    assert fit["per_piece_ms"] == pytest.approx(-0.005)
    assert fit["fit_mape"] == pytest.approx(0, abs=1e-12)
    measured = np.array([1.0, 2.0, 4.0, 8.0])
    summary = accuracy_summary(measured * np.array([1.04, 0.92, 1.12, 1.2]), measured)
    assert (summary["within_5"], summary["within_10"], summary["within_15"]) == (0.25, 0.5, 0.75)
    assert summary["mape"] == pytest.approx((0.04 + 0.08 + 0.12 + 0.2) / 4)
    assert summary["kendall_tau"] == pytest.approx(1.0)


def test_predicting_100k_architectures_is_vectorised(tmp_path):
    space = get_space("small")
    table = LatencyTable.load(write_table(tmp_path / "t", space))
    genes = space.sample_genes(np.random.default_rng(3), 100_000)
    pred = table.predict(space, genes)
    assert pred.latency_ms.shape == (100_000,) and np.isfinite(pred.latency_ms).all()


def test_the_shipped_tables_load_and_are_found_by_their_settings():
    from latency_tables import find_table, shipped_tables

    paths = shipped_tables()
    assert paths, "latency_tables/data/ ships at least one table"
    for path in paths:
        table = LatencyTable.load(path)
        space = get_space(table.space_name)
        assert table.missing_keys(space) == [] and table.meta["status"] == "complete"
        v = table.meta["validation"]
        assert v["samples"] >= 100 and 0 <= v["within_10"] <= 1
        found = find_table(table.space_name, table.profile.runtime, table.profile.precision,
                           table.profile.device, table.profile.threads)
        assert found.path == path
    with pytest.raises(TableError, match="no table for space 'small' on ort int8, 4 thread"):
        find_table("small", "ort", "int8", threads=4)


def test_the_weights_term_is_fitted_and_predicted_alike_vectorised_and_per_architecture(tmp_path):
    """The correction's cost per million weights (a whole network streams its weights; a piece timed alone keeps
    them in cache): recovered exactly from networks that follow it, and added by both prediction paths."""
    raw, pieces = np.array([1.0, 2.0, 3.0, 5.0, 4.0, 2.5]), np.array([10, 12, 9, 14, 11, 13])
    mparams = np.array([0.3, 1.2, 0.8, 2.0, 0.5, 1.7])
    fit = fit_correction(raw, pieces, 1.1 * raw + 0.004 * pieces + 0.25 * mparams + 0.05, mparams)
    assert fit["scale"] == pytest.approx(1.1) and fit["per_piece_ms"] == pytest.approx(0.004)
    assert fit["per_mparam_ms"] == pytest.approx(0.25) and fit["offset_ms"] == pytest.approx(0.05)
    assert "per_mparam_ms" not in fit_correction(raw, pieces, 1.1 * raw + 0.05)  # three terms unless asked
    with pytest.raises(HwnasError, match="on 4 terms needs at least 4 measured networks; got 3"):
        fit_correction(raw[:3], pieces[:3], raw[:3], mparams[:3])
    space = get_space("small")
    correction = {"scale": 1.5, "per_piece_ms": -0.002, "offset_ms": 0.2, "per_mparam_ms": 0.3}
    table = LatencyTable.load(write_table(tmp_path / "t", space, correction=correction))
    genes = space.sample_genes(np.random.default_rng(4), 200)
    params = AnalyticCostModel().estimate_genes(space, genes)["params"] / 1e6
    expected = [1.5 * sum(fake_latency(k) for k in arch_keys(space.from_genes(g)))
                - 0.002 * len(arch_keys(space.from_genes(g))) + 0.3 * p + 0.2
                for g, p in zip(genes, params, strict=True)]
    np.testing.assert_allclose(table.predict(space, genes).latency_ms, expected, rtol=1e-5)
    assert table.predict_arch(space.from_genes(genes[5])) == pytest.approx(expected[5], rel=1e-5)
