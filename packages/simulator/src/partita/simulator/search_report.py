"""What ``partita plan`` prints after the plan: memory against the budget, runners-up and the
baselines from the same search."""

from __future__ import annotations

from partita.formats.text_table import human_bytes, human_seconds, table
from partita.simulator.search.engine import Candidate
from partita.simulator.search.planner import PlanningResult


def search_summary(result: PlanningResult, *, budget_bytes: float) -> str:
    best = result.best
    lines = [
        f"searched {result.considered} plans in {result.elapsed_s:.2f} s; predicted (event "
        f"simulation): iteration {human_seconds(best.iteration_time_s)}, "
        f"{best.throughput:.2f} samples/s",
        "",
        "memory per device by stage (budget " + human_bytes(budget_bytes) + "):",
        table(
            ["stage", "peak", "of budget"],
            [
                [i, human_bytes(m), f"{m / budget_bytes:.0%}"]
                for i, m in enumerate(best.peak_memory_bytes)
            ],
        ),
    ]
    if result.runners_up:
        lines += [
            "",
            "runners-up:",
            table(["plan", "iteration", "samples/s", "peak"], [_row(c) for c in result.runners_up]),
        ]
    rows = []
    for name, candidate in result.baselines.items():
        if candidate is None:
            rows.append([name, "does not fit", "-", "-", "-"])
            continue
        speedup = candidate.iteration_time_s / best.iteration_time_s
        rows.append(
            [
                name,
                human_seconds(candidate.iteration_time_s),
                f"{candidate.throughput:.2f}",
                human_bytes(max(candidate.peak_memory_bytes)),
                f"{speedup:.2f}x",
            ]
        )
    if rows:
        lines += [
            "",
            "baselines from the same search (searched plan's speed-up over each):",
            table(["baseline", "iteration", "samples/s", "peak", "speed-up"], rows),
        ]
    return "\n".join(lines)


def _row(candidate: Candidate) -> list[object]:
    plan = candidate.plan
    layers = {(layer.tp, layer.sp, layer.dp, layer.ckpt) for layer in plan.layers}
    shape = f"pp{plan.pipeline.degree} {plan.pipeline.schedule} x{plan.num_micro_batches}, " + (
        "uniform" if len(layers) == 1 else f"{len(layers)} layer strategies"
    )
    return [
        shape,
        human_seconds(candidate.iteration_time_s),
        f"{candidate.throughput:.2f}",
        human_bytes(max(candidate.peak_memory_bytes)),
    ]
