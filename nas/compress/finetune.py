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
from search_spaces import ArchConfig
from search_spaces.errors import HwnasError
from search_spaces.plans import PrunePlan
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
    """The fine-tuned model (pruned to the plan's widths when there was a plan; eval mode), one metrics row per
    epoch, and the validation accuracy of the returned model."""

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


class _Finetune:
    """One fine-tune run (state for `finetune`); built inside the seeded, thread-limited context."""

    def __init__(self, model: nn.Module, data: Dataset, out_dir: Path, config: FinetuneConfig,
                 teacher: nn.Module | None, pruning: GradualPruning | None, log: Callable[[str], None],
                 progress: bool) -> None:
        self.arch: ArchConfig = static_arch(model, "student")
        self.data, self.out_dir, self.config, self.log, self.progress = data, out_dir, config, log, progress
        self.teacher, self.pruning = teacher.eval() if teacher is not None else None, pruning
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
                         "config": config.to_dict()}

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
        row["loss"] = self._train_epoch()
        row["val_accuracy"] = accuracy(self.student, self.data.val, self.arch.resolution, self.data.mean,
                                       self.data.std)
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

    def _steps(self) -> int:
        steps = math.ceil(len(self.data.train) / self.config.batch_size)
        return min(steps, self.config.max_steps) if self.config.max_steps else steps

    def _train_epoch(self) -> float:
        cfg, data = self.config, self.data
        self.trained.train()
        steps, total = self._steps(), 0.0
        loader = batches(data.train, cfg.batch_size, data.train.images.shape[-1], data.mean, data.std, self.rng)
        bar = tqdm(loader, total=steps, disable=not self.progress, leave=False,
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
        score = accuracy(final, self.data.val, self.arch.resolution, self.data.mean, self.data.std)
        return FinetuneResult(final, list(self.history), score)


def finetune(model: nn.Module, data: Dataset, out_dir: str | Path, config: FinetuneConfig | None = None, *,
             teacher: nn.Module | None = None, plan: PrunePlan | None = None,
             scores: Mapping[str, np.ndarray] | None = None, progress: bool = False,
             log: Callable[[str], None] = print) -> FinetuneResult:
    """Fine-tune a copy of the static `model` (see the module docstring); `model` is not changed.

    Args:
        teacher: a static model for the same classes and input (`teacher_from_run`, `teacher_from_subnet`), run
            in eval mode without gradients (it is put in eval mode); None trains on labels alone.
        plan: a `PrunePlan` for `model.arch` to reach gradually (`config.prune_epochs`, `config.prune_schedule`).
        scores: channel scores per group (`nas.compress.channel_importance`) ordering what is masked first;
            default: L1 of `model`'s weights.
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
    out = Path(out_dir)
    check_run_dir(out)
    with torch_threads(config.threads), torch.random.fork_rng(devices=[]):
        run = _Finetune(model, data, out, config, teacher, pruning, log, progress)
        if checkpoint_dir(out) is not None:
            run.restore()
        return run.run()
