"""``simulate``: predict one training iteration of a plan (the Python API for studies)."""

from __future__ import annotations

from partita.formats import HardwareProfile, ModelDescription, ModelProfile, Plan, validate_plan
from partita.formats.schedules import SPLIT_SCHEDULES, Schedule, build_schedule
from partita.simulator import analytic
from partita.simulator.cost import CostModel
from partita.simulator.engine import Engine
from partita.simulator.memory import points_peak, schedule_points
from partita.simulator.result import MemoryBreakdown, SimulationResult, StageResult, StepPhases
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


def plan_schedule(plan: Plan) -> Schedule:
    pipeline = plan.pipeline
    return build_schedule(
        pipeline.schedule, pipeline.degree, plan.num_micro_batches, pipeline.chunks
    )


def rank_peaks(stages: list[StageWork], plan: Plan) -> tuple[MemoryBreakdown, ...]:
    """Each pipeline rank's peak memory, over the virtual stages it holds."""
    pipeline = plan.pipeline
    ranks = pipeline.degree
    points = schedule_points(pipeline.schedule, ranks, plan.num_micro_batches, pipeline.chunks)
    split = pipeline.schedule in SPLIT_SCHEDULES
    return tuple(
        points_peak(stages[rank::ranks], rank_points, split=split)
        for rank, rank_points in enumerate(points)
    )


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
    schedule = plan_schedule(plan)
    # Memory that overflows is refused before the engine replays it (as NaN, it would slip
    # past the engine's max over the stage's timeline).
    breakdowns = rank_peaks(stages, plan)
    cost.check_prediction(seconds=(), nbytes=[b.total for b in breakdowns])
    output = Engine(
        stages=stages, schedule=schedule, overlap=hardware.overlap, record_events=record_events
    ).run()
    iteration = max(output.stage_end_s)
    cost.check_prediction(seconds=[iteration, *output.compute_busy_s], nbytes=output.peak_bytes)
    results = []
    for rank, (breakdown, busy, peak, timeline, ends) in enumerate(
        zip(
            breakdowns,
            output.compute_busy_s,
            output.peak_bytes,
            output.timelines,
            output.phase_ends_s,
            strict=True,
        )
    ):
        assert abs(breakdown.total - peak) <= 1e-6 * max(peak, 1.0), (breakdown.total, peak)
        passes_end, synced, stepped = ends
        results.append(
            StageResult(
                stage=rank,
                devices=stages[rank].devices,
                busy_s=busy,
                bubble_s=max(0.0, iteration - busy),
                memory=breakdown,
                memory_timeline=timeline,
                phases=StepPhases(
                    schedule_s=passes_end,
                    grad_sync_s=synced - passes_end,
                    optimizer_s=stepped - synced,
                    step_end_s=iteration - stepped,
                ),
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
    schedule = plan_schedule(plan)
    memory = rank_peaks(stages, plan)
    seconds = analytic.iteration_time(
        stages, num_micro_batches=plan.num_micro_batches, schedule=schedule
    )
    cost.check_prediction(seconds=[seconds], nbytes=[m.total for m in memory])
    return seconds, memory
