"""Supernet training recipes as dataclasses, read from and written to YAML."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from search_spaces.errors import HwnasError

#: The recipe revision: raised whenever the built-in recipe (`TrainConfig()`'s defaults, configs/mnist5k.yaml) or
#: what `SupernetTrainer` computes for a given recipe (a loss, a sampling rule, an initialisation) changes, so that a
#: checkpoint says which recipe made it. Checkpoints record it as `recipe_revision` (absent: 1). A run is resumed
#: only at the revision that started it (the error names both); a checkpoint of any revision loads for evaluation
#: and search when its blocks have not changed (`check_block_revisions`), since it records its whole recipe.
#: 1: issues 3-17 (issue 17 added `step_losses`, whose default "mean" is what revision 1 always did).
RECIPE_REVISION = 1

#: What each progressive-shrinking phase samples at random (the rest stays at its largest value).
#: Resolution and family are elastic from the start (once-for-all: elastic resolution throughout).
PHASE_ELASTIC: dict[str, tuple[str, ...]] = {
    "full": ("resolution", "family"),
    "align": ("resolution", "family"),
    "kernel": ("resolution", "family", "kernel"),
    "depth": ("resolution", "family", "kernel", "depth"),
    "expand": ("resolution", "family", "kernel", "depth", "expand", "width"),
    "sandwich": ("resolution", "family", "kernel", "depth", "expand", "width"),
}


@dataclass(frozen=True)
class PhaseConfig:
    """One phase: what is elastic, how long, its peak learning rate (cosine to 0 within the phase), and how many
    random subnets each step trains (losses combined by `TrainConfig.step_losses`; once-for-all uses 1, 2 and 4 in
    its kernel, depth and expand phases). `largest`: each step also trains the largest subnet (random families, hard
    labels), which keeps it from drifting while the smaller subnets that share its weights learn; `smallest`: each
    step also trains the smallest subnet the phase allows (random families, distilled), so the low end of the space is
    not left to chance (both BigNAS's sandwich rule inside each phase; once-for-all samples only at random).
    `families`: "random" draws each stage's family afresh for every subnet; "first" keeps each stage at its
    first-listed family (the space's default network). A multi-family supernet learns slowly from scratch when
    every step runs another mix (each stage must read several unrelated predecessors' features; on mnist5k the
    loss after one epoch is 2.2 against 0.8 for one fixed mix), so the default recipe trains the default
    families alone first, then the mix: the other families then learn to fit into a network that works.
    The sandwich rule ignores `subnets`, `largest`, `smallest` and `families` (see `TrainConfig.sandwich_random`)."""

    name: str
    epochs: int
    lr: float
    subnets: int = 1
    largest: bool = False
    smallest: bool = False
    families: str = "random"

    def __post_init__(self) -> None:
        if self.name not in PHASE_ELASTIC:
            raise HwnasError(f"unknown phase {self.name!r}; allowed: {', '.join(PHASE_ELASTIC)}")
        if self.families not in ("random", "first"):
            raise HwnasError(f"phase {self.name}: families must be 'random' or 'first'; got {self.families!r}")
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise HwnasError(f"phase {self.name}: epochs must be a whole number >= 1; got {self.epochs!r}")
        if not isinstance(self.subnets, int) or self.subnets < 1:
            raise HwnasError(f"phase {self.name}: subnets must be a whole number >= 1; got {self.subnets!r}")
        for flag in ("largest", "smallest"):
            if not isinstance(getattr(self, flag), bool):
                raise HwnasError(f"phase {self.name}: {flag} must be true or false; got {getattr(self, flag)!r}")
        if not isinstance(self.lr, (int, float)) or not 0 < self.lr < 10:
            raise HwnasError(f"phase {self.name}: lr must be a number in (0, 10); got {self.lr!r}")


def _default_phases() -> tuple[PhaseConfig, ...]:
    return (PhaseConfig("full", 12, 0.1, families="first"), PhaseConfig("align", 3, 0.1), PhaseConfig("full", 21, 0.1),
            PhaseConfig("kernel", 4, 0.05, 1, True, True),
            PhaseConfig("depth", 4, 0.05, 1, True, True), PhaseConfig("expand", 10, 0.05, 1, True, True))


@dataclass(frozen=True)
class TrainConfig:
    """A supernet training recipe. `recipe` is progressive shrinking or the sandwich rule.

    kd_weight a and kd_temperature T: loss = (1 - a) CE(y, p_s) + a T^2 KL(p_t^T || p_s^T) (Hinton et al.).
    """

    space: str = "small"
    dataset: str = "mnist5k"
    data_path: str | None = None
    recipe: str = "progressive"
    phases: tuple[PhaseConfig, ...] = field(default_factory=_default_phases)
    batch_size: int = 64
    momentum: float = 0.9
    weight_decay: float = 3e-5
    label_smoothing: float = 0.0
    kd_weight: float = 0.5
    kd_temperature: float = 1.0
    #: How a progressive step combines the losses of its subnets: "mean" (the random and smallest subnets share one
    #: subnet's weight beside the largest's; what hwnas has always done) or "sum" (once-for-all, BigNAS: every
    #: subnet weighs as much as the largest; with the 38-epoch experiment of issue 17 it did not help, see
    #: configs/mnist5k-38ep-sum.yaml). The sandwich rule always sums.
    step_losses: str = "mean"
    sandwich_random: int = 2
    augment_shift: int = 2  # whole-pixel translation, up to +-N in each direction
    augment_rotate: float = 0.0  # random rotation, up to +-N degrees
    augment_scale: float = 0.0  # random zoom by a factor in [1 - N, 1 + N]
    val_fraction: float = 0.2
    bn_recal_images: int = 1000
    eval_every: int = 6  # evaluate largest and smallest every N epochs and at every phase's end (0: phase ends)
    seed: int = 0
    threads: int = 0  # 0: torch's default

    def __post_init__(self) -> None:
        if self.recipe not in ("progressive", "sandwich"):
            raise HwnasError(f"recipe must be 'progressive' or 'sandwich'; got {self.recipe!r}")
        phases = tuple(p if isinstance(p, PhaseConfig) else PhaseConfig(**_only(p, PhaseConfig, "phase"))
                       for p in self.phases)
        if not phases:
            raise HwnasError("a recipe needs at least one phase")
        if self.recipe == "sandwich" and any(p.name != "sandwich" for p in phases):
            raise HwnasError("the sandwich recipe takes phases named 'sandwich' only")
        if self.recipe == "progressive" and (phases[0].name != "full" or any(p.name == "sandwich" for p in phases)):
            raise HwnasError("progressive shrinking starts with a 'full' phase and has no 'sandwich' phase")
        object.__setattr__(self, "phases", phases)
        for name, low in (("batch_size", 1), ("bn_recal_images", 1), ("sandwich_random", 0), ("augment_shift", 0),
                          ("eval_every", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < low:
                raise HwnasError(f"{name} must be a whole number >= {low}; got {value!r}")
        for name, high in (("augment_rotate", 180.0), ("augment_scale", 0.5)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= high:
                raise HwnasError(f"{name} must be a number in [0, {high:g}]; got {value!r}")
        if self.step_losses not in ("sum", "mean"):
            raise HwnasError(f"step_losses must be 'sum' or 'mean'; got {self.step_losses!r}")
        if not 0 <= self.kd_weight <= 1 or self.kd_temperature <= 0:
            raise HwnasError("kd_weight must be in [0, 1] and kd_temperature > 0")

    @property
    def total_epochs(self) -> int:
        return sum(p.epochs for p in self.phases)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["phases"] = [asdict(p) for p in self.phases]
        return data

    @classmethod
    def from_dict(cls, data: Any) -> TrainConfig:
        return cls(**_only(data, cls, "training config"))

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        if not path.is_file():
            raise HwnasError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise HwnasError(f"config file {path} is not valid YAML: {err}") from None
        return cls.from_dict(data)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _only(data: Any, cls: type, what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise HwnasError(f"{what} must be a mapping; got {type(data).__name__}")
    allowed = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise HwnasError(f"{what}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    return data
