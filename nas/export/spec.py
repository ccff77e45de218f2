"""What an exported subnet is (`SubnetSpec`, `Provenance`), its files, reading them back (`load_subnet`), and the
errors: the bottom of `nas.export`, which the parity, latency and writer modules build on."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from latency_tables.runtimes import get_runtime
from search_spaces import ArchConfig
from search_spaces.codec import short_key
from search_spaces.errors import HwnasError
from search_spaces.files import atomic_write_text, sha256_file
from search_spaces.plans import BitWidthPlan, PrunePlan

if TYPE_CHECKING:
    from torch import nn

    from supernets.data import Dataset

SPEC_FORMAT = "hwnas.subnet/1"
METRICS_FORMAT = "hwnas.subnet-metrics/1"
SPEC_FILE, WEIGHTS_FILE, METRICS_FILE = "spec.json", "model.safetensors", "metrics.json"

Progress = Callable[[str], None]


class SubnetError(HwnasError):
    """An exported subnet directory that is missing, incomplete, corrupt or does not fit its architecture."""


class ParityError(SubnetError):
    """A runtime model whose outputs do not agree with PyTorch's."""


def say(progress: Progress | None, message: str) -> None:
    if progress is not None:
        progress(message)


def model_file(runtime: str, precision: str) -> str:
    """The file name of a runtime model in an export directory: `model.onnx`, `model.tflite`, `model-int8.onnx`."""
    suffix = get_runtime(runtime).suffix
    return f"model{suffix}" if precision == "fp32" else f"model-{precision}{suffix}"


def label(runtime: str, precision: str) -> str:
    """How reports name a runtime model: `ort-fp32`."""
    return f"{runtime}-{precision}"


def check_data(arch: ArchConfig, data: Dataset) -> None:
    if (data.in_channels, data.num_classes) != (arch.in_channels, arch.num_classes):
        raise HwnasError(f"dataset {data.name!r} has {data.in_channels} channel(s) and {data.num_classes} classes; "
                         f"the subnet takes {arch.in_channels} channel(s) and gives {arch.num_classes} classes")


@dataclass(frozen=True)
class Provenance:
    """Where an exported subnet came from (`calibration_images`: training images its int8 models were calibrated
    on, chosen by `seed`; 0 without int8 models)."""

    supernet_sha256: str | None
    dataset: str
    seed: int
    recal_images: int
    table_ids: tuple[str, ...] = ()
    hwnas_version: str = ""
    torch_version: str = ""
    calibration_images: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"supernet_sha256": self.supernet_sha256, "dataset": self.dataset, "seed": self.seed,
                "recal_images": self.recal_images, "table_ids": list(self.table_ids),
                "hwnas_version": self.hwnas_version, "torch_version": self.torch_version,
                "calibration_images": self.calibration_images}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Provenance:
        sha = data.get("supernet_sha256")
        return cls(None if sha is None else str(sha), str(data["dataset"]), int(data["seed"]),
                   int(data["recal_images"]), tuple(str(t) for t in data.get("table_ids", ())),
                   str(data.get("hwnas_version", "")), str(data.get("torch_version", "")),
                   int(data.get("calibration_images", 0)))


def _plan_key(arch: ArchConfig, prune: PrunePlan | None, bits: BitWidthPlan | None) -> str:
    """The architecture's key when there are no plans (so unplanned exports keep their names), else 12 hex digits
    of the SHA-256 of the architecture's and the plans' canonical JSON."""
    if prune is None and bits is None:
        return arch.key
    return short_key({"arch": arch.to_dict(), "prune_plan": None if prune is None else prune.to_dict(),
                      "bitwidth_plan": None if bits is None else bits.to_dict()})


@dataclass(frozen=True)
class SubnetSpec:
    """What an exported subnet is: architecture (the exported model's, with explicit widths when pruned), space,
    input preprocessing, provenance, compression plans (the prune plan that derived `arch` from its parent, the
    precision of each layer), the runtime models exported, and the sha256 of every file."""

    arch: ArchConfig
    space: str
    mean: float
    std: float
    provenance: Provenance
    models: tuple[tuple[str, str], ...] = ()
    files: Mapping[str, str] = field(default_factory=dict)
    prune_plan: PrunePlan | None = None
    bitwidth_plan: BitWidthPlan | None = None

    def __post_init__(self) -> None:
        if self.prune_plan is not None and not isinstance(self.prune_plan, PrunePlan):
            raise HwnasError(f"prune_plan must be a PrunePlan or None; got {type(self.prune_plan).__name__}")
        if self.bitwidth_plan is not None:
            if not isinstance(self.bitwidth_plan, BitWidthPlan):
                raise HwnasError(f"bitwidth_plan must be a BitWidthPlan or None; got "
                                 f"{type(self.bitwidth_plan).__name__}")
            self.bitwidth_plan.check(self.arch)

    @property
    def key(self) -> str:
        """The export's name: the architecture's key, or with plans a key of architecture and plans."""
        return _plan_key(self.arch, self.prune_plan, self.bitwidth_plan)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """PyTorch / ONNX input, NCHW at batch 1 (the TFLite model takes the same image channels-last)."""
        return (1, self.arch.in_channels, self.arch.resolution, self.arch.resolution)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": SPEC_FORMAT,
            "key": self.key,
            "arch": self.arch.to_str(),
            "arch_json": self.arch.to_dict(),
            "space": self.space,
            "input": {"shape": list(self.input_shape), "layout": "NCHW", "pixel_scale": 1 / 255, "mean": self.mean,
                      "std": self.std, "resize": "bilinear",
                      "note": "x = (pixels * pixel_scale - mean) / std, resized to the resolution; model.tflite "
                              "takes x channels-last (NHWC)"},
            "provenance": self.provenance.to_dict(),
            "prune_plan": None if self.prune_plan is None else self.prune_plan.to_dict(),
            "bitwidth_plan": None if self.bitwidth_plan is None else self.bitwidth_plan.to_dict(),
            "models": [{"runtime": r, "precision": p, "file": model_file(r, p)} for r, p in self.models],
            "files": dict(sorted(self.files.items())),
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = SPEC_FILE) -> SubnetSpec:
        """Parse and check a spec; a `SubnetError` naming `where` and what is wrong."""
        if not isinstance(data, dict):
            raise SubnetError(f"{where} must hold a JSON object; got {type(data).__name__}")
        if data.get("format") != SPEC_FORMAT:
            raise SubnetError(f"{where}: format {data.get('format')!r}; this hwnas reads {SPEC_FORMAT!r}")
        try:
            arch = ArchConfig.from_str(data["arch"])
            if ArchConfig.from_dict(data["arch_json"]) != arch:
                raise SubnetError(f"{where}: 'arch' and 'arch_json' describe different architectures")
            prune = data.get("prune_plan")
            bits = data.get("bitwidth_plan")
            models = tuple((str(m["runtime"]), str(m["precision"])) for m in data.get("models", ()))
            files = {str(k): str(v) for k, v in dict(data.get("files", {})).items()}
            spec = cls(arch, str(data["space"]), float(data["input"]["mean"]), float(data["input"]["std"]),
                       Provenance.from_dict(data["provenance"]), models, files,
                       None if prune is None else PrunePlan.from_dict(prune),
                       None if bits is None else BitWidthPlan.from_dict(bits))
        except SubnetError:
            raise
        except (HwnasError, KeyError, TypeError, ValueError) as err:
            raise SubnetError(f"{where} is not a valid subnet spec: {type(err).__name__}: {err}") from None
        if data.get("key", spec.key) != spec.key:
            what = "the architecture's" if spec.key == arch.key else "the key of its architecture and plans"
            raise SubnetError(f"{where}: key {data['key']!r} is not {what} key {spec.key!r}")
        return spec

    def save(self, directory: Path) -> Path:
        path = Path(directory) / SPEC_FILE
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> SubnetSpec:
        path = Path(directory) / SPEC_FILE
        data = read_json(path, f"{directory} is not a complete exported subnet (expected {SPEC_FILE} and "
                               f"{WEIGHTS_FILE}; export one with nas.export.export_subnet)")
        return cls.from_dict(data, str(path))


def read_json(path: Path, missing: str) -> Any:
    """The JSON in `path`; a missing or unreadable file is a SubnetError (`missing`: what that means)."""
    if not path.is_file():
        raise SubnetError(f"{path} is missing: {missing}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SubnetError(f"{path} cannot be read as JSON ({err}); export the subnet again") from None


def checked_file(directory: Path, spec: SubnetSpec, name: str, what: str = "") -> Path:
    """`directory/name`, refused with its name when missing or when its sha256 is not the one spec.json records."""
    path = directory / name
    if not path.is_file():
        raise SubnetError(f"{path} is missing{what}; export the subnet again")
    want = spec.files.get(name)
    if want is not None and sha256_file(path) != want:
        raise SubnetError(f"{path} does not match the sha256 recorded in {directory / SPEC_FILE}: the file is "
                          f"corrupt or was replaced; export the subnet again")
    return path


def read_metrics(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / METRICS_FILE
    data = read_json(path, f"{directory} is not a complete export (metrics.json is written last); export the "
                           f"subnet again")
    if not isinstance(data, dict) or data.get("format") != METRICS_FORMAT:
        raise SubnetError(f"{path} is not an hwnas subnet metrics file (format {METRICS_FORMAT!r})")
    return data


def write_metrics(directory: Path, metrics: dict[str, Any]) -> None:
    atomic_write_text(directory / METRICS_FILE, json.dumps(metrics, indent=2) + "\n")


def load_subnet(directory: str | Path) -> tuple[nn.Module, SubnetSpec]:
    """The static model of an exported subnet (eval mode) and its spec, from spec.json and model.safetensors
    alone (no supernet; a pruned subnet's spec holds its pruned architecture). A `SubnetError` names the file when
    one is missing or corrupt, or when the weights do not fit the architecture."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from supernets.models import build_model, legacy_state_names

    directory = Path(directory)
    if not directory.is_dir():
        raise SubnetError(f"{directory} is not a directory; an exported subnet is a directory holding {SPEC_FILE}, "
                          f"{WEIGHTS_FILE}, {METRICS_FILE} and its runtime models")
    spec = SubnetSpec.load(directory)
    path = checked_file(directory, spec, WEIGHTS_FILE, " (it holds the subnet's weights)")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise SubnetError(f"{path} cannot be read as safetensors ({err}); export the subnet again") from None
    model = build_model(spec.arch)
    if any(name.startswith("stages.") for name in tensors):  # exported before layer ids named the modules
        tensors = {new: tensors[old] for new, old in legacy_state_names(spec.arch).items() if old in tensors}
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split())
        raise SubnetError(f"{path} does not fit the architecture in {directory / SPEC_FILE} ({spec.arch.key}): "
                          f"{detail[:400]}") from None
    return model.eval(), spec
