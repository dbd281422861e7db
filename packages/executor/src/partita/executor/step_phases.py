"""Where a training step goes: its phases, timed as the step runs, split as the simulator
splits its prediction (``partita.run_report.RankPhases``, ``partita.simulator.result.StepPhases``).

The trainer marks the end of the schedule's passes, of the gradient sync and of the optimizer
step; the step's end is what the step's wall time leaves (the loss all-reduces and the barrier
every rank meets). On CUDA the marks are events on the current stream: the host runs ahead of
the device, so its own clock would time the queueing, not the work; the events are read once
the step has synchronised (the logged loss is read back to the host), so timing adds no sync.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Sequence

import torch

from partita.formats import RankPhases

MARKED = 3  # schedule, gradient sync, optimizer step; the step's end is the remainder


class PhaseClock:
    """One step's phase boundaries on ``device``: ``start()``, then ``mark()`` at the end of
    each marked phase, then ``split(wall_s)`` once the step is done."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._events = (
            [torch.cuda.Event(enable_timing=True) for _ in range(MARKED + 1)]
            if device.type == "cuda"
            else None
        )
        self._times: list[float] = []

    def start(self) -> None:
        self._times = []
        self.mark()

    def mark(self) -> None:
        if self._events is None:
            self._times.append(time.perf_counter())
        else:
            self._events[len(self._times)].record()
            self._times.append(0.0)  # counts the marks; the event holds the time

    def split(self, wall_s: float) -> tuple[float, float, float, float]:
        """(schedule, gradient sync, optimizer, step end) seconds of a step that took
        ``wall_s`` in all."""
        assert len(self._times) == MARKED + 1, f"{len(self._times)} marks, not {MARKED + 1}"
        if self._events is None:
            marks = self._times
            parts = [later - earlier for earlier, later in itertools.pairwise(marks)]
        else:
            events = self._events
            parts = [
                earlier.elapsed_time(later) / 1e3 for earlier, later in itertools.pairwise(events)
            ]
        schedule, sync, optimizer = (max(0.0, p) for p in parts)
        return schedule, sync, optimizer, max(0.0, wall_s - schedule - sync - optimizer)


def median_phases(rank: int, steps: Sequence[tuple[float, float, float, float]]) -> RankPhases:
    """A rank's phases over its steps: the medians, the first step left out when there are
    more (it makes the optimizer states and warms the caches)."""
    if not steps:
        raise ValueError(f"rank {rank} timed no step")
    kept = steps[1:] if len(steps) > 1 else steps
    schedule, sync, optimizer, end = (
        statistics.median(column) for column in zip(*kept, strict=True)
    )
    return RankPhases(
        rank=rank, schedule_s=schedule, grad_sync_s=sync, optimizer_s=optimizer, step_end_s=end
    )
