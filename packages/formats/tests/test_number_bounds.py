"""The bounds every number obeys (docs/formats.md §1.2): finite and below 2^1023 in magnitude,
integers at most 2^53, and counts (sizes, degrees, steps, ranks) below 2^31."""

from __future__ import annotations

import copy
import dataclasses
import json
import typing
from typing import Any

import pytest
from support import EXAMPLE_CLASSES, EXAMPLES

from partita.formats import SPECS, FormatError, Plan, dumps, loads
from partita.formats.schema import (
    COUNT_LIMIT,
    MAX_INTEGER,
    at_least,
    at_most,
    below,
    count_from,
    decode,
    greater_than,
)

# Integer fields that are not counts, so may reach 2^53: sizes in bytes, parameter and item
# totals, a random seed, and the fields of the checkpoint manifest.
NOT_COUNTS = {
    ("Device", "memory_bytes"),
    ("TimingSample", "bytes"),
    ("LayerMemory", "param_bytes"),
    ("LayerMemory", "grad_bytes"),
    ("LayerMemory", "optimizer_bytes"),
    ("LayerDescription", "params"),
    ("Predictions", "peak_memory_bytes_per_stage"),
    ("StepRecord", "items"),
    ("RankMemory", "peak_bytes"),
    ("TrainingSettings", "seed"),
    ("CheckpointFile", "bytes"),
}


def _numeric_leaves(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], Any]]:
    if isinstance(value, dict):
        return [leaf for k, v in value.items() for leaf in _numeric_leaves(v, (*prefix, k))]
    if isinstance(value, list):
        return [leaf for i, v in enumerate(value) for leaf in _numeric_leaves(v, (*prefix, i))]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return [(prefix, value)]
    return []


def _dotted(path: tuple[Any, ...]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else part
    return text


LEAVES = [
    (name, path, value)
    for name in sorted(EXAMPLE_CLASSES)
    for path, value in _numeric_leaves(json.loads((EXAMPLES / name).read_text()))
    if path[0] != "version"
]


def _error_with(name: str, path: tuple[Any, ...], value: Any) -> str:
    document = json.loads((EXAMPLES / name).read_text())
    target: Any = document
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(FormatError) as error:
        loads(json.dumps(document), source=name)
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(("name", "path", "value"), LEAVES, ids=lambda x: str(x))
def test_every_number_of_the_examples_refuses_too_large_a_value(
    name: str, path: tuple[Any, ...], value: float
) -> None:
    if isinstance(value, float):  # a number field: 1e308 is finite but >= 2^1023
        for huge in (1e308, -1.7976931348623157e308):
            message = _error_with(name, path, huge)
            assert message.startswith(f"{name}: {_dotted(path)}: "), message
            assert "must be < 2^1023" in message, message
    else:  # an integer field: a count stops below 2^31, any other integer at 2^53
        message = _error_with(name, path, 10**30)
        assert message.startswith(f"{name}: {_dotted(path)}: must be "), message
        assert "2^31" in message or "2^53" in message, message


def _schema_classes() -> list[type]:
    found: dict[str, type] = {}
    pending = [spec.cls for spec in SPECS]
    while pending:
        cls = pending.pop()
        if cls.__name__ in found:
            continue
        found[cls.__name__] = cls
        for hint in typing.get_type_hints(cls).values():
            for inner in (hint, *typing.get_args(hint)):
                if dataclasses.is_dataclass(inner):
                    pending.append(typing.cast(type, inner))
    return sorted(found.values(), key=lambda c: c.__name__)


def _int_fields() -> list[tuple[type, dataclasses.Field[Any]]]:
    fields = []
    for cls in _schema_classes():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            if int in (hint, *typing.get_args(hint)):
                fields.append((cls, f))
    return fields


@pytest.mark.parametrize(
    ("cls", "field"), _int_fields(), ids=lambda x: getattr(x, "name", getattr(x, "__name__", ""))
)
def test_every_integer_field_is_a_count_or_known_to_be_larger(
    cls: type, field: dataclasses.Field[Any]
) -> None:
    if (cls.__name__, field.name) in NOT_COUNTS:
        assert "max_exclusive" not in field.metadata
    else:
        assert field.metadata.get("max_exclusive") == COUNT_LIMIT, (cls.__name__, field.name)


def test_the_user_reports_are_refused() -> None:
    """Issue 22: 1e308 loaded; a global batch of 10^30 passed and crashed inside torch."""
    plan = json.loads((EXAMPLES / "plan.json").read_text())
    for value in (1e308, 1.7976931348623157e308):
        plan["predictions"]["iteration_time_s"] = value
        with pytest.raises(FormatError, match=r"must be < 2\^1023 \(about 8\.99e307\)"):
            loads(json.dumps(plan), Plan)
    plan = json.loads((EXAMPLES / "plan.json").read_text())
    plan["global_batch_size"] = 10**30
    with pytest.raises(FormatError) as error:
        loads(json.dumps(plan), Plan, source="plan.json")
    assert str(error.value) == (
        "plan.json: global_batch_size: must be < 2^31 = 2147483648, "
        "got 1000000000000000000000000000000"
    )


def test_items_of_lists_and_maps_are_bounded_and_named() -> None:
    profile = json.loads((EXAMPLES / "model_profile.json").read_text())
    profile["efficiencies"] = {"matmul": 0.5, "attention": 1e308}
    with pytest.raises(FormatError, match=r"^m\.json: efficiencies\.attention: must be < 2\^1023"):
        loads(json.dumps(profile), source="m.json")
    plan = json.loads((EXAMPLES / "plan.json").read_text())
    plan["predictions"]["peak_memory_bytes_per_stage"] = [1, MAX_INTEGER + 1]
    with pytest.raises(FormatError) as error:
        loads(json.dumps(plan), source="p.json")
    assert str(error.value) == (
        "p.json: predictions.peak_memory_bytes_per_stage[1]: must be at most 2^53 = "
        "9007199254740992 in magnitude, got 9007199254740993"
    )
    plan["predictions"]["peak_memory_bytes_per_stage"] = [1, MAX_INTEGER]
    assert loads(json.dumps(plan), Plan).predictions is not None


def test_an_optional_number_says_what_is_wrong_with_the_value() -> None:
    """Not "expected a number or null": the value is a number, only too large."""
    hardware = json.loads((EXAMPLES / "hardware_profile.json").read_text())
    hardware["device"]["memory_bandwidth_bytes_per_s"] = 1e308
    with pytest.raises(FormatError) as error:
        loads(json.dumps(hardware), source="h.json")
    assert str(error.value) == (
        "h.json: device.memory_bandwidth_bytes_per_s: must be < 2^1023 (about 8.99e307) in "
        "magnitude, got 1e+308"
    )
    hardware["device"]["memory_bandwidth_bytes_per_s"] = 10**400
    with pytest.raises(FormatError, match="expected a finite number, got 1000000"):
        loads(json.dumps(hardware), source="h.json")


def test_counts_stop_below_2_to_the_31() -> None:
    report = json.loads((EXAMPLES / "run_report.json").read_text())
    report["peak_memory"][0]["rank"] = COUNT_LIMIT
    with pytest.raises(FormatError, match=r"peak_memory\[0\]\.rank: must be < 2\^31"):
        loads(json.dumps(report), source="r.json")
    report["peak_memory"][0]["rank"] = 0
    report["peak_memory"][0]["peak_bytes"] = COUNT_LIMIT  # bytes: up to 2^53
    loads(json.dumps(report), source="r.json")


def test_saving_refuses_what_loading_would() -> None:
    plan = loads((EXAMPLES / "plan.json").read_text(), Plan)
    with pytest.raises(FormatError) as error:
        dumps(dataclasses.replace(plan, global_batch_size=COUNT_LIMIT))
    assert str(error.value).startswith("<plan being saved>: global_batch_size: must be < 2^31")


@dataclasses.dataclass(frozen=True)
class _Toy:
    a: int = dataclasses.field(default=1, metadata=at_least(1) | at_most(10))
    b: float = dataclasses.field(default=0.5, metadata=greater_than(0) | below(1))
    c: tuple[int, ...] = dataclasses.field(default=(), metadata=count_from(0))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"a": 0}, "a: must be >= 1, got 0"),
        ({"a": 11}, "a: must be <= 10, got 11"),
        ({"b": 0}, "b: must be > 0, got 0.0"),
        ({"b": 1}, "b: must be < 1, got 1.0"),
        ({"c": [0, -1]}, "c[1]: must be >= 0, got -1"),
        ({"c": [2**31 - 1, 2**31]}, "c[1]: must be < 2^31 = 2147483648, got 2147483648"),
    ],
)
def test_bound_helpers_compose(value: dict[str, Any], expected: str) -> None:
    with pytest.raises(FormatError) as error:
        decode(_Toy, copy.deepcopy(value))
    assert str(error.value) == expected


def test_values_at_the_bounds_are_accepted() -> None:
    toy = decode(_Toy, {"a": 10, "b": 0.999, "c": [0, 2**31 - 1]})
    assert toy == _Toy(a=10, b=0.999, c=(0, 2**31 - 1))
