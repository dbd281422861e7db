"""Run reports: throughput as the format defines it, status, losses, tools, validation."""

from __future__ import annotations

import importlib.metadata
import math
from pathlib import Path
from typing import Any

import pytest

from partita.executor.report import build_run_report, throughput_per_s, tool_versions
from partita.formats import FormatError, RankMemory, RunReport, StepRecord, dumps, load

EXAMPLE = Path(__file__).resolve().parents[3] / "docs" / "examples" / "run_report.json"


def _steps(*pairs: tuple[float, int], loss: float | None = 1.0) -> list[StepRecord]:
    return [StepRecord(i, loss, time_s, items) for i, (time_s, items) in enumerate(pairs)]


def _report(**overrides: Any) -> RunReport:
    arguments: dict[str, Any] = {
        "model": "gpt-tiny",
        "plan_sha256": "0" * 64,
        "world_size": 2,
        "backend": "gloo",
        "device": "cpu",
        "unit": "tokens",
        "steps": _steps((0.2, 256), (0.05, 256)),
        "peak_memory": [RankMemory(0, 1000), RankMemory(1, 2000)],
        "memory_method": "cpu-profiler-allocation-events",
    }
    return build_run_report(**(arguments | overrides))


def test_throughput_leaves_the_warm_up_step_out() -> None:
    assert throughput_per_s(_steps((1.0, 100), (0.5, 200), (1.5, 600))) == 400.0


def test_throughput_of_one_step_is_that_steps() -> None:
    assert throughput_per_s(_steps((0.5, 100))) == 200.0


def test_throughput_without_steps_or_time_is_zero() -> None:
    assert throughput_per_s([]) == 0.0
    assert throughput_per_s(_steps((1.0, 10), (0.0, 10))) == 0.0


def test_the_example_reports_throughput_follows_the_definition() -> None:
    example = load(EXAMPLE, RunReport)
    assert throughput_per_s(example.steps) == pytest.approx(example.throughput_per_s, rel=1e-4)


def test_a_completed_report() -> None:
    report = _report()
    assert report.status == "completed"
    assert report.error is None
    assert report.throughput_per_s == 256 / 0.05
    assert [memory.rank for memory in report.peak_memory] == [0, 1]


def test_an_error_makes_the_report_failed() -> None:
    report = _report(error="rank 1: out of memory", steps=_steps((0.2, 256)))
    assert (report.status, report.error) == ("failed", "rank 1: out of memory")


def test_a_failed_run_without_steps_is_still_a_valid_report() -> None:
    report = _report(error="could not start", steps=[], peak_memory=[])
    assert report.throughput_per_s == 0.0
    assert '"status": "failed"' in dumps(report)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_losses_become_none(bad: float) -> None:
    steps = [StepRecord(0, 6.2, 0.1, 8), StepRecord(1, bad, 0.1, 8)]
    report = _report(steps=steps)
    assert [step.loss for step in report.steps] == [6.2, None]
    assert "NaN" not in dumps(report) and "Infinity" not in dumps(report)


def test_ranks_are_sorted() -> None:
    report = _report(peak_memory=[RankMemory(1, 5), RankMemory(0, 7)])
    assert report.peak_memory == (RankMemory(0, 7), RankMemory(1, 5))


def test_tools_record_the_executor_and_torch_versions() -> None:
    tools = _report().tools
    assert tools["partita-executor"] == importlib.metadata.version("partita-executor")
    assert tools["torch"] == importlib.metadata.version("torch")


def test_tools_that_are_not_installed_are_left_out() -> None:
    assert tool_versions(["torch", "no-such-distribution-partita"]) == {
        "torch": importlib.metadata.version("torch")
    }


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"error": ""}, "a failed run must say why"),
        ({"peak_memory": [RankMemory(2, 1)]}, "rank 2 is outside world_size 2"),
        ({"steps": _steps((-0.1, 8))}, "must be >= 0"),
        ({"backend": "mpi"}, "backend"),
    ],
)
def test_invalid_reports_fail_when_built(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(FormatError, match=message):
        _report(**overrides)
