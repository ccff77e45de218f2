"""Pickle-free supernet checkpoints: safetensors + JSON, written durably and swapped in as a whole directory.

`<run>/checkpoint/` holds supernet.safetensors, optimizer.safetensors + optimizer.json, teacher.safetensors
(once there is a teacher), rng.json and, written last, supernet.json: space, recipe, phase, epoch, the training
log rows (`metrics`) and the sha256 of every other file (`files`; `weights_sha256` repeats the weights' one).

A save writes `checkpoint.tmp/`, fsyncs every file and the directory, renames `checkpoint/` to
`checkpoint.old/` and `checkpoint.tmp/` to `checkpoint/`, fsyncs the run directory and only then removes
`checkpoint.old/`: after a kill or power loss at any point one complete checkpoint survives, and
`checkpoint_dir` finds it. Nothing here deletes the only complete checkpoint.
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
from search_spaces.files import atomic_write_text, fsync_dir, fsync_file, sha256_file

FORMAT = "hwnas.supernet/1"
NAMES = ("checkpoint", "checkpoint.old")  # where a complete checkpoint may be, newest first
#: The files of a checkpoint written before `files` was recorded (only the weights' sha256 was).
_LEGACY_FILES = ("supernet.safetensors", "optimizer.safetensors", "optimizer.json", "rng.json")
_REQUIRED_META = ("space", "config", "epoch", "metrics")


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
        fsync_file(directory / name)
    atomic_write_text(directory / "optimizer.json", json.dumps(opt_plain))
    atomic_write_text(directory / "rng.json", json.dumps(rng))
    files = {name: sha256_file(directory / name) for name in sorted([*tensors, "optimizer.json", "rng.json"])}
    meta = {"format": FORMAT, **meta, "weights_sha256": files["supernet.safetensors"], "files": files}
    atomic_write_text(directory / "supernet.json", json.dumps(meta, indent=2))
    fsync_dir(directory)


def _listed_files(meta: dict[str, Any]) -> dict[str, str | None]:
    """File name -> expected sha256 (None where a legacy checkpoint recorded none)."""
    files = meta.get("files")
    if isinstance(files, dict):
        return {str(k): str(v) for k, v in files.items()}
    legacy: dict[str, str | None] = {name: None for name in _LEGACY_FILES}
    legacy["supernet.safetensors"] = meta.get("weights_sha256")
    return legacy


def incomplete_reason(directory: Path) -> str | None:
    """Why `directory` is not a complete checkpoint (None when it is): supernet.json or a file it lists is missing.
    A supernet.json that cannot be read counts as complete here, so that loading reports the damage."""
    meta_file = directory / "supernet.json"
    if not meta_file.is_file():
        return f"{meta_file.name} is missing"
    try:
        meta = _read_json_object(meta_file)
    except HwnasError:
        return None
    missing = [name for name in _listed_files(meta) if not (directory / name).is_file()]
    return f"{', '.join(missing)} listed in supernet.json missing" if missing else None


def checkpoint_dir(run_dir: Path) -> Path | None:
    """The newest complete checkpoint directory of a run, if any (never a half-written one)."""
    for name in NAMES:
        if (run_dir / name).is_dir() and incomplete_reason(run_dir / name) is None:
            return run_dir / name
    return None


def training_traces(run_dir: Path) -> list[str]:
    """What a run directory holds of an earlier training besides a complete checkpoint: checkpoint directories,
    weights or a training log (config.yaml alone is no trace: it is written before the first epoch)."""
    traces = []
    for name in (*NAMES, "checkpoint.tmp"):
        directory = run_dir / name
        if directory.is_dir():
            held = sorted(p.name for p in directory.iterdir())
            traces.append(f"{name}/ ({', '.join(held) or 'empty'}; {incomplete_reason(directory) or 'complete'})")
    log = run_dir / "train_log.jsonl"
    if log.is_file() and log.stat().st_size:
        traces.append(log.name)
    traces += sorted(p.name for p in run_dir.glob("*.safetensors")) if run_dir.is_dir() else []
    return traces


def check_run_dir(run_dir: Path) -> None:
    """Refuse a run directory a save could damage: `checkpoint/` present but incomplete, or no complete
    checkpoint while traces of an earlier training remain (training from epoch 0 would overwrite them). The
    message names what is missing and how to recover."""
    final, old = run_dir / "checkpoint", run_dir / "checkpoint.old"
    hint = (f"if {old.name}/ is complete, rename it to {final.name}/; " if old.is_dir() else "")
    recover = f"To recover: {hint}restore the missing files from a backup, or train into a new --run-dir"
    if final.exists() and incomplete_reason(final) is not None:
        raise HwnasError(f"{final} is not a complete checkpoint ({incomplete_reason(final)}); a new checkpoint "
                         f"would replace it, so nothing was changed. {recover}")
    traces = training_traces(run_dir)
    if checkpoint_dir(run_dir) is None and traces:
        raise HwnasError(f"{run_dir} has no complete supernet checkpoint ({final / 'supernet.json'} is missing) but "
                         f"holds traces of an earlier training: {'; '.join(traces)}. Training from epoch 0 would "
                         f"overwrite them, so nothing was changed. {recover}")


def read_meta(run_dir: Path) -> dict[str, Any]:
    """The metadata (supernet.json) of a run's newest complete checkpoint, without loading any tensors."""
    return _read_meta(_require_dir(Path(run_dir)))


def _require_dir(run_dir: Path) -> Path:
    directory = checkpoint_dir(run_dir)
    if directory is None:
        found = [f"{name}/: {incomplete_reason(run_dir / name)}" for name in NAMES if (run_dir / name).is_dir()]
        raise HwnasError(f"no supernet checkpoint in {run_dir} (expected {run_dir / 'checkpoint' / 'supernet.json'}"
                         f"{''.join(f'; {text}' for text in found)})")
    return directory


def _read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object from `path`; anything else (unreadable, not UTF-8, not JSON, not an object) is a HwnasError."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise HwnasError(f"{path} cannot be read as UTF-8 JSON ({err}): the checkpoint is damaged") from None
    if not isinstance(data, dict):
        raise HwnasError(f"{path} holds a JSON {type(data).__name__}, not an object: the checkpoint is damaged")
    return data


def _read_meta(directory: Path) -> dict[str, Any]:
    meta = _read_json_object(directory / "supernet.json")
    if meta.get("format") != FORMAT:
        raise HwnasError(f"{directory}: checkpoint format {meta.get('format')!r}; this hwnas reads {FORMAT!r}")
    missing = [key for key in _REQUIRED_META if key not in meta]
    if missing:
        raise HwnasError(f"{directory / 'supernet.json'} lacks {', '.join(missing)}: the checkpoint is damaged")
    return meta


def verify_files(directory: Path, meta: dict[str, Any]) -> None:
    """Check every file supernet.json lists against its recorded sha256; name the first damaged one."""
    for name, expected in _listed_files(meta).items():
        path = directory / name
        if not path.is_file():
            raise HwnasError(f"{path} is missing: the checkpoint is incomplete")
        if expected is not None and sha256_file(path) != expected:
            raise HwnasError(f"{path} does not match the sha256 in supernet.json: the checkpoint is damaged")


def load_checkpoint(run_dir: Path) -> Checkpoint:
    """The newest complete checkpoint of a run, every file checked against its recorded sha256."""
    directory = _require_dir(run_dir)
    meta = _read_meta(directory)
    verify_files(directory, meta)
    listed = _listed_files(meta)
    teacher_file = directory / "teacher.safetensors"
    has_teacher = "teacher.safetensors" in listed or ("files" not in meta and teacher_file.is_file())
    try:
        return Checkpoint(
            meta, load_file(str(directory / "supernet.safetensors")),
            optimizer_from_files(load_file(str(directory / "optimizer.safetensors")),
                                 _read_json_object(directory / "optimizer.json")),
            load_file(str(teacher_file)) if has_teacher else None,
            _read_json_object(directory / "rng.json"),
        )
    except (OSError, SafetensorError, KeyError, ValueError, TypeError) as err:
        raise HwnasError(f"checkpoint in {directory} cannot be read: {err}") from None
