"""What ``partita plan`` prints after the plan: memory against the budget, runners-up and the
baselines from the same search."""

from __future__ import annotations

from collections import Counter

from partita.formats import LayerStrategy, Plan
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
    if result.techniques:
        lines += ["", "what each technique of the plan bought (the best plan searched without it):"]
        lines.append(
            table(
                ["technique", "without it", "iteration", "samples/s", "speed-up"],
                [_technique_row(name, c, best) for name, c in result.techniques.items()],
            )
        )
    return "\n".join(lines)


def _technique_row(name: str, without: Candidate | None, best: Candidate) -> list[object]:
    if without is None:
        return [name, "nothing fits", "-", "-", "needed to fit"]
    return [
        name,
        describe_plan(without.plan),
        human_seconds(without.iteration_time_s),
        f"{without.throughput:.2f}",
        f"{without.iteration_time_s / best.iteration_time_s:.2f}x",
    ]


def _row(candidate: Candidate) -> list[object]:
    return [
        describe_plan(candidate.plan),
        human_seconds(candidate.iteration_time_s),
        f"{candidate.throughput:.2f}",
        human_bytes(max(candidate.peak_memory_bytes)),
    ]


def describe_plan(plan: Plan) -> str:
    """One line that tells plans apart: the pipeline shape, the stage cuts, the blocks'
    strategies (most common first) and the vocabulary's, e.g. ``pp2 1f1b x16 [16+16]: 32 x
    tp2 ulysses ddp; vocab tp4 ddp``."""
    pipeline = plan.pipeline
    schedule = pipeline.schedule + (f"/{pipeline.chunks}" if pipeline.chunks > 1 else "")
    shape = f"pp{pipeline.degree} {schedule} x{plan.num_micro_batches}"
    if pipeline.degree > 1:
        shape += " [" + "+".join(str(n) for n in pipeline.stage_num_layers) + "]"
    counts = Counter(_strategy(layer) for layer in plan.layers)
    ranked = counts.most_common()
    blocks = ", ".join(f"{n} x {s}" for s, n in ranked[:2])
    if len(ranked) > 2:
        blocks += f", {len(ranked) - 2} more"
    vocab = f"vocab tp{plan.vocab.tp} {plan.vocab.dp}"
    return f"{shape}: {blocks}; {vocab}"


def _strategy(layer: LayerStrategy) -> str:
    parts = [f"tp{layer.tp}"]
    if layer.sp != "none":
        parts.append(layer.sp)
    parts.append(layer.dp)
    if layer.ckpt != "none":
        parts.append("ckpt" if layer.ckpt == "full" else f"ckpt-{layer.ckpt}")
    return " ".join(parts)
