"""Supernet checkpoints never lose work: resume refuses to start over, log and checkpoint agree after a kill,
every file is fsynced before the swap and checked against its sha256 when loaded."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

import supernets.checkpoint as checkpoint
import supernets.training as training
from search_spaces.errors import HwnasError
from supernets.checkpoint import checkpoint_dir, load_checkpoint, read_meta, save_checkpoint
from supernets.config import PhaseConfig
from supernets.training import SupernetTrainer, load_supernet
from tests.supernets.tiny import quiet, tiny_config, tiny_digits


def copy_run(trained_supernet: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(trained_supernet, run)
    return run


def flip_last_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01
    path.write_bytes(bytes(raw))


def log_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]


def one_epoch():
    return tiny_config(phases=(PhaseConfig("full", 1, 0.05),))


# ---------------------------------------------------------------------------------------------- resume refuses


@pytest.mark.parametrize("resume", [True, False])
def test_a_run_without_supernet_json_is_never_trained_over(trained_supernet, tmp_path, resume):
    run = copy_run(trained_supernet, tmp_path)
    (run / "checkpoint" / "supernet.json").unlink()
    weights = (run / "checkpoint" / "supernet.safetensors").read_bytes()
    log = (run / "train_log.jsonl").read_text()
    with pytest.raises(HwnasError) as err:
        SupernetTrainer(tiny_config(), run, data=tiny_digits(), progress=False, log=quiet).run(resume=resume)
    message = str(err.value)
    assert "checkpoint is not a complete checkpoint (supernet.json is missing)" in message
    assert "nothing was changed" in message and "train into a new --run-dir" in message
    assert (run / "checkpoint" / "supernet.safetensors").read_bytes() == weights
    assert (run / "train_log.jsonl").read_text() == log
    assert not (run / "checkpoint.tmp").exists()


@pytest.mark.parametrize("trace", ["train_log.jsonl", "checkpoint.tmp", "checkpoint.old", "supernet.safetensors"])
def test_resume_with_only_traces_of_training_names_them(trained_supernet, tmp_path, trace):
    run = copy_run(trained_supernet, tmp_path)
    if trace in ("checkpoint.tmp", "checkpoint.old"):  # an incomplete copy: weights, no supernet.json
        (run / trace).mkdir()
        shutil.copy(run / "checkpoint" / "supernet.safetensors", run / trace)
    elif trace == "supernet.safetensors":
        shutil.copy(run / "checkpoint" / "supernet.safetensors", run)
    shutil.rmtree(run / "checkpoint")
    if trace != "train_log.jsonl":
        (run / "train_log.jsonl").unlink()
    with pytest.raises(HwnasError, match=re.escape("has no complete supernet checkpoint")) as err:
        SupernetTrainer(tiny_config(), run, data=tiny_digits(), progress=False, log=quiet).run(resume=True)
    assert f"earlier training: {trace}" in str(err.value)
    assert not (run / "checkpoint").exists()


def test_a_half_swapped_run_names_checkpoint_old_as_the_way_back(trained_supernet, tmp_path):
    run = copy_run(trained_supernet, tmp_path)
    shutil.copytree(run / "checkpoint", run / "checkpoint.old")
    (run / "checkpoint" / "rng.json").unlink()
    with pytest.raises(HwnasError, match=re.escape("rng.json listed in supernet.json missing")) as err:
        SupernetTrainer(tiny_config(), run, data=tiny_digits(), progress=False, log=quiet).run(resume=True)
    assert "rename it to checkpoint/" in str(err.value)
    assert (run / "checkpoint.old" / "supernet.json").is_file()
    # checkpoint_dir never picks the incomplete directory; loading for evaluation falls back to the complete one.
    assert checkpoint_dir(run) == run / "checkpoint.old"


def test_resume_on_a_run_dir_with_no_trace_of_training_starts_at_epoch_0(tmp_path):
    run = tmp_path / "fresh"
    run.mkdir()
    (run / "config.yaml").write_text("left by a run killed in its first epoch\n")
    lines: list[str] = []
    history = SupernetTrainer(one_epoch(), run, data=tiny_digits(64, 32), progress=False,
                              log=lines.append).run(resume=True)
    assert lines[0] == f"{run} holds no checkpoint and no trace of training: starting at epoch 0"
    assert [row["epoch"] for row in history] == [1] and read_meta(run)["epoch"] == 1


# ---------------------------------------------------------------------------------------------- log and checkpoint


def test_a_kill_between_the_swap_and_the_log_write_loses_no_row(tmp_path, monkeypatch):
    config = tiny_config(phases=(PhaseConfig("full", 1, 0.05), PhaseConfig("full", 1, 0.05)))
    data = tiny_digits(64, 32)

    def killed(run_dir, rows):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "write_train_log", killed)
    with pytest.raises(KeyboardInterrupt):
        SupernetTrainer(config, tmp_path, data=data, progress=False, log=quiet).run()
    assert read_meta(tmp_path)["epoch"] == 1 and not (tmp_path / "train_log.jsonl").exists()
    monkeypatch.undo()
    history = SupernetTrainer(config, tmp_path, data=data, progress=False, log=quiet).run(resume=True)
    assert [row["epoch"] for row in log_rows(tmp_path)] == [1, 2]
    assert log_rows(tmp_path) == history == read_meta(tmp_path)["metrics"]


def test_resume_rebuilds_the_log_from_the_checkpoint(trained_supernet, tmp_path):
    run = copy_run(trained_supernet, tmp_path)
    rows = log_rows(run)
    stray = [rows[0], rows[0], {**rows[1], "epoch": 3}]  # epoch 1 twice, 2 missing, 3 past the checkpoint
    (run / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in stray))
    assert SupernetTrainer(tiny_config(), run, data=tiny_digits(), progress=False, log=quiet).run(resume=True) == rows
    assert log_rows(run) == rows == read_meta(run)["metrics"]


# ---------------------------------------------------------------------------------------------- durable swap


def test_every_file_is_fsynced_before_the_swap_and_the_old_copy_outlives_it(trained_supernet, tmp_path,
                                                                             monkeypatch):
    run = copy_run(trained_supernet, tmp_path)
    ckpt = load_checkpoint(run)
    net = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    events: list[tuple[str, str]] = []
    real_rename, real_rmtree = Path.rename, shutil.rmtree
    monkeypatch.setattr(checkpoint, "fsync_file", lambda p: events.append(("fsync", f"{p.parent.name}/{p.name}")))
    monkeypatch.setattr(checkpoint, "fsync_dir", lambda p: events.append(("fsync", p.name)))

    def rename(self, to):
        events.append(("rename", self.name))
        return real_rename(self, to)

    def rmtree(path, **kwargs):
        events.append(("rmtree", Path(path).name))
        real_rmtree(path, **kwargs)

    monkeypatch.setattr(Path, "rename", rename)
    monkeypatch.setattr(shutil, "rmtree", rmtree)
    save_checkpoint(run, dict(ckpt.meta, epoch=3), net, optimizer, None, ckpt.rng)
    first_rename = events.index(("rename", "checkpoint"))
    synced = {name for kind, name in events[:first_rename] if kind == "fsync"}
    written = {f"checkpoint.tmp/{name}" for name in ("supernet.safetensors", "optimizer.safetensors")}
    assert written <= synced and "checkpoint.tmp" in synced and "run" in synced
    assert events[first_rename:] == [("rename", "checkpoint"), ("rename", "checkpoint.tmp"), ("fsync", "run"),
                                     ("rmtree", "checkpoint.old"), ("fsync", "run")]
    assert read_meta(run)["epoch"] == 3 and not (run / "checkpoint.old").exists()
    assert set(read_meta(run)["files"]) == {"supernet.safetensors", "optimizer.safetensors", "optimizer.json",
                                            "rng.json"}


def test_a_kill_between_the_renames_leaves_the_old_checkpoint_and_the_next_save_recovers(trained_supernet, tmp_path,
                                                                                          monkeypatch):
    run = copy_run(trained_supernet, tmp_path)
    ckpt = load_checkpoint(run)
    net = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    real_rename = Path.rename

    def dies_on_the_second(self, to):
        if self.name == "checkpoint.tmp":
            raise KeyboardInterrupt
        return real_rename(self, to)

    monkeypatch.setattr(Path, "rename", dies_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(run, dict(ckpt.meta, epoch=3), net, optimizer, None, ckpt.rng)
    monkeypatch.undo()
    assert checkpoint_dir(run) == run / "checkpoint.old" and load_checkpoint(run).meta["epoch"] == 2
    save_checkpoint(run, dict(ckpt.meta, epoch=3), net, optimizer, None, ckpt.rng)
    assert checkpoint_dir(run) == run / "checkpoint" and read_meta(run)["epoch"] == 3
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint"]


# ---------------------------------------------------------------------------------------------- every file checked


@pytest.mark.parametrize("name", ["optimizer.safetensors", "teacher.safetensors", "rng.json", "optimizer.json",
                                  "supernet.safetensors"])
def test_a_flipped_byte_in_any_checkpoint_file_is_named(trained_supernet, tmp_path, name):
    run = copy_run(trained_supernet, tmp_path)
    assert name in read_meta(run)["files"]
    flip_last_byte(run / "checkpoint" / name)
    expected = f"{run / 'checkpoint' / name} does not match the sha256 in supernet.json"
    with pytest.raises(HwnasError, match=re.escape(expected)):
        load_checkpoint(run)
    with pytest.raises(HwnasError, match=re.escape(expected)):
        SupernetTrainer(tiny_config(), run, data=tiny_digits(), progress=False, log=quiet).run(resume=True)


def test_a_checkpoint_of_the_previous_format_still_loads_and_its_weights_are_checked(trained_supernet, tmp_path):
    run = copy_run(trained_supernet, tmp_path)
    meta_file = run / "checkpoint" / "supernet.json"
    meta = json.loads(meta_file.read_text())
    del meta["files"]  # the previous format recorded weights_sha256 only
    meta_file.write_text(json.dumps(meta))
    ckpt = load_checkpoint(run)
    assert ckpt.teacher is not None and ckpt.meta["epoch"] == 2
    flip_last_byte(run / "checkpoint" / "supernet.safetensors")
    with pytest.raises(HwnasError, match="supernet.safetensors does not match the sha256"):
        load_checkpoint(run)


@pytest.mark.parametrize("content, message", [
    (b"\xff\xfe{}", "cannot be read as UTF-8 JSON"),
    (b"[1, 2]", "holds a JSON list, not an object"),
    (b"{\"format\": \"hwnas.supernet/1\"", "cannot be read as UTF-8 JSON"),
    (b"{\"format\": \"hwnas.supernet/1\", \"space\": {}}", "lacks config, epoch, metrics"),
])
def test_a_damaged_supernet_json_is_a_clear_error(trained_supernet, tmp_path, content, message):
    run = copy_run(trained_supernet, tmp_path)
    (run / "checkpoint" / "supernet.json").write_bytes(content)
    for load in (load_checkpoint, load_supernet, read_meta):
        with pytest.raises(HwnasError, match=re.escape(message)):
            load(run)


# ------------------------------------------------------------------------------------------ torch-free reading


def test_checkpoint_files_and_the_package_load_no_torch_and_every_export_resolves():
    import subprocess
    import sys

    import supernets
    import supernets.checkpoint_files as files

    code = "import sys, supernets, supernets.checkpoint_files; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "False"
    assert checkpoint.checkpoint_dir is files.checkpoint_dir and checkpoint.read_meta is files.read_meta
    assert checkpoint.FORMAT == files.FORMAT == "hwnas.supernet/1"
    assert all(getattr(supernets, name) is not None for name in supernets.__all__)
    assert supernets.load_run is training.load_run and set(supernets.__all__) <= set(dir(supernets))
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        supernets.nope  # noqa: B018
