import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
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


def test_supernet_train_then_eval_on_digits(capsys, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text("dataset: digits\nbatch_size: 128\nbn_recal_images: 64\nthreads: 1\n"
                      "phases:\n- {name: full, epochs: 1, lr: 0.05}\n")
    run_dir = tmp_path / "run"
    code, out, _ = run(capsys, "supernet", "train", "--config", str(config), "--run-dir", str(run_dir),
                       "--no-progress", "--json")
    assert code == 0
    trained = json.loads(out)
    assert trained["epochs"] == 1 and len(trained["history"]) == 1
    assert (run_dir / "config.yaml").is_file() and (run_dir / "checkpoint" / "supernet.json").is_file()
    # Training again into the same directory without --resume is refused; nothing is touched.
    code, _, err = run(capsys, "supernet", "train", "--config", str(config), "--run-dir", str(run_dir))
    assert code == 2 and "already holds a checkpoint; pass --resume" in err
    space = get_space("small")
    arch = space.sample(__import__("numpy").random.default_rng(3))
    code, out, _ = run(capsys, "supernet", "eval", str(run_dir), "--arch", arch.to_str(), "--random", "1", "--json")
    assert code == 0
    rows = json.loads(out)["subnets"]
    assert [r["arch"] for r in rows][0] == arch.to_str() and len(rows) == 2
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows)
    # The default evaluation is the largest and the smallest subnet, with the accuracies training logged.
    code, out, _ = run(capsys, "supernet", "eval", str(run_dir), "--json")
    rows = json.loads(out)["subnets"]
    assert [r["name"] for r in rows] == ["largest", "smallest"]
    assert rows[0]["accuracy"] == pytest.approx(trained["history"][0]["acc_largest"], abs=5e-6)


@pytest.mark.parametrize("argv, expected", [
    (["supernet", "train", "--config", "nope.yaml"], "config file nope.yaml does not exist"),
    (["supernet", "eval", "no/such/run"], "no supernet checkpoint in no/such/run"),
    (["supernet", "train", "--dataset", "cifar10", "--data-path", "/no/cifar", "--run-dir", "RUN"], "/no/cifar"),
    (["supernet", "eval", "RUN", "--arch", "r32_i1_n10|bogus"], "segment"),
])
def test_supernet_bad_input_exits_2(capsys, tmp_path, argv, expected):
    needs_run = argv[1] == "eval" and "RUN" in argv
    argv = [str(tmp_path / "run") if a == "RUN" else a for a in argv]
    if needs_run:
        config = tmp_path / "tiny.yaml"
        config.write_text("dataset: digits\nbatch_size: 256\nbn_recal_images: 32\nthreads: 1\n"
                          "phases:\n- {name: full, epochs: 1, lr: 0.05}\n")
        assert main(["supernet", "train", "--config", str(config), "--run-dir", argv[2], "--no-progress"]) == 0
        capsys.readouterr()
    code, _, err = run(capsys, *argv)
    assert code == 2 and expected in err and "Traceback" not in err


def test_cost_of_a_pruned_arch_is_refused_by_a_table_or_estimated_and_flagged(capsys):
    table = str(Path(__file__).parents[2] / "latency_tables" / "data" / "small-amd-epyc-2c-ort-fp32-t1")
    grid = get_space("small").sample(np.random.default_rng(0))
    site = next(s for s in grid.sites() if s.block.family != "shufflev2" and s.block.expand > 1)
    pruned_block = replace(site.block, mid=site.block.mid_channels(site.in_channels) - 8)
    stages = [list(stage) for stage in grid.stages]
    stages[site.stage][site.position] = pruned_block
    pruned = replace(grid, stages=tuple(tuple(stage) for stage in stages))
    assert main(["arch", "cost", pruned.to_str(), "--table", table]) == 2
    assert "lacks 1 key(s)" in capsys.readouterr().err
    assert main(["arch", "cost", grid.to_str(), "--table", table, "--json"]) == 0
    on_grid = json.loads(capsys.readouterr().out)
    assert main(["arch", "cost", pruned.to_str(), "--table", table, "--estimate-missing", "--json"]) == 0
    off_grid = json.loads(capsys.readouterr().out)
    (table_id,) = off_grid["latency_ms"]
    assert off_grid["latency_estimated"] == [table_id] and on_grid["latency_estimated"] == []
    assert 0 < off_grid["latency_ms"][table_id] < on_grid["latency_ms"][table_id]  # 8 fewer middle channels
