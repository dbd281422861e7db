"""The run report the executor writes: what it measured, as ``partita.run_report``."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import replace
from importlib.metadata import PackageNotFoundError, version
from typing import Literal

from partita.formats import (
    RankMemory,
    RankPhases,
    RunReport,
    StepRecord,
    TrainingSettings,
    dumps,
    loads,
)

__all__ = ["TOOLS", "build_run_report", "throughput_per_s", "tool_versions"]

# Distributions whose versions a report records: the executor, the models it ran, and torch.
TOOLS = ("partita-executor", "partita-models", "torch")


def throughput_per_s(steps: Sequence[StepRecord]) -> float:
    """Items per second as docs/formats.md §6 defines it.

    The items of all steps but the first (warm-up) over their summed time; with one step, that
    step's; 0.0 with no steps or no measured time.
    """
    counted = steps[1:] if len(steps) > 1 else steps
    seconds = sum(step.time_s for step in counted)
    return sum(step.items for step in counted) / seconds if seconds > 0 else 0.0


def tool_versions(names: Iterable[str] = TOOLS) -> dict[str, str]:
    """Installed versions of ``names``; distributions that are not installed are left out."""
    versions: dict[str, str] = {}
    for name in names:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    return versions


def _finite_loss(step: StepRecord) -> StepRecord:
    # NaN and Infinity cannot be stored in a Partita file; the format records them as null.
    if step.loss is None or math.isfinite(step.loss):
        return step
    return replace(step, loss=None)


def build_run_report(
    *,
    model: str,
    plan_sha256: str,
    world_size: int,
    backend: Literal["gloo", "nccl"],
    device: str,
    unit: Literal["tokens", "samples"],
    steps: Sequence[StepRecord],
    peak_memory: Iterable[RankMemory],
    memory_method: str,
    error: str | None = None,
    status: Literal["running", "completed"] = "completed",
    settings: TrainingSettings | None = None,
    resumed_from_step: int | None = None,
    num_nodes: int = 1,
    attention: str = "",
    phases: Iterable[RankPhases] = (),
) -> RunReport:
    """A validated run report: ``failed`` when ``error`` is given, else ``status``.

    Non-finite losses become ``None`` and ranks are sorted. The report goes through the format's
    own save and load checks here, so a bad value fails now with a ``FormatError`` rather than
    when the file is written.
    """
    records = tuple(_finite_loss(step) for step in steps)
    report = RunReport(
        model=model,
        plan_sha256=plan_sha256,
        world_size=world_size,
        backend=backend,
        device=device,
        status="failed" if error is not None else status,
        unit=unit,
        steps=records,
        peak_memory=tuple(sorted(peak_memory, key=lambda memory: memory.rank)),
        memory_method=memory_method,
        throughput_per_s=throughput_per_s(records),
        error=error,
        tools=tool_versions(),
        settings=settings,
        resumed_from_step=resumed_from_step,
        num_nodes=num_nodes,
        attention=attention,  # type: ignore[arg-type]
        phases=tuple(sorted(phases, key=lambda phase: phase.rank)),
    )
    return loads(dumps(report), RunReport)
