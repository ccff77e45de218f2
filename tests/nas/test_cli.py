import json
import subprocess
import sys

import pytest

from nas.cli import main
from search_spaces import REFERENCES, ArchConfig, get_space, reference


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_reference_prints_the_canonical_string(capsys):
    code, out, _ = run(capsys, "arch", "reference", "shufflenet_v2_x1_0")
    assert code == 0 and ArchConfig.from_str(out.strip()) == reference("shufflenet_v2_x1_0")
    code, out, _ = run(capsys, "arch", "reference")
    assert out.split() == list(REFERENCES)


def test_cost_json_uses_the_design_field_names(capsys):
    code, out, _ = run(capsys, "arch", "cost", "mobilenet_v2", "--json")
    data = json.loads(out)
    assert code == 0
    assert data["params"] == 3_504_872 and data["flops"] == 2 * data["macs"] == 601_548_544
    assert {"memory_access", "memory_access_bytes", "peak_activation", "peak_activation_bytes", "key"} <= set(data)
    assert data["memory_access_bytes"] == 4 * data["memory_access"]


def test_cost_reads_strings_and_json_files(capsys, tmp_path):
    arch = get_space("small").sample(__import__("numpy").random.default_rng(0))
    (tmp_path / "a.json").write_text(arch.to_json())
    (tmp_path / "a.txt").write_text(arch.to_str() + "\n")
    keys = {json.loads(run(capsys, "arch", "cost", src, "--json", "--space", "small")[1])["key"]
            for src in (arch.to_str(), str(tmp_path / "a.json"), str(tmp_path / "a.txt"))}
    assert keys == {arch.key}


def test_space_show_reports_the_size(capsys):
    code, out, _ = run(capsys, "space", "show", "imagenet", "--json")
    data = json.loads(out)
    assert code == 0 and data["size"] == get_space("imagenet").size() and len(data["stages"]) == 6
    code, out, _ = run(capsys, "space", "show", "small")
    assert "subnets      59,701,469,929,920" in out


def test_space_sample_is_seeded_and_in_the_space(capsys):
    first = run(capsys, "space", "sample", "small", "--n", "3", "--seed", "4")[1].split()
    again = run(capsys, "space", "sample", "small", "--n", "3", "--seed", "4")[1].split()
    assert first == again and len(set(first)) == 3
    for text in first:
        get_space("small").validate(ArchConfig.from_str(text))


@pytest.mark.parametrize("argv, expected", [
    (["arch", "cost", "r32_i1_n10|stem_c16_k3_s2_relu|mbv2_k9_e4_c24_s2|head_c64_relu"], "kernel of a mbv2 block is 9"),
    (["arch", "cost", "does-not-exist.json"], "is not an architecture string"),
    (["arch", "validate", "mobilenet_v2", "--space", "small"], "input channels is 3 but space 'small' has 1"),
    (["space", "show", "huge"], "unknown search space 'huge'"),
])
def test_bad_input_exits_2_with_one_clear_line(capsys, argv, expected):
    code, out, err = run(capsys, *argv)
    assert code == 2 and expected in err and "Traceback" not in err and out == ""


def test_console_entry_point_exits_2_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "nas.cli", "arch", "cost", "r32|nope"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("hwnas: error: ") and "Traceback" not in proc.stderr
