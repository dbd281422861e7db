"""The discrete-event simulation of one iteration; the only module that touches simpy.

Event names follow the conventions in :mod:`partita.simulator.trace`.

Each stage replays its schedule on a compute stream. A forward waits for the previous
stage's activations, a backward for the next stage's gradients; a transfer runs on the sending
stage's p2p stream once the receiving stage has posted its receive, that is reached the action
that needs it (gloo and NCCL move a message only when both sides have posted it), and a stage
ends its step only when its transfers have been received. Under a whole-model plan each
layer's gradient sync starts during the last backward as soon as that layer's backward ends
and runs on the stage's data-parallel stream, so it overlaps with the backward of earlier
layers (ZeRO-2/3 reduce-scatter after every backward, under any plan); the pipeline trainer
all-reduces DDP and ZeRO-1 buckets after the last backward, one after the other.
A compute task that starts while gradient syncs are pending, and a sync that starts while
compute runs, take longer by the hardware profile's overlap factors (for their whole
duration: a coarse but cheap model of contention).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import simpy

from partita.formats import OverlapSlowdown
from partita.formats.schedules import Action, Schedule
from partita.simulator.memory import backward_excess, late_gradients
from partita.simulator.result import Event, Stream
from partita.simulator.workload import StageWork

Process = Generator[simpy.Event, Any, Any]  # a simpy process body


@dataclass
class _StageState:
    work: StageWork
    static_bytes: float
    dp_stream: simpy.Resource
    send_stream: simpy.Resource
    memory_now: float = 0.0
    timeline: list[tuple[float, float]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    syncs: list[simpy.Process] = field(default_factory=list)
    sends: list[simpy.Process] = field(default_factory=list)
    compute_busy_s: float = 0.0
    computing: bool = False
    dp_active: int = 0
    gradients_made: bool = False  # by the step's first backward
    # How far a backward rises above what is held as it starts (``memory``), before the
    # step's gradients are made and after; a stage's work fixes both.
    first_excess: float = 0.0
    later_excess: float = 0.0


@dataclass(frozen=True)
class EngineOutput:
    stage_end_s: tuple[float, ...]
    compute_busy_s: tuple[float, ...]
    peak_bytes: tuple[float, ...]
    timelines: tuple[tuple[tuple[float, float], ...], ...]
    events: tuple[Event, ...]


class Engine:
    def __init__(
        self,
        *,
        stages: list[StageWork],
        schedule: Schedule,
        static_bytes: list[float],
        overlap: OverlapSlowdown,
        record_events: bool = True,
    ) -> None:
        assert len(stages) == len(schedule) == len(static_bytes)
        self.env = simpy.Environment()
        self.schedule = schedule
        self.overlap = overlap
        self.record_events = record_events
        self.states = [
            _StageState(
                work=work,
                static_bytes=static,
                dp_stream=simpy.Resource(self.env, capacity=1),
                send_stream=simpy.Resource(self.env, capacity=1),
                memory_now=static,
                timeline=[(0.0, static)],
                first_excess=backward_excess(work, gradients_made=False),
                later_excess=backward_excess(work, gradients_made=True),
            )
            for work, static in zip(stages, static_bytes, strict=True)
        ]
        num_micro_batches = sum(a.kind == "F" for a in schedule[0])
        self.activation_ready = [
            [self.env.event() for _ in range(num_micro_batches)] for _ in stages
        ]
        self.gradient_ready = [[self.env.event() for _ in range(num_micro_batches)] for _ in stages]
        # Where a stage has reached the action that receives micro-batch m's transfer.
        self.activation_posted = [
            [self.env.event() for _ in range(num_micro_batches)] for _ in stages
        ]
        self.gradient_posted = [
            [self.env.event() for _ in range(num_micro_batches)] for _ in stages
        ]
        # The stages holding a tied table sum its gradient together: each waits for all.
        self.tied_arrived = {
            i: self.env.event() for i, work in enumerate(stages) if work.tied_sync_s > 0
        }

    def run(self) -> EngineOutput:
        done = [self.env.process(self._stage(index)) for index in range(len(self.states))]
        self.env.run(simpy.AllOf(self.env, done))
        return EngineOutput(
            stage_end_s=tuple(float(p.value or 0.0) for p in done),
            compute_busy_s=tuple(s.compute_busy_s for s in self.states),
            peak_bytes=tuple(max(b for _, b in s.timeline) for s in self.states),
            timelines=tuple(tuple(s.timeline) for s in self.states),
            events=tuple(e for s in self.states for e in sorted(s.events, key=lambda e: e.start_s)),
        )

    # --- one stage ------------------------------------------------------------------------
    def _stage(self, index: int) -> Process:
        state = self.states[index]
        actions = self.schedule[index]
        last_backward = max(i for i, a in enumerate(actions) if a.kind == "B")
        for position, action in enumerate(actions):
            if action.kind == "F":
                yield from self._forward(index, action)
            else:
                yield from self._backward(index, action, final=position == last_backward)
        yield self.env.all_of(state.syncs + state.sends)
        if index in self.tied_arrived:
            self.tied_arrived[index].succeed()
            yield self.env.all_of(list(self.tied_arrived.values()))
            yield from self._compute(index, "tied table sync", state.work.tied_sync_s, None)
        yield from self._compute(index, "optimizer", state.work.optimizer_step_s, None)
        yield from self._compute(index, "step end", state.work.after_step_s, None)
        return self.env.now

    def _forward(self, index: int, action: Action) -> Process:
        state, m = self.states[index], action.micro_batch
        if index > 0:
            self.activation_posted[index][m].succeed()
            yield self.activation_ready[index][m]
        self._memory(state, +state.work.activation_bytes)
        yield from self._compute(index, f"F{m}", state.work.forward_s, m)
        if index < len(self.states) - 1:
            self._start_send(index, "F", m)

    def _backward(self, index: int, action: Action, *, final: bool) -> Process:
        state, m = self.states[index], action.micro_batch
        if index < len(self.states) - 1:
            self.gradient_posted[index][m].succeed()
            yield self.gradient_ready[index][m]
        # The backward's highest point (``memory``: transients, gradients being made, less
        # the activations already freed), held for all of it, like a forward's activations.
        excess = state.later_excess if state.gradients_made else state.first_excess
        self._memory(state, +excess)
        for layer in reversed(state.work.layers):
            yield from self._compute(index, f"B{m}", layer.backward_s, m, merge=True)
            if final or layer.grad_sync_every_micro_batch:
                for op, seconds in layer.grad_sync:
                    state.dp_active += 1  # counted from now, so the next compute sees it
                    kind = "dp_gather" if op == "all_gather" else "dp_sync"
                    sync = self._grad_sync(index, f"{kind} {layer.name}", seconds, m)
                    state.syncs.append(self.env.process(sync))
        made = 0.0 if state.gradients_made else late_gradients(state.work)
        state.gradients_made = True
        self._memory(state, made - excess - state.work.activation_bytes)
        if index > 0:
            self._start_send(index, "B", m)

    # --- streams ------------------------------------------------------------------------------
    def _compute(  # type: ignore[no-untyped-def]
        self, index: int, name: str, seconds: float, m: int | None, *, merge: bool = False
    ):
        state = self.states[index]
        if state.dp_active:
            seconds *= self.overlap.compute
        start = self.env.now
        state.computing = True
        yield self.env.timeout(seconds)
        state.computing = False
        state.compute_busy_s += seconds
        self._record(index, "compute", name, start, m, merge=merge)

    def _start_send(self, index: int, kind: str, m: int) -> None:
        """Stage ``index``'s transfer of micro-batch m: its activations to the next stage
        (``kind`` "F") or its input gradients to the previous one ("B")."""
        state = self.states[index]
        if kind == "F":
            seconds = state.work.send_forward_s
            posted, arrived = (
                self.activation_posted[index + 1][m],
                self.activation_ready[index + 1][m],
            )
        else:
            seconds = state.work.send_backward_s
            posted, arrived = self.gradient_posted[index - 1][m], self.gradient_ready[index - 1][m]
        send = self._send(index, f"send {kind}{m}", seconds, posted, arrived, m)
        state.sends.append(self.env.process(send))

    def _send(
        self,
        index: int,
        name: str,
        seconds: float,
        posted: simpy.Event,
        arrived: simpy.Event,
        m: int,
    ) -> Process:
        """Once the receiver has posted its receive and the send stream is free."""
        state = self.states[index]
        yield posted
        with state.send_stream.request() as slot:
            yield slot
            start = self.env.now
            yield self.env.timeout(seconds)
            self._record(index, "p2p", name, start, m)
        arrived.succeed()

    def _grad_sync(self, index: int, name: str, seconds: float, m: int) -> Process:
        state = self.states[index]
        with state.dp_stream.request() as slot:
            yield slot
            if state.computing:
                seconds *= self.overlap.communication
            start = self.env.now
            yield self.env.timeout(seconds)
            self._record(index, "dp_comm", name, start, m)
        state.dp_active -= 1

    # --- bookkeeping --------------------------------------------------------------------------
    def _memory(self, state: _StageState, delta: float) -> None:
        state.memory_now += delta
        state.timeline.append((self.env.now, state.memory_now))

    def _record(
        self,
        index: int,
        stream: Stream,
        name: str,
        start: float,
        m: int | None,
        *,
        merge: bool = False,
    ) -> None:
        """Keep an event; the per-layer pieces of one backward become one event."""
        if not self.record_events or self.env.now == start:
            return
        events = self.states[index].events
        compute = [e for e in events[-4:] if e.stream == "compute"]
        last = compute[-1] if compute else None
        if merge and last is not None and last.name == name and last.end_s == start:
            events.remove(last)
            start = last.start_s
        events.append(Event(index, stream, name, start, self.env.now, m))
