"""What a step costs beyond the layers' passes, against numbers computed by hand: the
optimizer step, ZeRO's gathers, FSDP's own work, the step's end, checkpointed passes and the
backward's working memory (synthetic profiles: a block's forward 1 s and backward 2 s per
sample, 4000 parameter bytes in 10 tensors)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import synthetic as syn

from partita.formats import LayerStrategy, SyncCost, TensorWork
from partita.simulator.cost import CostModel, _line_at
from partita.simulator.simulation import simulate
from partita.simulator.workload import WorkloadBuilder

OPTIMIZER = TensorWork(latency_s=0.5, per_tensor_s=0.1, per_byte_s=1e-3)
TENSORS = 10


def _stage(mode: str, *, world: int = 2, **hardware: object):  # type: ignore[no-untyped-def]
    plan = syn.plan(
        world=world, stages=(1,), micro_batches=1, global_batch=world,
        strategy=LayerStrategy(dp=mode),  # type: ignore[arg-type]
    )  # fmt: skip
    cost = CostModel(
        hardware=syn.hardware(world=world, **hardware),  # type: ignore[arg-type]
        model_profile=syn.model_profile(param_tensors=TENSORS),
    )
    (stage,) = WorkloadBuilder(plan=plan, model=syn.description(1), cost=cost).build()
    return stage


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        # latency + tensors x 0.1 s + parameter bytes / 1000 B/s
        ("ddp", 0.5 + 10 * 0.1 + 4000 / 1000),
        ("zero1", 0.5 + 5 * 0.1 + 2000 / 1000),  # half the whole tensors
        ("zero2", 0.5 + 10 * 0.1 + 2000 / 1000),  # every tensor's half
        ("zero3", 0.5 + 10 * 0.1 + 2000 / 1000),
    ],
)
def test_the_optimizer_step_follows_the_measured_cost_of_what_this_device_steps(
    mode: str, expected: float
) -> None:
    assert _stage(mode, optimizer=OPTIMIZER).optimizer_step_s == pytest.approx(expected)


def test_zero1_gathers_after_the_step_and_zero2_before_forward() -> None:
    # Collectives of 0.25 s: the step ends with a small all-reduce and a barrier (0.5 s).
    ddp, zero1, zero2, zero3 = (
        _stage(m, latency_s=0.25) for m in ("ddp", "zero1", "zero2", "zero3")
    )
    assert ddp.after_step_s == pytest.approx(0.5)
    assert (zero1.after_step_s, zero1.zero1_gather_s) == pytest.approx((0.5, 0.25))
    assert ddp.zero1_gather_s == zero2.zero1_gather_s == 0.0
    assert [op for op, _ in zero1.layers[0].grad_sync] == ["all_reduce"]
    assert zero2.after_step_s == pytest.approx(0.5)
    # One sample per device: forward 1 s, backward 2 s, plus the gathers.
    assert (zero2.forward_s, zero2.backward_s) == pytest.approx((1.25, 2.0))
    assert (zero3.forward_s, zero3.backward_s) == pytest.approx((1.25, 2.25))
    assert [op for op, _ in zero2.layers[0].grad_sync] == ["reduce_scatter"]
    assert zero2.layers[0].grad_sync_every_micro_batch


def test_fsdp_work_beyond_the_collectives_is_added_where_profiled() -> None:
    gather = TensorWork(latency_s=0.1, per_tensor_s=0.01, per_byte_s=1 / 4000)  # 0.1+0.1+1
    scatter = TensorWork(latency_s=0.2, per_tensor_s=0.0, per_byte_s=0.0)
    zero3 = _stage("zero3", fsdp_gather=gather, fsdp_reduce_scatter=scatter)
    assert (zero3.forward_s, zero3.backward_s) == pytest.approx((1 + 1.2, 2 + 1.2 + 0.2))
    # One device: nothing is sharded, FSDP is not applied.
    alone = _stage("zero3", world=1, fsdp_gather=gather, fsdp_reduce_scatter=scatter)
    assert (alone.forward_s, alone.backward_s) == pytest.approx((1.0, 2.0))


def test_the_bucket_reducer_is_priced_wherever_ddp_or_zero1_sums_over_ranks() -> None:
    reducer = TensorWork(latency_s=0.3, per_tensor_s=0.01, per_byte_s=1 / 8000)  # 0.1 + 0.5
    ddp = _stage("ddp", ddp_reducer=reducer)
    assert ddp.backward_s == pytest.approx(2 + 0.6)
    assert ddp.reducer_s == pytest.approx(0.3)  # the latency, once a step
    # FSDP has no reducer; one device has no DDP.
    zero2 = _stage("zero2", ddp_reducer=reducer)
    alone = _stage("ddp", world=1, ddp_reducer=reducer)
    for stage in (zero2, alone):
        assert (stage.backward_s, stage.reducer_s) == pytest.approx((2.0, 0.0))
    # Two micro-batches run through the same buckets (one trainer for every plan).
    plan = syn.plan(world=2, stages=(1,), micro_batches=2, global_batch=4)
    cost = CostModel(
        hardware=syn.hardware(world=2, ddp_reducer=reducer),
        model_profile=syn.model_profile(param_tensors=TENSORS),
    )
    (accumulating,) = WorkloadBuilder(plan=plan, model=syn.description(1), cost=cost).build()
    assert (accumulating.backward_s, accumulating.reducer_s) == pytest.approx((2.6, 0.3))


def test_meeting_ranks_pay_the_profiled_sync_cost_beyond_each_blocking_collective() -> None:
    sync = SyncCost(latency_s=0.1, compute_fraction=0.5)
    zero3 = _stage("zero3", latency_s=0.25, sync=sync)
    # Compute x1.5; the gather (0.25 s) before forward and again before backward, +0.1 each.
    assert (zero3.forward_s, zero3.backward_s) == pytest.approx((1.5 + 0.35, 3.0 + 0.35))
    assert zero3.after_step_s == pytest.approx(2 * 0.35)  # the step end's two meetings
    # The reduce-scatter overlaps the backward: no meeting.
    assert [seconds for _, seconds in zero3.layers[0].grad_sync] == pytest.approx([0.25])
    alone = _stage("ddp", world=1, sync=sync)
    assert (alone.forward_s, alone.backward_s, alone.after_step_s) == pytest.approx((1, 2, 0))


def test_the_iteration_ends_with_the_optimizer_step_and_the_steps_end() -> None:
    plan = syn.plan(
        world=2, stages=(1,), micro_batches=1, global_batch=2, strategy=LayerStrategy(dp="zero1")
    )
    result = simulate(
        plan,
        hardware=syn.hardware(world=2, latency_s=0.25, optimizer=OPTIMIZER),
        model_profile=syn.model_profile(param_tensors=TENSORS),
        model=syn.description(1),
    )
    # forward 1 + backward 2, sync 0.25 exposed, optimizer 3.0, gather 0.25 + end 0.5.
    assert result.iteration_time_s == pytest.approx(1 + 2 + 0.25 + 3.0 + 0.75)
    compute = [e.name for e in result.events if e.stream == "compute"]
    assert compute[-3:] == ["optimizer", "zero1 gather", "step end"]
    # The phases the executor times: ZeRO-1's gather with the optimizer step.
    for stage in result.stages:
        assert stage.phases is not None
        phases = stage.phases
        assert (phases.schedule_s, phases.grad_sync_s) == pytest.approx((3.0, 0.25))
        assert (phases.optimizer_s, phases.step_end_s) == pytest.approx((3.25, 0.5))
        assert phases.total_s == pytest.approx(result.iteration_time_s)


def test_measured_checkpointed_passes_replace_the_recomputation_estimate() -> None:
    plan = syn.plan(
        world=1, stages=(1,), micro_batches=1, global_batch=1, strategy=LayerStrategy(ckpt="full")
    )
    estimated = simulate(
        plan,
        hardware=syn.hardware(world=1),
        model_profile=syn.model_profile(),
        model=syn.description(1),
    )
    measured = simulate(
        plan,
        hardware=syn.hardware(world=1),
        model_profile=syn.model_profile(checkpoint_backward_s=5.0),
        model=syn.description(1),
    )
    assert estimated.iteration_time_s == pytest.approx(1 + 2 + 1)  # forward again in backward
    assert measured.iteration_time_s == pytest.approx(1 + 5)


def test_the_backward_working_memory_is_a_transient_of_the_peak() -> None:
    plan = syn.plan(world=1, stages=(2,), micro_batches=1, global_batch=1)
    result = simulate(
        plan,
        hardware=syn.hardware(world=1),
        model_profile=syn.model_profile(backward_peak_bytes=3 * syn.MiB),
        model=syn.description(2),
    )
    memory = result.stages[0].memory
    assert memory.transient == 3 * syn.MiB  # one layer's backward at a time
    assert memory.activations == 2 * syn.MiB


def test_layer_times_are_a_least_squares_line_through_the_measured_batches() -> None:
    assert _line_at([(1, 1.0), (2, 2.0), (4, 4.0)], 3) == pytest.approx(3.0)
    # A scattered middle point moves the line, not the answer at that point alone.
    assert _line_at([(1, 1.0), (2, 3.0), (4, 4.0)], 2) == pytest.approx(33 / 14)  # 8/3 - 13/42
    assert _line_at([(2, 2.0)], 1) == pytest.approx(1.0)  # one point: proportional
    # A fit falling with the batch (noise) stays at the fastest measurement.
    assert _line_at([(1, 3.0), (2, 1.0), (4, 2.0)], 4) >= 1.0


def _shared_table_case(shared: tuple[str, ...]):  # type: ignore[no-untyped-def]
    plan = syn.plan(world=2, stages=(1, 1), micro_batches=2, global_batch=2)
    # A table as large as the first holder's parameters: its whole memory is the copy.
    model = replace(syn.description(2), vocab_size=1000 // syn.HIDDEN + 1, shared_vocabulary=shared)
    hardware = syn.hardware(world=2, latency_s=0.25)
    return plan, model, hardware, CostModel(hardware=hardware, model_profile=syn.model_profile())


def test_a_table_shared_across_stages_is_summed_between_them_and_kept_on_each() -> None:
    plan, model, hardware, cost = _shared_table_case(("blocks.0", "blocks.1"))
    first, last = WorkloadBuilder(plan=plan, model=model, cost=cost).build()
    assert first.tied_sync_s == last.tied_sync_s == pytest.approx(0.25)
    assert first.tied_copy_bytes == (0.0, 0.0, 0.0)  # counted in its layer's profile
    layer = first.layers[0]
    assert last.tied_copy_bytes == pytest.approx(
        (layer.param_bytes, layer.grad_bytes, layer.optimizer_bytes)
    )
    result = simulate(plan, hardware=hardware, model_profile=syn.model_profile(), model=model)
    syncs = [e for e in result.events if e.name == "tied table sync"]
    assert sorted(e.stage for e in syncs) == [0, 1]
    assert syncs[0].start_s == pytest.approx(syncs[1].start_s)  # each waits for the other
    plain_plan, plain_model, _, _ = _shared_table_case(())
    plain = simulate(
        plain_plan, hardware=hardware, model_profile=syn.model_profile(), model=plain_model
    )
    assert result.iteration_time_s > plain.iteration_time_s + 0.25 - 1e-9
    assert result.stages[1].memory.parameters == pytest.approx(
        plain.stages[1].memory.parameters + layer.param_bytes
    )


def test_a_table_shared_within_one_stage_costs_nothing_extra() -> None:
    _, model, _, cost = _shared_table_case(("blocks.0", "blocks.1"))
    one_stage = syn.plan(world=2, stages=(2,), micro_batches=1, global_batch=2)
    (stage,) = WorkloadBuilder(plan=one_stage, model=model, cost=cost).build()
    assert stage.tied_sync_s == 0.0 and stage.tied_copy_bytes == (0.0, 0.0, 0.0)
