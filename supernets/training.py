"""Supernet training: progressive shrinking or the sandwich rule, checkpointed every epoch, resumable.

Progressive shrinking (Cai et al. 2020): train the full network, then make kernel, depth and expand/width
elastic in turn, each later phase distilling from a frozen copy of the full network. The sandwich rule
(BigNAS / AttentiveNAS): each step trains the largest subnet on labels, and the smallest plus N random
subnets on the largest's soft outputs (in-place distillation). Under `torchrun` (gloo on CPU) every
process takes its share of each batch and gradients are averaged, so all processes keep equal weights.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from search_spaces import ArchConfig, SearchSpace, get_space
from search_spaces.errors import HwnasError
from search_spaces.families import block_revisions as all_block_revisions
from search_spaces.families import changed_families
from search_spaces.files import atomic_write_text
from supernets.checkpoint import check_run_dir, checkpoint_dir, load_checkpoint, read_meta, save_checkpoint
from supernets.config import PHASE_ELASTIC, RECIPE_REVISION, PhaseConfig, TrainConfig
from supernets.data import Dataset, augment, batches, load_dataset
from supernets.evaluation import evaluate_subnet
from supernets.supernet import Supernet
from supernets.threads import torch_threads


def phase_arch(space: SearchSpace, rng: np.random.Generator, elastic: tuple[str, ...], largest: bool = True,
               families: tuple[int, ...] | None = None) -> ArchConfig:
    """A subnet whose `elastic` gene kinds are random and all other genes at their largest (smallest) value;
    each stage's family from `families` (indices) when given, else random."""
    random = space.sample_genes(rng, 1)[0]
    if families is not None:
        random[list(space.stage_offsets)] = families
    families = tuple(int(random[b]) for b in space.stage_offsets)
    genes = space.to_genes(space.extreme(largest, families))
    kinds = np.array([g.kind for g in space.genes])
    mask = np.isin(kinds, elastic)
    genes[mask] = random[mask]
    return space.from_genes(space.canonical_genes(genes)[0])


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 KL(p_t^T || p_s^T) (Hinton et al. 2015)."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, 1), F.softmax(teacher / t, 1), reduction="batchmean") * t * t


def resized(x: torch.Tensor, resolution: int) -> torch.Tensor:
    if x.shape[-1] == resolution:
        return x
    return F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)


@dataclass
class _World:
    rank: int = 0
    size: int = 1

    @classmethod
    def join(cls) -> _World:
        """Join the process group `torchrun` describes (gloo: CPU), or run alone when not under torchrun."""
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("gloo")
        return cls.current()

    @classmethod
    def current(cls) -> _World:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return cls(torch.distributed.get_rank(), torch.distributed.get_world_size())
        return cls()

    def average_gradients(self, model: torch.nn.Module) -> None:
        if self.size == 1:
            return
        for p in model.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            torch.distributed.all_reduce(p.grad)
            p.grad /= self.size


def _phase_at(config: TrainConfig, epoch: int) -> tuple[int, PhaseConfig, int]:
    """(phase index, phase, epoch within phase) for a global epoch index."""
    for index, phase in enumerate(config.phases):
        if epoch < phase.epochs:
            return index, phase, epoch
        epoch -= phase.epochs
    raise IndexError(epoch)


class SupernetTrainer:
    """Trains a supernet into `run_dir`. Nothing is read or written until `run()`."""

    def __init__(self, config: TrainConfig, run_dir: str | Path, *, data: Dataset | None = None,
                 progress: bool = True, log: Callable[[str], None] = print) -> None:
        self.config, self.run_dir, self.data, self.progress, self.log = config, Path(run_dir), data, progress, log
        self.world = _World.join()

    # ------------------------------------------------------------------------------------------ setup

    def _setup(self, resume: bool) -> None:
        cfg = self.config
        check_run_dir(self.run_dir)
        existing = checkpoint_dir(self.run_dir)
        if existing is not None and not resume:
            raise HwnasError(f"{self.run_dir} already holds a checkpoint; pass --resume to continue it or choose "
                             "another run directory (nothing was changed)")
        if self.data is None:
            self.data = load_dataset(cfg.dataset, cfg.data_path, val_fraction=cfg.val_fraction, seed=cfg.seed)
        self.space = get_space(cfg.space, in_channels=self.data.in_channels, num_classes=self.data.num_classes)
        torch.manual_seed(cfg.seed)
        self.net = Supernet(self.space)
        self.teacher: Supernet | None = None
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=cfg.phases[0].lr, momentum=cfg.momentum,
                                         nesterov=True, weight_decay=cfg.weight_decay)
        self.rng = np.random.default_rng(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.epoch, self.history = 0, list[dict[str, Any]]()
        if existing is not None:
            self._restore()
            return
        if resume:
            self.log(f"{self.run_dir} holds no checkpoint and no trace of training: starting at epoch 0")
        if self.world.rank == 0:
            atomic_write_text(self.run_dir / "config.yaml", cfg.to_yaml())

    def _restore(self) -> None:
        ckpt = load_checkpoint(self.run_dir)
        check_block_revisions(ckpt.meta, self.space, self.run_dir)
        trained_at = recipe_revision(ckpt.meta)
        if trained_at != RECIPE_REVISION:
            raise HwnasError(f"the checkpoint in {self.run_dir} was started at recipe revision {trained_at}; this "
                             f"hwnas trains at recipe revision {RECIPE_REVISION} and cannot resume it (it still loads "
                             "for evaluation and search); train a new run directory, or finish it with the hwnas "
                             "version that started it")
        if ckpt.meta["config"] != self.config.to_dict():
            raise HwnasError(f"the checkpoint in {self.run_dir} was trained with another config; resume with the "
                             f"same config (see {self.run_dir / 'config.yaml'})")
        self.net.load_state_dict(ckpt.weights)
        if ckpt.teacher is not None:
            self.teacher = self._frozen(Supernet(self.space))
            self.teacher.load_state_dict(ckpt.teacher)
        self.optimizer.load_state_dict(ckpt.optimizer)
        self.rng.bit_generator.state = ckpt.rng["numpy"]
        self.gen.set_state(torch.tensor(ckpt.rng["torch"], dtype=torch.uint8))
        self.epoch, self.history = int(ckpt.meta["epoch"]), list(ckpt.meta["metrics"])
        if self.world.rank == 0:  # the log agrees with the checkpoint: rows past it dropped, missing ones restored
            write_train_log(self.run_dir, self.history)
        self.log(f"resumed {self.run_dir} after epoch {self.epoch} of {self.config.total_epochs}")

    @staticmethod
    def _frozen(net: Supernet) -> Supernet:
        for p in net.parameters():
            p.requires_grad_(False)
        return net.eval()

    # ------------------------------------------------------------------------------------------ training

    def run(self, resume: bool = False) -> list[dict[str, Any]]:
        """Train to the end of the recipe (continuing from the last checkpoint with `resume`); return the log."""
        with torch_threads(self.config.threads):
            self._setup(resume)
            self._train()
        return self.history

    def _train(self) -> None:
        while self.epoch < self.config.total_epochs:
            index, phase, _ = _phase_at(self.config, self.epoch)
            if phase.name in ("kernel", "depth", "expand") and self.teacher is None:
                self.teacher = self._frozen(copy.deepcopy(self.net))
            if phase.name == "expand" and _phase_at(self.config, self.epoch)[2] == 0:
                self.net.sort_channels()
            started = time.perf_counter()
            loss = self._train_epoch(phase)
            self._end_epoch(index, phase, loss, time.perf_counter() - started)

    def _train_epoch(self, phase: PhaseConfig) -> float:
        cfg, data = self.config, self.data
        assert data is not None
        self.net.train()
        steps = math.ceil(len(data.train) / cfg.batch_size)
        _, _, in_phase = _phase_at(cfg, self.epoch)
        total, count = 0.0, 0
        native = data.train.images.shape[-1]
        bar = tqdm(batches(data.train, cfg.batch_size, native, data.mean, data.std, self.rng), total=steps,
                   disable=None if self.progress and self.world.rank == 0 else True, leave=False,
                   desc=f"epoch {self.epoch + 1}/{cfg.total_epochs} {phase.name}")
        for step, (x, y) in enumerate(bar):
            t = (in_phase * steps + step) / (phase.epochs * steps)
            for group in self.optimizer.param_groups:
                group["lr"] = 0.5 * phase.lr * (1 + math.cos(math.pi * t))
            x = _augment(x, cfg, data, self.gen)
            x, y = x[self.world.rank::self.world.size], y[self.world.rank::self.world.size]
            self.optimizer.zero_grad(set_to_none=True)
            if phase.name == "sandwich":
                loss = self._sandwich_step(x, y)
            elif phase.name == "align":
                loss = self._align_step(x)
            else:
                loss = self._progressive_step(x, y, phase)
            self.world.average_gradients(self.net)
            self.optimizer.step()
            total, count = total + loss, count + 1
            bar.set_postfix(loss=f"{total / count:.3f}")
        return total / max(1, count)

    def _progressive_step(self, x: torch.Tensor, y: torch.Tensor, phase: PhaseConfig) -> float:
        cfg, total = self.config, 0.0
        elastic = PHASE_ELASTIC[phase.name]
        fixed = (0,) * len(self.space.stages) if phase.families == "first" else None
        if phase.largest and phase.name != "full":
            largest = phase_arch(self.space, self.rng, ("family",), families=fixed)
            loss = F.cross_entropy(self.net(resized(x, largest.resolution), largest), y,
                                   label_smoothing=cfg.label_smoothing)
            loss.backward()
            total += float(loss.detach())
        students = [phase_arch(self.space, self.rng, elastic, families=fixed) for _ in range(phase.subnets)]
        if phase.smallest and phase.name != "full":
            students.append(_smallest_for_phase(self.space, elastic, fixed or random_families(self.space, self.rng)))
        for arch in students:
            xr = resized(x, arch.resolution)
            logits = self.net(xr, arch)
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            if self.teacher is not None and cfg.kd_weight > 0:
                teacher_arch = _at_resolution(self.space.extreme(True, arch_families(self.space, arch)),
                                              arch.resolution)
                with torch.no_grad():
                    soft = self.teacher(xr, teacher_arch)
                loss = (1 - cfg.kd_weight) * loss + cfg.kd_weight * kd_loss(logits, soft, cfg.kd_temperature)
            if cfg.step_losses == "mean":
                loss = loss / len(students)
            loss.backward()
            total += float(loss.detach())
        return total

    def _align_step(self, x: torch.Tensor) -> float:
        """Blockwise distillation of every stage's other families onto its first one (DNA, Li et al. 2020): the
        default network (first family everywhere, largest settings, random resolution) runs without gradients;
        in each stage one of the other families, at its largest, takes the same stage input and learns to give
        the same stage output (mean squared error). The families of a stage then mean the same by each channel,
        so the next stage can read any of them when the mix is trained."""
        space, n = self.space, len(self.space.stages)
        default = phase_arch(space, self.rng, ("resolution",), families=(0,) * n)
        others = tuple(int(self.rng.integers(1, len(st.families))) if len(st.families) > 1 else 0
                       for st in space.stages)
        student = _at_resolution(space.extreme(True, others), default.resolution)
        xr = resized(x, default.resolution)
        with torch.no_grad():
            h = self.net.stem_forward(xr, default)
            ins, outs = [], []
            for index, blocks in enumerate(default.stages):
                ins.append(h)
                h = self.net.stage_forward(h, index, blocks)
                outs.append(h)
        space.validate(student)
        losses = [F.mse_loss(self.net.stage_forward(ins[i], i, student.stages[i]), outs[i])
                  for i in range(n) if others[i] != 0]
        if not losses:  # a space with one family per stage: nothing to align
            return 0.0
        loss = torch.stack(losses).sum()
        loss.backward()
        return float(loss.detach())

    def _sandwich_step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        cfg = self.config
        largest = self.space.extreme(True, random_families(self.space, self.rng))
        logits = self.net(resized(x, largest.resolution), largest)
        loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
        loss.backward()
        soft, total = logits.detach(), float(loss.detach())
        students = [phase_arch(self.space, self.rng, ("family",), largest=False)]  # the smallest
        students += [self.space.sample(self.rng) for _ in range(cfg.sandwich_random)]
        for arch in students:
            student = self.net(resized(x, arch.resolution), arch)
            distill = kd_loss(student, soft, cfg.kd_temperature)
            distill.backward()
            total += float(distill.detach())
        return total

    def _end_epoch(self, index: int, phase: PhaseConfig, loss: float, seconds: float) -> None:
        cfg, data = self.config, self.data
        assert data is not None
        self.epoch += 1
        if self.world.rank != 0:
            return
        elastic = PHASE_ELASTIC[phase.name]
        row: dict[str, Any] = {"epoch": self.epoch, "phase": phase.name, "loss": round(loss, 5),
                               "seconds": round(seconds, 2)}
        phase_end = _phase_at(cfg, self.epoch - 1)[2] == phase.epochs - 1
        if phase_end or (cfg.eval_every and self.epoch % cfg.eval_every == 0):
            for name, arch in (("largest", self.space.extreme(True)),
                               ("smallest", _smallest_for_phase(self.space, elastic))):
                accuracy = evaluate_subnet(self.net, arch, data, cfg.bn_recal_images, cfg.seed)[0]
                row[f"acc_{name}"] = round(accuracy, 5)
        self.history.append(row)
        meta = {"space": self.space.to_dict(),
                "config": cfg.to_dict(), "phase": index, "phase_name": phase.name, "epoch": self.epoch,
                "total_epochs": cfg.total_epochs, "metrics": self.history, "dataset": data.name,
                "torch_version": torch.__version__, "block_revisions": block_revisions(self.space),
                "recipe_revision": RECIPE_REVISION}
        rng = {"numpy": self.rng.bit_generator.state, "torch": self.gen.get_state().tolist()}
        save_checkpoint(self.run_dir, meta, self.net, self.optimizer, self.teacher, rng)
        write_train_log(self.run_dir, self.history)
        scores = (f"  largest {row['acc_largest']:.2%}  smallest {row['acc_smallest']:.2%}"
                  if "acc_largest" in row else "")
        self.log(f"epoch {self.epoch}/{cfg.total_epochs} [{phase.name}] loss {loss:.4f}{scores}  ({seconds:.0f} s)")


def write_train_log(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    """Write `train_log.jsonl` (one JSON row per epoch) as a copy of the checkpoint's `metrics`, atomically."""
    atomic_write_text(run_dir / "train_log.jsonl", "".join(json.dumps(row) + "\n" for row in rows))


def train_alone(arch: ArchConfig, data: Dataset, config: TrainConfig, *, epochs: int, lr: float, seed: int = 0,
                progress: bool = False) -> torch.nn.Module:
    """Train the static model of `arch` from scratch on `data` for `epochs` (cosine learning rate from `lr`) with
    the optimizer, batch size, label smoothing and augmentation of `config`: the stand-alone baseline a
    once-for-all subnet is compared with."""
    from supernets.models import build_model

    torch.manual_seed(seed)
    model = build_model(arch)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=config.momentum, nesterov=True,
                                weight_decay=config.weight_decay)
    rng, gen = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    steps, native = math.ceil(len(data.train) / config.batch_size), data.train.images.shape[-1]
    for epoch in tqdm(range(epochs), disable=None if progress else True, desc=f"train {arch.key} alone",
                      leave=False):
        model.train()
        for step, (x, y) in enumerate(batches(data.train, config.batch_size, native, data.mean, data.std, rng)):
            for group in optimizer.param_groups:
                group["lr"] = 0.5 * lr * (1 + math.cos(math.pi * (epoch * steps + step) / (epochs * steps)))
            x = resized(_augment(x, config, data, gen), arch.resolution)
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y, label_smoothing=config.label_smoothing).backward()
            optimizer.step()
    return model.eval()


def _augment(x: torch.Tensor, config: TrainConfig, data: Dataset, gen: torch.Generator) -> torch.Tensor:
    """The recipe's augmentation of a normalised batch; what moves into view is black."""
    return augment(x, gen, shift=config.augment_shift, rotate=config.augment_rotate, scale=config.augment_scale,
                   fill=-data.mean / data.std)


def load_supernet(run_dir: str | Path) -> tuple[Supernet, dict[str, Any]]:
    """The trained supernet of a run directory (in eval mode) and its checkpoint metadata."""
    ckpt = load_checkpoint(Path(run_dir))
    space_meta = ckpt.meta["space"]
    space = get_space(space_meta["name"], in_channels=space_meta["in_channels"],
                      num_classes=space_meta["num_classes"])
    if space.to_dict() != space_meta:
        raise HwnasError(f"the checkpoint in {run_dir} was trained on another definition of space "
                         f"{space.name!r} than this hwnas has; use the hwnas version that trained it")
    check_block_revisions(ckpt.meta, space, run_dir)
    recipe_revision(ckpt.meta)  # any revision loads; a damaged record does not
    net = Supernet(space)
    net.load_state_dict(ckpt.weights)
    return net.eval(), ckpt.meta


@dataclass(frozen=True)
class TrainedRun:
    """A trained run directory, loaded: its supernet (eval mode), checkpoint metadata and training recipe."""

    run_dir: Path
    net: Supernet
    meta: dict[str, Any]
    config: TrainConfig

    @property
    def weights_sha256(self) -> str:
        """The sha256 of the supernet's weights file (provenance and cache keys)."""
        return str(self.meta.get("weights_sha256", ""))

    def dataset(self, data_path: str | Path | None = None) -> Dataset:
        """The dataset the supernet was trained on (see `run_dataset`)."""
        return run_dataset(self.meta, data_path=data_path)


def load_run(run_dir: str | Path) -> TrainedRun:
    """Load a `hwnas supernet train` run directory: `run = load_run(d); run.net, run.config, run.dataset()`."""
    net, meta = load_supernet(run_dir)
    return TrainedRun(Path(run_dir), net, meta, run_config(meta))


def run_config(meta_or_run_dir: dict[str, Any] | str | Path) -> TrainConfig:
    """The training recipe recorded in a checkpoint's metadata (or a run directory's newest checkpoint)."""
    meta = meta_or_run_dir if isinstance(meta_or_run_dir, dict) else read_meta(Path(meta_or_run_dir))
    if not isinstance(meta.get("config"), dict):
        raise HwnasError("the supernet checkpoint's metadata has no training config (key 'config'); the "
                         "checkpoint is damaged or not from hwnas supernet train")
    recipe_revision(meta)  # a damaged record is refused; a config of any revision reads with today's defaults for
    return TrainConfig.from_dict(meta["config"])  # fields it predates (they default to what it did)


def run_dataset(meta_or_run_dir: dict[str, Any] | str | Path, *, data_path: str | Path | None = None) -> Dataset:
    """The dataset a supernet was trained on, split as in training (same validation fraction and seed), from its
    checkpoint metadata or run directory; `data_path` overrides the recorded local path (a moved dataset)."""
    config = run_config(meta_or_run_dir)
    path = data_path if data_path is not None else config.data_path
    return load_dataset(config.dataset, path, val_fraction=config.val_fraction, seed=config.seed)


def recipe_revision(meta: dict[str, Any]) -> int:
    """The recipe revision a checkpoint was trained at (`supernets.config.RECIPE_REVISION`; absent: 1)."""
    value = meta.get("recipe_revision", 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise HwnasError(f"the checkpoint's recipe_revision is {value!r}; expected a whole number >= 1 (the "
                         "checkpoint metadata is damaged)")
    return value


def block_revisions(space: SearchSpace) -> dict[str, int]:
    """The revision of every family `space` uses (`Family.revision`)."""
    now = all_block_revisions()
    return {f: now[f] for f in sorted({f for st in space.stages for f in st.families})}


def check_block_revisions(meta: dict[str, Any], space: SearchSpace, run_dir: str | Path) -> None:
    """Refuse a checkpoint whose weights were trained for a block that now computes something else (a
    checkpoint without the record predates revisions: every family at 1)."""
    trained, now = meta.get("block_revisions", {}), block_revisions(space)
    changed = [f"{f} (trained at revision {trained.get(f, 1)}, now {now[f]})" for f in changed_families(trained, now)]
    if changed:
        raise HwnasError(f"the supernet in {run_dir} was trained for blocks that have changed since: "
                         f"{', '.join(changed)}; its weights do not fit them. Train it again (see "
                         "the revision comments in search_spaces/families.py for what changed)")


def _smallest_for_phase(space: SearchSpace, elastic: tuple[str, ...], families: tuple[int, ...] | None = None
                        ) -> ArchConfig:
    """The smallest subnet the phase trains (non-elastic dimensions stay at their largest); each stage's family
    from `families` (indices; default the first listed)."""
    genes, small = space.to_genes(space.extreme(True, families)), space.to_genes(space.extreme(False, families))
    kinds = np.array([g.kind for g in space.genes])
    mask = np.isin(kinds, elastic) & (kinds != "family")
    genes[mask] = small[mask]
    return space.from_genes(space.canonical_genes(genes)[0])


def random_families(space: SearchSpace, rng: np.random.Generator) -> tuple[int, ...]:
    """One family index per stage, uniform over each stage's choices."""
    return tuple(int(g) for g in space.sample_genes(rng, 1)[0][list(space.stage_offsets)])


def arch_families(space: SearchSpace, arch: ArchConfig) -> tuple[int, ...]:
    """Each stage's family as an index into the space's choices."""
    return tuple(st.families.index(stage[0].family) for st, stage in zip(space.stages, arch.stages, strict=True))


def _at_resolution(arch: ArchConfig, resolution: int) -> ArchConfig:
    return ArchConfig(resolution, arch.in_channels, arch.num_classes, arch.stem, arch.stages, arch.head)
