"""Chrome Trace Event JSON of a simulated iteration, for Perfetto and chrome://tracing.

Layout: one process per pipeline stage, named ``"stage N (k devices)"``, and in it one thread
per stream, always all four and in this order: ``compute``, ``tp_comm``, ``dp_comm``, ``p2p``.
Each :class:`~partita.simulator.result.Event` becomes a complete event (``"ph": "X"``) with
``ts``/``dur`` in microseconds from the iteration start, ``name`` the event's name, ``cat`` its
kind (see :func:`event_kind`) and ``args.micro_batch``. Each stage's memory timeline becomes a
counter (``"ph": "C"``) named ``"memory"`` with one series, ``MiB`` (per device of the stage).

Event naming conventions, shared with the executor's traces so that the two line up:

* compute stream: ``"F{m}"`` forward of micro-batch ``m``, ``"B{m}"`` its backward,
  ``"W{m}"`` its weight-gradient half when the backward is split, ``"R{m}"`` recomputation of
  its checkpointed activations, ``"optimizer"`` the optimizer step;
* ``p2p``: ``"send F{m}"`` / ``"recv F{m}"`` (activations), ``"send B{m}"`` / ``"recv B{m}"``
  (gradients);
* ``dp_comm``: ``"dp_sync {bucket}"``, e.g. ``"dp_sync blocks.7"``; ZeRO-3 gathers
  ``"dp_gather {bucket}"``;
* ``tp_comm``: ``"tp_{collective} {layer}"``, e.g. ``"tp_allreduce blocks.7.mlp"``.

Events of the same stage and stream are ordered by start time, so the output is stable. A
stream runs one task at a time: events on one stream must not partly overlap (Perfetto drops
slices that are neither disjoint nor nested).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, get_args

from partita.simulator.result import Event, SimulationResult, Stream

__all__ = ["STREAMS", "chrome_trace", "event_kind", "write_chrome_trace"]

STREAMS: tuple[Stream, ...] = get_args(Stream)
_COMPUTE_KINDS = {"F": "forward", "B": "backward", "W": "weight_grad", "R": "recompute"}
_COMPUTE_NAME = re.compile(r"([FBWR])\d")
_MIB = 2.0**20
_US_PER_S = 1e6

TraceEvent = dict[str, Any]


def event_kind(event: Event) -> str:
    """What an event does: a compute kind from its name, else the stream it ran on."""
    if event.stream != "compute":
        return event.stream
    if event.name.startswith("optimizer"):
        return "optimizer"
    match = _COMPUTE_NAME.match(event.name)
    return _COMPUTE_KINDS[match.group(1)] if match else "compute"


def chrome_trace(result: SimulationResult, *, title: str = "Partita simulation") -> dict[str, Any]:
    """The trace as a JSON-ready dict: ``{"traceEvents": [...], ...}``."""
    stages = _stage_devices(result)
    if not stages:
        raise ValueError("cannot trace a simulation result with no stages and no events")
    events: list[TraceEvent] = []
    for stage, devices in stages.items():
        events += _metadata(stage, devices)
    events += [_complete(event) for event in sorted(result.events, key=_event_order)]
    for stage_result in result.stages:
        events += _counters(stage_result.stage, stage_result.memory_timeline)
    return {
        "traceEvents": events,
        # Perfetto ignores this, chrome://tracing shows durations in ms with it.
        "displayTimeUnit": "ms",
        "otherData": {
            "title": title,
            "iteration_time_ms": result.iteration_time_s * 1e3,
            "global_batch_size": result.global_batch_size,
            "throughput_samples_per_s": result.throughput_samples_per_s,
            "warnings": list(result.warnings),
        },
    }


def write_chrome_trace(
    result: SimulationResult, path: str | Path, *, title: str = "Partita simulation"
) -> Path:
    """Write :func:`chrome_trace` to ``path`` (parents created) and return the path."""
    path = Path(path)
    trace = chrome_trace(result, title=title)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(trace, separators=(",", ":")) + "\n", encoding="utf-8")
    return path


def _stage_devices(result: SimulationResult) -> dict[int, int | None]:
    """Every stage that has a result or an event, in order, with its device count if known."""
    devices: dict[int, int | None] = {event.stage: None for event in result.events}
    devices.update({stage.stage: stage.devices for stage in result.stages})
    return dict(sorted(devices.items()))


# Trace ids: Perfetto treats pid 0 and tid == pid specially, and older importers merge equal
# tids across processes, so pids start at 1 and tids are unique over the whole trace.
def _pid(stage: int) -> int:
    return stage + 1


def _tid(stage: int, stream: Stream) -> int:
    return _pid(stage) * 100 + STREAMS.index(stream) + 1


def _metadata(stage: int, devices: int | None) -> list[TraceEvent]:
    pid = _pid(stage)
    label = f"stage {stage}" if devices is None else f"stage {stage} ({devices} devices)"
    events = [
        _meta("process_name", pid, 0, {"name": label}),
        _meta("process_sort_index", pid, 0, {"sort_index": pid}),
    ]
    for index, stream in enumerate(STREAMS):
        events.append(_meta("thread_name", pid, _tid(stage, stream), {"name": stream}))
        events.append(_meta("thread_sort_index", pid, _tid(stage, stream), {"sort_index": index}))
    return events


def _meta(kind: str, pid: int, tid: int, args: dict[str, str | int]) -> TraceEvent:
    return {"name": kind, "ph": "M", "pid": pid, "tid": tid, "args": args}


def _event_order(event: Event) -> tuple[int, int, float, float, str]:
    return (event.stage, STREAMS.index(event.stream), event.start_s, event.end_s, event.name)


def _complete(event: Event) -> TraceEvent:
    if event.end_s < event.start_s:
        raise ValueError(f"event {event.name!r} on stage {event.stage} ends before it starts")
    return {
        "name": event.name,
        "cat": event_kind(event),
        "ph": "X",
        "ts": _us(event.start_s),
        "dur": _us(event.duration_s),
        "pid": _pid(event.stage),
        "tid": _tid(event.stage, event.stream),
        "args": {"micro_batch": event.micro_batch},
    }


def _counters(stage: int, timeline: tuple[tuple[float, float], ...]) -> list[TraceEvent]:
    pid = _pid(stage)
    return [
        {"name": "memory", "ph": "C", "ts": _us(time_s), "pid": pid, "args": {"MiB": b / _MIB}}
        for time_s, b in sorted(timeline, key=lambda point: point[0])
    ]


def _us(seconds: float) -> float:
    # Nanosecond resolution is plenty and keeps the JSON free of float noise.
    return round(seconds * _US_PER_S, 3)
