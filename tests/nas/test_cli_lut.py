"""`hwnas lut ...` end to end on the tiny space (torch runtime: no conversion, so it is quick)."""

import json

import pytest

from nas.cli import main
from search_spaces import HeadConfig, SearchSpace, StageSpec, StemConfig
from search_spaces import spaces as spaces_module


def micro(*, in_channels: int = 1, num_classes: int = 3) -> SearchSpace:
    return SearchSpace(name="micro", resolutions=(8, 12), in_channels=in_channels, num_classes=num_classes,
                       stem=StemConfig(8, 3, 2, "relu"),
                       stages=(StageSpec(("mbv2", "shufflev2"), (8, 16), (1, 2), 2, (3, 5), (2.0,)),),
                       head=HeadConfig(16, 0, "relu"))


@pytest.fixture(autouse=True)
def micro_space(monkeypatch):
    monkeypatch.setitem(spaces_module.SPACES, "micro", micro)


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


FAST = ("--runtime", "torch", "--warmup", "1", "--runs", "5", "--no-progress")


def test_build_show_validate(capsys, tmp_path):
    out = tmp_path / "t"
    code, text, _ = run(capsys, "lut", "build", "--space", "micro", *FAST, "--device", "box", "--out", str(out),
                        "--fit-networks", "4", "--validate", "6", "--json")
    assert code == 0, text
    data = json.loads(text)
    assert data["table_id"] == "box-torch-fp32-t1" and data["keys"] == data["build"]["keys_measured"]
    assert data["validation"]["samples"] == 6 and data["correction"]["networks"] == 4
    code, text, _ = run(capsys, "lut", "show", str(out))
    assert code == 0 and f"{data['keys']} of {data['keys']} keys measured (complete)" in text
    code, text, _ = run(capsys, "lut", "validate", "--table", str(out), "--samples", "5", "--seed", "9", "--json",
                        "--no-progress", "--save")
    summary = json.loads(text)
    assert code == 0 and {"mape", "rmspe", "within_5", "within_10", "within_15", "kendall_tau"} <= set(summary)
    assert json.loads((out / "meta.json").read_text())["validation"] == summary
    # recalibrated into a copy: the copy's correction is timed now, the table itself is untouched
    before = (out / "meta.json").read_bytes()
    code, text, _ = run(capsys, "lut", "recalibrate", "--table", str(out), "--out", str(tmp_path / "now"),
                        "--drift-check", "2", "--no-progress")
    assert code == 0 and f"table {tmp_path / 'now'}: correction fitted on 4 networks timed now" in text
    assert (out / "meta.json").read_bytes() == before
    code, text, _ = run(capsys, "lut", "show", str(tmp_path / "now"))
    assert code == 0 and "(fitted on 4 networks timed again on 20" in text and "hwnas lut recalibrate" in text
    code, _, err = run(capsys, "lut", "recalibrate", "--table", str(tmp_path / "none"), "--no-progress")
    assert code == 2 and "does not exist" in err and err.count("\n") == 1


def test_bad_tables_exit_2_naming_the_problem(capsys, tmp_path):
    code, _, err = run(capsys, "lut", "show", str(tmp_path / "none"))
    assert code == 2 and "does not exist" in err
    out = tmp_path / "t"
    assert run(capsys, "lut", "build", "--space", "micro", *FAST, "--out", str(out), "--fit-networks", "3")[0] == 0
    csv_text = (out / "table.csv").read_text()
    (out / "table.csv").write_text(csv_text.replace(",5\n", ",five\n", 1))
    code, _, err = run(capsys, "lut", "validate", "--table", str(out), "--samples", "3", "--no-progress")
    assert code == 2 and "table.csv line 2 is corrupt" in err
    code, _, err = run(capsys, "lut", "build", "--space", "micro", "--runtime", "ort", "--precision", "fp16",
                       "--out", str(tmp_path / "x"))
    assert code == 2 and "runtime 'ort' has no precision 'fp16'; allowed: fp32, int8" in err
    code, _, err = run(capsys, "lut", "kit-export", "--space", "micro", *FAST, "--out", str(tmp_path / "kit"))
    assert code == 2 and "choose --runtime ort or litert" in err


def test_arch_cost_predicts_latency_with_a_table(capsys, tmp_path):
    from latency_tables import LatencyTable

    out = tmp_path / "t"
    assert run(capsys, "lut", "build", "--space", "micro", *FAST, "--device", "box", "--out", str(out),
               "--fit-networks", "3")[0] == 0
    arch = micro().sample(__import__("numpy").random.default_rng(0))
    code, text, _ = run(capsys, "arch", "cost", arch.to_str(), "--table", str(out), "--json")
    assert code == 0
    assert json.loads(text)["latency_ms"] == {"box-torch-fp32-t1": round(LatencyTable.load(out).predict_arch(arch),
                                                                          6)}
    code, _, err = run(capsys, "arch", "cost", "mobilenet_v2", "--table", str(out))
    assert code == 2 and "lacks" in err and "key(s) of this architecture" in err


@pytest.mark.parametrize(("content", "expected"), [(b"\xff\xfe{}", "not valid UTF-8 JSON"),
                                                   (b"[1]", "holds a JSON list, not an object")])
def test_build_on_a_damaged_meta_json_exits_2_and_leaves_it(capsys, tmp_path, content, expected):
    out = tmp_path / "table"
    out.mkdir()
    (out / "meta.json").write_bytes(content)
    code, _, err = run(capsys, "lut", "build", "--space", "micro", "--out", str(out), *FAST)
    assert code == 2 and expected in err and "Traceback" not in err
    assert (out / "meta.json").read_bytes() == content
