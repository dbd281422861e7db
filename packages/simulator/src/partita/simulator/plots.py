"""Matplotlib figures of simulation results: pipeline timeline, memory and throughput.

Each plot comes as a pair: ``*_figure(...)`` builds a :class:`matplotlib.figure.Figure` (so that
callers and tests can inspect or tweak it) and ``plot_*(..., path)`` saves it as an image whose
format follows the suffix, creating the parent folders, and returns the path. Figures are made
without :mod:`matplotlib.pyplot`, so no global state or GUI backend is involved and the
functions are safe in scripts, threads and headless machines.

Memory is shown per device of a stage, in GiB (2**30 bytes); times in milliseconds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from partita.simulator.result import Event, SimulationResult, StageResult, bubble_fraction
from partita.simulator.trace import STREAMS, event_kind

__all__ = [
    "KIND_COLORS",
    "bubble_fraction",
    "memory_figure",
    "memory_timeline_figure",
    "plot_memory",
    "plot_memory_timeline",
    "plot_throughput",
    "plot_timeline",
    "throughput_figure",
    "timeline_figure",
]

# One colour per event kind (see partita.simulator.trace.event_kind); the legend follows
# this order. Compute kinds are strong colours, communication ones lighter.
KIND_COLORS: dict[str, str] = {
    "forward": "#4C72B0",
    "backward": "#DD8452",
    "weight_grad": "#C44E52",
    "recompute": "#8172B3",
    "optimizer": "#937860",
    "compute": "#8C8C8C",
    "tp_comm": "#8DD3A0",
    "dp_comm": "#E7A6D4",
    "p2p": "#D8CB7E",
}
MEMORY_PARTS = ("parameters", "gradients", "optimizer_states", "activations", "transient")
_GIB = 2.0**30
_MS_PER_S = 1e3
# Micro-batch numbers are written only on bars at least this share of the time axis wide.
_MIN_LABEL_SHARE = 0.025


def timeline_figure(result: SimulationResult, *, title: str = "Partita simulation") -> Figure:
    """Gantt chart: one row per (stage, stream) that ran something, one bar per event."""
    if not result.events:
        raise ValueError("cannot plot a timeline: the simulation result has no events")
    rows = sorted({(e.stage, STREAMS.index(e.stream)) for e in result.events})
    fig = Figure(figsize=(12, 1.2 + 0.45 * len(rows)), layout="constrained")
    ax = fig.add_subplot()
    end_ms = max(result.iteration_time_s, *(e.end_s for e in result.events)) * _MS_PER_S
    _draw_events(ax, result.events, rows)
    _label_micro_batches(ax, result.events, rows, min_width_ms=_MIN_LABEL_SHARE * end_ms)
    ax.set_yticks(range(len(rows)), [f"stage {stage} {STREAMS[s]}" for stage, s in rows])
    ax.invert_yaxis()  # stage 0 on top, as pipeline diagrams are drawn
    ax.set_xlim(0, end_ms)
    ax.set_xlabel("time (ms)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    ax.set_title(
        f"{title}: iteration {result.iteration_time_s * _MS_PER_S:.2f} ms, "
        f"bubble {bubble_fraction(result):.1%}"
    )
    return fig


def plot_timeline(
    result: SimulationResult, path: str | Path, *, title: str = "Partita simulation"
) -> Path:
    return _save(timeline_figure(result, title=title), path)


def memory_figure(result: SimulationResult, *, budget_bytes: float | None = None) -> Figure:
    """Stacked bars of each stage's peak memory per device, by what holds it."""
    if not result.stages:
        raise ValueError("cannot plot memory: the simulation result has no stages")
    stages = sorted(result.stages, key=lambda s: s.stage)
    fig = Figure(figsize=(max(5.0, 1.2 * len(stages) + 3), 4.5), layout="constrained")
    ax = fig.add_subplot()
    positions = range(len(stages))
    bottoms = [0.0] * len(stages)
    for part in MEMORY_PARTS:
        heights = [getattr(s.memory, part) / _GIB for s in stages]
        ax.bar(positions, heights, bottom=bottoms, width=0.6, label=part.replace("_", " "))
        bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
    if budget_bytes is not None:
        budget = budget_bytes / _GIB
        ax.axhline(budget, color="red", linestyle="--", label=f"budget {budget:.1f} GiB")
    ax.set_xticks(positions, [f"stage {s.stage}\n({s.devices} devices)" for s in stages])
    ax.set_ylabel("peak memory per device (GiB)")
    ax.set_title("Peak memory by stage")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    return fig


def plot_memory(
    result: SimulationResult, path: str | Path, *, budget_bytes: float | None = None
) -> Path:
    return _save(memory_figure(result, budget_bytes=budget_bytes), path)


def throughput_figure(
    points: Mapping[str, Sequence[tuple[float, float]]], *, xlabel: str = "devices"
) -> Figure:
    """One line per named series of (x, samples/s) points; log2 x when x are powers of two."""
    if not points:
        raise ValueError("cannot plot throughput: no series given")
    if empty := [name for name, series in points.items() if not series]:
        raise ValueError(f"cannot plot throughput: series {empty} have no points")
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for name, series in points.items():
        xs, ys = zip(*sorted(series), strict=True)
        ax.plot(xs, ys, marker="o", label=name)
    all_x = sorted({x for series in points.values() for x, _ in series})
    if all(_is_power_of_two(x) for x in all_x):
        ax.set_xscale("log", base=2)
        ax.set_xticks(all_x, [f"{x:g}" for x in all_x])
        ax.minorticks_off()
    ax.set_ylim(bottom=0)  # throughput differences read as ratios only from a zero baseline
    ax.set_xlabel(xlabel)
    ax.set_ylabel("throughput (samples/s)")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def plot_throughput(
    points: Mapping[str, Sequence[tuple[float, float]]],
    path: str | Path,
    *,
    xlabel: str = "devices",
) -> Path:
    return _save(throughput_figure(points, xlabel=xlabel), path)


def memory_timeline_figure(result: SimulationResult) -> Figure:
    """Memory per device of each stage over the iteration, as step lines."""
    stages = sorted((s for s in result.stages if s.memory_timeline), key=lambda s: s.stage)
    if not stages:
        raise ValueError("cannot plot a memory timeline: no stage has one")
    fig = Figure(figsize=(10, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for stage in stages:
        times, values = _timeline_until(stage, result.iteration_time_s)
        ax.step(times, values, where="post", label=f"stage {stage.stage}")
    ax.set_xlim(left=0)
    ax.set_xlabel("time (ms)")
    ax.set_ylabel("memory per device (GiB)")
    ax.set_title("Memory over the iteration")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def plot_memory_timeline(result: SimulationResult, path: str | Path) -> Path:
    return _save(memory_timeline_figure(result), path)


def _draw_events(ax: Axes, events: Sequence[Event], rows: list[tuple[int, int]]) -> None:
    """One horizontal bar per event; one ``barh`` call per kind so the legend has each once."""
    for kind, group in _by_kind(events).items():
        ax.barh(
            [_row(rows, e) for e in group],
            [e.duration_s * _MS_PER_S for e in group],
            left=[e.start_s * _MS_PER_S for e in group],
            height=0.8,
            color=KIND_COLORS.get(kind, KIND_COLORS["compute"]),
            edgecolor="white",
            linewidth=0.5,
            label=kind,
        )


def _row(rows: list[tuple[int, int]], event: Event) -> int:
    return rows.index((event.stage, STREAMS.index(event.stream)))


def _by_kind(events: Sequence[Event]) -> dict[str, list[Event]]:
    """Events grouped by kind, kinds in legend order (known ones first, then by name)."""
    groups: dict[str, list[Event]] = {}
    for event in events:
        groups.setdefault(event_kind(event), []).append(event)
    order = list(KIND_COLORS)
    return dict(sorted(groups.items(), key=lambda kv: (_rank(order, kv[0]), kv[0])))


def _rank(order: list[str], kind: str) -> int:
    return order.index(kind) if kind in order else len(order)


def _label_micro_batches(
    ax: Axes, events: Sequence[Event], rows: list[tuple[int, int]], *, min_width_ms: float
) -> None:
    for e in events:
        width_ms = e.duration_s * _MS_PER_S
        if e.stream != "compute" or e.micro_batch is None or width_ms < min_width_ms:
            continue
        ax.text(
            (e.start_s + e.duration_s / 2) * _MS_PER_S,
            _row(rows, e),
            str(e.micro_batch),
            ha="center",
            va="center",
            fontsize=8,
            color="white",
        )


def _is_power_of_two(x: float) -> bool:
    return x > 0 and math.log2(x).is_integer()


def _timeline_until(stage: StageResult, end_s: float) -> tuple[list[float], list[float]]:
    """The stage's (ms, GiB) points, held at the last value until the iteration's end."""
    points = sorted(stage.memory_timeline, key=lambda point: point[0])
    times = [t * _MS_PER_S for t, _ in points]
    values = [b / _GIB for _, b in points]
    if end_s * _MS_PER_S > times[-1]:
        times.append(end_s * _MS_PER_S)
        values.append(values[-1])
    return times, values


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
