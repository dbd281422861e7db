"""A step's phases: timed by the host's clock on CPU, by events on the stream on CUDA, and the
step's end the remainder of its wall time."""

from __future__ import annotations

import pytest
import torch

from partita.executor import step_phases
from partita.executor.step_phases import PhaseClock, median_phases


class _Clock:
    def __init__(self, *times: float) -> None:
        self.times = list(times)

    def __call__(self) -> float:
        return self.times.pop(0)


def test_on_cpu_the_host_clock_times_each_phase_and_the_step_end_is_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(step_phases.time, "perf_counter", _Clock(10.0, 10.5, 10.6, 10.9))
    clock = PhaseClock(torch.device("cpu"))
    clock.start()
    for _ in range(3):
        clock.mark()
    assert clock.split(1.25) == pytest.approx((0.5, 0.1, 0.3, 0.35))


class _FakeEvent:
    """A CUDA event's interface, its time the order it was recorded in (ms)."""

    recorded = 0

    def __init__(self, enable_timing: bool = False) -> None:
        assert enable_timing, "an event that cannot time"
        self.at: float | None = None

    def record(self) -> None:
        _FakeEvent.recorded += 1
        self.at = {1: 0.0, 2: 40.0, 3: 45.0, 4: 60.0}[_FakeEvent.recorded]

    def elapsed_time(self, later: _FakeEvent) -> float:
        assert self.at is not None and later.at is not None, "read before recorded"
        return later.at - self.at


def test_on_cuda_events_on_the_stream_time_the_device_work_not_the_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)
    host = _Clock()  # empty: reading the host's clock would fail
    monkeypatch.setattr(step_phases.time, "perf_counter", host)
    _FakeEvent.recorded = 0
    clock = PhaseClock(torch.device("cuda", 0))
    clock.start()
    for _ in range(3):
        clock.mark()
    # The device took 60 ms of a 70 ms step: the step's end (all-reduce, barrier) is the 10.
    assert clock.split(0.070) == pytest.approx((0.040, 0.005, 0.015, 0.010))


def test_a_phase_left_unmarked_is_an_internal_error() -> None:
    clock = PhaseClock(torch.device("cpu"))
    clock.start()
    clock.mark()
    with pytest.raises(AssertionError, match="2 marks"):
        clock.split(1.0)


def test_a_ranks_phases_are_medians_without_the_first_step() -> None:
    steps = [(9.0, 9.0, 9.0, 9.0), (1.0, 0.1, 0.2, 0.3), (3.0, 0.3, 0.4, 0.1), (2.0, 0.2, 0.3, 0.2)]
    phases = median_phases(3, steps)
    assert phases.rank == 3
    got = (phases.schedule_s, phases.grad_sync_s, phases.optimizer_s, phases.step_end_s)
    assert got == pytest.approx((2.0, 0.2, 0.3, 0.2))
    assert median_phases(0, steps[:1]).schedule_s == 9.0  # one step: that step
    with pytest.raises(ValueError, match="rank 1 timed no step"):
        median_phases(1, [])
