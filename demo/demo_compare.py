"""Predicted against measured, for each plan the demo trained, and the run folder's contents."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from demo_plans import describe_plan, stage_of_rank

from partita.formats import Plan, RunReport
from partita.formats.text_table import human_bytes, human_seconds, table

WARMUP_STEPS = 3  # left out of the measured step time (first step builds optimizer states)


@dataclass(frozen=True)
class Trained:
    role: str  # "searched" or "baseline"
    plan: Plan
    report: RunReport

    @property
    def measured_step_s(self) -> float:
        times = [s.time_s for s in self.report.steps]
        return statistics.median(times[WARMUP_STEPS:] or times)

    @property
    def predicted_step_s(self) -> float:
        assert self.plan.predictions is not None, "partita plan writes predictions"
        return self.plan.predictions.iteration_time_s

    def predicted_peak(self, rank: int) -> int:
        assert self.plan.predictions is not None, "partita plan writes predictions"
        stages = self.plan.predictions.peak_memory_bytes_per_stage
        return stages[stage_of_rank(self.plan, rank)]


def _error(measured: float, predicted: float) -> str:
    return f"{(measured - predicted) / predicted * 100:+.1f}%" if predicted > 0 else "-"


def comparison_table(runs: list[Trained]) -> str:
    headers = ["plan", "rank", "iter predicted", "iter measured", "error"]
    headers += ["peak predicted", "peak measured", "error"]
    rows = []
    for run in runs:
        for index, memory in enumerate(sorted(run.report.peak_memory, key=lambda m: m.rank)):
            first = index == 0
            predicted_peak = run.predicted_peak(memory.rank)
            rows.append(
                [
                    f"{run.role}: {describe_plan(run.plan)}" if first else "",
                    memory.rank,
                    human_seconds(run.predicted_step_s) if first else "",
                    human_seconds(run.measured_step_s) if first else "",
                    _error(run.measured_step_s, run.predicted_step_s) if first else "",
                    human_bytes(predicted_peak),
                    human_bytes(memory.peak_bytes),
                    _error(memory.peak_bytes, predicted_peak),
                ]
            )
    return table(headers, rows)


def speedup_line(searched: Trained, baseline: Trained) -> str:
    predicted = baseline.predicted_step_s / searched.predicted_step_s
    measured = baseline.measured_step_s / searched.measured_step_s
    line = (
        f"searched plan against the baseline: {predicted:.2f}x predicted, "
        f"{measured:.2f}x measured (baseline iteration time / searched)"
    )
    if predicted < 1:
        line += (
            "\nwarning: the simulator predicts the baseline faster than the searched plan, so "
            "the search missed it (compare the baselines table in logs/*plan-*.log)"
        )
    return line


def loss_line(run: Trained) -> str:
    losses = [s.loss for s in run.report.steps if s.loss is not None]
    if not losses:
        return f"{run.role}: no finite loss"
    return f"{run.role}: loss {losses[0]:.3f} -> {losses[-1]:.3f} over {len(losses)} steps"


def same_losses_line(runs: list[Trained]) -> str | None:
    """A note when every plan trained to the same losses (as parallelism should not change them)."""
    series = [[s.loss for s in run.report.steps] for run in runs]
    first = series[0]
    for other in series[1:]:
        if len(other) != len(first) or any(
            a is None or b is None or abs(a - b) > 1e-3 * max(1.0, abs(a))
            for a, b in zip(first, other, strict=True)
        ):
            return None
    return "the losses agree step by step: a plan moves the work, not the arithmetic"


def comparison_json(runs: list[Trained], *, budget_bytes: int) -> dict[str, object]:
    return {
        "memory_budget_bytes": budget_bytes,
        "warmup_steps_left_out": WARMUP_STEPS,
        "plans": {
            run.role: {
                "plan": describe_plan(run.plan),
                "predicted_iteration_s": run.predicted_step_s,
                "measured_iteration_median_s": run.measured_step_s,
                "predicted_peak_bytes": {
                    m.rank: run.predicted_peak(m.rank) for m in run.report.peak_memory
                },
                "measured_peak_bytes": {m.rank: m.peak_bytes for m in run.report.peak_memory},
                "memory_method": run.report.memory_method,
            }
            for run in runs
        },
    }


_ARTIFACTS = {
    "model.json": "model description (partita describe)",
    "hardware.json": "hardware profile of this machine (partita profile hardware)",
    "model_profile.json": "model profile, per layer type (partita profile model)",
    "dp-unbounded.json": "best pure data-parallel plan without a budget: sets the budget",
    "plan-full.json": "fastest plan of the full space (partita plan --space full)",
    "plan-full-pp1.json": "fastest plan of the full space without a pipeline",
    "plan-uniform-pp1.json": "fastest uniform plan without a pipeline",
    "plan.json": "the plan trained",
    "trace.json": "simulated iteration, Chrome trace (open in https://ui.perfetto.dev)",
    "timeline.png": "simulated timeline per device",
    "memory.png": "simulated memory per stage over the iteration",
    "run_report.json": "measured step times, losses, peak memory per rank (partita train)",
    "comparison.json": "the table above, as numbers",
    "summary.txt": "this summary (what the demo printed last)",
    "steps.jsonl": "one line per training step, written as it trained",
    "report.html": "the report: plan, timeline, memory, search, predicted vs measured (offline)",
}
# Folders listed as one line each: what is inside belongs together.
_FOLDERS = {
    "checkpoints": "training checkpoint (partita train --resume, partita export)",
    "hf-model": "the trained model as a Hugging Face directory (partita export)",
}


def _listed_as(relative: Path) -> tuple[Path, str] | None:
    """The folder a file is listed under, and what it is, when it belongs to one."""
    for index, part in enumerate(relative.parts[:-1]):
        if part in _FOLDERS:
            # A checkpoint is the folder inside checkpoints/; the model is hf-model/ itself.
            depth = index + 2 if part == "checkpoints" else index + 1
            return Path(*relative.parts[:depth]), _FOLDERS[part]
    return None


def artifact_lines(folder: Path) -> list[str]:
    lines = []
    grouped: set[Path] = set()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder)
        group = _listed_as(relative)
        if group is not None:
            if group[0] not in grouped:
                grouped.add(group[0])
                lines.append(f"  {str(group[0]) + '/':<36} {group[1]}")
            continue
        what = _ARTIFACTS.get(path.name, "")
        if relative.parts[0] == "logs":
            what = "output of one stage"
        elif path.name.endswith(".search.json"):
            what = "that search's best plan, runners-up and baselines (partita plan --search-out)"
        elif path.name.startswith("baseline-"):
            what = "a baseline candidate (partita plan --space ...)"
        elif path.parent.name == "train" and path.name == "plan.json":
            what = "the plan, as partita train copied it"
        lines.append(f"  {relative!s:<36} {what}".rstrip())
    return lines
