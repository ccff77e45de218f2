"""The files of a supernet checkpoint, without torch: which directory of a run holds the newest complete
checkpoint, its metadata (supernet.json) read and checked, and every listed file checked against its sha256.

`supernets.checkpoint` writes and loads checkpoints (tensors, so torch); this module is what a gradient-free
search reads (`nas.evaluators.supernet_space`), so the two never disagree on which checkpoint counts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from search_spaces.errors import HwnasError
from search_spaces.files import sha256_file

FORMAT = "hwnas.supernet/1"
NAMES = ("checkpoint", "checkpoint.old")  # where a complete checkpoint may be, newest first
#: The files of a checkpoint written before `files` was recorded (only the weights' sha256 was).
_LEGACY_FILES = ("supernet.safetensors", "optimizer.safetensors", "optimizer.json", "rng.json")
_REQUIRED_META = ("space", "config", "epoch", "metrics")


def listed_files(meta: dict[str, Any]) -> dict[str, str | None]:
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
        meta = read_json_object(meta_file)
    except HwnasError:
        return None
    missing = [name for name in listed_files(meta) if not (directory / name).is_file()]
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


def require_checkpoint_dir(run_dir: Path) -> Path:
    """`checkpoint_dir(run_dir)`, or a `HwnasError` naming what each checkpoint directory lacks."""
    directory = checkpoint_dir(run_dir)
    if directory is None:
        found = [f"{name}/: {incomplete_reason(run_dir / name)}" for name in NAMES if (run_dir / name).is_dir()]
        hint = "".join(f"; {text}" for text in found) or f"; train one with `hwnas supernet train --run-dir {run_dir}`"
        raise HwnasError(f"no supernet checkpoint in {run_dir} (expected {run_dir / 'checkpoint' / 'supernet.json'}"
                         f"{hint})")
    return directory


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object from `path`; anything else (unreadable, not UTF-8, not JSON, not an object) is a HwnasError."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise HwnasError(f"{path} cannot be read as UTF-8 JSON ({err}): the checkpoint is damaged") from None
    if not isinstance(data, dict):
        raise HwnasError(f"{path} holds a JSON {type(data).__name__}, not an object: the checkpoint is damaged")
    return data


def read_checkpoint_meta(directory: Path) -> dict[str, Any]:
    """The supernet.json of one checkpoint directory, its format and required keys checked."""
    meta = read_json_object(directory / "supernet.json")
    if meta.get("format") != FORMAT:
        raise HwnasError(f"{directory}: checkpoint format {meta.get('format')!r}; this hwnas reads {FORMAT!r}")
    missing = [key for key in _REQUIRED_META if key not in meta]
    if missing:
        raise HwnasError(f"{directory / 'supernet.json'} lacks {', '.join(missing)}: the checkpoint is damaged")
    return meta


def read_meta(run_dir: Path) -> dict[str, Any]:
    """The metadata (supernet.json) of a run's newest complete checkpoint, without loading any tensors."""
    return read_checkpoint_meta(require_checkpoint_dir(Path(run_dir)))


def verify_files(directory: Path, meta: dict[str, Any]) -> None:
    """Check every file supernet.json lists against its recorded sha256; name the first damaged one."""
    for name, expected in listed_files(meta).items():
        path = directory / name
        if not path.is_file():
            raise HwnasError(f"{path} is missing: the checkpoint is incomplete")
        if expected is not None and sha256_file(path) != expected:
            raise HwnasError(f"{path} does not match the sha256 in supernet.json: the checkpoint is damaged")
