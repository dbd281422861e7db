"""Decode and encode frozen dataclasses from and to plain JSON values, by their type hints.

Supported field types: ``int``, ``float``, ``str``, ``bool``, ``Literal[...]`` of strings,
``X | None``, ``tuple[X, ...]``, ``dict[str, X]`` and nested dataclasses. Numeric bounds are
declared in field metadata with :func:`at_least` and :func:`greater_than`. Everything that goes
wrong raises :class:`FormatError` with the path of the offending field.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from partita.formats.errors import FormatError

T = TypeVar("T")
JsonValue = Any


def at_least(bound: float) -> dict[str, float]:
    """Field metadata: the value must be >= ``bound``."""
    return {"min": bound}


def greater_than(bound: float) -> dict[str, float]:
    """Field metadata: the value must be > ``bound``."""
    return {"min_exclusive": bound}


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is tuple:
        return f"a list of {_type_name(get_args(tp)[0])}"
    if origin is dict:
        return f"an object of {_type_name(get_args(tp)[1])}"
    if dataclasses.is_dataclass(tp):
        return "an object"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, "null" if tp is type(None) else str(tp)
    )


def _describe(value: JsonValue) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def decode(cls: type[T], value: JsonValue, *, path: str = "") -> T:
    """Build a ``cls`` instance from a decoded JSON value, validating every field."""
    return typing.cast(T, _decode(cls, value, path))


def _decode(tp: Any, value: JsonValue, path: str) -> Any:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _decode_dataclass(typing.cast(type, tp), value, path)
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        non_null = [o for o in options if o is not type(None)]
        if len(non_null) == 1:
            try:
                return _decode(non_null[0], value, path)
            except FormatError as error:
                if value is None or isinstance(value, dict | list):
                    raise
                raise FormatError(
                    f"expected {_type_name(tp)}, got {_describe(value)}", path=path
                ) from error
        raise AssertionError(f"unsupported union {tp}")  # schemas only use X | None
    if origin is Literal:
        if isinstance(value, str) and value in get_args(tp):
            return value
        raise FormatError(f"expected {_type_name(tp)}, got {_describe(value)}", path=path)
    if origin is tuple:
        if not isinstance(value, list):
            raise FormatError(f"expected {_type_name(tp)}, got {_describe(value)}", path=path)
        item_type = get_args(tp)[0]
        return tuple(_decode(item_type, item, f"{path}[{i}]") for i, item in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise FormatError(f"expected {_type_name(tp)}, got {_describe(value)}", path=path)
        item_type = get_args(tp)[1]
        return {k: _decode(item_type, v, _join(path, k)) for k, v in value.items()}
    return _decode_scalar(tp, value, path)


def _decode_scalar(tp: Any, value: JsonValue, path: str) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:
                number = math.inf
            if math.isfinite(number):
                return number
            raise FormatError(f"expected a finite number, got {_describe(value)}", path=path)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise AssertionError(f"unsupported field type {tp}")
    raise FormatError(f"expected {_type_name(tp)}, got {_describe(value)}", path=path)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _decode_dataclass(cls: type, value: JsonValue, path: str) -> Any:
    if not isinstance(value, dict):
        raise FormatError(f"expected an object, got {_describe(value)}", path=path)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise FormatError(
            f"unknown field {unknown[0]!r} (expected one of: {', '.join(fields)})",
            path=path,
        )
    hints = _hints(cls)
    kwargs = {}
    for name, field in fields.items():
        field_path = _join(path, name)
        if name not in value:
            if (
                field.default is dataclasses.MISSING
                and field.default_factory is dataclasses.MISSING
            ):
                raise FormatError(f"missing required field {name!r}", path=path)
            continue
        decoded = _decode(hints[name], value[name], field_path)
        _check_bounds(field, decoded, field_path)
        kwargs[name] = decoded
    return cls(**kwargs)


def _check_bounds(field: dataclasses.Field[Any], value: Any, path: str) -> None:
    values = value if isinstance(value, tuple) else (value,)
    for item in values:
        if not isinstance(item, int | float) or isinstance(item, bool):
            continue
        if "min" in field.metadata and item < field.metadata["min"]:
            raise FormatError(f"must be >= {field.metadata['min']}, got {item!r}", path=path)
        if "min_exclusive" in field.metadata and item <= field.metadata["min_exclusive"]:
            raise FormatError(
                f"must be > {field.metadata['min_exclusive']}, got {item!r}", path=path
            )


def encode(obj: Any) -> JsonValue:
    """The plain JSON value of a schema dataclass: fields in declaration order, dicts sorted."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: encode(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, tuple | list):
        return [encode(item) for item in obj]
    if isinstance(obj, dict):
        return {key: encode(obj[key]) for key in sorted(obj)}
    return obj
