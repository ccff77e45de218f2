"""Search strategies behind one `ask()` / `tell()` interface (see `nas.strategies.base`)."""

from __future__ import annotations

from typing import Any

from nas.strategies.base import Strategy, StrategyError
from nas.strategies.evolution import Evolution, RandomSearch, RegularizedEvolution
from nas.strategies.optuna_samplers import NSGA2, TPE
from nas.strategies.rl import ReinforceSearch

STRATEGIES: dict[str, type[Strategy]] = {cls.name: cls for cls in (RandomSearch, Evolution, RegularizedEvolution,
                                                                   TPE, NSGA2, ReinforceSearch)}


def get_strategy(name: str, *args: Any, **kwargs: Any) -> Strategy:
    """The strategy registered as `name`, constructed with the given arguments."""
    if name not in STRATEGIES:
        raise StrategyError(f"unknown strategy {name!r}; the strategies are {', '.join(sorted(STRATEGIES))}")
    return STRATEGIES[name](*args, **kwargs)


__all__ = ["STRATEGIES", "Strategy", "StrategyError", "get_strategy"]
