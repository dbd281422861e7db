"""Profiles whose values overflow a prediction: refused in one line naming the entry (issue 22).

Every number of a Partita file is below 2^1023, but sums of them are not: a prediction at or
beyond 2^1023 (or infinite, or NaN) is refused, never printed as ``inf``, and never dropped
so that the plan looks faster than with the real profile.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest
import synthetic as syn
from hypothesis import given
from hypothesis import strategies as st

from partita.formats import (
    HardwareProfile,
    ModelDescription,
    ModelProfile,
    Plan,
    SyncCost,
    TensorWork,
    load,
    loads,
)
from partita.formats.cli import main
from partita.simulator.cost import ProfileOverflowError, _fit_at, _line_at
from partita.simulator.search.engine import SearchProblem
from partita.simulator.search.planner import plan_search
from partita.simulator.simulation import estimate, simulate
from partita.simulator.whatif import Study

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "docs" / "examples"
HUGE = 8e307  # a valid number (below 2^1023 = 8.99e307); two of them are not


def _example(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EXAMPLES / name).read_text())
    return data


def _every_timing_text(value: float) -> str:
    """The example model profile with every time at ``value`` (as the report did)."""
    profile = _example("model_profile.json")
    for layer_type in profile["layer_types"]:
        for timing in layer_type["timings"]:
            for key in ("forward_s", "backward_s", "checkpoint_forward_s", "checkpoint_backward_s"):
                if timing.get(key) is not None:
                    timing[key] = value
    return json.dumps(profile)


def _every_timing(value: float) -> ModelProfile:
    return loads(_every_timing_text(value), ModelProfile)


def _saved_timings(directory: Path, value: float) -> Path:
    target = directory / f"model_profile_{value:g}.json"
    target.write_text(_every_timing_text(value))
    return target


def _inputs() -> dict[str, Any]:
    return {
        "hardware": load(EXAMPLES / "hardware_profile.json", HardwareProfile),
        "model_profile": load(EXAMPLES / "model_profile.json", ModelProfile),
        "model": load(EXAMPLES / "model_description.json", ModelDescription),
    }


def _plan() -> Plan:
    return load(EXAMPLES / "plan.json", Plan)


def _refusal(**changes: Any) -> str:
    with pytest.raises(ProfileOverflowError) as error:
        simulate(_plan(), **{**_inputs(), **changes})
    message = str(error.value)
    assert "\n" not in message and "inf" not in message.replace("information", "")
    with pytest.raises(ProfileOverflowError) as again:
        estimate(_plan(), **{**_inputs(), **changes})  # the search's closed form refuses too
    assert str(again.value) == message
    return message


# --- the fit -----------------------------------------------------------------------------------


def test_huge_timings_are_refused_not_predicted_faster() -> None:
    """The report: every timing at 1e308 simulated faster than the real profile. Three points
    at 8e307 made the fit's mean infinite, infinity minus infinity NaN, and max(0.0, NaN) 0.0 s."""
    message = _refusal(model_profile=_every_timing(HUGE))
    assert message.startswith("model profile layer_types[")
    assert (
        ".timings[" in message and "forward_s 8e+307 makes the predicted time of layer" in message
    )


def test_a_fit_of_huge_times_is_exact() -> None:
    points = [(1, HUGE), (2, HUGE), (4, HUGE)]
    assert _line_at(points, 2) == HUGE  # it was 0.0
    assert _line_at([(1, 1e307), (2, 2e307), (4, 4e307)], 8) == pytest.approx(8e307)
    assert math.isinf(_line_at([(1, 1e307), (2, 2e307), (4, 4e307)], 10**9))


@given(
    st.dictionaries(
        st.integers(min_value=1, max_value=512),
        st.just(0.0) | st.floats(min_value=1e-12, max_value=1e6),  # subnormals: not times
        min_size=1,
        max_size=5,
    ),
    st.floats(min_value=0.25, max_value=1024),
)
def test_scaling_the_fit_changes_no_ordinary_result(points: dict[int, float], x: float) -> None:
    ordered = sorted(points.items())
    assert _line_at(ordered, x) == _fit_at(ordered, x)  # the fit without the scaling


# --- each kind of entry ------------------------------------------------------------------------


def test_a_sum_that_overflows_names_the_largest_term() -> None:
    """Each layer's time is below 2^1023; the iteration, their sum, is not."""
    message = _refusal(model_profile=_every_timing(HUGE / 8))
    assert message.startswith("model profile layer_types[")
    assert "makes the predicted iteration time overflow (2^1023 or more)" in message


def test_a_collective_latency_that_overflows_the_step_names_the_entry() -> None:
    # Every step ends with three all-reduces over the world: 3 x latency > 2^1023.
    hardware = syn.hardware(world=4, latency_s=HUGE / 2)
    model = syn.description(4)
    plan = syn.plan(world=4, stages=(2, 2), micro_batches=2, global_batch=8)
    with pytest.raises(ProfileOverflowError) as error:
        simulate(plan, hardware=hardware, model_profile=syn.model_profile(), model=model)
    assert str(error.value).startswith("hardware profile collectives[")
    assert "latency_s 4e+307 makes the predicted" in str(error.value)


def test_a_tiny_bandwidth_names_the_collective_entry() -> None:
    profile = _example("hardware_profile.json")
    # The step's world all-reduce of 8 bytes; a valid bandwidth (> 0), 8 / 5e-324 is not.
    profile["collectives"][1]["bandwidth_bytes_per_s"] = 5e-324
    hardware = loads(json.dumps(profile), HardwareProfile)
    assert _refusal(hardware=hardware) == (
        "hardware profile collectives[1] (all_reduce, group_size 4, consecutive, intra_node): "
        "bandwidth_bytes_per_s 4.94066e-324 makes the predicted time of an all_reduce of 8 "
        "bytes overflow (2^1023 or more)"
    )


def test_activations_that_overflow_name_the_memory_entry() -> None:
    profile = _example("model_profile.json")
    profile["layer_types"][0]["memory"][0]["activation_bytes_per_sample"] = HUGE
    plan = dataclasses.replace(_plan(), num_micro_batches=1)  # 4 samples per device
    model_profile = loads(json.dumps(profile), ModelProfile)
    with pytest.raises(ProfileOverflowError) as error:
        simulate(plan, **{**_inputs(), "model_profile": model_profile})
    name = profile["layer_types"][0]["layer_type"]
    assert str(error.value).startswith(
        f"model profile layer_types[0].memory[0] (layer type {name!r}, tp 1, sp none, seq_len "
    )
    assert "activation_bytes_per_sample 8e+307 makes the predicted memory of layer" in str(
        error.value
    )


def test_an_optimizer_step_that_overflows_names_the_tensor_work() -> None:
    hardware = dataclasses.replace(
        _inputs()["hardware"],
        optimizer=TensorWork(latency_s=0.0, per_tensor_s=0.0, per_byte_s=HUGE),
    )
    assert _refusal(hardware=hardware).startswith(
        "hardware profile optimizer: per_byte_s 8e+307 makes the predicted optimizer time"
    )


@pytest.mark.parametrize(
    ("sync", "named"),
    [
        (SyncCost(latency_s=0.0, compute_fraction=HUGE), "compute_fraction 8e+307"),
        (SyncCost(latency_s=HUGE / 2, compute_fraction=0.0), "latency_s 4e+307"),
    ],
)
def test_a_sync_cost_that_overflows_names_it(sync: SyncCost, named: str) -> None:
    """Not looked up per collective but added (latency) or multiplied (fraction) on the way."""
    hardware = syn.hardware(world=4, sync=sync)
    plan = syn.plan(world=4, stages=(2, 2), micro_batches=2, global_batch=8)
    with pytest.raises(ProfileOverflowError) as error:
        simulate(
            plan, hardware=hardware, model_profile=syn.model_profile(), model=syn.description(4)
        )
    assert str(error.value).startswith(f"hardware profile sync: {named} makes the predicted")


def test_huge_but_finite_predictions_are_kept_and_printed_readably(
    tmp_path: Path,
    capsys,  # type: ignore[no-untyped-def]
) -> None:
    result = simulate(_plan(), **{**_inputs(), "model_profile": _every_timing(1e290)})
    assert 1e290 < result.iteration_time_s < 2.0**1023
    assert main(_simulate_args(model_profile=_saved_timings(tmp_path, 1e290))) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("iteration ") and "e+29" in first and len(first) < 100


# --- the search and what-if --------------------------------------------------------------------


def test_the_search_refuses_rather_than_skipping_what_overflows() -> None:
    inputs = _inputs()
    problem = SearchProblem(
        hardware=inputs["hardware"],
        model_profile=_every_timing(HUGE),
        model=inputs["model"],
        world_size=4,
        memory_bytes=2**30,
        global_batch=8,
    )
    with pytest.raises(ProfileOverflowError, match=r"^model profile layer_types\["):
        plan_search(problem, baselines=False)


def test_a_what_if_study_refuses_rather_than_keeping_a_point() -> None:
    inputs = _inputs()
    study = Study(
        plan=_plan(),
        models=[inputs["model"]],
        hardware=inputs["hardware"],
        model_profile=_every_timing(HUGE),
    )
    with pytest.raises(ProfileOverflowError, match=r"^model profile layer_types\["):
        study.run({"memory_gb": [1.0, 2.0]})


# --- the commands: exit 2, one line --------------------------------------------------------------


def _simulate_args(*, model_profile: Path) -> list[str]:
    return [
        "simulate",
        "--plan",
        str(EXAMPLES / "plan.json"),
        "--hardware",
        str(EXAMPLES / "hardware_profile.json"),
        "--model-profile",
        str(model_profile),
        "--model",
        str(EXAMPLES / "model_description.json"),
    ]


def _one_error_line(capsys, command: str) -> str:  # type: ignore[no-untyped-def]
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"partita {command}: error: model profile layer_types["), lines
    assert "inf" not in captured.out
    return lines[0]


@pytest.mark.parametrize("command", ["simulate", "plan", "whatif"])
def test_commands_exit_2_with_one_line_naming_the_entry(
    command: str,
    tmp_path: Path,
    capsys,  # type: ignore[no-untyped-def]
) -> None:
    profile = str(_saved_timings(tmp_path, HUGE))
    common = ["--hardware", str(EXAMPLES / "hardware_profile.json"), "--model-profile", profile]
    model = ["--model", str(EXAMPLES / "model_description.json")]
    plan = ["--plan", str(EXAMPLES / "plan.json")]
    argv = {
        "simulate": ["simulate", *plan, *common, *model],
        "plan": [
            "plan",
            *common,
            *model,
            "--world-size",
            "4",
            "--memory-gb",
            "1",
            "--global-batch",
            "8",
            "--out",
            str(tmp_path / "plan.json"),
        ],
        "whatif": ["whatif", *plan, *common, *model, "--memory-gb", "1,2"],
    }[command]
    assert main(argv) == 2
    line = _one_error_line(capsys, command)
    assert "forward_s 8e+307 makes the predicted" in line
    assert not (tmp_path / "plan.json").exists()
