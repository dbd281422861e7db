"""Property-based fuzzing: loaders raise nothing but FormatError, whatever they are fed."""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import EXAMPLE_CLASSES, EXAMPLES

from partita.formats import SPECS, FormatError, dumps, loads
from partita.formats.summaries import summarize

CLASSES: list[type | None] = [None, *(spec.cls for spec in SPECS)]

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)
headers = st.fixed_dictionaries(
    {
        "format": st.sampled_from([spec.name for spec in SPECS]),
        "version": st.integers(min_value=-1, max_value=4),
    }
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _load_all(data: str | bytes) -> None:
    for cls in CLASSES:
        try:
            obj = loads(data, cls, source="fuzz.json")
        except FormatError as error:
            assert str(error).startswith("fuzz.json: ")
            assert "\n" not in str(error)
        else:
            assert loads(dumps(obj)) == obj  # anything accepted must round trip
            assert summarize(obj)  # and `partita show` must be able to print it


@FUZZ
@given(st.binary(max_size=200))
def test_arbitrary_bytes(data: bytes) -> None:
    _load_all(data)


@FUZZ
@given(json_values)
def test_arbitrary_json(value: Any) -> None:
    _load_all(json.dumps(value))


@FUZZ
@given(headers, st.dictionaries(st.text(max_size=12), json_values, max_size=8))
def test_arbitrary_body_with_a_valid_header(header: dict[str, Any], body: dict[str, Any]) -> None:
    _load_all(json.dumps({**body, **header}))


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


EXAMPLE_DOCUMENTS = {
    name: json.loads((EXAMPLES / name).read_text()) for name in sorted(EXAMPLE_CLASSES)
}


@FUZZ
@given(st.sampled_from(sorted(EXAMPLE_DOCUMENTS)), st.data())
def test_examples_with_one_field_replaced(name: str, data: st.DataObject) -> None:
    document = copy.deepcopy(EXAMPLE_DOCUMENTS[name])
    path = data.draw(st.sampled_from(_paths(document)[1:]))
    target: Any = document
    for key in path[:-1]:
        target = target[key]
    if data.draw(st.booleans()):
        target[path[-1]] = data.draw(json_values)
    elif isinstance(target, dict):
        del target[path[-1]]
    else:
        target.pop(path[-1])
    _load_all(json.dumps(document))


@FUZZ
@given(st.sampled_from(sorted(EXAMPLE_DOCUMENTS)), st.data())
def test_examples_with_bytes_corrupted(name: str, data: st.DataObject) -> None:
    raw = bytearray((EXAMPLES / name).read_bytes())
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        position = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
        raw[position] = data.draw(st.integers(min_value=0, max_value=255))
    _load_all(bytes(raw))
