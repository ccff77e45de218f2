"""Supernet recipes, checkpoints, BN recalibration, training, resume and the `hwnas supernet` CLI."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from search_spaces import get_space
from search_spaces.errors import HwnasError
from supernets.checkpoint import checkpoint_dir, load_checkpoint
from supernets.config import RECIPE_REVISION, PhaseConfig, TrainConfig
from supernets.data import load_dataset
from supernets.evaluation import accuracy, recalibrate_bn, recalibration_images
from supernets.supernet import Supernet
from supernets.training import SupernetTrainer, load_run, load_supernet, phase_arch, run_config, run_dataset
from tests.supernets.tiny import quiet, tiny_config, tiny_digits

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


# ---------------------------------------------------------------------------------------------- recipes


def test_default_recipe_and_yaml_round_trip(tmp_path):
    config = TrainConfig()
    assert [p.name for p in config.phases] == ["full", "align", "full", "kernel", "depth", "expand"]
    assert [p.families for p in config.phases] == ["first"] + ["random"] * 5
    assert config.total_epochs == sum(p.epochs for p in config.phases)
    path = tmp_path / "recipe.yaml"
    path.write_text(config.to_yaml())
    assert TrainConfig.load(path) == config
    shipped = TrainConfig.load(CONFIGS / "mnist5k.yaml")
    assert shipped == config, "configs/mnist5k.yaml must spell out the built-in default recipe"
    assert TrainConfig.load(CONFIGS / "sandwich.yaml").recipe == "sandwich"


@pytest.mark.parametrize("data, message", [
    ({"recipe": "magic"}, "recipe must be"),
    ({"phases": [{"name": "kernel", "epochs": 1, "lr": 0.1}]}, "starts with a 'full' phase"),
    ({"phases": [{"name": "full", "epochs": 0, "lr": 0.1}]}, "epochs must be"),
    ({"phases": [{"name": "warp", "epochs": 1, "lr": 0.1}]}, "unknown phase 'warp'"),
    ({"recipe": "sandwich", "phases": [{"name": "full", "epochs": 1, "lr": 0.1}]}, "phases named 'sandwich'"),
    ({"batch_sise": 3}, "unknown key(s) batch_sise"),
    ({"kd_weight": 2}, "kd_weight"),
    ({"phases": [{"name": "full", "epochs": 1, "lr": 0.1, "families": "all"}]},
     "phase full: families must be 'random' or 'first'; got 'all'"),
    ({"augment_rotate": -5}, "augment_rotate must be a number in [0, 180]"),
    ({"augment_scale": "big"}, "augment_scale must be a number in [0, 0.5]"),
    ({"step_losses": "max"}, "step_losses must be 'sum' or 'mean'; got 'max'"),
])
def test_bad_recipes_name_the_field(data, message):
    with pytest.raises(HwnasError, match=re.escape(message)):
        TrainConfig.from_dict(data)


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(HwnasError, match="does not exist"):
        TrainConfig.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("phases: [unclosed")
    with pytest.raises(HwnasError, match="not valid YAML"):
        TrainConfig.load(bad)


def test_phase_arch_keeps_non_elastic_genes_at_their_extreme():
    space = get_space("small")
    rng = np.random.default_rng(0)
    for _ in range(20):
        arch = phase_arch(space, rng, ("resolution", "family", "kernel"))
        for st, stage in zip(space.stages, arch.stages, strict=True):
            assert len(stage) == max(st.depths)
            assert all(b.expand == max(st.expands) and b.out_channels == max(st.widths) for b in stage
                       if b.family != "shufflev2")
    kernels = {b.kernel for _ in range(20) for s in phase_arch(space, rng, ("kernel",)).stages for b in s}
    assert kernels == {3, 5, 7}
    assert {phase_arch(space, rng, ("family",)).resolution for _ in range(10)} == {32}
    mixes = {tuple(s[0].family for s in phase_arch(space, rng, ("family", "depth")).stages) for _ in range(30)}
    assert len(mixes) > 5
    first = tuple(st.families[0] for st in space.stages)
    fixed = [phase_arch(space, rng, ("family", "depth"), families=(0,) * 4) for _ in range(30)]
    assert {tuple(s[0].family for s in a.stages) for a in fixed} == {first}
    assert len({a.key for a in fixed}) > 5  # the other elastic genes still vary


# ---------------------------------------------------------------------------------------------- BN recalibration


def test_recalibration_sets_exact_statistics_and_restores_momentum():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    images = torch.randn(40, 1, 6, 6) * 3 + 2
    recalibrate_bn(model, images, batch_size=7)  # uneven batches: the average must still be exact
    with torch.no_grad():
        features = model[0](images)
    bn = model[1]
    assert torch.allclose(bn.running_mean, features.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(bn.running_var, features.transpose(0, 1).reshape(4, -1).var(1, unbiased=True), rtol=1e-4)
    assert bn.momentum == 0.1 and not model.training


# ---------------------------------------------------------------------------------------------- training


def test_training_writes_checkpoints_logs_and_a_loadable_supernet(tmp_path):
    data = tiny_digits()
    lines: list[str] = []
    history = SupernetTrainer(tiny_config(), tmp_path, data=data, progress=False, log=lines.append).run()
    assert [row["phase"] for row in history] == ["full", "depth"]
    assert all(np.isfinite(row["loss"]) and 0 <= row["acc_largest"] <= 1 for row in history)
    assert len(lines) == 2 and "largest" in lines[0] and "smallest" in lines[0]
    logged = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert logged == history
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.meta["epoch"] == 2 and ckpt.meta["phase_name"] == "depth" and ckpt.teacher is not None
    assert ckpt.meta["space"]["name"] == "small" and ckpt.meta["config"] == tiny_config().to_dict()
    net, meta = load_supernet(tmp_path)
    space = net.space
    assert (space.in_channels, space.num_classes) == (1, 10)
    # The stored accuracy of the largest subnet is reproduced from the loaded weights.
    arch = space.extreme(True)
    model = net.materialize(arch)
    recalibrate_bn(model, recalibration_images(data, arch.resolution, 64, 0))
    assert accuracy(model, data.val, arch.resolution, data.mean, data.std) == pytest.approx(
        meta["metrics"][-1]["acc_largest"], abs=5e-6)  # stored to 5 decimals


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path, trained_supernet):
    data = tiny_digits()
    config = tiny_config()  # the recipe of the straight run, trained_supernet

    def interrupt(_: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        SupernetTrainer(config, tmp_path / "cut", data=data, progress=False, log=interrupt).run()
    assert load_checkpoint(tmp_path / "cut").meta["epoch"] == 1
    lines: list[str] = []
    SupernetTrainer(config, tmp_path / "cut", data=data, progress=False, log=lines.append).run(resume=True)
    assert lines[0].startswith("resumed") and "after epoch 1 of 2" in lines[0]
    a, b = load_checkpoint(trained_supernet), load_checkpoint(tmp_path / "cut")
    timeless = [[{k: v for k, v in row.items() if k != "seconds"} for row in c.meta["metrics"]] for c in (a, b)]
    assert timeless[0] == timeless[1]
    assert all(torch.equal(a.weights[k], b.weights[k]) for k in a.weights)


def test_existing_runs_are_never_overwritten_and_resume_needs_the_same_recipe(tmp_path):
    data = tiny_digits()
    config = tiny_config(phases=(PhaseConfig("full", 1, 0.05),))
    SupernetTrainer(config, tmp_path, data=data, progress=False, log=quiet).run()
    before = (tmp_path / "checkpoint" / "supernet.safetensors").read_bytes()
    with pytest.raises(HwnasError, match="already holds a checkpoint; pass --resume"):
        SupernetTrainer(config, tmp_path, data=data, progress=False, log=quiet).run()
    with pytest.raises(HwnasError, match="another config"):
        SupernetTrainer(replace(config, seed=1), tmp_path, data=data, progress=False, log=quiet).run(resume=True)
    assert (tmp_path / "checkpoint" / "supernet.safetensors").read_bytes() == before
    # Resuming a finished run trains nothing more.
    lines: list[str] = []
    assert len(SupernetTrainer(config, tmp_path, data=data, progress=False, log=lines.append).run(resume=True)) == 1


def test_a_damaged_checkpoint_is_refused_and_a_half_swapped_one_is_found(tmp_path, trained_supernet):
    shutil.copytree(trained_supernet, tmp_path, dirs_exist_ok=True)
    # An interruption between the two renames of the swap leaves only checkpoint.old: still found.
    (tmp_path / "checkpoint").rename(tmp_path / "checkpoint.old")
    assert checkpoint_dir(tmp_path) == tmp_path / "checkpoint.old"
    weights = tmp_path / "checkpoint.old" / "supernet.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 0xFF
    weights.write_bytes(bytes(raw))
    with pytest.raises(HwnasError, match="does not match the sha256"):
        load_supernet(tmp_path)
    with pytest.raises(HwnasError, match="no supernet checkpoint"):
        load_supernet(tmp_path / "elsewhere")


def test_a_supernet_trained_for_an_older_block_is_refused(tmp_path, trained_supernet):
    config = tiny_config()  # trained_supernet's recipe
    shutil.copytree(trained_supernet, tmp_path, dirs_exist_ok=True)
    meta_file = tmp_path / "checkpoint" / "supernet.json"
    meta = json.loads(meta_file.read_text())
    assert meta["block_revisions"]["shufflev2"] == 2 and meta["block_revisions"]["mbv2"] == 1
    load_supernet(tmp_path)  # current: fine
    meta["block_revisions"]["shufflev2"] = 1  # trained with the `chunk(2)` split unit
    meta_file.write_text(json.dumps(meta))
    message = re.escape("shufflev2 (trained at revision 1, now 2)")
    with pytest.raises(HwnasError, match=message):
        load_supernet(tmp_path)
    with pytest.raises(HwnasError, match=message):
        SupernetTrainer(config, tmp_path, data=tiny_digits(), progress=False, log=quiet).run(resume=True)
    del meta["block_revisions"]  # a checkpoint from before revisions were recorded: every family at 1
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(HwnasError, match=message):
        load_supernet(tmp_path)


def test_a_checkpoint_of_another_recipe_revision_loads_but_does_not_resume(tmp_path, trained_supernet):
    config = tiny_config()  # trained_supernet's recipe
    shutil.copytree(trained_supernet, tmp_path, dirs_exist_ok=True)
    meta_file = tmp_path / "checkpoint" / "supernet.json"
    meta = json.loads(meta_file.read_text())
    assert meta["recipe_revision"] == RECIPE_REVISION
    other = RECIPE_REVISION + 1  # made by an hwnas whose recipe has changed since
    meta["recipe_revision"] = other
    meta_file.write_text(json.dumps(meta))
    net, loaded = load_supernet(tmp_path)  # evaluation and search: fine, it records its whole recipe
    assert run_config(loaded) == config and net.space.name == config.space
    message = re.escape(f"started at recipe revision {other}; this hwnas trains at recipe revision {RECIPE_REVISION}")
    with pytest.raises(HwnasError, match=message):
        SupernetTrainer(config, tmp_path, data=tiny_digits(), progress=False, log=quiet).run(resume=True)
    before_the_field = {**loaded, "config": {k: v for k, v in loaded["config"].items() if k != "step_losses"}}
    assert run_config(before_the_field).step_losses == "mean"  # what checkpoints before the field did
    meta["recipe_revision"] = "two"
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(HwnasError, match=re.escape("recipe_revision is 'two'; expected a whole number >= 1")):
        load_supernet(tmp_path)


def test_sandwich_recipe_trains_every_subnet_kind(tmp_path):
    config = tiny_config(recipe="sandwich", phases=(PhaseConfig("sandwich", 1, 0.05),), sandwich_random=1)
    history = SupernetTrainer(config, tmp_path, data=tiny_digits(), progress=False, log=quiet).run()
    assert history[0]["phase"] == "sandwich" and np.isfinite(history[0]["loss"])
    trained = load_checkpoint(tmp_path).weights
    fresh = Supernet(get_space("small", in_channels=1, num_classes=10)).state_dict()
    smallest = get_space("small").extreme(False)
    # The smallest subnet's first-stage kernel (3x3 centre of the 7x7 weight) moved: it was trained.
    family = smallest.stages[0][0].family
    key = f"stages.0.{family}.0.dw.conv.weight" if family != "fused" else f"stages.0.{family}.0.expand.conv.weight"
    assert not torch.equal(trained[key], fresh[key])


@pytest.mark.slow
def test_a_short_run_learns_digits(tmp_path):
    data = tiny_digits(640, 200)
    config = tiny_config(phases=(PhaseConfig("full", 6, 0.1),), bn_recal_images=320)
    history = SupernetTrainer(config, tmp_path, data=data, progress=False, log=quiet).run()
    assert history[-1]["acc_largest"] >= 0.8


def test_first_families_then_align_trains_only_what_each_phase_says(tmp_path):
    data = tiny_digits()
    first = PhaseConfig("full", 1, 0.05, families="first")
    SupernetTrainer(tiny_config(phases=(first,)), tmp_path / "a", data=data, progress=False, log=quiet).run()
    history = SupernetTrainer(tiny_config(phases=(first, PhaseConfig("align", 3, 0.05))), tmp_path / "b", data=data,
                              progress=False, log=quiet).run()
    space = get_space("small")
    torch.manual_seed(0)
    fresh = Supernet(space).state_dict()  # the trainer's initial weights (same seed)
    after_first, after_align = load_checkpoint(tmp_path / "a").weights, load_checkpoint(tmp_path / "b").weights
    params = {name for name, _ in Supernet(space).named_parameters()}
    for index, st in enumerate(space.stages):
        default = [n for n in params if n.startswith(f"stages.{index}.{st.families[0]}.")]
        others = [n for n in params if n.startswith(f"stages.{index}.") and n not in default]
        # `families: first` trained only each stage's first family ...
        assert any(not torch.equal(after_first[n], fresh[n]) for n in default)
        assert all(torch.equal(after_first[n], fresh[n]) for n in others)
        # ... and aligning trained only the others (the first family is the target, not a student).
        assert all(torch.equal(after_align[n], after_first[n]) for n in default)
        assert any(not torch.equal(after_align[n], after_first[n]) for n in others)
    assert [row["phase"] for row in history] == ["full", "align", "align", "align"]
    assert history[3]["loss"] < history[1]["loss"]  # the stage outputs come closer


# ---------------------------------------------------------------------------------------------- run directories


def test_one_loader_turns_a_run_directory_into_supernet_recipe_and_dataset(tmp_path, trained_supernet):
    run = load_run(trained_supernet)
    assert run.config == tiny_config() and run.meta["epoch"] == 2 and run.run_dir == trained_supernet
    assert run.weights_sha256 == run.meta["weights_sha256"] and len(run.weights_sha256) == 64
    assert (run.net.space.name, run.net.space.num_classes) == ("small", 10) and not run.net.training
    expected = load_dataset("digits", val_fraction=0.2, seed=0)
    for data in (run.dataset(), run_dataset(trained_supernet), run_dataset(str(trained_supernet))):
        assert data.name == "digits" and np.array_equal(data.val.labels, expected.val.labels)
    assert run_config(trained_supernet) == tiny_config()
    # The recorded split (validation fraction and seed) is the one loaded.
    other = dict(run.meta, config={**run.meta["config"], "val_fraction": 0.25, "seed": 3})
    expected = load_dataset("digits", val_fraction=0.25, seed=3)
    assert np.array_equal(run_dataset(other).val.labels, expected.val.labels)
    assert len(expected.val) != len(run.dataset().val)
    # A data_path override reaches the loader (cifar10 needs one; a missing directory is named).
    cifar = dict(run.meta, config={**run.meta["config"], "dataset": "cifar10", "data_path": "/recorded/cifar"})
    with pytest.raises(HwnasError, match="/moved/cifar is not a directory"):
        run_dataset(cifar, data_path=tmp_path / "moved" / "cifar")
    with pytest.raises(HwnasError, match="/recorded/cifar is not a directory"):
        run_dataset(cifar)
    with pytest.raises(HwnasError, match="no supernet checkpoint"):
        run_dataset(tmp_path / "elsewhere")
    with pytest.raises(HwnasError, match="has no training config"):
        run_config({"epoch": 1})


def test_training_sets_torch_threads_only_while_it_runs(trained_supernet, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_supernet, run)
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        seen: list[int] = []
        SupernetTrainer(tiny_config(threads=1), run, data=tiny_digits(), progress=False,
                        log=lambda _: seen.append(torch.get_num_threads())).run(resume=True)
        assert seen == [1] and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
