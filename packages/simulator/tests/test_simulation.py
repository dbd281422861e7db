"""The event simulation against cases computed by hand."""

from __future__ import annotations

from dataclasses import replace

import pytest
import synthetic as syn

from partita.formats import LayerStrategy, OverlapSlowdown
from partita.simulator.simulation import build_workload, estimate, simulate


def _run(plan, *, hw=None, profile=None):  # type: ignore[no-untyped-def]
    return simulate(
        plan,
        hardware=hw or syn.hardware(world=plan.world_size),
        model_profile=profile or syn.model_profile(),
        model=syn.description(len(plan.layers)),
    )


def test_two_stage_gpipe_has_the_known_bubble() -> None:
    # f = 1 s, b = 2 s per stage and micro-batch: (M + P - 1)(f + b) = 5 * 3.
    result = _run(syn.plan(world=2, stages=(1, 1), micro_batches=4, global_batch=4))
    assert result.iteration_time_s == pytest.approx(15.0)
    for stage in result.stages:
        assert stage.busy_s == pytest.approx(12.0)
        assert stage.bubble_s == pytest.approx(3.0)
    assert result.throughput_samples_per_s == pytest.approx(4 / 15)


def test_compute_events_follow_the_schedule() -> None:
    result = _run(
        syn.plan(world=2, stages=(1, 1), micro_batches=3, global_batch=3, schedule="1f1b")
    )
    names = [
        [e.name for e in result.events if e.stage == s and e.stream == "compute"] for s in (0, 1)
    ]
    assert names == [["F0", "F1", "B0", "F2", "B1", "B2"], ["F0", "B0", "F1", "B1", "F2", "B2"]]


@pytest.mark.parametrize(
    ("schedule", "expected"), [("1f1b", [4, 3, 2, 1]), ("gpipe", [8, 8, 8, 8])]
)
def test_peak_activations_follow_micro_batches_in_flight(
    schedule: str, expected: list[int]
) -> None:
    result = _run(
        syn.plan(world=4, stages=(1, 1, 1, 1), micro_batches=8, global_batch=8, schedule=schedule)
    )
    # A micro-batch holds its blocks' activations and, past the first stage, the input the
    # stage received (one sample of hidden states).
    received = syn.SEQ * syn.HIDDEN * 4
    held = [(syn.MiB + (received if s else 0)) * n for s, n in enumerate(expected)]
    assert [s.memory.activations for s in result.stages] == held
    for stage, total in zip(result.stages, held, strict=True):
        assert max(b for _, b in stage.memory_timeline) == pytest.approx(16000 + total)


def _dp_plan():  # type: ignore[no-untyped-def]
    return syn.plan(world=4, stages=(2, 2), micro_batches=2, global_batch=4)


@pytest.fixture
def one_layer_buckets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Gradient buckets of one synthetic layer (4000 bytes) each, so each layer syncs alone."""
    from partita.simulator import workload

    monkeypatch.setattr(workload, "DDP_BUCKET_BYTES", 4000)


def _step_end(latency_s: float) -> float:
    """Every step ends with the executor's loss all-reduce and a barrier: two small
    all-reduces, a latency each on the synthetic hardware."""
    return 2 * latency_s


def _whole_model_dp_plan():  # type: ignore[no-untyped-def]
    """Two layers, one stage, DDP over 2 ranks: 1 + 1 s forward, 2 + 2 s backward."""
    return syn.plan(world=2, stages=(2,), micro_batches=1, global_batch=2)


def test_gradient_sync_shorter_than_backward_is_hidden(one_layer_buckets: None) -> None:
    # Backward 2-6; the last layer's sync (0.5 s) runs 4-4.5, during the first layer's
    # backward; only the first layer's (6-6.5) is exposed.
    result = _run(_whole_model_dp_plan(), hw=syn.hardware(world=2, latency_s=0.5))
    assert result.iteration_time_s == pytest.approx(6.5 + _step_end(0.5))


def test_gradient_sync_longer_than_backward_is_exposed(one_layer_buckets: None) -> None:
    # Syncs of 3 s: 4-7 and, after it on the data-parallel stream, 7-10.
    result = _run(_whole_model_dp_plan(), hw=syn.hardware(world=2, latency_s=3.0))
    assert result.iteration_time_s == pytest.approx(10.0 + _step_end(3.0))
    syncs = [e for e in result.events if e.stream == "dp_comm"]
    assert [t for e in syncs for t in (e.start_s, e.end_s)] == pytest.approx([4, 7, 7, 10])


def test_overlap_slows_compute_and_communication_running_together(
    one_layer_buckets: None,
) -> None:
    slowed = _run(
        _whole_model_dp_plan(),
        hw=syn.hardware(
            world=2, latency_s=0.5, overlap=OverlapSlowdown(compute=1.5, communication=2.0)
        ),
    )
    # The last layer's backward 2-4 runs alone; the first layer's starts with that layer's
    # sync pending: 2 s x 1.5, 4-7; the sync, started while compute runs, 0.5 s x 2, 4-5.
    # The first layer's sync runs alone, 7-7.5.
    assert slowed.iteration_time_s == pytest.approx(7.5 + _step_end(0.5))
    syncs = [e for e in slowed.events if e.stream == "dp_comm"]
    assert [t for e in syncs for t in (e.start_s, e.end_s)] == pytest.approx([4, 5, 7, 7.5])


def test_pipelined_buckets_sync_during_the_last_backward(one_layer_buckets: None) -> None:
    # Two stages of two layers, dp 2, GPipe over 2 micro-batches: the first stage's last
    # backward runs 14-18 (2 s a layer). Each layer's bucket (0.5 s) starts when its
    # backward ends, as the executor's buckets do on every plan: 16-16.5 and 18-18.5.
    result = _run(_dp_plan(), hw=syn.hardware(world=4, latency_s=0.5))
    syncs = [e for e in result.events if e.stream == "dp_comm" and e.stage == 0]
    assert [t for e in syncs for t in (e.start_s, e.end_s)] == pytest.approx([16, 16.5, 18, 18.5])
    assert result.iteration_time_s == pytest.approx(18.5 + _step_end(0.5))


@pytest.mark.parametrize("latency_s", [0.5, 3.0])
def test_the_closed_form_matches_the_pipelined_buckets(
    one_layer_buckets: None, latency_s: float
) -> None:
    plan, hw = _dp_plan(), syn.hardware(world=4, latency_s=latency_s)
    simulated = _run(plan, hw=hw).iteration_time_s
    closed, _ = estimate(
        plan, hardware=hw, model_profile=syn.model_profile(), model=syn.description(4)
    )
    assert closed == pytest.approx(simulated)


def test_a_transfer_waits_until_the_receiving_stage_posts_its_receive() -> None:
    # 1F1B, two stages of one layer (f 1 s, b 2 s), messages of 0.25 s: a transfer is one,
    # plus the step's one message of sizes spread over its 3 micro-batches, 1/3 s in all.
    # Stage 0 sends F1 at 2, while stage 1 runs B0 (until 4 1/3): the transfer waits for
    # stage 1 to reach F1, 4 1/3 - 4 2/3, and F1 starts then, not at 4 1/3.
    plan = syn.plan(world=2, stages=(1, 1), micro_batches=3, global_batch=3, schedule="1f1b")
    result = _run(plan, hw=syn.hardware(world=2, p2p_latency_s=0.25))
    compute = {e.name: e for e in result.events if e.stage == 1 and e.stream == "compute"}
    transfer = 0.25 + 0.25 / 3
    assert (compute["F0"].start_s, compute["B0"].end_s) == pytest.approx(
        (1 + transfer, 4 + transfer)
    )
    assert compute["F1"].start_s == pytest.approx(4 + 2 * transfer)
    send = next(e for e in result.events if e.stage == 0 and e.name == "send F1")
    assert (send.start_s, send.end_s) == pytest.approx((4 + transfer, 4 + 2 * transfer))


def test_layers_sharing_a_data_parallel_group_sync_in_one_bucket() -> None:
    # Both layers of a stage in one bucket: one 3 s all-reduce once the first stage's last
    # backward (of its first layer) ends at 18.
    result = _run(_dp_plan(), hw=syn.hardware(world=4, latency_s=3.0))
    syncs = [e for e in result.events if e.stream == "dp_comm" and e.stage == 0]
    assert [t for e in syncs for t in (e.start_s, e.end_s)] == pytest.approx([18, 21])
    assert result.iteration_time_s == pytest.approx(21.0 + _step_end(3.0))


@pytest.mark.parametrize(
    ("mode", "params", "grads", "optimizer", "transient"),
    [
        ("ddp", 8000, 8000, 16000, 0),
        ("zero1", 8000, 8000, 8000, 0),
        # FSDP's backward holds a layer's whole gradients and the fp32 reduce-scatter input
        # (2 x 4000); ZeRO-3 also its gathered copy (4000). ZeRO-2 keeps the gathered copy
        # beside its shard over the step (2 layers x (4000 + 2000)).
        ("zero2", 12000, 4000, 8000, 8000),
        ("zero3", 4000, 4000, 8000, 12000),
    ],
)
def test_zero_stages_shard_what_they_should(
    mode: str, params: int, grads: int, optimizer: int, transient: int
) -> None:
    plan = syn.plan(
        world=2, stages=(2,), micro_batches=1, global_batch=2, strategy=LayerStrategy(dp=mode)
    )  # type: ignore[arg-type]
    stages, _ = build_workload(
        plan,
        hardware=syn.hardware(world=2),
        model_profile=syn.model_profile(),
        model=syn.description(len(plan.layers)),
    )
    layers = stages[0].layers
    assert (
        sum(layer.param_bytes for layer in layers),
        sum(layer.grad_bytes for layer in layers),
        sum(layer.optimizer_bytes for layer in layers),
        max(layer.transient_bytes for layer in layers),
    ) == (params, grads, optimizer, transient)


def test_gradients_count_from_the_backward_that_makes_them() -> None:
    # Two layers, one rank: 4000 B of gradients each, made in their backward. With 1 MiB of
    # activations a layer the peak is the last layer's backward: its gradients, all
    # activations; with 100 B a layer, the first layer's: all gradients, its activations.
    plan = syn.plan(world=1, stages=(2,), micro_batches=1, global_batch=1)
    big = _run(plan).stages[0].memory
    assert (big.gradients, big.activations) == (4000, 2 * syn.MiB)
    small = _run(plan, profile=syn.model_profile(activation_bytes=100)).stages[0].memory
    assert (small.gradients, small.activations) == (8000, 100)
    assert small.total == 8000 + 8000 + 16000 + 100


def test_ddp_buckets_hold_gradients_for_the_whole_step() -> None:
    # DDP over 2 ranks: the gradients live in the executor's buckets, kept between steps.
    plan = syn.plan(world=2, stages=(2,), micro_batches=1, global_batch=2)
    memory = _run(plan).stages[0].memory
    assert (memory.gradients, memory.activations) == (8000, 2 * syn.MiB)


def test_later_backwards_see_every_gradient() -> None:
    # GPipe, one stage of two layers, two micro-batches of 100 B activations a layer: the
    # first backward peaks at its first layer (8000 B of gradients, 100 + 200 B of
    # activations); the second starts with every gradient made and one micro-batch left.
    plan = syn.plan(world=1, stages=(2,), micro_batches=2, global_batch=2)
    result = _run(plan, profile=syn.model_profile(activation_bytes=100))
    memory = result.stages[0].memory
    assert (memory.gradients, memory.activations) == (8000, 300)
    assert max(b for _, b in result.stages[0].memory_timeline) == pytest.approx(memory.total)


def test_checkpointing_keeps_only_layer_inputs_and_recomputes() -> None:
    base = syn.plan(world=1, stages=(2,), micro_batches=1, global_batch=1)
    ckpt = syn.plan(
        world=1, stages=(2,), micro_batches=1, global_batch=1, strategy=LayerStrategy(ckpt="full")
    )
    plain_result, ckpt_result = _run(base), _run(ckpt)
    assert plain_result.stages[0].memory.activations == 2 * syn.MiB
    assert ckpt_result.stages[0].memory.activations == 2 * syn.MiB / 8
    assert ckpt_result.stages[0].memory.transient == syn.MiB  # one layer recomputed
    assert ckpt_result.iteration_time_s == pytest.approx(plain_result.iteration_time_s + 2.0)


@pytest.mark.parametrize(
    ("origin", "expected"), [("measured_tp_groups", 3.0), ("measured_tp1_plus_comm", 4.0)]
)
def test_tensor_parallel_communication_added_unless_measured(origin: str, expected: float) -> None:
    # tp 2, one layer, 2 samples per device: compute 1 + 2 s; two all-reduces of 0.25 s per pass.
    plan = syn.plan(
        world=2, stages=(1,), micro_batches=1, global_batch=2, strategy=LayerStrategy(tp=2)
    )
    result = _run(
        plan, hw=syn.hardware(world=2, latency_s=0.25), profile=syn.model_profile(origin=origin)
    )
    assert result.iteration_time_s == pytest.approx(expected + _step_end(0.25))


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
@pytest.mark.parametrize(("stages", "micro_batches"), [((2, 2), 4), ((1, 1, 1, 1), 8), ((3,), 2)])
def test_analytic_estimate_agrees_with_the_simulation(
    schedule: str, stages: tuple[int, ...], micro_batches: int
) -> None:
    plan = syn.plan(
        world=len(stages),
        stages=stages,
        micro_batches=micro_batches,
        global_batch=micro_batches,
        schedule=schedule,
    )
    hw = syn.hardware(world=len(stages), p2p_latency_s=0.01)
    simulated = _run(plan, hw=hw)
    analytic, memory = estimate(
        plan, hardware=hw, model_profile=syn.model_profile(), model=syn.description(sum(stages))
    )
    assert analytic == pytest.approx(simulated.iteration_time_s, rel=0.01)
    assert [m.total for m in memory] == [s.memory.total for s in simulated.stages]


def test_plan_for_other_devices_than_the_profile_is_refused() -> None:
    with pytest.raises(
        ValueError, match="the plan is for 4 devices but the hardware profile 'synthetic' has 2"
    ):
        _run(
            syn.plan(world=4, stages=(1,), micro_batches=1, global_batch=4),
            hw=syn.hardware(world=2),
        )


def test_profile_missing_a_tp_degree_names_it() -> None:
    plan = syn.plan(
        world=4, stages=(1,), micro_batches=1, global_batch=4, strategy=LayerStrategy(tp=4)
    )
    with pytest.raises(
        ValueError,
        match=r"no timing for layer type 'block' at tp 4, sp none, "
        r"seq 16 \(it has: tp 1/none/seq 16, tp 2/none/seq 16\)",
    ):
        _run(plan)


def test_hardware_profile_missing_a_group_size_names_it() -> None:
    plan = syn.plan(world=4, stages=(1,), micro_batches=1, global_batch=4)
    hw = syn.hardware(world=4)
    hw = type(hw)(
        **{
            **hw.__dict__,
            "collectives": tuple(
                c for c in hw.collectives if not (c.op == "all_reduce" and c.group_size == 4)
            ),
        }
    )
    with pytest.raises(
        ValueError,
        match="no all_reduce measurement for groups of 4 "
        r"\(it has: 2\)",
    ):
        _run(plan, hw=hw)


def test_a_block_sharing_the_vocabulary_table_follows_the_vocab_strategy() -> None:
    # T5's decoder input embedding shares the embedding's table: the executor runs it under
    # plan.vocab's tp without sequence parallelism, so the simulator must price it that way.
    import dataclasses

    from partita.formats import VocabStrategy
    from partita.simulator.workload import stage_layers

    model = syn.description(3)
    bridge = dataclasses.replace(model.layers[1], vocab_parallel=True)
    model = dataclasses.replace(model, layers=(model.layers[0], bridge, model.layers[2]))
    plan = dataclasses.replace(
        syn.plan(
            world=2,
            stages=(3,),
            micro_batches=1,
            global_batch=2,
            strategy=LayerStrategy(tp=2, sp="megatron", dp="zero2", ckpt="full"),
        ),
        vocab=VocabStrategy(tp=1, dp="zero2"),
    )
    (stage,) = stage_layers(plan, model)
    strategies = [(s.tp, s.sp, s.dp, s.ckpt) for _, s in stage]
    assert strategies == [
        (2, "megatron", "zero2", "full"),
        (1, "none", "zero2", "full"),  # vocab's tp and sp; its own dp and checkpointing
        (2, "megatron", "zero2", "full"),
    ]


def test_a_tp1_vocabulary_layer_beside_tp2_blocks_takes_its_own_batch_slice() -> None:
    # One trainer runs every plan: a tp 1 layer beside tp 2 blocks runs on its own batch
    # slice (1 sample of 2 on each of the 2 ranks) and syncs over its own data-parallel
    # group, whether the plan has one micro-batch or several.
    import dataclasses

    from partita.formats import VocabStrategy

    model = syn.description(3)
    bridge = dataclasses.replace(model.layers[1], vocab_parallel=True)
    model = dataclasses.replace(model, layers=(model.layers[0], bridge, model.layers[2]))
    strategy = LayerStrategy(tp=2, dp="zero2")
    vocab = VocabStrategy(tp=1, dp="zero2")
    whole = dataclasses.replace(
        syn.plan(world=2, stages=(3,), micro_batches=1, global_batch=2, strategy=strategy),
        vocab=vocab,
    )
    accumulating = dataclasses.replace(whole, num_micro_batches=2, global_batch_size=4)
    for plan in (whole, accumulating):
        (stage,), _ = build_workload(
            plan, hardware=syn.hardware(world=2), model_profile=syn.model_profile(), model=model
        )
        assert stage.layers[1].forward_s == pytest.approx(1.0)  # 1 s a sample at tp 1
        assert [op for op, _ in stage.layers[1].grad_sync] == ["reduce_scatter"]


def test_redistributions_are_priced_in_the_direction_that_moves_data() -> None:
    # Layer-wise tp 1 -> tp 2 -> tp 1 on 2 ranks, every collective 1 s: the tp 2 layer's
    # batch slice grows (gathered going forward, its own chunk taken going backward); the
    # last layer's shrinks (a chunk taken going forward, gathered going backward).
    layers = (LayerStrategy(tp=1), LayerStrategy(tp=2), LayerStrategy(tp=1))
    plan = syn.plan(world=2, stages=(3,), micro_batches=1, global_batch=2)
    plan = replace(plan, layers=layers)
    (stage,), _ = build_workload(
        plan,
        hardware=syn.hardware(world=2, latency_s=1.0),
        model_profile=syn.model_profile(),
        model=syn.description(3),
    )
    # Compute: 1 s forward, 2 s backward a sample at tp 1; 2 samples over tp 2 at tp 2.
    assert [(w.forward_s, w.backward_s) for w in stage.layers] == [
        pytest.approx((1.0, 2.0)),
        pytest.approx((2.0, 2.0)),
        pytest.approx((1.0, 3.0)),
    ]
