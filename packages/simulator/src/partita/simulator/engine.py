"""The discrete-event simulation of one iteration; the only module that touches simpy.

Event names follow the conventions in :mod:`partita.simulator.trace`.

Each pipeline rank replays its schedule on a compute stream, for each of its chunks (virtual
stages) in turn as the actions say. A forward waits for the previous virtual stage's
activations, a backward for the next one's gradients; a transfer runs on the sending rank's
p2p stream once the receiving rank has posted its receive, that is reached the action that
needs it (gloo and NCCL move a message only when both sides have posted it), and a rank ends
its step only when its transfers have been received. Each layer's gradient sync starts
during its chunk's last backward (or last W pass, where the schedule splits the backward) as
soon as that layer's part ends, and runs on the rank's data-parallel stream, so it overlaps
with the backward of earlier layers (ZeRO-2/3 reduce-scatter after every backward).
A split backward's B runs each layer's backward less its weight gradients and keeps the
activations; its W runs the weight gradients, makes the gradients and frees the activations.
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
from partita.formats.schedules import Action, Schedule, num_chunks, splits_backward
from partita.simulator.memory import backward_excess, late_gradients, rank_static_bytes
from partita.simulator.result import Event, Stream
from partita.simulator.workload import LayerWork, StageWork

Process = Generator[simpy.Event, Any, Any]  # a simpy process body


@dataclass
class _RankState:
    works: tuple[StageWork, ...]  # by chunk
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
    phase_ends: list[float] = field(default_factory=list)
    # Per chunk: whether the step's gradients of its layers are made (by its first backward,
    # or its first W where the backward is split), and how far a backward rises above what
    # is held as it starts (``memory.Backward``), before and after.
    gradients_made: list[bool] = field(default_factory=list)
    first_excess: list[float] = field(default_factory=list)
    later_excess: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class EngineOutput:
    stage_end_s: tuple[float, ...]
    compute_busy_s: tuple[float, ...]
    peak_bytes: tuple[float, ...]
    timelines: tuple[tuple[tuple[float, float], ...], ...]
    events: tuple[Event, ...]
    # Per rank, when its schedule, gradient sync and optimizer step ended.
    phase_ends_s: tuple[tuple[float, float, float], ...] = ()


class Engine:
    """``stages`` are the virtual stages' work (``schedule``'s ranks times its chunks, in
    pipeline order); events, times and memory are per rank."""

    def __init__(
        self,
        *,
        stages: list[StageWork],
        schedule: Schedule,
        overlap: OverlapSlowdown,
        record_events: bool = True,
    ) -> None:
        self.ranks, self.chunks = len(schedule), num_chunks(schedule)
        assert len(stages) == self.ranks * self.chunks
        self.env = simpy.Environment()
        self.schedule = schedule
        self.split = splits_backward(schedule)
        self.overlap = overlap
        self.record_events = record_events
        self.states = []
        for rank in range(self.ranks):
            works = tuple(stages[c * self.ranks + rank] for c in range(self.chunks))
            static = rank_static_bytes(works)
            self.states.append(
                _RankState(
                    works=works,
                    static_bytes=static,
                    dp_stream=simpy.Resource(self.env, capacity=1),
                    send_stream=simpy.Resource(self.env, capacity=1),
                    memory_now=static,
                    timeline=[(0.0, static)],
                    gradients_made=[False] * self.chunks,
                    first_excess=[backward_excess(w, gradients_made=self.split) for w in works],
                    later_excess=[backward_excess(w, gradients_made=True) for w in works],
                )
            )
        num_micro_batches = sum(a.kind == "F" for a in schedule[0]) // self.chunks
        virtual = len(stages)

        def events() -> list[list[simpy.Event]]:
            return [[self.env.event() for _ in range(num_micro_batches)] for _ in range(virtual)]

        # By virtual stage and micro-batch: a transfer's arrival, and where the receiving
        # stage has reached the action that receives it.
        self.activation_ready, self.gradient_ready = events(), events()
        self.activation_posted, self.gradient_posted = events(), events()
        # The ranks holding a tied table sum its gradient together: each waits for all.
        self.tied_arrived = {
            rank: self.env.event()
            for rank, state in enumerate(self.states)
            if any(work.tied_sync_s > 0 for work in state.works)
        }

    def run(self) -> EngineOutput:
        done = [self.env.process(self._rank(index)) for index in range(self.ranks)]
        self.env.run(simpy.AllOf(self.env, done))
        return EngineOutput(
            stage_end_s=tuple(float(p.value or 0.0) for p in done),
            compute_busy_s=tuple(s.compute_busy_s for s in self.states),
            peak_bytes=tuple(max(b for _, b in s.timeline) for s in self.states),
            timelines=tuple(tuple(s.timeline) for s in self.states),
            events=tuple(e for s in self.states for e in sorted(s.events, key=lambda e: e.start_s)),
            phase_ends_s=tuple(
                (s.phase_ends[0], s.phase_ends[1], s.phase_ends[2]) for s in self.states
            ),
        )

    # --- one rank ---------------------------------------------------------------------------
    def _rank(self, index: int) -> Process:
        state = self.states[index]
        actions = self.schedule[index]
        # Each chunk's gradients are summed over its data-parallel group from its last pass
        # that makes them (its last backward, or its last W where the backward is split).
        makes = "W" if self.split else "B"
        final = {a.chunk: i for i, a in enumerate(actions) if a.kind == makes}
        for position, action in enumerate(actions):
            if action.kind == "F":
                yield from self._forward(index, action)
            elif action.kind == "B":
                yield from self._backward(index, action, final=position == final[action.chunk])
            else:
                yield from self._weights(index, action, final=position == final[action.chunk])
        # The step's phases as the executor times them (``partita.run_report.RankPhases``).
        yield self.env.all_of(state.sends)
        state.phase_ends.append(self.env.now)  # the schedule's passes and transfers
        yield self.env.all_of(state.syncs)
        if index in self.tied_arrived:
            self.tied_arrived[index].succeed()
            yield self.env.all_of(list(self.tied_arrived.values()))
            tied = sum(work.tied_sync_s for work in state.works)
            yield from self._compute(index, "tied table sync", tied, None)
        reducer = sum(work.reducer_s for work in state.works)
        yield from self._compute(index, "ddp reducer", reducer, None)
        state.phase_ends.append(self.env.now)  # the gradient sync
        optimizer = sum(work.optimizer_step_s for work in state.works)
        yield from self._compute(index, "optimizer", optimizer, None)
        gathers = sum(work.zero1_gather_s for work in state.works)
        yield from self._compute(index, "zero1 gather", gathers, None)
        state.phase_ends.append(self.env.now)  # the optimizer step
        after = sum(work.after_step_s for work in state.works)
        yield from self._compute(index, "step end", after, None)
        return self.env.now

    def _virtual(self, index: int, action: Action) -> int:
        return action.chunk * self.ranks + index

    def _label(self, action: Action) -> str:
        return str(action)

    def _forward(self, index: int, action: Action) -> Process:
        state, m = self.states[index], action.micro_batch
        stage = self._virtual(index, action)
        work = state.works[action.chunk]
        if stage > 0:
            self.activation_posted[stage][m].succeed()
            yield self.activation_ready[stage][m]
        self._memory(state, +work.activation_bytes)
        yield from self._compute(index, self._label(action), work.forward_s, m)
        if stage < len(self.activation_ready) - 1:
            self._start_send(index, "F", m, stage, work.send_forward_s)

    def _backward(self, index: int, action: Action, *, final: bool) -> Process:
        """The whole backward, or (split) its input-gradient part, whose activations stay
        for the W pass."""
        state, m, chunk = self.states[index], action.micro_batch, action.chunk
        stage = self._virtual(index, action)
        work = state.works[chunk]
        if stage < len(self.gradient_ready) - 1:
            self.gradient_posted[stage][m].succeed()
            yield self.gradient_ready[stage][m]
        # The backward's highest point (``memory``: transients, gradients being made, less
        # the activations already freed), held for all of it, like a forward's activations.
        made_before = state.gradients_made[chunk]
        excess = state.later_excess[chunk] if made_before else state.first_excess[chunk]
        self._memory(state, +excess)
        passes = [
            (layer.backward_s - (layer.weight_backward_s if self.split else 0.0), layer)
            for layer in reversed(work.layers)
        ]
        yield from self._layer_passes(index, action, passes, syncs=not self.split, final=final)
        if self.split:
            self._memory(state, work.split_kept_bytes - excess)
        else:
            made = 0.0 if made_before else late_gradients(work)
            state.gradients_made[chunk] = True
            self._memory(state, made - excess - work.activation_bytes)
        if stage > 0:
            self._start_send(index, "B", m, stage, work.send_backward_s)

    def _weights(self, index: int, action: Action, *, final: bool) -> Process:
        """A split backward's weight gradients; the micro-batch's activations go after it. A
        W that runs the chunk's whole backward again rises as a backward does."""
        state, chunk = self.states[index], action.chunk
        work = state.works[chunk]
        if not state.gradients_made[chunk]:
            state.gradients_made[chunk] = True
            self._memory(state, +late_gradients(work))
        excess = state.later_excess[chunk] if work.whole_weight_pass else 0.0
        self._memory(state, +excess)
        passes = [(work.weight_pass_s(layer), layer) for layer in reversed(work.layers)]
        yield from self._layer_passes(index, action, passes, syncs=True, final=final)
        self._memory(state, -excess - work.activation_bytes - work.split_kept_bytes)

    def _layer_passes(
        self,
        index: int,
        action: Action,
        passes: list[tuple[float, LayerWork]],
        *,
        syncs: bool,
        final: bool,
    ) -> Process:
        """One backward (or W) pass, layer by layer, each layer's gradient sync started as
        its part ends. Layers that start no sync while none is running (so nothing slows
        them) run as one task: the same times, far fewer events (a 64-stage pipeline runs
        tens of thousands of passes)."""
        state, m, name = self.states[index], action.micro_batch, self._label(action)
        pending = 0.0
        for seconds, layer in passes:
            starts_sync = (
                syncs and bool(layer.grad_sync) and (final or layer.grad_sync_every_micro_batch)
            )
            if not starts_sync and state.dp_active == 0:
                pending += seconds
                continue
            if pending:
                yield from self._compute(index, name, pending, m, merge=True)
                pending = 0.0
            yield from self._compute(index, name, seconds, m, merge=True)
            if syncs:
                self._sync_layer(index, layer, m, final=final)
        if pending:
            yield from self._compute(index, name, pending, m, merge=True)

    def _sync_layer(self, index: int, layer: LayerWork, m: int, *, final: bool) -> None:
        if not (final or layer.grad_sync_every_micro_batch):
            return
        state = self.states[index]
        for op, seconds in layer.grad_sync:
            state.dp_active += 1  # counted from now, so the next compute sees it
            kind = "dp_gather" if op == "all_gather" else "dp_sync"
            sync = self._grad_sync(index, f"{kind} {layer.name}", seconds, m)
            state.syncs.append(self.env.process(sync))

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

    def _start_send(self, index: int, kind: str, m: int, stage: int, seconds: float) -> None:
        """Rank ``index``'s transfer of micro-batch m from virtual stage ``stage``: its
        activations to the next stage (``kind`` "F") or its input gradients to the previous
        one ("B")."""
        state = self.states[index]
        if kind == "F":
            posted, arrived = (
                self.activation_posted[stage + 1][m],
                self.activation_ready[stage + 1][m],
            )
        else:
            posted, arrived = self.gradient_posted[stage - 1][m], self.gradient_ready[stage - 1][m]
        chunk = f".{stage // self.ranks}" if stage >= self.ranks else ""
        send = self._send(index, f"send {kind}{m}{chunk}", seconds, posted, arrived, m)
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
    def _memory(self, state: _RankState, delta: float) -> None:
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
