"""What a simulation returns: times, memory and the events behind them (plain data)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Stream = Literal["compute", "tp_comm", "dp_comm", "p2p"]


@dataclass(frozen=True)
class Event:
    """One task that ran on one stage's stream, in seconds from the iteration start."""

    stage: int
    stream: Stream
    name: str  # e.g. "F3" (forward of micro-batch 3), "B3", "dp_sync blocks.7", "send F3"
    start_s: float
    end_s: float
    micro_batch: int | None = None

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass(frozen=True)
class MemoryBreakdown:
    """Peak bytes on one device of a stage, by what holds them."""

    parameters: float
    gradients: float
    optimizer_states: float
    activations: float  # at the peak: micro-batches in flight times their activations
    transient: float  # recomputation of a checkpointed layer, gathered ZeRO-3 parameters

    @property
    def total(self) -> float:
        return (
            self.parameters
            + self.gradients
            + self.optimizer_states
            + self.activations
            + self.transient
        )


@dataclass(frozen=True)
class StepPhases:
    """Where the step goes on a stage's ranks, split as the executor times it
    (``partita.run_report.RankPhases``); the four add up to the iteration time."""

    schedule_s: float  # the passes by the schedule, with transfers and waits (the bubble)
    grad_sync_s: float  # the wait for the gradient sync the passes did not hide
    optimizer_s: float  # the optimizer step, with ZeRO-1's gather
    step_end_s: float  # the step's end, and the wait for the slowest stage

    @property
    def total_s(self) -> float:
        return self.schedule_s + self.grad_sync_s + self.optimizer_s + self.step_end_s


@dataclass(frozen=True)
class StageResult:
    stage: int
    devices: int
    busy_s: float  # compute stream busy time
    bubble_s: float  # iteration time minus compute busy time
    memory: MemoryBreakdown
    memory_timeline: tuple[tuple[float, float], ...]  # (time s, bytes) at each change
    phases: StepPhases | None = None  # None where not simulated event by event


@dataclass(frozen=True)
class SimulationResult:
    iteration_time_s: float
    global_batch_size: int
    stages: tuple[StageResult, ...]
    events: tuple[Event, ...] = ()
    warnings: tuple[str, ...] = field(default=())

    @property
    def throughput_samples_per_s(self) -> float:
        return self.global_batch_size / self.iteration_time_s if self.iteration_time_s else 0.0

    @property
    def peak_memory_bytes(self) -> tuple[float, ...]:
        return tuple(stage.memory.total for stage in self.stages)


def bubble_fraction(result: SimulationResult) -> float:
    """Mean over stages of the share of the iteration their compute stream stood idle."""
    if not result.stages or result.iteration_time_s <= 0:
        return 0.0
    return sum(s.bubble_s for s in result.stages) / (len(result.stages) * result.iteration_time_s)
