"""Pickle-free supernet checkpoints: safetensors + JSON, written atomically as a whole directory.

`<run>/checkpoint/` holds supernet.safetensors, supernet.json (space, recipe, phase, epoch, metrics,
sha256 of the weights), optimizer.safetensors + optimizer.json, teacher.safetensors (once there is a
teacher) and rng.json. A new checkpoint is written to `checkpoint.tmp/` and swapped in with renames, so an
interruption leaves the previous checkpoint (`checkpoint/` or, mid-swap, `checkpoint.old/`) intact.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from search_spaces.errors import HwnasError
from search_spaces.files import sha256_file

FORMAT = "hwnas.supernet/1"


def _tensors(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().clone() for k, v in state.items() if isinstance(v, torch.Tensor)}


def optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into tensors (safetensors) and plain data (JSON)."""
    state = optimizer.state_dict()
    tensors, plain = {}, {"param_groups": state["param_groups"], "state": {}}
    for index, values in state["state"].items():
        plain["state"][str(index)] = {}
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().contiguous().clone()
            else:
                plain["state"][str(index)][name] = value
    return tensors, plain


def optimizer_from_files(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(i): dict(values) for i, values in plain["state"].items()}
    for key, tensor in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = tensor
    return {"state": state, "param_groups": plain["param_groups"]}


@dataclass
class Checkpoint:
    meta: dict[str, Any]
    weights: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    teacher: dict[str, torch.Tensor] | None
    rng: dict[str, Any]


def save_checkpoint(run_dir: Path, meta: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    teacher: torch.nn.Module | None, rng: dict[str, Any]) -> Path:
    """Write a complete checkpoint next to the old one, then swap it in."""
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp, final, old = run_dir / "checkpoint.tmp", run_dir / "checkpoint", run_dir / "checkpoint.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(_tensors(model.state_dict()), str(tmp / "supernet.safetensors"))
    if teacher is not None:
        save_file(_tensors(teacher.state_dict()), str(tmp / "teacher.safetensors"))
    opt_tensors, opt_plain = optimizer_to_files(optimizer)
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    (tmp / "optimizer.json").write_text(json.dumps(opt_plain))
    (tmp / "rng.json").write_text(json.dumps(rng))
    meta = {"format": FORMAT, **meta, "weights_sha256": sha256_file(tmp / "supernet.safetensors")}
    (tmp / "supernet.json").write_text(json.dumps(meta, indent=2))
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoint_dir(run_dir: Path) -> Path | None:
    """The newest complete checkpoint directory of a run, if any."""
    for name in ("checkpoint", "checkpoint.old"):
        if (run_dir / name / "supernet.json").is_file():
            return run_dir / name
    return None


def read_meta(run_dir: Path) -> dict[str, Any]:
    """The metadata (supernet.json) of a run's newest complete checkpoint, without loading any tensors."""
    return _read_json_object(_require_dir(Path(run_dir)) / "supernet.json")


def _require_dir(run_dir: Path) -> Path:
    directory = checkpoint_dir(run_dir)
    if directory is None:
        raise HwnasError(f"no supernet checkpoint in {run_dir} (expected {run_dir / 'checkpoint' / 'supernet.json'})")
    return directory


def _read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object from `path`; anything else (unreadable, not UTF-8, not JSON, not an object) is a HwnasError."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise HwnasError(f"{path} cannot be read as UTF-8 JSON: {err}; the checkpoint is damaged") from None
    if not isinstance(data, dict):
        raise HwnasError(f"{path} holds a JSON {type(data).__name__}, not an object; the checkpoint is damaged")
    return data


def load_checkpoint(run_dir: Path) -> Checkpoint:
    directory = _require_dir(run_dir)
    try:
        meta = json.loads((directory / "supernet.json").read_text())
        if meta.get("format") != FORMAT:
            raise HwnasError(f"{directory}: checkpoint format {meta.get('format')!r}; this hwnas reads {FORMAT!r}")
        weights_file = directory / "supernet.safetensors"
        if sha256_file(weights_file) != meta.get("weights_sha256"):
            raise HwnasError(f"{weights_file} does not match the sha256 in supernet.json: the checkpoint is damaged")
        teacher_file = directory / "teacher.safetensors"
        return Checkpoint(
            meta, load_file(str(weights_file)),
            optimizer_from_files(load_file(str(directory / "optimizer.safetensors")),
                                 json.loads((directory / "optimizer.json").read_text())),
            load_file(str(teacher_file)) if teacher_file.is_file() else None,
            json.loads((directory / "rng.json").read_text()),
        )
    except (OSError, json.JSONDecodeError, SafetensorError, KeyError) as err:
        raise HwnasError(f"checkpoint in {directory} cannot be read: {err}") from None
