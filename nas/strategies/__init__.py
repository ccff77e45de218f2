"""Search strategies behind one `ask()` / `tell()` interface (see `nas.strategies.base`)."""

from __future__ import annotations

import importlib
from typing import Any

from nas.strategies.base import Strategy, StrategyError
from nas.strategies.evolution import Evolution, RandomSearch, RegularizedEvolution
from nas.strategies.options import OptionError, build_config, describe_options, parse_options
from nas.strategies.optuna_samplers import NSGA2, TPE
from nas.strategies.rl import ReinforceSearch

#: Strategies that need no trained supernet to be built (the conformance suite runs each on a stand-in).
STRATEGIES: dict[str, type[Strategy]] = {cls.name: cls for cls in (RandomSearch, Evolution, RegularizedEvolution,
                                                                   TPE, NSGA2, ReinforceSearch)}
#: Strategies loaded when asked for (their modules are heavy): name -> module:class.
#: `differentiable` needs torch and a trained supernet (inputs `supernet=`, `table=`).
LAZY_STRATEGIES = {"differentiable": "nas.strategies.differentiable:Differentiable"}
STRATEGY_NAMES = tuple(sorted([*STRATEGIES, *LAZY_STRATEGIES]))


def strategy_class(name: str) -> type[Strategy]:
    """The class of the strategy registered as `name`."""
    if name in STRATEGIES:
        return STRATEGIES[name]
    if name in LAZY_STRATEGIES:
        module, _, cls = LAZY_STRATEGIES[name].partition(":")
        found: type[Strategy] = getattr(importlib.import_module(module), cls)
        return found
    raise StrategyError(f"unknown strategy {name!r}; the strategies are {', '.join(STRATEGY_NAMES)}")


def get_strategy(name: str, *args: Any, **kwargs: Any) -> Strategy:
    """The strategy registered as `name`, constructed with the given arguments."""
    return strategy_class(name)(*args, **kwargs)


def strategy_config(name: str, options: Any = None) -> Any:
    """The typed options of strategy `name`: `options` as they are if already its config object, else built from
    a mapping of Python values or a list of `KEY=VALUE` texts; an `OptionError` names the strategy's options and
    their types. Reads nothing but the strategy's module."""
    config_class = strategy_class(name).config_class
    if isinstance(options, config_class):
        return options
    if isinstance(options, (list, tuple)):
        return parse_options(name, config_class, options)
    return build_config(name, config_class, dict(options or {}))


__all__ = ["LAZY_STRATEGIES", "STRATEGIES", "STRATEGY_NAMES", "OptionError", "Strategy", "StrategyError",
           "describe_options", "get_strategy", "strategy_class", "strategy_config"]
