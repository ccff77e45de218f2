"""Fine-tuning a compressed subnet: Hinton distillation from a teacher (or plain cross-entropy without one),
optional stage-feature distillation, and an optional gradual pruning schedule towards a `PrunePlan`; checkpointed
every epoch and resumed bit for bit.

`finetune(model, data, out_dir, config, teacher=..., plan=..., scores=...)` trains a copy of the static `model` on
`data.train` (the seeded batch order and augmentation of `supernets.data`, SGD with Nesterov momentum, a cosine
learning rate over all steps), evaluates it on `data.val` after every epoch and saves `out_dir/checkpoint/`.
The checkpoint is the supernet trainer's (`supernets.checkpoint.save_checkpoint`: written aside, fsynced, swapped
in whole): supernet.safetensors holds the student (`model.*`) and any feature adapters (`adapters.*`),
supernet.json the epoch, metrics, config, the parent architecture and the plan's and teacher's identity
(`kind` = "hwnas.finetune/1", `space` null), optimizer.* and rng.json the optimizer and every random state. Run
again, it resumes after the last saved epoch and ends exactly where an uninterrupted run ends.

With a plan the masks of `nas.compress.gradual` follow the schedule and the returned model is
`prune_model(student, plan)`: the plan's widths, computing what the masked student computed.

With a bit-width plan (`bits`) it is quantisation-aware training: every step runs the student under
`nas.compress.sensitivity.fake_quantized_layers` (straight-through rounding, so gradients reach the float weights)
at the plan's precisions, the activation ranges recalibrated (MinMax, `output_ranges`, eval mode, masks applied)
on the `calibration` images at the start of every epoch from the current float weights. Each epoch's
`val_accuracy` is the simulated one (`val_accuracy_float` the float one); the returned model holds the float
weights, and `FinetuneResult.val_accuracy` is its plan simulated with ranges taken from those final weights (as an
export would calibrate them).
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from nas.compress.distill import FeatureDistiller, check_teacher, kd_loss, static_arch, teacher_kl
from nas.compress.gradual import SCHEDULES, GradualPruning
from nas.compress.sensitivity import fake_quantized_layers, output_ranges
from search_spaces import ArchConfig
from search_spaces.errors import HwnasError
from search_spaces.plans import BitWidthPlan, PrunePlan
from supernets.checkpoint import check_run_dir, checkpoint_dir, load_checkpoint, save_checkpoint
from supernets.data import Dataset, augment, batches
from supernets.evaluation import accuracy
from supernets.threads import torch_threads
from supernets.training import resized

KIND = "hwnas.finetune/1"


@dataclass(frozen=True)
class FinetuneConfig:
    """How a compressed subnet is fine-tuned. `alpha` weighs the soft (teacher) term of `kd_loss`,
    `feature_weight` the stage-feature term (0: none); `prune_epochs` is the gradual schedule's ramp k (0: the
    whole plan masked from the first epoch); `max_steps` caps the batches per epoch (None: the whole split)."""

    epochs: int = 10
    lr: float = 0.01
    batch_size: int = 64
    seed: int = 0
    temperature: float = 4.0
    alpha: float = 0.9
    feature_weight: float = 0.0
    threads: int | None = 1
    momentum: float = 0.9
    weight_decay: float = 4e-5
    augment_shift: int = 0
    augment_rotate: float = 0.0
    augment_scale: float = 0.0
    prune_epochs: int = 0
    prune_schedule: str = "cubic"
    max_steps: int | None = None

    def __post_init__(self) -> None:
        checks = [("epochs", self.epochs >= 1, ">= 1"), ("lr", self.lr > 0, "> 0"),
                  ("batch_size", self.batch_size >= 1, ">= 1"), ("temperature", self.temperature > 0, "> 0"),
                  ("alpha", 0.0 <= self.alpha <= 1.0, "in [0, 1]"),
                  ("feature_weight", self.feature_weight >= 0, ">= 0"),
                  ("prune_epochs", 0 <= self.prune_epochs <= self.epochs, f"0 to epochs ({self.epochs})"),
                  ("prune_schedule", self.prune_schedule in SCHEDULES, f"one of {', '.join(SCHEDULES)}"),
                  ("max_steps", self.max_steps is None or self.max_steps >= 1, "None or >= 1")]
        for name, ok, allowed in checks:
            if not ok:
                raise HwnasError(f"fine-tune config {name} is {getattr(self, name)!r}; allowed: {allowed}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FinetuneResult:
    """The fine-tuned model (pruned to the plan's widths when there was a plan; float weights, eval mode), one
    metrics row per epoch, and the validation accuracy of the returned model (its bit-width plan simulated when
    the fine-tune was quantisation-aware)."""

    model: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)
    val_accuracy: float = 0.0


def _digest(model: nn.Module | None) -> str | None:
    """sha256 of a model's state (names and tensor bytes): the teacher's identity for resuming."""
    if model is None:
        return None
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def _tensor_digest(x: torch.Tensor | None) -> str | None:
    return None if x is None else hashlib.sha256(x.detach().contiguous().cpu().numpy().tobytes()).hexdigest()


@dataclass(frozen=True)
class _Quantization:
    """What quantisation-aware training simulates: the layers' precisions and the calibration images."""

    bits: BitWidthPlan
    calibration: torch.Tensor

    def simulated(self, model: nn.Module) -> Any:
        """A context running `model` with its plan fake-quantised, ranges calibrated on the current weights."""
        with torch.no_grad():
            ranges = output_ranges(model, self.calibration, runtime=True)
        return fake_quantized_layers(model, self.bits.precisions(static_arch(model, "student")), ranges)


class _Finetune:
    """One fine-tune run (state for `finetune`); built inside the seeded, thread-limited context."""

    def __init__(self, model: nn.Module, data: Dataset, out_dir: Path, config: FinetuneConfig,
                 teacher: nn.Module | None, pruning: GradualPruning | None, log: Callable[[str], None],
                 progress: bool, quantization: _Quantization | None = None) -> None:
        self.arch: ArchConfig = static_arch(model, "student")
        self.data, self.out_dir, self.config, self.log, self.progress = data, out_dir, config, log, progress
        self.teacher, self.pruning = teacher.eval() if teacher is not None else None, pruning
        self.quantization = quantization
        torch.manual_seed(config.seed)
        self.student = copy.deepcopy(model).train()
        for parameter in self.student.parameters():
            parameter.requires_grad_(True)
        self.distiller = FeatureDistiller(self.student, teacher) \
            if teacher is not None and config.feature_weight > 0 else None
        parts: dict[str, nn.Module] = {"model": self.student}
        if self.distiller is not None:
            parts["adapters"] = self.distiller.adapters
        self.trained = nn.ModuleDict(parts)
        self.optimizer = torch.optim.SGD(self.trained.parameters(), lr=config.lr, momentum=config.momentum,
                                         nesterov=True, weight_decay=config.weight_decay)
        self.rng, self.gen = np.random.default_rng(config.seed), torch.Generator().manual_seed(config.seed)
        self.epoch, self.history = 0, list[dict[str, Any]]()
        self.identity = {"arch": self.arch.to_str(), "plan": pruning.plan.key if pruning else None,
                         "scores": pruning.scores_digest() if pruning else None, "teacher": _digest(teacher),
                         "config": config.to_dict(),
                         "bits": quantization.bits.key if quantization else None,
                         "calibration": _tensor_digest(quantization.calibration) if quantization else None}

    def restore(self) -> None:
        """Continue from the out_dir's checkpoint, refusing one made for another model, plan, teacher or config."""
        ckpt = load_checkpoint(self.out_dir)
        if ckpt.meta.get("kind") != KIND:
            raise HwnasError(f"{self.out_dir} holds a checkpoint that is not a fine-tune's; choose another out_dir")
        changed = [key for key, value in self.identity.items() if ckpt.meta.get(key) != value]
        if changed:
            raise HwnasError(f"the fine-tune checkpoint in {self.out_dir} was made with another {', '.join(changed)}; "
                             f"resume with the same ones or choose another out_dir (nothing was changed)")
        self.trained.load_state_dict(ckpt.weights)
        self.optimizer.load_state_dict(ckpt.optimizer)
        self.rng.bit_generator.state = ckpt.rng["numpy"]
        self.gen.set_state(torch.tensor(ckpt.rng["torch"], dtype=torch.uint8))
        torch.set_rng_state(torch.tensor(ckpt.rng["torch_global"], dtype=torch.uint8))
        self.epoch, self.history = int(ckpt.meta["epoch"]), list(ckpt.meta["metrics"])
        self.log(f"resumed fine-tune in {self.out_dir} after epoch {self.epoch} of {self.config.epochs}")

    def run(self) -> FinetuneResult:
        if self.pruning is not None:
            self.pruning.attach(self.student)
        try:
            for _ in range(self.epoch, self.config.epochs):
                self._epoch()
        finally:
            if self.pruning is not None:
                self.pruning.detach()
        return self._result()

    def _epoch(self) -> None:
        cfg, row = self.config, dict[str, Any](epoch=self.epoch + 1)
        if self.pruning is not None:
            self.pruning.set_epoch(self.epoch)
            row |= {"pruned_share": self.pruning.share(),
                    "masked_channels": sum(len(v) for v in self.pruning.masked().values())}
        with self._simulated():  # ranges from the float weights the epoch starts with
            row["loss"] = self._train_epoch()
        if self.quantization is not None:
            row["val_accuracy_float"] = self._val_accuracy(self.student)
            with self._simulated():
                row["val_accuracy"] = self._val_accuracy(self.student)
        else:
            row["val_accuracy"] = self._val_accuracy(self.student)
        if self.teacher is not None:
            row["val_kl_teacher"] = teacher_kl(self.student, self.teacher, self.data.val, self.data)
        self.epoch += 1
        self.history.append(row)
        meta = {"kind": KIND, "space": None, **self.identity, "epoch": self.epoch, "metrics": self.history}
        rng = {"numpy": self.rng.bit_generator.state, "torch": self.gen.get_state().tolist(),
               "torch_global": torch.get_rng_state().tolist()}
        save_checkpoint(self.out_dir, meta, self.trained, self.optimizer, None, rng)
        self.log(f"fine-tune epoch {self.epoch}/{cfg.epochs} loss {row['loss']:.4f} "
                 f"val {row['val_accuracy']:.2%}")

    def _simulated(self, model: nn.Module | None = None) -> Any:
        """The student (or `model`) under the bit-width plan's simulation; no-op without one."""
        if self.quantization is None:
            return nullcontext()
        return self.quantization.simulated(self.student if model is None else model)

    def _val_accuracy(self, model: nn.Module) -> float:
        with torch.no_grad():
            return accuracy(model, self.data.val, self.arch.resolution, self.data.mean, self.data.std)

    def _steps(self) -> int:
        steps = math.ceil(len(self.data.train) / self.config.batch_size)
        return min(steps, self.config.max_steps) if self.config.max_steps else steps

    def _train_epoch(self) -> float:
        cfg, data = self.config, self.data
        self.trained.train()
        steps, total = self._steps(), 0.0
        loader = batches(data.train, cfg.batch_size, data.train.images.shape[-1], data.mean, data.std, self.rng)
        bar = tqdm(loader, total=steps, disable=None if self.progress else True, leave=False,
                   desc=f"fine-tune {self.epoch + 1}/{cfg.epochs}")
        for step, (x, y) in enumerate(bar):
            if step >= steps:
                break
            t = (self.epoch * steps + step) / (cfg.epochs * steps)
            for group in self.optimizer.param_groups:
                group["lr"] = 0.5 * cfg.lr * (1 + math.cos(math.pi * t))
            x = augment(x, self.gen, shift=cfg.augment_shift, rotate=cfg.augment_rotate, scale=cfg.augment_scale,
                        fill=-data.mean / data.std)
            self.optimizer.zero_grad(set_to_none=True)
            loss = self._loss(x, y)
            loss.backward()
            self.optimizer.step()
            total += float(loss.detach())
        return total / steps

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        cfg, teacher = self.config, self.teacher
        if teacher is None:
            return F.cross_entropy(self.student(resized(x, self.arch.resolution)), y)
        watching = self.distiller.watching() if self.distiller is not None else nullcontext(None)
        with watching as outputs:
            logits = self.student(resized(x, self.arch.resolution))
            with torch.no_grad():
                soft = teacher(resized(x, static_arch(teacher, "teacher").resolution))
        loss = kd_loss(logits, soft, y, cfg.temperature, cfg.alpha)
        if self.distiller is not None and outputs is not None:
            loss = loss + cfg.feature_weight * self.distiller.loss(*outputs)
        return loss

    def _result(self) -> FinetuneResult:
        final = self.student.eval()
        if self.pruning is not None:
            from nas.export.prune import prune_model

            final = prune_model(self.student, self.pruning.plan)
        with self._simulated(final):
            score = self._val_accuracy(final)
        return FinetuneResult(final.eval(), list(self.history), score)


def finetune(model: nn.Module, data: Dataset, out_dir: str | Path, config: FinetuneConfig | None = None, *,
             teacher: nn.Module | None = None, plan: PrunePlan | None = None,
             scores: Mapping[str, np.ndarray] | None = None, bits: BitWidthPlan | None = None,
             calibration: torch.Tensor | None = None, progress: bool = False,
             log: Callable[[str], None] = print) -> FinetuneResult:
    """Fine-tune a copy of the static `model` (see the module docstring); `model` is not changed.

    Args:
        teacher: a static model for the same classes and input (`teacher_from_run`, `teacher_from_subnet`), run
            in eval mode without gradients (it is put in eval mode); None trains on labels alone.
        plan: a `PrunePlan` for `model.arch` to reach gradually (`config.prune_epochs`, `config.prune_schedule`).
        scores: channel scores per group (`nas.compress.channel_importance`) ordering what is masked first;
            default: L1 of `model`'s weights.
        bits: a `BitWidthPlan` for `model.arch` to train under (quantisation-aware training); needs `calibration`.
        calibration: normalised images at the model's resolution (e.g. 128 training images) that calibrate the
            simulated activation ranges every epoch.
    """
    config = config or FinetuneConfig()
    arch = static_arch(model, "student")
    if (data.num_classes, data.in_channels) != (arch.num_classes, arch.in_channels):
        raise HwnasError(f"dataset {data.name} has {data.num_classes} classes and {data.in_channels} input channels, "
                         f"the student {arch.key} {arch.num_classes} classes and {arch.in_channels} input channels")
    if teacher is not None:
        check_teacher(teacher, arch)
    pruning = None
    if plan is not None:
        if scores is None:
            from nas.compress.importance import channel_importance

            scores = channel_importance(model, "l1")
        pruning = GradualPruning(plan, scores, config.prune_epochs, config.prune_schedule)
    quantization = _quantization(arch, bits, calibration)
    out = Path(out_dir)
    check_run_dir(out)
    with torch_threads(config.threads), torch.random.fork_rng(devices=[]):
        run = _Finetune(model, data, out, config, teacher, pruning, log, progress, quantization)
        if checkpoint_dir(out) is not None:
            run.restore()
        return run.run()


def _quantization(arch: ArchConfig, bits: BitWidthPlan | None, calibration: torch.Tensor | None
                  ) -> _Quantization | None:
    """The QAT settings, refusing a plan for other layers or calibration images that do not fit the student."""
    if bits is None:
        if calibration is not None:
            raise HwnasError("fine-tune calibration images calibrate quantisation-aware training; give bits (a "
                             "BitWidthPlan) with them, or leave both out")
        return None
    bits.check(arch)
    want = (arch.in_channels, arch.resolution, arch.resolution)
    if not isinstance(calibration, torch.Tensor) or calibration.dim() != 4 or len(calibration) == 0 \
            or tuple(calibration.shape[1:]) != want:
        got = tuple(calibration.shape) if isinstance(calibration, torch.Tensor) else type(calibration).__name__
        shape = ", ".join(map(str, want))
        raise HwnasError(f"quantisation-aware training needs calibration images of shape (N>=1, {shape}) "
                         f"(normalised, at the student's resolution); got {got}")
    return _Quantization(bits, calibration.detach().float())
