"""Pickle-free supernet checkpoints: safetensors + JSON, written durably and swapped in as a whole directory.

`<run>/checkpoint/` holds supernet.safetensors, optimizer.safetensors + optimizer.json, teacher.safetensors
(once there is a teacher), rng.json and, written last, supernet.json: space, recipe, phase, epoch, the training
log rows (`metrics`) and the sha256 of every other file (`files`; `weights_sha256` repeats the weights' one).

A save writes `checkpoint.tmp/`, fsyncs every file and the directory, renames `checkpoint/` to
`checkpoint.old/` and `checkpoint.tmp/` to `checkpoint/`, fsyncs the run directory and only then removes
`checkpoint.old/`: after a kill or power loss at any point one complete checkpoint survives, and
`checkpoint_dir` finds it. Nothing here deletes the only complete checkpoint. Finding and checking a checkpoint's
files needs no torch and lives in `supernets.checkpoint_files` (its names are importable from here too).
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
from search_spaces.files import atomic_write_text, follow_umask, fsync_dir, fsync_file, sha256_file
from supernets.checkpoint_files import (
    FORMAT,
    NAMES,
    check_run_dir,
    checkpoint_dir,
    incomplete_reason,
    listed_files,
    read_checkpoint_meta,
    read_json_object,
    read_meta,
    require_checkpoint_dir,
    training_traces,
    verify_files,
)

__all__ = [
    "FORMAT", "NAMES", "Checkpoint", "check_run_dir", "checkpoint_dir", "incomplete_reason", "listed_files",
    "load_checkpoint", "optimizer_from_files", "optimizer_to_files", "read_checkpoint_meta", "read_json_object",
    "read_meta", "require_checkpoint_dir", "save_checkpoint", "training_traces", "verify_files",
]


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
    """Write a complete, durable checkpoint next to the current one, then swap it in (see the module docstring)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp, final, old = run_dir / "checkpoint.tmp", run_dir / "checkpoint", run_dir / "checkpoint.old"
    current = checkpoint_dir(run_dir)
    if final.exists() and current != final:
        raise HwnasError(f"{final} is not a complete checkpoint ({incomplete_reason(final)}); it was not written by "
                         "this run's last save: move it out of the run directory (nothing was changed)")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    _write_files(tmp, meta, model, optimizer, teacher, rng)
    fsync_dir(run_dir)
    if current == final:  # checkpoint/ is complete, so checkpoint.old/ is a redundant older copy
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    fsync_dir(run_dir)  # the new checkpoint is in place and durable: only now may the previous one go
    shutil.rmtree(old, ignore_errors=True)
    fsync_dir(run_dir)
    return final


def _write_files(directory: Path, meta: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 teacher: torch.nn.Module | None, rng: dict[str, Any]) -> None:
    """Every file of a checkpoint, each fsynced, supernet.json (with their sha256) last, then the directory."""
    tensors = {"supernet.safetensors": _tensors(model.state_dict())}
    if teacher is not None:
        tensors["teacher.safetensors"] = _tensors(teacher.state_dict())
    opt_tensors, opt_plain = optimizer_to_files(optimizer)
    tensors["optimizer.safetensors"] = opt_tensors
    for name, state in tensors.items():
        save_file(state, str(directory / name))
        follow_umask(directory / name)  # safetensors writes 0600
        fsync_file(directory / name)
    atomic_write_text(directory / "optimizer.json", json.dumps(opt_plain))
    atomic_write_text(directory / "rng.json", json.dumps(rng))
    files = {name: sha256_file(directory / name) for name in sorted([*tensors, "optimizer.json", "rng.json"])}
    meta = {"format": FORMAT, **meta, "weights_sha256": files["supernet.safetensors"], "files": files}
    atomic_write_text(directory / "supernet.json", json.dumps(meta, indent=2))
    fsync_dir(directory)


def load_checkpoint(run_dir: Path) -> Checkpoint:
    """The newest complete checkpoint of a run, every file checked against its recorded sha256."""
    directory = require_checkpoint_dir(run_dir)
    meta = read_checkpoint_meta(directory)
    verify_files(directory, meta)
    listed = listed_files(meta)
    teacher_file = directory / "teacher.safetensors"
    has_teacher = "teacher.safetensors" in listed or ("files" not in meta and teacher_file.is_file())
    try:
        return Checkpoint(
            meta, load_file(str(directory / "supernet.safetensors")),
            optimizer_from_files(load_file(str(directory / "optimizer.safetensors")),
                                 read_json_object(directory / "optimizer.json")),
            load_file(str(teacher_file)) if has_teacher else None,
            read_json_object(directory / "rng.json"),
        )
    except (OSError, SafetensorError, KeyError, ValueError, TypeError) as err:
        raise HwnasError(f"checkpoint in {directory} cannot be read: {err}") from None
