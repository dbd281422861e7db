"""Terminal summary of a simulation: totals, then one row per pipeline stage."""

from __future__ import annotations

from partita.formats.text_table import human_bytes, human_seconds, table
from partita.simulator.plots import bubble_fraction
from partita.simulator.result import SimulationResult


def summary(result: SimulationResult, *, device_memory_bytes: float | None = None) -> str:
    lines = [
        f"iteration {human_seconds(result.iteration_time_s)}, "
        f"{result.throughput_samples_per_s:.2f} samples/s, "
        f"bubble {bubble_fraction(result):.1%} of the iteration",
        "",
    ]
    headers = [
        "stage",
        "devices",
        "busy",
        "bubble",
        "params",
        "grads",
        "optim",
        "acts",
        "transient",
        "peak",
    ]
    if device_memory_bytes:
        headers.append("of memory")
    rows = []
    for stage in result.stages:
        memory = stage.memory
        row: list[object] = [
            stage.stage,
            stage.devices,
            human_seconds(stage.busy_s),
            human_seconds(stage.bubble_s),
            human_bytes(memory.parameters),
            human_bytes(memory.gradients),
            human_bytes(memory.optimizer_states),
            human_bytes(memory.activations),
            human_bytes(memory.transient),
            human_bytes(memory.total),
        ]
        if device_memory_bytes:
            row.append(_percent(memory.total / device_memory_bytes))
        rows.append(row)
    lines.append(table(headers, rows))
    for warning in result.warnings:
        lines.append(f"warning: {warning}")
    return "\n".join(lines)


def _percent(share: float) -> str:
    # Far beyond the device (a profile's absurd activations), fixed-point runs to many digits.
    return f"{share:.0%}" if share < 1e6 else f"{share * 100:.1e}%"
