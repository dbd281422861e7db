"""Each kind of bad input gets one line naming the file, the field and what was expected."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from typing import Any

import pytest
from support import EXAMPLES

from partita.formats import FormatError, ModelDescription, Plan, load, loads, validate_plan

Mutation = Callable[[dict[str, Any]], None]


def _example(name: str) -> dict[str, Any]:
    return json.loads((EXAMPLES / name).read_text())


def _error_for(name: str, mutate: Mutation, cls: type | None = None) -> str:
    document = copy.deepcopy(_example(name))
    mutate(document)
    with pytest.raises(FormatError) as error:
        loads(json.dumps(document), cls, source=name)
    message = str(error.value)
    assert "\n" not in message
    return message


def _set(path: tuple[Any, ...], value: Any) -> Mutation:
    def mutate(document: dict[str, Any]) -> None:
        target: Any = document
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


def _delete(path: tuple[Any, ...]) -> Mutation:
    def mutate(document: dict[str, Any]) -> None:
        target: Any = document
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return mutate


FIELD_CASES = [
    ("plan.json", _delete(("world_size",)), "plan.json: missing required field 'world_size'"),
    (
        "plan.json",
        _set(("layers", 1, "tp"), "2"),
        "plan.json: layers[1].tp: expected an integer, got '2'",
    ),
    (
        "plan.json",
        _set(("layers", 0, "sp"), "ring"),
        "plan.json: layers[0].sp: expected 'none' or 'megatron' or 'ulysses', got 'ring'",
    ),
    (
        "plan.json",
        _set(("layers", 0, "tp_degre"), 2),
        "plan.json: layers[0]: unknown field 'tp_degre' (expected one of: tp, sp, dp, ckpt)",
    ),
    ("plan.json", _set(("world_size",), 0), "plan.json: world_size: must be >= 1, got 0"),
    (
        "plan.json",
        _set(("layers", 2, "ckpt"), 1),
        "plan.json: layers[2].ckpt: expected 'none' or 'attention' or 'selective-op' or 'full', "
        "got 1",
    ),
    (
        "hardware_profile.json",
        _set(("collectives", 3, "bandwidth_bytes_per_s"), -1),
        "hardware_profile.json: collectives[3].bandwidth_bytes_per_s: must be > 0, got -1.0",
    ),
    (
        "hardware_profile.json",
        _set(("device",), [1, 2]),
        "hardware_profile.json: device: expected an object, got a list",
    ),
    (
        "model_profile.json",
        _set(("layer_types", 0, "timings", 2, "forward_s"), None),
        "model_profile.json: layer_types[0].timings[2].forward_s: expected a number, got null",
    ),
    (
        "model_description.json",
        _set(("layers", 1, "kind"), "decoder"),
        "model_description.json: layers[1].kind: expected 'embedding' or 'block' or 'head', "
        "got 'decoder'",
    ),
    (
        "run_report.json",
        _set(("steps", 0, "loss"), "nan"),
        "run_report.json: steps[0].loss: expected a number or null, got 'nan'",
    ),
    (
        "run_report.json",
        _set(("tools",), {"torch": 2}),
        "run_report.json: tools.torch: expected a string, got 2",
    ),
    ("plan.json", _delete(("format",)), "plan.json: format: missing the 'format' field"),
    (
        "plan.json",
        _set(("format",), "partita.schedule"),
        "plan.json: format: unknown format 'partita.schedule'",
    ),
    ("plan.json", _set(("version",), "2"), "plan.json: version: expected a positive integer"),
    (
        "model_description.json",
        _set(("layers", 2, "name"), "blocks.0"),
        "model_description.json: layers[2].name: layer name 'blocks.0' is used twice",
    ),
    (
        "model_description.json",
        lambda d: d["layers"].reverse(),
        "model_description.json: layers: the embedding must be the first layer",
    ),
    (
        "model_description.json",
        lambda d: [layer.update(kind="head") for layer in d["layers"][1:]],
        "model_description.json: layers: expected at least one layer of kind 'block'",
    ),
    (
        "model_description.json",
        _set(("layers", 3, "num_kv_heads"), 3),
        "model_description.json: layers[3].num_kv_heads: num_kv_heads 3 does not divide "
        "num_heads 4",
    ),
    (
        "model_description.json",
        _set(("shared_vocabulary",), ["embedding", "lm_head"]),
        "model_description.json: shared_vocabulary[1]: no layer is named 'lm_head'",
    ),
    (
        "model_description.json",
        lambda d: d.update(shared_vocabulary=["embedding", "head"], vocab_size=0),
        "model_description.json: vocab_size: a shared vocabulary table needs vocab_size > 0",
    ),
    (
        "model_profile.json",
        lambda d: d["layer_types"].append(d["layer_types"][0]),
        "model_profile.json: layer_types[3].layer_type: layer type 'gpt_block' appears twice",
    ),
    (
        "model_profile.json",
        lambda d: d["layer_types"][0]["timings"].append(d["layer_types"][0]["timings"][0]),
        "model_profile.json: layer_types[0].timings[12]: a second timing for the same tp",
    ),
    (
        "model_profile.json",
        lambda d: d["layer_types"][1]["memory"].append(d["layer_types"][1]["memory"][1]),
        "model_profile.json: layer_types[1].memory[2]: a second memory entry for the same tp",
    ),
    (
        "hardware_profile.json",
        _set(("backend",), "nccl"),
        "hardware_profile.json: backend: backend 'nccl' needs device kind 'cuda'",
    ),
    (
        "hardware_profile.json",
        _set(("collectives", 1, "group_size"), 8),
        "hardware_profile.json: collectives[1].group_size: group_size 8 exceeds the 4 devices",
    ),
    (
        "hardware_profile.json",
        _set(("collectives", 0, "scope"), "inter_node"),
        "hardware_profile.json: collectives[0].scope: an inter_node measurement in a one-node",
    ),
    (
        "hardware_profile.json",
        _set(("collectives", 6, "group_size"), 4),
        "hardware_profile.json: collectives[6].group_size: p2p is between exactly 2 devices",
    ),
    (
        "run_report.json",
        _set(("status",), "failed"),
        "run_report.json: error: a failed run must say why",
    ),
    (
        "run_report.json",
        _set(("peak_memory", 3, "rank"), 4),
        "run_report.json: peak_memory[3].rank: rank 4 is outside world_size 4",
    ),
    (
        "run_report.json",
        _set(("peak_memory", 3, "rank"), 0),
        "run_report.json: peak_memory[3].rank: a second entry for the same rank",
    ),
    (
        "run_report.json",
        _set(("phases", 2, "rank"), 5),
        "run_report.json: phases[2].rank: rank 5 is outside world_size 4",
    ),
    (
        "run_report.json",
        _set(("phases", 1, "rank"), 0),
        "run_report.json: phases[1].rank: a second entry for the same rank",
    ),
    (
        "run_report.json",
        _set(("phases", 0, "grad_sync_s"), -0.001),
        "run_report.json: phases[0].grad_sync_s:",
    ),
    (
        "run_report.json",
        _set(("resumed_from_step",), 6),
        "run_report.json: resumed_from_step: a run resumed after step 6 but records only 5 step(s)",
    ),
    (
        "run_report.json",
        _set(("settings", "steps"), 8),
        "run_report.json: steps: a completed run of 8 step(s) records 5",
    ),
    (
        "checkpoint_manifest.json",
        _set(("step",), 2),
        "checkpoint_manifest.json: steps: a checkpoint after 2 step(s) records 3",
    ),
    (
        "checkpoint_manifest.json",
        _set(("steps", 1, "step"), 2),
        "checkpoint_manifest.json: steps[1].step: expected step 1 (steps are recorded in order, "
        "once each), got 2",
    ),
    (
        "checkpoint_manifest.json",
        _set(("rng_ranks",), 2),
        "checkpoint_manifest.json: rng_ranks: random generator states of 2 ranks in a "
        "checkpoint of 4",
    ),
    (
        "checkpoint_manifest.json",
        _set(("files", 1, "name"), "../__0_0.distcp"),
        "checkpoint_manifest.json: files[1].name: expected the name of a file beside the "
        "manifest, got '../__0_0.distcp'",
    ),
    (
        "checkpoint_manifest.json",
        _set(("files", 2, "name"), "__0_0.distcp"),
        "checkpoint_manifest.json: files[2].name: file '__0_0.distcp' is listed twice",
    ),
    (
        "checkpoint_manifest.json",
        _set(("files", 0, "sha256"), "AE11"),
        "checkpoint_manifest.json: files[0].sha256: expected 64 lowercase hexadecimal digits",
    ),
    (
        "checkpoint_manifest.json",
        _set(("files", 0, "bytes"), -1),
        "checkpoint_manifest.json: files[0].bytes: must be >= 0, got -1",
    ),
]


@pytest.mark.parametrize(("name", "mutate", "expected"), FIELD_CASES)
def test_field_errors_name_file_path_and_expectation(
    name: str, mutate: Mutation, expected: str
) -> None:
    assert _error_for(name, mutate).startswith(expected)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\xff\xfe{", "bad.json: not UTF-8 text (byte 0)"),
        (b'{"format": "partita.plan",', "bad.json: not valid JSON: Expecting property name"),
        (b"[1, 2]", "bad.json: expected a JSON object with 'format' and 'version' fields"),
        (b'{"x": NaN}', "bad.json: NaN is not allowed in a Partita file"),
        (b"[" * 100_000, "bad.json: not valid JSON: nested too deeply"),
        (b"", "bad.json: not valid JSON: Expecting value at line 1 column 1"),
        (b'{"a": 1, "a": 2}', "bad.json: the key 'a' appears twice in one object"),
        (b'{"a": ' + b"7" * 5000 + b"}", "bad.json: not valid JSON: Exceeds the limit"),
    ],
)
def test_unparsable_text_gets_one_clear_line(data: bytes, expected: str) -> None:
    with pytest.raises(FormatError) as error:
        loads(data, source="bad.json")
    assert str(error.value).startswith(expected)


def test_numbers_just_below_2_to_the_1023_are_accepted_and_above_refused() -> None:
    document = _example("plan.json")
    largest = math.nextafter(2.0**1023, 0.0)
    document["predictions"]["iteration_time_s"] = largest
    plan = loads(json.dumps(document), Plan)
    assert plan.predictions is not None
    assert plan.predictions.iteration_time_s == largest
    for refused in (2.0**1023, 1e308, 10**308, 10**400):
        document["predictions"]["iteration_time_s"] = refused
        with pytest.raises(FormatError, match=r"predictions\.iteration_time_s: "):
            loads(json.dumps(document), Plan)


def test_missing_file_names_the_file(tmp_path: Any) -> None:
    with pytest.raises(FormatError, match=r"nowhere\.json: cannot read: No such file"):
        load(tmp_path / "nowhere.json")


PLAN_STRUCTURE_CASES = [
    (
        _set(("mesh_axis_order",), ["pp", "tp", "tp"]),
        "plan.json: mesh_axis_order: expected each of pp, dp, tp exactly once, got [pp, tp, tp]",
    ),
    (
        _set(("pipeline", "degree"), 3),
        "plan.json: pipeline.degree: pipeline degree 3 does not divide world_size 4",
    ),
    (
        _set(("pipeline", "stage_num_layers"), [4]),
        "plan.json: pipeline.stage_num_layers: expected 2 stages (pipeline.degree), got 1",
    ),
    (
        _set(("pipeline", "stage_num_layers"), [1, 2]),
        "plan.json: pipeline.stage_num_layers: the stages hold 3 layers but the plan has 4",
    ),
    (
        _set(("pipeline", "stage_num_layers"), [4, 0]),
        "plan.json: pipeline.stage_num_layers[1]: must be >= 1, got 0",
    ),
    (
        _set(("num_micro_batches",), 3),
        "plan.json: num_micro_batches: 3 micro-batches do not divide global_batch_size 8",
    ),
    (
        _set(("layers", 2, "tp"), 4),
        "plan.json: layers[2].tp: tp 4 does not divide the 2 devices of a pipeline stage",
    ),
    (
        _set(("num_micro_batches",), 8),
        "plan.json: layers[2].tp: the data-parallel degree 2 (= 2 devices per stage / tp 1) "
        "does not divide the micro-batch size 1",
    ),
    (_set(("vocab", "tp"), 3), "plan.json: vocab.tp: tp 3 does not divide the 2 devices"),
    (
        _set(("predictions", "peak_memory_bytes_per_stage"), [1]),
        "plan.json: predictions.peak_memory_bytes_per_stage: expected one value per stage (2), "
        "got 1",
    ),
]


@pytest.mark.parametrize(("mutate", "expected"), PLAN_STRUCTURE_CASES)
def test_inconsistent_plans_are_refused_at_load(mutate: Mutation, expected: str) -> None:
    assert _error_for("plan.json", mutate, Plan).startswith(expected)


def _plan_with(mutate: Mutation) -> Plan:
    document = _example("plan.json")
    mutate(document)
    return loads(json.dumps(document), Plan)


def _model_with(mutate: Mutation) -> ModelDescription:
    document = _example("model_description.json")
    mutate(document)
    return loads(json.dumps(document), ModelDescription)


def test_example_plan_fits_example_model() -> None:
    validate_plan(
        load(EXAMPLES / "plan.json", Plan),
        world_size=4,
        model=load(EXAMPLES / "model_description.json", ModelDescription),
    )


MODEL_CASES = [
    (
        lambda d: d["layers"][1].update(num_heads=5, num_kv_heads=5),
        "layers[0].tp: tensor-parallel degree 2 does not divide num_heads 5 of layer 'blocks.0'",
    ),
    (
        _set(("layers", 2, "seq_len"), 33),
        "layers[1].tp: tensor-parallel degree 2 does not divide seq_len 33 of layer 'blocks.1'",
    ),
    (
        _set(("layers", 4, "num_kv_heads"), 1),
        "layers[3].tp: Ulysses degree 2 does not divide num_kv_heads 1 of layer 'blocks.3'",
    ),
    (
        _set(("layers", 1, "ffn_size"), 255),
        "layers[0].tp: tensor-parallel degree 2 does not divide ffn_size 255 of layer 'blocks.0'",
    ),
    (
        _set(("vocab_size",), 511),
        "vocab.tp: vocab-parallel degree 2 does not divide vocab_size 511 of model 'gpt-tiny'",
    ),
    (
        _set(("seq_len",), 31),
        "vocab.sp: sequence-parallel degree 2 does not divide seq_len 31 of model 'gpt-tiny'",
    ),
    (
        _delete(("layers", 4)),
        "layers: the plan has 4 layer strategies but model 'gpt-tiny' has 3 block layers",
    ),
]


@pytest.mark.parametrize(("mutate_model", "expected"), MODEL_CASES)
def test_plan_that_does_not_fit_the_model_names_the_field(
    mutate_model: Mutation, expected: str
) -> None:
    plan = load(EXAMPLES / "plan.json", Plan)
    with pytest.raises(FormatError) as error:
        validate_plan(plan, model=_model_with(mutate_model))
    assert str(error.value) == expected


def test_ulysses_needs_no_hidden_size_divisibility() -> None:
    plan = load(EXAMPLES / "plan.json", Plan)
    validate_plan(plan, model=_model_with(_set(("layers", 4, "ffn_size"), 255)))


def test_plan_for_another_world_size_is_refused() -> None:
    plan = load(EXAMPLES / "plan.json", Plan)
    with pytest.raises(FormatError) as error:
        validate_plan(plan, world_size=8)
    assert str(error.value) == "world_size: the plan is for 4 devices but 8 are running"


def test_format_error_is_a_value_error() -> None:
    assert issubclass(FormatError, ValueError)


def test_plan_helpers() -> None:
    plan = _plan_with(lambda d: None)
    assert plan.devices_per_stage == 2
    assert plan.micro_batch_size == 2
    assert [plan.stage_of_layer(i) for i in range(4)] == [0, 0, 1, 1]
    with pytest.raises(IndexError):
        plan.stage_of_layer(4)
