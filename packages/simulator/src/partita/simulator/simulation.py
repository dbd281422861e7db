"""``simulate``: predict one training iteration of a plan (the Python API for studies)."""

from __future__ import annotations

from partita.formats import HardwareProfile, ModelDescription, ModelProfile, Plan, validate_plan
from partita.formats.schedules import build_schedule
from partita.simulator import analytic
from partita.simulator.cost import CostModel
from partita.simulator.engine import Engine
from partita.simulator.memory import peak_breakdown, static_bytes
from partita.simulator.result import MemoryBreakdown, SimulationResult, StageResult
from partita.simulator.workload import LayerWork, StageWork, WorkloadBuilder


def build_workload(
    plan: Plan,
    *,
    hardware: HardwareProfile,
    model_profile: ModelProfile,
    model: ModelDescription,
    cost: CostModel | None = None,
    cache: dict[tuple[object, ...], LayerWork] | None = None,
) -> tuple[list[StageWork], CostModel]:
    """Validate the inputs against each other and turn the plan into per-stage work."""
    validate_plan(plan, model=model)
    if plan.world_size != hardware.world_size:
        raise ValueError(
            f"the plan is for {plan.world_size} devices but the hardware profile "
            f"{hardware.name!r} has {hardware.world_size} "
            f"({hardware.num_nodes} node(s) x {hardware.devices_per_node})"
        )
    cost = cost or CostModel(hardware=hardware, model_profile=model_profile)
    return WorkloadBuilder(plan=plan, model=model, cost=cost, cache=cache).build(), cost


def simulate(
    plan: Plan,
    *,
    hardware: HardwareProfile,
    model_profile: ModelProfile,
    model: ModelDescription,
    record_events: bool = True,
) -> SimulationResult:
    """Event-simulate one iteration: time, per-stage busy and bubble, memory, events."""
    stages, cost = build_workload(plan, hardware=hardware, model_profile=model_profile, model=model)
    schedule = build_schedule(plan.pipeline.schedule, len(stages), plan.num_micro_batches)
    # Memory that overflows is refused before the engine replays it (as NaN, it would slip
    # past the engine's max over the stage's timeline).
    breakdowns = [
        peak_breakdown(work, actions) for work, actions in zip(stages, schedule, strict=True)
    ]
    cost.check_prediction(seconds=(), nbytes=[b.total for b in breakdowns])
    output = Engine(
        stages=stages,
        schedule=schedule,
        static_bytes=[static_bytes(s) for s in stages],
        overlap=hardware.overlap,
        record_events=record_events,
    ).run()
    iteration = max(output.stage_end_s)
    cost.check_prediction(seconds=[iteration, *output.compute_busy_s], nbytes=output.peak_bytes)
    results = []
    for work, breakdown, busy, peak, timeline in zip(
        stages, breakdowns, output.compute_busy_s, output.peak_bytes, output.timelines, strict=True
    ):
        assert abs(breakdown.total - peak) <= 1e-6 * max(peak, 1.0), (breakdown.total, peak)
        results.append(
            StageResult(
                stage=work.stage,
                devices=work.devices,
                busy_s=busy,
                bubble_s=max(0.0, iteration - busy),
                memory=breakdown,
                memory_timeline=timeline,
            )
        )
    return SimulationResult(
        iteration_time_s=iteration,
        global_batch_size=plan.global_batch_size,
        stages=tuple(results),
        events=output.events,
        warnings=tuple(cost.warnings),
    )


def estimate(
    plan: Plan,
    *,
    hardware: HardwareProfile,
    model_profile: ModelProfile,
    model: ModelDescription,
    cost: CostModel | None = None,
    cache: dict[tuple[object, ...], LayerWork] | None = None,
) -> tuple[float, tuple[MemoryBreakdown, ...]]:
    """The closed-form iteration time and peak memory per stage (no event simulation).

    ``cost`` and ``cache`` let a caller pricing many plans share profile lookups.
    """
    stages, cost = build_workload(
        plan, hardware=hardware, model_profile=model_profile, model=model, cost=cost, cache=cache
    )
    schedule = build_schedule(plan.pipeline.schedule, len(stages), plan.num_micro_batches)
    memory = tuple(
        peak_breakdown(work, actions) for work, actions in zip(stages, schedule, strict=True)
    )
    seconds = analytic.iteration_time(stages, num_micro_batches=plan.num_micro_batches)
    cost.check_prediction(seconds=[seconds], nbytes=[m.total for m in memory])
    return seconds, memory
