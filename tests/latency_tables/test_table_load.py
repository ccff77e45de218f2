"""Loading and pricing with a shipped table: torch-free, and clear errors for a damaged meta.json."""

import json
import shutil
import subprocess
import sys

import pytest

from latency_tables.table import LatencyTable, TableError, shipped_tables

TORCH_FREE = """
import dataclasses
import sys
import numpy as np
from latency_tables.table import LatencyTable, shipped_tables
from search_spaces import get_space

path = next(p for p in shipped_tables() if p.name.startswith("small-") and "-ort-fp32-" in p.name)
table = LatencyTable.load(path)
space = get_space(table.space_name)
rng = np.random.default_rng(0)
archs = [space.sample(rng) for _ in range(8)]
genes = np.stack([space.to_genes(a) for a in archs])
batch = table.predict(space, genes, estimate_missing=True).latency_ms
one = table.predict_arch(archs[0])
many = table.predict_archs(space, archs).latency_ms
assert np.all(batch > 0) and abs(one - batch[0]) < 1e-9 and np.allclose(many, batch), (batch, one, many)
site = next(s for s in archs[0].sites() if s.block.expand > 1 and s.block.family != "shufflev2")
stages = [list(stage) for stage in archs[0].stages]
stages[site.stage][site.position] = dataclasses.replace(site.block, mid=site.block.mid_channels(site.in_channels) - 3)
pruned = dataclasses.replace(archs[0], stages=tuple(tuple(stage) for stage in stages))
estimate = table.predict_archs(space, [pruned], estimate_missing=True)
assert estimate.estimated.tolist() == [True] and 0 < estimate.latency_ms[0] < one, (estimate, one)
print(sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")))
"""


def test_loading_and_predicting_does_not_import_torch():
    run = subprocess.run([sys.executable, "-c", TORCH_FREE], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


@pytest.mark.parametrize("content", [b"\xff\xfe{not utf-8", b"[1, 2, 3]\n", b'"a string"\n'])
def test_a_meta_json_that_is_not_a_utf8_json_object_is_a_table_error(tmp_path, content):
    table = tmp_path / "table"
    shutil.copytree(shipped_tables()[0], table)
    (table / "meta.json").write_bytes(content)
    with pytest.raises(TableError, match="meta.json"):
        LatencyTable.load(table)


def test_shipped_tables_load():
    tables = [LatencyTable.load(p) for p in shipped_tables()]
    assert len(tables) >= 6
    assert all(json.loads((t.path / "meta.json").read_text())["status"] == "complete" for t in tables if t.path)


def _copy_as_device(src, dst, device, cpu):
    shutil.copytree(src, dst)
    meta = json.loads((dst / "meta.json").read_text())
    meta["profile"].update(device=device, cpu_model=cpu)
    (dst / "meta.json").write_text(json.dumps(meta))
    return dst


def test_find_table_prefers_this_machines_table(tmp_path, monkeypatch):
    from latency_tables import table as table_module

    src = next(p for p in shipped_tables() if p.name == "small-amd-epyc-2c-ort-fp32-t1")
    pi = _copy_as_device(src, tmp_path / "pi", "rpi4-4c", "Cortex-A72")
    box = _copy_as_device(src, tmp_path / "box", "xeon-8c", "Intel Xeon Gold")
    monkeypatch.setattr(table_module, "cpu_model", lambda: "Intel Xeon Gold")
    monkeypatch.setattr(table_module, "default_device", lambda: "xeon-8c")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning when this machine's table is there
        assert table_module.find_table("small", "ort", "fp32", search=[pi, box]).path == box
    assert table_module.find_table("small", "ort", "fp32", device="rpi4-4c", search=[pi, box]).path == pi


def test_find_table_warns_naming_both_devices_when_only_another_devices_table_matches(monkeypatch):
    from latency_tables import table as table_module

    monkeypatch.setattr(table_module, "cpu_model", lambda: "Apple M2")
    monkeypatch.setattr(table_module, "default_device", lambda: "apple-m2-8c")
    with pytest.warns(table_module.DeviceMismatchWarning) as caught:
        table = table_module.find_table("small", "ort", "fp32")
    assert table.profile.device == "amd-epyc-2c"
    message = str(caught[0].message)
    assert "'amd-epyc-2c'" in message and "AMD EPYC" in message and "'apple-m2-8c'" in message and "Apple M2" in message
    assert len(caught) == 1


@pytest.mark.parametrize(("name", "change", "expected"), [
    ("table.csv", lambda line: line.rstrip("\n") + ",extra\n", "line 6 is corrupt: it has 15 fields; expected 14"),
    ("table.csv", lambda line: line.rsplit(",", 1)[0] + "\n", "line 6 is corrupt: it has 13 fields; expected 14"),
    ("networks.csv", lambda line: line.rstrip("\n") + ",1\n", "line 6 is corrupt: it has 6 fields; expected 5"),
])
def test_a_csv_row_with_more_or_fewer_fields_than_its_header_is_refused(tmp_path, name, change, expected):
    from latency_tables.build import read_networks

    table = tmp_path / "t"
    shutil.copytree(next(p for p in shipped_tables() if p.name == "small-amd-epyc-2c-ort-fp32-t1"), table)
    lines = (table / name).read_text().splitlines(True)
    lines[5] = change(lines[5])  # line 6 of the file
    (table / name).write_text("".join(lines))
    with pytest.raises(TableError) as err:
        LatencyTable.load(table) if name == "table.csv" else read_networks(table / name)
    assert expected in str(err.value) and str(table / name) in str(err.value)
