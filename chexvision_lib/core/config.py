"""Typed configs that reject unknown keys: a typo in a notebook parameter or JSON file is an error,
not a silently ignored option."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def _check_type(name: str, value: Any, annotation: Any) -> Any:
    """Coerce JSON-ish values to the annotated type, or raise naming the parameter."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _check_type(name, value, option)
            except (TypeError, ValueError) as error:
                errors.append(str(error))
        raise TypeError(errors[0])
    if origin is typing.Literal:
        if value not in args:
            raise ValueError(f"{name}: {value!r} is not one of {list(args)}")
        return value
    if annotation is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise TypeError(f"{name}: expected a number, got {value!r}")
    if annotation in (int, str, bool) and not (
        isinstance(value, annotation) and not (annotation is int and isinstance(value, bool))
    ):
        raise TypeError(f"{name}: expected {annotation.__name__}, got {value!r}")
    if origin is tuple and isinstance(value, list | tuple):
        return tuple(value)
    return value


def from_dict(cls: type[T], values: dict[str, Any]) -> T:
    """Build dataclass `cls` from a dict; unknown keys and wrong types are errors."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown {cls.__name__} parameter(s) {unknown}; accepted: {sorted(fields)}"
        )
    hints = typing.get_type_hints(cls)
    checked = {k: _check_type(k, v, hints[k]) for k, v in values.items()}
    return cls(**checked)


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def read_json_object(path: str | Path) -> dict[str, Any]:
    """A JSON file holding one object; anything else is an error naming the file."""
    try:
        values = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(values, dict):
        raise ValueError(
            f"{path}: expected a JSON object of parameters, got {type(values).__name__}"
        )
    return values


def load_json_config(cls: type[T], path: str | Path) -> T:
    values = read_json_object(path)
    try:
        return from_dict(cls, values)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: {error}") from None
