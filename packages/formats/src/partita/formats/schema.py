"""Decode and encode frozen dataclasses from and to plain JSON values, by their type hints.

Supported field types: ``int``, ``float``, ``str``, ``bool``, ``Literal[...]`` of strings,
``X | None``, ``tuple[X, ...]``, ``dict[str, X]`` and nested dataclasses. Every number obeys
the bounds of docs/formats.md §1.2 (:data:`MAX_MAGNITUDE`, :data:`MAX_INTEGER`); tighter ones
are declared in field metadata with :func:`at_least`, :func:`greater_than`, :func:`at_most`,
:func:`below` and :func:`count_from`, which compose with ``|``. Everything that goes wrong raises
:class:`FormatError` with the path of the offending field.
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

# Every number field: below 2^1023 in magnitude, so that adding two of them cannot overflow
# to infinity in a reader (a sum of infinities turns into NaN, which comparisons then drop).
MAX_MAGNITUDE = 2.0**1023
# Every integer field: exact in a double, as JSON readers in other languages hold numbers.
MAX_INTEGER = 2**53
# Counts, sizes, degrees, steps and ranks: what a signed 32-bit integer (torch's and
# NCCL's int32 sizes and ranks, a C ``int``) holds.
COUNT_LIMIT = 2**31


def at_least(bound: float) -> dict[str, float]:
    """Field metadata: the value must be >= ``bound``."""
    return {"min": bound}


def greater_than(bound: float) -> dict[str, float]:
    """Field metadata: the value must be > ``bound``."""
    return {"min_exclusive": bound}


def at_most(bound: float) -> dict[str, float]:
    """Field metadata: the value must be <= ``bound``."""
    return {"max": bound}


def below(bound: float) -> dict[str, float]:
    """Field metadata: the value must be < ``bound``."""
    return {"max_exclusive": bound}


def count_from(minimum: int) -> dict[str, float]:
    """Field metadata of a count, size, degree, step or rank: >= ``minimum`` and < 2^31."""
    return at_least(minimum) | below(COUNT_LIMIT)


class _OutOfRange(FormatError):
    """A number of the right type but too large: reported as such, not as a type mismatch."""


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
    return typing.cast(T, _decode(cls, value, path, _NO_BOUNDS))


Bounds = typing.Mapping[str, float]  # a field's metadata: "min", "max", ... (see at_least)
_NO_BOUNDS: Bounds = types.MappingProxyType({})


def _decode(tp: Any, value: JsonValue, path: str, bounds: Bounds) -> Any:
    """``bounds`` are those of the field being decoded; they apply to each of its numbers."""
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
                return _decode(non_null[0], value, path, bounds)
            except _OutOfRange:
                raise  # the type was right: say what is wrong with the value
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
        return tuple(
            _decode(item_type, item, f"{path}[{i}]", bounds) for i, item in enumerate(value)
        )
    if origin is dict:
        if not isinstance(value, dict):
            raise FormatError(f"expected {_type_name(tp)}, got {_describe(value)}", path=path)
        item_type = get_args(tp)[1]
        return {k: _decode(item_type, v, _join(path, k), bounds) for k, v in value.items()}
    return _decode_scalar(tp, value, path, bounds)


def _decode_scalar(tp: Any, value: JsonValue, path: str, bounds: Bounds) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            _check_bounds(bounds, value, path)  # first: a field's own bound is the tighter
            if abs(value) > MAX_INTEGER:
                raise _OutOfRange(
                    f"must be at most 2^53 = {MAX_INTEGER} in magnitude, got {_describe(value)}",
                    path=path,
                )
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = _finite(value, path)
            _check_bounds(bounds, number, path)
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise AssertionError(f"unsupported field type {tp}")
    raise FormatError(f"expected {_type_name(tp)}, got {_describe(value)}", path=path)


def _finite(value: int | float, path: str) -> float:
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any double
        number = math.inf
    if not math.isfinite(number):
        raise _OutOfRange(f"expected a finite number, got {_describe(value)}", path=path)
    if abs(number) >= MAX_MAGNITUDE:
        raise _OutOfRange(
            f"must be < 2^1023 (about 8.99e307) in magnitude, got {_describe(number)}", path=path
        )
    return number


def _check_bounds(bounds: Bounds, number: float, path: str) -> None:
    if "min" in bounds and number < bounds["min"]:
        raise _OutOfRange(f"must be >= {bounds['min']}, got {_describe(number)}", path=path)
    if "min_exclusive" in bounds and number <= bounds["min_exclusive"]:
        raise _OutOfRange(
            f"must be > {bounds['min_exclusive']}, got {_describe(number)}", path=path
        )
    if "max" in bounds and number > bounds["max"]:
        raise _OutOfRange(
            f"must be <= {_bound_text(bounds['max'])}, got {_describe(number)}", path=path
        )
    if "max_exclusive" in bounds and number >= bounds["max_exclusive"]:
        raise _OutOfRange(
            f"must be < {_bound_text(bounds['max_exclusive'])}, got {_describe(number)}",
            path=path,
        )


def _bound_text(bound: float) -> str:
    """``2^31 = 2147483648`` for a large power of two, which says why the bound is there."""
    if isinstance(bound, int) and bound >= 2**16 and bound & (bound - 1) == 0:
        return f"2^{bound.bit_length() - 1} = {bound}"
    return f"{bound}"


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
        if name not in value:
            if (
                field.default is dataclasses.MISSING
                and field.default_factory is dataclasses.MISSING
            ):
                raise FormatError(f"missing required field {name!r}", path=path)
            continue
        kwargs[name] = _decode(hints[name], value[name], _join(path, name), field.metadata)
    return cls(**kwargs)


def encode(obj: Any) -> JsonValue:
    """The plain JSON value of a schema dataclass: fields in declaration order, dicts sorted."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: encode(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, tuple | list):
        return [encode(item) for item in obj]
    if isinstance(obj, dict):
        return {key: encode(obj[key]) for key in sorted(obj)}
    return obj
