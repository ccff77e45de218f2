"""Weights saved before layer ids named the static modules (positional `stages.<i>.<j>.body.<k>` names) still load.

`data/legacy_layout/` was written by hwnas 9e009ed (the last commit with the positional layout): the state dict
of `build_model(arch)` for a network with every family (SE, expand 1, fused single conv, ShuffleNet split and
two-branch units, a max-pool stem, a hidden head layer), BatchNorm statistics set at random, and its logits on a
fixed input.
"""

from pathlib import Path

import torch
from safetensors.torch import load_file

from search_spaces import ArchConfig
from supernets.models import build_model, legacy_state_names

DATA = Path(__file__).parent / "data" / "legacy_layout"


def test_old_positional_weights_load_under_layer_ids_and_give_the_same_logits():
    arch = ArchConfig.from_str((DATA / "arch.txt").read_text().strip())
    old = load_file(str(DATA / "model.safetensors"))
    names = legacy_state_names(arch)
    assert sorted(names.values()) == sorted(old)
    assert names["stem.0.weight"] == "stem.0.0.weight"
    assert names["s0.b0.se.reduce.weight"] == "stages.0.0.body.2.reduce.weight"
    assert names["s1.b0.conv.0.weight"] == "stages.1.0.body.0.weight"
    assert names["s2.b1.right.pw2.1.bias"] == "stages.2.1.right.2.1.bias"
    assert names["classifier.weight"] == "classifier.3.weight"
    model = build_model(arch)
    model.load_state_dict({new: old[name] for new, name in names.items()})
    io = load_file(str(DATA / "io.safetensors"))
    with torch.no_grad():
        assert torch.equal(model.eval()(io["input"]), io["logits"])


def test_load_subnet_reads_an_export_written_with_the_positional_layout(tmp_path):
    import shutil

    from nas.export import Provenance, SubnetSpec, load_subnet
    from search_spaces.files import sha256_file

    arch = ArchConfig.from_str((DATA / "arch.txt").read_text().strip())
    shutil.copy(DATA / "model.safetensors", tmp_path / "model.safetensors")
    spec = SubnetSpec(arch, "custom", 0.1307, 0.3081, Provenance(None, "digits", 0, 0),
                      files={"model.safetensors": sha256_file(tmp_path / "model.safetensors")})
    spec.save(tmp_path)
    model, loaded = load_subnet(tmp_path)
    io = load_file(str(DATA / "io.safetensors"))
    assert loaded.arch == arch
    with torch.no_grad():
        assert torch.equal(model(io["input"]), io["logits"])
