"""Typed strategy options: each strategy names a frozen dataclass of its options (`Strategy.config_class`), built
from Python values or from `KEY=VALUE` text and checked (names, types, ranges) before anything is opened; and the
errors strategies raise."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from numbers import Real
from typing import Any

from search_spaces.errors import HwnasError

_NONE_WORDS = ("none", "null", "")
_BOOL_WORDS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


class StrategyError(HwnasError):
    """A strategy cannot go on (bad options, constraints no sample meets, a history that does not replay, ...)."""


class OptionError(StrategyError):
    """A strategy option that is unknown or whose value is of the wrong type or out of range."""


@dataclass(frozen=True)
class NoOptions:
    """The options of a strategy that takes none."""


def _members(hint: Any) -> tuple[Any, ...]:
    """The types a hint allows: `int | None` -> (int, NoneType); `int` -> (int,)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _type_name(hint: Any) -> str:
    def one(kind: Any) -> str:
        if kind is type(None):
            return "None"
        if typing.get_origin(kind) is tuple:
            return f"comma-separated {_type_name(typing.get_args(kind)[0])}"
        return str(getattr(kind, "__name__", kind))

    return " | ".join(one(t) for t in _members(hint))


def option_types(config_class: type) -> dict[str, str]:
    """Each option of `config_class` and its type, as text (`{"population": "int", "lr": "float | None"}`)."""
    hints = typing.get_type_hints(config_class)
    return {f.name: _type_name(hints[f.name]) for f in dataclasses.fields(config_class)}


def describe_options(strategy: str, config_class: type) -> str:
    """`the options of evolution are population (int, default 100), ...`, or that it takes none."""
    defaults = {f.name: f.default for f in dataclasses.fields(config_class)}
    listed = [f"{name} ({kind}, default {defaults[name]!r})" for name, kind in option_types(config_class).items()]
    return f"the options of {strategy} are {', '.join(listed)}" if listed else f"{strategy} takes no options"


def _fits(value: Any, kind: Any) -> bool:
    if typing.get_origin(kind) is tuple:
        item = typing.get_args(kind)[0]
        return isinstance(value, (tuple, list)) and all(any(_fits(v, k) for k in _members(item)) for v in value)
    if kind is type(None):
        return value is None
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, Real) and not isinstance(value, bool)
    return isinstance(value, kind)


def fits(value: Any, hint: Any) -> bool:
    """Whether the Python value `value` (as YAML or JSON gives it: lists for tuples) is of the type `hint`."""
    return any(_fits(value, kind) for kind in _members(hint))


def _from_text(text: str, kind: Any) -> Any:
    """`text` read as `kind`; ValueError when it is not one."""
    if kind is type(None):
        if text.strip().lower() in _NONE_WORDS:
            return None
    elif kind is bool:
        if text.strip().lower() in _BOOL_WORDS:
            return _BOOL_WORDS[text.strip().lower()]
    elif kind in (int, float):
        return kind(text)
    elif kind is str:
        return text
    elif typing.get_origin(kind) is tuple and "," in text:
        return tuple(parse_value(part, typing.get_args(kind)[0]) for part in text.split(","))
    raise ValueError(text)


def parse_value(text: str, hint: Any) -> Any:
    """`text` as a value of the type `hint` (int, float, bool, str, or a union of them with None)."""
    for kind in sorted(_members(hint), key=lambda k: (k is str, k is float)):  # None, bool, int, then float, str
        try:
            return _from_text(text, kind)
        except ValueError:
            continue
    raise ValueError(text)


def build_config(strategy: str, config_class: type, options: Mapping[str, Any]) -> Any:
    """The options object of `strategy` from Python values; an `OptionError` naming the strategy's options and
    their types when a name is unknown or a value has the wrong type (the dataclass checks ranges)."""
    allowed = option_types(config_class)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise OptionError(f"{strategy}: unknown option(s) {', '.join(unknown)}; "
                          f"{describe_options(strategy, config_class)}")
    hints = typing.get_type_hints(config_class)
    for name, value in options.items():
        if not fits(value, hints[name]):
            raise OptionError(f"{strategy}: option {name} = {value!r} is not {allowed[name]}; "
                              f"{describe_options(strategy, config_class)}")
    try:
        return config_class(**options)
    except HwnasError as err:  # a range check: the same error, naming the strategy and listing its options
        text = str(err) if str(err).startswith(f"{strategy}:") else f"{strategy}: {err}"
        raise (type(err) if isinstance(err, StrategyError) else OptionError)(
            f"{text}; {describe_options(strategy, config_class)}") from None


def parse_options(strategy: str, config_class: type, pairs: list[str] | tuple[str, ...]) -> Any:
    """The options object of `strategy` from `KEY=VALUE` texts (`-` in a key reads as `_`), checked as
    `build_config` checks them."""
    hints = typing.get_type_hints(config_class)
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise OptionError(f"{strategy}: --option {pair!r} is not KEY=VALUE; "
                              f"{describe_options(strategy, config_class)}")
        if key not in hints:
            values[key] = text  # named in build_config's error
            continue
        try:
            values[key] = parse_value(text, hints[key])
        except ValueError:
            raise OptionError(f"{strategy}: option {key} = {text!r} is not {_type_name(hints[key])}; "
                              f"{describe_options(strategy, config_class)}") from None
    return build_config(strategy, config_class, values)
