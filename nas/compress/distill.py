"""Knowledge distillation for compressed subnets: Hinton's loss, feature distillation on stage outputs, and the
teacher (the supernet's largest subnet, BN-recalibrated, or an exported subnet).

- `kd_loss`: alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y) (Hinton, Vinyals and Dean,
  "Distilling the Knowledge in a Neural Network", 2015; the T^2 keeps the soft term's gradients at the scale of
  the hard one's when T changes).
- `FeatureDistiller`: mean squared error between each stage output (`s0`, `s1`, ... of a `StaticNet`) of the
  student and the teacher, the student's passed through a trainable 1x1 adapter where the widths differ
  (FitNets, Romero et al. 2015), summed over stages. Outputs are caught with forward hooks.
- `teacher_from_run` / `teacher_from_subnet`: a frozen teacher in eval mode; `check_teacher` refuses one whose
  classes or input channels differ from the student's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from search_spaces import ArchConfig
from search_spaces.errors import HwnasError
from supernets.data import Dataset, Split, batches
from supernets.models import StaticNet
from supernets.training import kd_loss as soft_kd_loss
from supernets.training import resized


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            temperature: float = 4.0, alpha: float = 0.9) -> torch.Tensor:
    """Hinton's distillation loss (batch mean): alpha * T^2 * KL(p_t^T || p_s^T) + (1 - alpha) * CE(s, y)."""
    if temperature <= 0 or not 0.0 <= alpha <= 1.0:
        raise HwnasError(f"kd_loss: temperature must be > 0 and alpha in [0, 1]; got temperature {temperature}, "
                         f"alpha {alpha}")
    soft = soft_kd_loss(student_logits, teacher_logits.detach(), temperature)
    if alpha == 1.0:
        return soft
    return alpha * soft + (1 - alpha) * F.cross_entropy(student_logits, labels)


def static_arch(model: nn.Module, role: str) -> ArchConfig:
    arch = getattr(model, "arch", None)
    if not isinstance(arch, ArchConfig):
        raise HwnasError(f"the {role} must be a static model (supernets.models.build_model, Supernet.materialize, "
                         f"nas.export.load_subnet); got a {type(model).__name__}")
    return arch


def check_teacher(teacher: nn.Module, student: ArchConfig) -> None:
    """Refuse a teacher whose classes or input channels differ from the student's, naming both."""
    arch = static_arch(teacher, "teacher")
    if (arch.num_classes, arch.in_channels) != (student.num_classes, student.in_channels):
        raise HwnasError(f"teacher {arch.key} has {arch.num_classes} classes and {arch.in_channels} input channels, "
                         f"the student {student.key} {student.num_classes} classes and {student.in_channels} input "
                         f"channels: a teacher must predict the student's classes from the same input")


def frozen(model: nn.Module) -> nn.Module:
    """`model` in eval mode with no parameter needing gradients (a teacher)."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model.eval()


def teacher_from_run(run_dir: str | Path, student: ArchConfig | None = None, *, data: Dataset | None = None,
                     recal_images: int | None = None, seed: int = 0) -> nn.Module:
    """The supernet's largest subnet as a frozen teacher, its BatchNorm statistics recalibrated on training images.

    With a `student`, the teacher takes the student's family in every stage (as the supernet's own in-place
    teacher did) and its resolution; a student for other classes or input channels is refused. `data` defaults to
    the run's dataset, `recal_images` to the run's recipe (`bn_recal_images`)."""
    from supernets.evaluation import recalibrate_bn, recalibration_images
    from supernets.training import arch_families, load_run

    run = load_run(run_dir)
    space = run.net.space
    families = None
    if student is not None:
        if (space.num_classes, space.in_channels) != (student.num_classes, student.in_channels):
            raise HwnasError(f"the supernet in {run_dir} has {space.num_classes} classes and {space.in_channels} "
                             f"input channels, the student {student.key} {student.num_classes} classes and "
                             f"{student.in_channels} input channels: its largest subnet cannot teach this student")
        try:
            families = arch_families(space, student)
        except (ValueError, IndexError):  # the student's families are not the space's: the default largest
            families = None
    arch = space.extreme(True, families)
    if student is not None:
        arch = replace(arch, resolution=student.resolution)
    data = data if data is not None else run.dataset()
    count = recal_images if recal_images is not None else run.config.bn_recal_images
    model = run.net.materialize(arch)
    recalibrate_bn(model, recalibration_images(data, arch.resolution, count, seed))
    return frozen(model)


def teacher_from_subnet(directory: str | Path, student: ArchConfig | None = None) -> nn.Module:
    """An exported subnet (`nas.export.load_subnet`) as a frozen teacher, checked against `student` if given."""
    from nas.export import load_subnet

    model, _ = load_subnet(directory)
    if student is not None:
        check_teacher(model, student)
    return frozen(model)


#: What names the default teacher (`load_teacher`); anything else is an exported subnet's directory.
LARGEST = "largest"


def load_teacher(source: str | Path, student: ArchConfig, *, run_dir: str | Path | None = None,
                 data: Dataset | None = None, recal_images: int | None = None) -> nn.Module:
    """The teacher `--teacher largest|DIR` names: the largest subnet of the supernet in `run_dir`
    (`teacher_from_run`), or the exported subnet in directory `source` (`teacher_from_subnet`)."""
    if str(source) == LARGEST:
        if run_dir is None:
            raise HwnasError("teacher 'largest' is the supernet's largest subnet: give the supernet's run directory, "
                             "or name an exported subnet directory as the teacher")
        return teacher_from_run(run_dir, student, data=data, recal_images=recal_images)
    return teacher_from_subnet(source, student)


@torch.no_grad()
def teacher_kl(student: nn.Module, teacher: nn.Module, split: Split, data: Dataset, temperature: float = 1.0,
               batch_size: int = 256) -> float:
    """Mean KL(p_teacher^T || p_student^T) over `split` (both in eval mode, each at its own resolution): how far
    the student's predictions are from the teacher's."""
    s_arch, t_arch = static_arch(student, "student"), static_arch(teacher, "teacher")
    was_training = student.training
    student.eval()
    total = 0.0
    try:
        for x, _ in batches(split, batch_size, split.images.shape[-1], data.mean, data.std):
            s, t = student(resized(x, s_arch.resolution)), teacher(resized(x, t_arch.resolution))
            total += float(soft_kd_loss(s, t, temperature)) / (temperature * temperature) * len(x)
    finally:
        student.train(was_training)
    return total / max(1, len(split))


def _stages(model: nn.Module) -> list[nn.Module]:
    if not isinstance(model, StaticNet):
        raise HwnasError(f"feature distillation reads the stage outputs of a StaticNet; got a {type(model).__name__}")
    return list(model.stages)


def _stage_widths(model: StaticNet) -> list[int]:
    widths, channels = [], model.arch.stem.channels
    for stage in model.arch.stages:
        channels = stage[-1].out_channels if stage else channels
        widths.append(channels)
    return widths


class FeatureDistiller(nn.Module):
    """Stage-output distillation: per stage, MSE(adapter(student stage output), teacher stage output), summed;
    the adapter is a 1x1 conv (seeded by the caller's torch RNG) where widths differ, else identity. A student
    output of another spatial size is resized (bilinear) to the teacher's."""

    def __init__(self, student: nn.Module, teacher: nn.Module) -> None:
        super().__init__()
        s_stages, t_stages = _stages(student), _stages(teacher)
        if len(s_stages) != len(t_stages):
            raise HwnasError(f"feature distillation pairs stages: the student has {len(s_stages)}, the teacher "
                             f"{len(t_stages)}; use feature_weight 0 for this teacher")
        assert isinstance(student, StaticNet) and isinstance(teacher, StaticNet)
        pairs = zip(_stage_widths(student), _stage_widths(teacher), strict=True)
        self.adapters = nn.ModuleList(nn.Conv2d(s, t, 1, bias=False) if s != t else nn.Identity() for s, t in pairs)
        self._student_stages, self._teacher_stages = s_stages, t_stages

    @contextmanager
    def watching(self) -> Iterator[tuple[list[torch.Tensor], list[torch.Tensor]]]:
        """Within the block, every forward of the student and the teacher records their stage outputs."""
        student_out: list[torch.Tensor] = []
        teacher_out: list[torch.Tensor] = []
        hooks = [m.register_forward_hook(lambda _m, _i, out, keep=student_out: keep.append(out))
                 for m in self._student_stages]
        hooks += [m.register_forward_hook(lambda _m, _i, out, keep=teacher_out: keep.append(out))
                  for m in self._teacher_stages]
        try:
            yield student_out, teacher_out
        finally:
            for hook in hooks:
                hook.remove()

    def loss(self, student_out: list[torch.Tensor], teacher_out: list[torch.Tensor]) -> torch.Tensor:
        """The summed stage losses of one forward of each (and empties both lists)."""
        losses = []
        for adapter, s, t in zip(self.adapters, student_out, teacher_out, strict=True):
            s = adapter(s)
            if s.shape[-2:] != t.shape[-2:]:
                s = F.interpolate(s, size=t.shape[-2:], mode="bilinear", align_corners=False)
            losses.append(F.mse_loss(s, t.detach()))
        student_out.clear()
        teacher_out.clear()
        return torch.stack(losses).sum()
