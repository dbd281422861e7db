"""Plotly figures of ``partita report``: the simulated timeline and memory, the search, and a
trained run's measurements against the prediction.

The data are the ones ``plots.py`` draws with matplotlib (the same events, memory timelines
and colours); only the drawing differs, so that the report zooms and tells what each bar is
on hover. Times in milliseconds; memory per device in GiB (2**30 bytes), or MiB or KiB
for a model so small that GiB would read 0.00.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go  # type: ignore[import-untyped]

from partita.formats.text_table import human_bytes
from partita.simulator.html_report_inputs import SearchResults, TrainedRun, stage_of_rank
from partita.simulator.plots import KIND_COLORS, MEMORY_PARTS
from partita.simulator.result import Event, SimulationResult, Stream, bubble_fraction
from partita.simulator.trace import event_kind

__all__ = [
    "MAX_TIMELINE_BARS",
    "STREAM_LANES",
    "iteration_figure",
    "loss_figure",
    "memory_breakdown_figure",
    "memory_timeline_figure",
    "phases_figure",
    "rank_memory_figure",
    "search_figure",
    "share",
    "timeline_figure",
]

_MS = 1e3
# One row per pipeline stage (its devices run alike in the simulation); inside it, one lane per
# stream: (centre offset from the row, height), compute the widest so it reads first.
STREAM_LANES: dict[Stream, tuple[float, float]] = {
    "compute": (-0.2, 0.5),
    "tp_comm": (0.1, 0.1),
    "dp_comm": (0.225, 0.1),
    "p2p": (0.35, 0.1),
}
# A browser draws each bar as an SVG path: past this many it crawls. A bigger timeline keeps
# its compute bars and says that it left the communication out.
MAX_TIMELINE_BARS = 20_000
# "F3", "B3.1", "send F3.1": kind letter, micro-batch, chunk (trace.py's names).
_ACTION_NAME = re.compile(r"^(?:send |recv )?[FBWR](\d+)(?:\.(\d+))?$")
_MEASURED = "#55A868"
_PREDICTED = "#4C72B0"


def _memory_unit(largest_bytes: float) -> tuple[str, float]:
    for name, scale in (("GiB", 2.0**30), ("MiB", 2.0**20)):
        if largest_bytes >= scale:
            return name, scale
    return "KiB", 2.0**10


def share(fraction: float) -> str:
    """A percentage that does not read 0.0% for a tiny model on a big device."""
    return f"{fraction:.1%}" if fraction >= 1e-3 else f"{fraction * 100:.2g}%"


def _layout(fig: Any, *, title: str, height: int, **axes: Any) -> Any:
    fig.update_layout(
        title={"text": title, "x": 0.0, "xanchor": "left"},
        height=height,
        margin={"l": 60, "r": 20, "t": 60, "b": 50},
        template="plotly_white",
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "right", "x": 1.0},
        **axes,
    )
    return fig


def chunk_of(event: Event) -> int | None:
    """The chunk (virtual stage of the rank) a compute or p2p event belongs to."""
    match = _ACTION_NAME.match(event.name)
    if match is None:
        return None
    return int(match.group(2) or 0)


def timeline_figure(
    result: SimulationResult, *, devices: dict[int, int] | None = None
) -> tuple[Any, list[str]]:
    """Gantt chart: one row per pipeline stage, a lane per stream, a bar per event; one trace
    per event kind so the legend hides or shows a kind. Returns the figure and its notes."""
    if not result.events:
        raise ValueError("cannot draw a timeline: the simulation result has no events")
    notes = []
    events = list(result.events)
    if len(events) > MAX_TIMELINE_BARS:
        events = [e for e in events if e.stream == "compute"]
        notes.append(
            f"{len(result.events)} events: the timeline shows the {len(events)} compute ones "
            "(a browser slows down past a few tens of thousands of bars); the Chrome trace of "
            "partita simulate --trace has them all"
        )
    groups: dict[str, list[Event]] = {}
    for event in events:
        groups.setdefault(event_kind(event), []).append(event)
    order = list(KIND_COLORS)
    fig = go.Figure()
    for kind in sorted(groups, key=lambda k: (order.index(k) if k in order else len(order), k)):
        group = groups[kind]
        chunks = [chunk_of(e) for e in group]
        fig.add_trace(
            go.Bar(
                name=kind,
                orientation="h",
                y=[e.stage + STREAM_LANES[e.stream][0] for e in group],
                width=[STREAM_LANES[e.stream][1] for e in group],
                base=[e.start_s * _MS for e in group],
                x=[e.duration_s * _MS for e in group],
                marker={
                    "color": KIND_COLORS.get(kind, KIND_COLORS["compute"]),
                    "line": {"width": 0},
                },
                customdata=[
                    [
                        e.name,
                        e.stage,
                        e.stream,
                        "-" if e.micro_batch is None else e.micro_batch,
                        "-" if c is None else c,
                        e.start_s * _MS,
                        e.end_s * _MS,
                        e.duration_s * _MS,  # not %{x}: with a base, plotly may show the end
                    ]
                    for e, c in zip(group, chunks, strict=True)
                ],
                hovertemplate=(
                    "<b>%{customdata[0]}</b> (" + kind + ")<br>stage %{customdata[1]}, "
                    "%{customdata[2]} stream<br>micro-batch %{customdata[3]}, chunk "
                    "%{customdata[4]}<br>start %{customdata[5]:.4f} ms, duration "
                    "%{customdata[7]:.4f} ms<br>end %{customdata[6]:.4f} ms<extra></extra>"
                ),
            )
        )
    stages = sorted({e.stage for e in result.events} | {s.stage for s in result.stages})
    devices = devices or {s.stage: s.devices for s in result.stages}
    end_ms = max(result.iteration_time_s, *(e.end_s for e in result.events)) * _MS
    _layout(
        fig,
        title=f"Simulated iteration: {result.iteration_time_s * _MS:.3f} ms, bubble "
        f"{bubble_fraction(result):.1%} (drag to zoom in time, double-click to reset)",
        height=140 + 60 * len(stages),
        barmode="overlay",
        bargap=0.0,
        xaxis={"title": {"text": "time (ms)"}, "range": [0, end_ms], "showgrid": True},
        yaxis={
            "tickmode": "array",
            "tickvals": stages,
            "ticktext": [
                f"stage {s}" + (f" ({devices[s]} dev)" if s in devices else "") for s in stages
            ],
            "range": [stages[-1] + 0.5, stages[0] - 0.5],  # stage 0 on top, as pipelines are drawn
            "fixedrange": True,  # zoom in time only: every stage stays in view
            "showgrid": False,
            "zeroline": False,
        },
    )
    return fig, notes


def memory_timeline_figure(result: SimulationResult, *, limit_bytes: float | None) -> Any:
    """Memory per device of each stage over the iteration, as step lines, and the limit."""
    stages = sorted((s for s in result.stages if s.memory_timeline), key=lambda s: s.stage)
    if not stages:
        raise ValueError("cannot draw a memory timeline: no stage has one")
    fig = go.Figure()
    end_ms = result.iteration_time_s * _MS
    unit, scale = _memory_unit(max(b for s in stages for _, b in s.memory_timeline))
    peak = 0.0
    for stage in stages:
        points = sorted(stage.memory_timeline, key=lambda point: point[0])
        times = [t * _MS for t, _ in points]
        values = [b / scale for _, b in points]
        if end_ms > times[-1]:  # held at the last value until the iteration ends
            times.append(end_ms)
            values.append(values[-1])
        peak = max(peak, *values)
        fig.add_trace(
            go.Scatter(
                name=f"stage {stage.stage}",
                x=times,
                y=values,
                mode="lines",
                line={"shape": "hv"},
                hovertemplate=f"stage {stage.stage}<br>%{{x:.4f}} ms: %{{y:.4f}} {unit}"
                "<extra></extra>",
            )
        )
    title = "Memory per device over the iteration"
    if limit_bytes is not None:
        limit = limit_bytes / scale
        # A device far larger than the peak would flatten every line to the floor: draw the
        # limit only where it is within sight of the data, else say it.
        if limit <= 4 * peak:
            fig.add_trace(
                go.Scatter(
                    name=f"device limit {human_bytes(limit_bytes)}",
                    x=[0, max(end_ms, 1e-9)],
                    y=[limit, limit],
                    mode="lines",
                    line={"color": "red", "dash": "dash"},
                    hovertemplate=f"device limit {human_bytes(limit_bytes)}<extra></extra>",
                )
            )
        else:
            title += f" (device limit {human_bytes(limit_bytes)}, off the scale)"
    return _layout(
        fig,
        title=title,
        height=420,
        xaxis={"title": {"text": "time (ms)"}},
        yaxis={"title": {"text": f"{unit} per device"}, "rangemode": "tozero"},
        hovermode="closest",
    )


def memory_breakdown_figure(result: SimulationResult, *, limit_bytes: float | None) -> Any:
    """Stacked bars of each stage's peak per device, by what holds it, against the limit."""
    stages = sorted(result.stages, key=lambda s: s.stage)
    if not stages:
        raise ValueError("cannot draw memory: the simulation result has no stages")
    labels = [f"stage {s.stage}" for s in stages]
    peak_bytes = max(s.memory.total for s in stages)
    unit, scale = _memory_unit(peak_bytes)
    fig = go.Figure()
    for part in MEMORY_PARTS:
        fig.add_trace(
            go.Bar(
                name=part.replace("_", " "),
                x=labels,
                y=[getattr(s.memory, part) / scale for s in stages],
                hovertemplate="%{x}: "
                + part.replace("_", " ")
                + " %{y:.4f} "
                + unit
                + "<extra></extra>",
            )
        )
    title = "Peak memory per device, by stage"
    if limit_bytes is not None:
        title += f" (device limit {human_bytes(limit_bytes)}"
        if limit_bytes <= 4 * peak_bytes:
            fig.add_hline(y=limit_bytes / scale, line={"color": "red", "dash": "dash"})
            title += ", dashed)"
        else:
            title += f", peak {share(peak_bytes / limit_bytes)} of it)"
    return _layout(
        fig,
        title=title,
        height=380,
        barmode="stack",
        yaxis={"title": {"text": f"{unit} per device"}},
    )


def search_figure(search: SearchResults) -> Any | None:
    """Predicted iteration time of each candidate that has one, fastest on top; hover shows
    its plan and memory. None when no candidate has a time."""
    shown = [c for c in search.candidates if c.iteration_time_s is not None and c.plan]
    if not shown:
        return None
    shown.sort(key=lambda c: c.iteration_time_s or 0.0)
    kinds = list(dict.fromkeys(c.kind for c in shown))
    palette = ["#4C72B0", "#DD8452", "#55A868", "#8172B3", "#937860", "#8C8C8C", "#C44E52"]
    fig = go.Figure()
    labels = [f"{c.name}" for c in shown]
    for index, kind in enumerate(kinds):
        members = [c for c in shown if c.kind == kind]
        fig.add_trace(
            go.Bar(
                name=kind,
                orientation="h",
                y=[c.name for c in members],
                x=[(c.iteration_time_s or 0.0) * _MS for c in members],
                marker={
                    "color": palette[index % len(palette)],
                    "pattern": {"shape": ["" if c.feasible else "/" for c in members]},
                },
                customdata=[
                    [
                        c.plan,
                        "-" if c.peak_memory_bytes is None else human_bytes(c.peak_memory_bytes),
                        "fits" if c.feasible else "does not fit",
                    ]
                    for c in members
                ],
                hovertemplate="<b>%{y}</b><br>%{customdata[0]}<br>iteration %{x:.4f} ms<br>"
                "peak %{customdata[1]} per device, %{customdata[2]}<extra></extra>",
            )
        )
    title = "Predicted iteration time of the plans searched (shorter is faster; hatched: over "
    title += "the budget)"
    return _layout(
        fig,
        title=title,
        height=160 + 32 * len(shown),
        barmode="overlay",
        xaxis={"title": {"text": "iteration (ms)"}, "rangemode": "tozero"},
        yaxis={
            "categoryorder": "array",
            "categoryarray": labels[::-1],  # plotly lists categories bottom up
            "automargin": True,
        },
    )


def iteration_figure(runs: Sequence[TrainedRun], predicted_s: Sequence[float]) -> Any:
    """Predicted against measured iteration time, a bar pair per run."""
    labels = [run.label for run in runs]
    fig = go.Figure()
    fig.add_trace(
        go.Bar(
            name="predicted (simulation)",
            x=labels,
            y=[p * _MS for p in predicted_s],
            marker={"color": _PREDICTED},
            hovertemplate="%{x}: predicted %{y:.3f} ms<extra></extra>",
        )
    )
    fig.add_trace(
        go.Bar(
            name="measured (median step after warm-up)",
            x=labels,
            y=[None if r.measured_step_s is None else r.measured_step_s * _MS for r in runs],
            marker={"color": _MEASURED},
            hovertemplate="%{x}: measured %{y:.3f} ms<extra></extra>",
        )
    )
    return _layout(
        fig,
        title="Iteration time: predicted against measured",
        height=380,
        barmode="group",
        yaxis={"title": {"text": "ms per iteration"}},
    )


def rank_memory_figure(runs: Sequence[TrainedRun], predicted_per_stage: Sequence[Any]) -> Any:
    """Predicted against measured peak memory, a bar pair per rank of each run."""
    labels: list[str] = []
    predicted: list[float] = []
    measured: list[float] = []
    for run, stages in zip(runs, predicted_per_stage, strict=True):
        for memory in sorted(run.report.peak_memory, key=lambda m: m.rank):
            stage = stage_of_rank(run.plan, memory.rank)
            labels.append(f"{run.label} rank {memory.rank} (stage {stage})")
            predicted.append(stages[stage])
            measured.append(float(memory.peak_bytes))
    unit, scale = _memory_unit(max(predicted + measured, default=0.0))
    predicted = [b / scale for b in predicted]
    measured = [b / scale for b in measured]
    fig = go.Figure()
    fig.add_trace(
        go.Bar(
            name="predicted",
            x=labels,
            y=predicted,
            marker={"color": _PREDICTED},
            hovertemplate="%{x}: predicted %{y:.4f} " + unit + "<extra></extra>",
        )
    )
    fig.add_trace(
        go.Bar(
            name="measured",
            x=labels,
            y=measured,
            marker={"color": _MEASURED},
            hovertemplate="%{x}: measured %{y:.4f} " + unit + "<extra></extra>",
        )
    )
    return _layout(
        fig,
        title="Peak memory per rank: predicted against measured",
        height=400,
        barmode="group",
        yaxis={"title": {"text": f"{unit} per device"}},
        xaxis={"automargin": True},
    )


PHASE_NAMES = {  # RankPhases / StepPhases field -> legend name
    "schedule_s": "forward and backward passes (with transfers and bubble)",
    "grad_sync_s": "gradient sync left after the passes",
    "optimizer_s": "optimizer step",
    "step_end_s": "step end (loss all-reduce, barrier, slowest rank)",
}
_PHASE_COLORS = ("#4C72B0", "#C44E52", "#DD8452", "#8C8C8C")


def phases_figure(runs: Sequence[TrainedRun], predictions: Sequence[SimulationResult]) -> Any:
    """Where each rank's step went, predicted (its stage's simulation) against measured
    (``RankPhases``): a pair of stacked bars per rank of each run that timed its phases."""
    first: list[str] = []
    second: list[str] = []
    values: dict[str, list[float | None]] = {name: [] for name in PHASE_NAMES}
    for run, result in zip(runs, predictions, strict=True):
        stages = {stage.stage: stage.phases for stage in result.stages}
        for measured in run.report.phases:
            stage = stage_of_rank(run.plan, measured.rank)
            rank = f"{run.label} rank {measured.rank}"
            for side, phases in (("predicted", stages.get(stage)), ("measured", measured)):
                first.append(rank)
                second.append(side)
                for name, column in values.items():
                    seconds = None if phases is None else getattr(phases, name)
                    column.append(None if seconds is None else seconds * _MS)
    fig = go.Figure()
    for (name, label), color in zip(PHASE_NAMES.items(), _PHASE_COLORS, strict=True):
        fig.add_trace(
            go.Bar(
                name=label,
                x=[first, second],
                y=values[name],
                marker={"color": color},
                hovertemplate="%{x}: %{y:.3f} ms<extra>" + label + "</extra>",
            )
        )
    return _layout(
        fig,
        title="Where the step goes, per rank: predicted against measured",
        height=420,
        barmode="stack",
        yaxis={"title": {"text": "ms per iteration"}},
        xaxis={"automargin": True},
    )


def loss_figure(runs: Sequence[TrainedRun]) -> Any | None:
    """The training loss of each run by step; None when no run has a finite loss."""
    fig = go.Figure()
    for run in runs:
        steps = [s for s in run.steps if s.loss is not None]
        if not steps:
            continue
        fig.add_trace(
            go.Scatter(
                name=run.label,
                x=[s.step for s in steps],
                y=[s.loss for s in steps],
                mode="lines+markers",
                marker={"size": 4},
                customdata=[s.time_s * _MS for s in steps],
                hovertemplate=run.label + "<br>step %{x}: loss %{y:.4f}<br>"
                "step time %{customdata:.2f} ms<extra></extra>",
            )
        )
    if not fig.data:
        return None
    return _layout(
        fig,
        title="Training loss",
        height=380,
        xaxis={"title": {"text": "step"}},
        yaxis={"title": {"text": "loss"}},
    )
