"""Chrome traces and plots of a hand-built two-stage GPipe iteration with two micro-batches."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from matplotlib.figure import Figure

from partita.simulator.plots import (
    MEMORY_PARTS,
    bubble_fraction,
    memory_figure,
    memory_timeline_figure,
    plot_memory,
    plot_memory_timeline,
    plot_throughput,
    plot_timeline,
    throughput_figure,
    timeline_figure,
)
from partita.simulator.result import (
    Event,
    MemoryBreakdown,
    SimulationResult,
    StageResult,
    Stream,
)
from partita.simulator.trace import STREAMS, chrome_trace, event_kind, write_chrome_trace

GIB = 2.0**30
MS = 1e-3
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _event(stage: int, stream: Stream, name: str, start_ms: float, end_ms: float) -> Event:
    digits = "".join(c for c in name if c.isdigit())
    micro_batch = int(digits) if digits and stream != "dp_comm" else None
    return Event(stage, stream, name, start_ms * MS, end_ms * MS, micro_batch)


# Forward 10 ms, backward 20 ms, transfers 1 ms, gradient sync 4 ms; the iteration ends when
# stage 0's sync does, at 96 ms. Each stage computes for 60 ms, so it idles 36 ms (37.5 %).
EVENTS = (
    _event(0, "compute", "F0", 0, 10),
    _event(0, "compute", "F1", 10, 20),
    _event(0, "p2p", "send F0", 10, 11),
    _event(0, "p2p", "send F1", 20, 21),
    _event(1, "compute", "F0", 11, 21),
    _event(1, "compute", "F1", 21, 31),
    _event(1, "compute", "B0", 31, 51),
    _event(1, "compute", "B1", 51, 71),
    _event(1, "p2p", "send B0", 51, 52),
    _event(1, "p2p", "send B1", 71, 72),
    _event(1, "dp_comm", "dp_sync blocks.1", 71, 75),
    _event(0, "compute", "B0", 52, 72),
    _event(0, "compute", "B1", 72, 92),
    _event(0, "dp_comm", "dp_sync blocks.0", 92, 96),
)
MEMORY = MemoryBreakdown(
    parameters=2 * GIB, gradients=2 * GIB, optimizer_states=4 * GIB, activations=6 * GIB,
    transient=0.5 * GIB,
)  # fmt: skip
TIMELINE_0 = ((0.0, 8 * GIB), (10 * MS, 11 * GIB), (20 * MS, 14 * GIB), (72 * MS, 11 * GIB))
TIMELINE_1 = ((0.0, 8 * GIB), (21 * MS, 11 * GIB), (31 * MS, 14 * GIB), (51 * MS, 11 * GIB))


def _result() -> SimulationResult:
    stages = tuple(
        StageResult(stage, 2, 60 * MS, 36 * MS, MEMORY, timeline)
        for stage, timeline in enumerate((TIMELINE_0, TIMELINE_1))
    )
    return SimulationResult(96 * MS, 8, stages, EVENTS)


def _of_phase(trace: dict[str, Any], phase: str) -> list[dict[str, Any]]:
    return [e for e in trace["traceEvents"] if e["ph"] == phase]


def _assert_png(path: Path) -> None:
    assert path.is_file()
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 10_000, f"{path} is suspiciously small ({len(data)} bytes)"


def _legend_labels(fig: Figure) -> list[str]:
    legend = fig.axes[0].get_legend()
    assert legend is not None
    return [text.get_text() for text in legend.get_texts()]


# Chrome trace


def test_trace_names_one_process_per_stage_and_one_thread_per_stream() -> None:
    metadata = _of_phase(chrome_trace(_result()), "M")
    processes = {e["pid"]: e["args"]["name"] for e in metadata if e["name"] == "process_name"}
    assert sorted(processes.values()) == ["stage 0 (2 devices)", "stage 1 (2 devices)"]
    for pid in processes:
        threads = [e for e in metadata if e["name"] == "thread_name" and e["pid"] == pid]
        assert [e["args"]["name"] for e in threads] == list(STREAMS)
    tids = [e["tid"] for e in metadata if e["name"] == "thread_name"]
    assert len(set(tids)) == len(tids), "thread ids must be unique across processes"


def test_trace_has_one_complete_event_per_event_in_microseconds() -> None:
    trace = chrome_trace(_result())
    complete = _of_phase(trace, "X")
    assert len(complete) == len(EVENTS)
    assert Counter(e["name"] for e in complete) == Counter(e.name for e in EVENTS)
    names = {
        (e["pid"], e["tid"]): e["args"]["name"]
        for e in _of_phase(trace, "M")
        if e["name"] in ("process_name", "thread_name")
    }
    # Find each event by (process name, thread name, event name) rather than by raw ids.
    by_place = {(names[e["pid"], 0], names[e["pid"], e["tid"]], e["name"]): e for e in complete}
    assert len(by_place) == len(EVENTS)
    backward = by_place["stage 1 (2 devices)", "compute", "B0"]
    assert (backward["ts"], backward["dur"]) == pytest.approx((31_000, 20_000))
    assert backward["args"] == {"micro_batch": 0}
    assert backward["cat"] == "backward"
    sync = by_place["stage 0 (2 devices)", "dp_comm", "dp_sync blocks.0"]
    assert (sync["ts"], sync["dur"], sync["args"]) == (92_000, 4_000, {"micro_batch": None})


def test_trace_has_memory_counters_in_mib() -> None:
    counters = _of_phase(chrome_trace(_result()), "C")
    assert len(counters) == len(TIMELINE_0) + len(TIMELINE_1)
    assert {e["name"] for e in counters} == {"memory"}
    first_stage = [e for e in counters if e["pid"] == counters[0]["pid"]]
    assert [(e["ts"], e["args"]["MiB"]) for e in first_stage] == [
        (0, 8192),
        (10_000, 11264),
        (20_000, 14336),
        (72_000, 11264),
    ]


def test_trace_is_stable_and_written_as_json(tmp_path: Path) -> None:
    result = _result()
    shuffled = replace(result, events=tuple(reversed(result.events)))
    assert chrome_trace(shuffled) == chrome_trace(result)
    path = write_chrome_trace(result, tmp_path / "nested" / "trace.json", title="gpipe")
    loaded = json.loads(path.read_text(encoding="utf-8"))
    assert loaded == chrome_trace(result, title="gpipe")
    assert loaded["otherData"]["title"] == "gpipe"
    assert loaded["otherData"]["iteration_time_ms"] == pytest.approx(96)


def test_trace_rejects_empty_results_and_backwards_events() -> None:
    with pytest.raises(ValueError, match="no stages and no events"):
        chrome_trace(SimulationResult(1.0, 1, ()))
    broken = replace(_result(), events=(_event(0, "compute", "F0", 5, 4),))
    with pytest.raises(ValueError, match="ends before it starts"):
        chrome_trace(broken)


@pytest.mark.parametrize(
    ("stream", "name", "kind"),
    [
        ("compute", "F3", "forward"),
        ("compute", "B12", "backward"),
        ("compute", "W0", "weight_grad"),
        ("compute", "R2", "recompute"),
        ("compute", "optimizer", "optimizer"),
        ("compute", "Fancy", "compute"),
        ("p2p", "send F3", "p2p"),
        ("dp_comm", "dp_sync blocks.7", "dp_comm"),
        ("tp_comm", "tp_allreduce blocks.7.mlp", "tp_comm"),
    ],
)
def test_event_kind(stream: Stream, name: str, kind: str) -> None:
    assert event_kind(Event(0, stream, name, 0.0, 1.0)) == kind


# Plots


def test_timeline_has_a_bar_per_event_and_labels_micro_batches(tmp_path: Path) -> None:
    fig = timeline_figure(_result(), title="gpipe")
    ax = fig.axes[0]
    assert len(ax.patches) == len(EVENTS)
    widths = sorted(round(p.get_width(), 6) for p in ax.patches)  # type: ignore[attr-defined]
    assert widths == sorted(round((e.end_s - e.start_s) * 1e3, 6) for e in EVENTS)
    rows = [label.get_text() for label in ax.get_yticklabels()]
    assert rows == [
        f"stage {s} {stream}" for s in (0, 1) for stream in ("compute", "dp_comm", "p2p")
    ]
    # Every compute bar is at least 10 % of the axis wide, so each has its micro-batch number.
    assert sorted(t.get_text() for t in ax.texts) == ["0", "0", "0", "0", "1", "1", "1", "1"]
    assert ax.get_xlabel() == "time (ms)"
    assert ax.get_title() == "gpipe: iteration 96.00 ms, bubble 37.5%"
    assert _legend_labels(fig) == ["forward", "backward", "dp_comm", "p2p"]
    _assert_png(plot_timeline(_result(), tmp_path / "a" / "b" / "timeline.png"))


def test_memory_stacks_each_part_per_stage_under_the_budget(tmp_path: Path) -> None:
    fig = memory_figure(_result(), budget_bytes=16 * GIB)
    ax = fig.axes[0]
    assert len(ax.patches) == len(MEMORY_PARTS) * 2
    tops = {round(p.get_x(), 3): p.get_y() + p.get_height() for p in ax.patches}  # type: ignore[attr-defined]
    assert sorted(tops.values()) == pytest.approx([MEMORY.total / GIB] * 2)
    (budget,) = ax.get_lines()
    assert budget.get_linestyle() == "--"
    assert budget.get_ydata()[0] == pytest.approx(16)  # type: ignore[index]
    assert ax.get_ylabel() == "peak memory per device (GiB)"
    assert _legend_labels(fig) == ["budget 16.0 GiB", *(p.replace("_", " ") for p in MEMORY_PARTS)]
    assert not memory_figure(_result()).axes[0].get_lines()
    _assert_png(plot_memory(_result(), tmp_path / "memory.png", budget_bytes=16 * GIB))


def test_throughput_draws_a_line_per_series_on_a_log2_axis(tmp_path: Path) -> None:
    points = {"gpipe": [(8, 100.0), (2, 30.0), (4, 55.0)], "1f1b": [(2, 32.0), (8, 120.0)]}
    ax = throughput_figure(points).axes[0]
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["gpipe", "1f1b"]
    assert list(lines[0].get_xdata()) == [2, 4, 8]  # type: ignore[arg-type]
    assert ax.get_xscale() == "log"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("devices", "throughput (samples/s)")
    linear = throughput_figure({"a": [(3, 1.0), (6, 2.0)]}, xlabel="tokens").axes[0]
    assert (linear.get_xscale(), linear.get_xlabel()) == ("linear", "tokens")
    _assert_png(plot_throughput(points, tmp_path / "throughput.png"))


def test_memory_timeline_steps_each_stage_to_the_iteration_end(tmp_path: Path) -> None:
    ax = memory_timeline_figure(_result()).axes[0]
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["stage 0", "stage 1"]
    assert list(lines[0].get_xdata()) == pytest.approx([0, 10, 20, 72, 96])  # type: ignore[arg-type]
    assert list(lines[0].get_ydata()) == pytest.approx([8, 11, 14, 11, 11])  # type: ignore[arg-type]
    assert lines[0].get_drawstyle() == "steps-post"
    _assert_png(plot_memory_timeline(_result(), tmp_path / "memory_timeline.png"))


def test_bubble_fraction_is_the_mean_idle_share() -> None:
    assert bubble_fraction(_result()) == pytest.approx(0.375)


def test_plots_reject_empty_input(tmp_path: Path) -> None:
    empty = SimulationResult(1.0, 1, ())
    no_timeline = replace(
        _result(), stages=tuple(replace(s, memory_timeline=()) for s in _result().stages)
    )
    with pytest.raises(ValueError, match="no events"):
        plot_timeline(empty, tmp_path / "t.png")
    with pytest.raises(ValueError, match="no stages"):
        plot_memory(empty, tmp_path / "m.png")
    with pytest.raises(ValueError, match="no series"):
        plot_throughput({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"\['b'\] have no points"):
        plot_throughput({"a": [(1, 1.0)], "b": []}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="no stage has one"):
        plot_memory_timeline(no_timeline, tmp_path / "mt.png")
    assert not list(tmp_path.iterdir()), "nothing is written when the input is rejected"
