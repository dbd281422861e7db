from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
from support import EXAMPLE_CLASSES, EXAMPLES

from partita.formats import SPECS, FormatError, Plan, content_hash, dumps, load, loads, save


def test_every_format_has_an_example_file() -> None:
    assert {cls for cls in EXAMPLE_CLASSES.values()} == {spec.cls for spec in SPECS}
    assert sorted(p.name for p in EXAMPLES.glob("*.json")) == sorted(EXAMPLE_CLASSES)


@pytest.mark.parametrize("name", sorted(EXAMPLE_CLASSES))
def test_example_loads_as_its_class(name: str) -> None:
    obj = load(EXAMPLES / name)
    assert type(obj) is EXAMPLE_CLASSES[name]
    assert load(EXAMPLES / name, EXAMPLE_CLASSES[name]) == obj


@pytest.mark.parametrize("name", sorted(EXAMPLE_CLASSES))
def test_text_round_trip_is_byte_exact(name: str) -> None:
    text = (EXAMPLES / name).read_text(encoding="utf-8")
    assert dumps(loads(text)) == text


@pytest.mark.parametrize("name", sorted(EXAMPLE_CLASSES))
def test_object_round_trip_is_equal(name: str, tmp_path: Path) -> None:
    obj = load(EXAMPLES / name)
    save(obj, tmp_path / name)
    assert load(tmp_path / name) == obj
    assert content_hash(tmp_path / name) == content_hash(obj)


def test_header_comes_first_and_keys_follow_declaration_order() -> None:
    plan = load(EXAMPLES / "plan.json", Plan)
    keys = list(json.loads(dumps(plan)))
    assert keys[:2] == ["format", "version"]
    assert keys[2:] == [f.name for f in dataclasses.fields(Plan)]


def test_integers_are_accepted_for_numbers_and_written_as_numbers() -> None:
    document = json.loads((EXAMPLES / "plan.json").read_text())
    document["predictions"]["iteration_time_s"] = 2
    plan = loads(json.dumps(document), Plan)
    assert plan.predictions is not None
    assert plan.predictions.iteration_time_s == 2.0
    assert json.loads(dumps(plan))["predictions"]["iteration_time_s"] == 2.0


def test_int_in_a_float_field_is_saved_canonically(tmp_path: Path) -> None:
    plan = load(EXAMPLES / "plan.json", Plan)
    assert plan.predictions is not None
    odd = dataclasses.replace(
        plan, predictions=dataclasses.replace(plan.predictions, iteration_time_s=1)
    )
    save(odd, tmp_path / "plan.json")
    assert '"iteration_time_s": 1.0' in (tmp_path / "plan.json").read_text()
    assert content_hash(odd) == content_hash(tmp_path / "plan.json")


def test_saved_files_follow_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        target = save(load(EXAMPLES / "plan.json", Plan), tmp_path / "plan.json")
    finally:
        os.umask(previous)
    assert target.stat().st_mode & 0o777 == 0o644


def test_defaults_fill_omitted_optional_fields() -> None:
    document = json.loads((EXAMPLES / "plan.json").read_text())
    for key in ("vocab", "precision", "provenance", "predictions"):
        del document[key]
    plan = loads(json.dumps(document), Plan)
    assert plan.precision == "fp32"
    assert plan.predictions is None
    assert plan.vocab.tp == 1


def test_save_is_atomic_when_the_write_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "plan.json"
    original = (EXAMPLES / "plan.json").read_text()
    target.write_text(original)
    plan = load(target, Plan)
    changed = dataclasses.replace(plan, precision="bf16")

    def crash(*_: object) -> None:
        raise OSError("disk vanished")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk vanished"):
        save(changed, target)
    assert target.read_text() == original
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]


def test_saving_an_invalid_object_raises_and_writes_nothing(tmp_path: Path) -> None:
    plan = load(EXAMPLES / "plan.json", Plan)
    broken = dataclasses.replace(plan, num_micro_batches=3)
    with pytest.raises(FormatError, match="num_micro_batches"):
        save(broken, tmp_path / "plan.json")
    assert not (tmp_path / "plan.json").exists()


def test_content_hash_ignores_formatting_but_not_content(tmp_path: Path) -> None:
    text = (EXAMPLES / "plan.json").read_text()
    squashed = tmp_path / "squashed.json"
    squashed.write_text(json.dumps(json.loads(text)))
    assert content_hash(squashed) == content_hash(EXAMPLES / "plan.json")
    plan = load(squashed, Plan)
    assert content_hash(dataclasses.replace(plan, precision="bf16")) != content_hash(plan)
