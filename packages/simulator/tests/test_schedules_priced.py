"""Interleaved 1F1B, ZB-H1 and selective recompute priced by the simulator.

Synthetic blocks with F = 1 s, B = 2 s per micro-batch (the weights' gradients are half of
the backward: the description's FLOPs have no attention), free communication: the event
simulation must hit the papers' closed forms exactly, and the closed-form estimate the search
uses must agree with it.
"""

from __future__ import annotations

import dataclasses

import pytest
import synthetic as syn

from partita.formats import LayerStrategy, PipelineConfig, Plan, VocabStrategy
from partita.simulator.model_source import load_model_description
from partita.simulator.simulation import build_workload, estimate, simulate
from partita.simulator.specsheet import (
    hardware_profile_from_spec,
    load_cluster_spec,
    model_profile_from_description,
)

MiB = syn.MiB
BLOCKS_PER_RANK = 4


def _priced(
    p: int, m: int, schedule: str, chunks: int = 1, *, sent: float | None = None, **strategy: object
):  # type: ignore[no-untyped-def]
    model = syn.description(p * BLOCKS_PER_RANK, output_bytes=sent)
    profile = syn.model_profile()
    hardware = syn.hardware(world=p)
    plan = syn.plan(
        world=p,
        stages=(BLOCKS_PER_RANK // chunks,) * (p * chunks),
        micro_batches=m,
        global_batch=m,
        schedule=schedule,
        chunks=chunks,
        strategy=LayerStrategy(**strategy),  # type: ignore[arg-type]
    )
    result = simulate(plan, hardware=hardware, model_profile=profile, model=model)
    seconds, memory = estimate(plan, hardware=hardware, model_profile=profile, model=model)
    assert seconds == pytest.approx(result.iteration_time_s)
    assert [m.total for m in memory] == pytest.approx(list(result.peak_memory_bytes))
    return result


_run = _priced


def _gpt_tiny_priced(plan: Plan):  # type: ignore[no-untyped-def]
    """(the virtual stages' work, the simulation) of ``plan`` for gpt-tiny on 2 H100s of
    the spec sheet, in bf16."""
    model = load_model_description("gpt-tiny")
    spec = load_cluster_spec("h100-sxm").with_changes(devices_per_node=2)
    hardware = hardware_profile_from_spec(spec)
    profile = model_profile_from_description(model, spec, dtype="bf16", tp_degrees=(1, 2))
    stages, _ = build_workload(plan, hardware=hardware, model_profile=profile, model=model)
    return stages, simulate(plan, hardware=hardware, model_profile=profile, model=model)


def _bubble(result) -> float:  # type: ignore[no-untyped-def]
    bubbles = {round(s.bubble_s / result.iteration_time_s, 9) for s in result.stages}
    assert len(bubbles) == 1  # every rank idles as long
    return bubbles.pop()


@pytest.mark.parametrize(("p", "m"), [(2, 4), (4, 8), (4, 16), (8, 16)])
def test_bubbles_match_the_closed_forms(p: int, m: int) -> None:
    one_f = _run(p, m, "1f1b")
    assert _bubble(one_f) == pytest.approx((p - 1) / (m + p - 1))
    for chunks in (2, 4):
        interleaved = _run(p, m, "interleaved-1f1b", chunks)
        assert _bubble(interleaved) == pytest.approx((p - 1) / (chunks * m + p - 1))
    # F = B = W: ZB-H1 idles a third of 1F1B's time.
    zb = _run(p, m, "zb-h1")
    busy = one_f.stages[0].busy_s
    assert zb.stages[0].busy_s == pytest.approx(busy)
    assert zb.iteration_time_s - busy == pytest.approx((one_f.iteration_time_s - busy) / 3)


@pytest.mark.parametrize(("p", "m"), [(2, 4), (4, 8), (4, 16)])
def test_memory_follows_the_micro_batches_each_schedule_keeps(p: int, m: int) -> None:
    # Nothing passed between the stages: the activations are the blocks' alone (what a stage
    # receives is held too: the next test).
    def _run(p: int, m: int, schedule: str, chunks: int = 1):  # type: ignore[no-untyped-def]
        return _priced(p, m, schedule, chunks, sent=0.0)

    static = _run(p, m, "1f1b").stages[0].memory.parameters  # the same under every schedule
    per_block = MiB  # activations of one block, one micro-batch
    stage = BLOCKS_PER_RANK * per_block

    def activations(result) -> list[float]:  # type: ignore[no-untyped-def]
        return [s.memory.total - s.memory.gradients - s.memory.optimizer_states - static
                for s in result.stages]  # fmt: skip

    # 1F1B: p - r micro-batches on rank r; ZB-H1 holds 1F1B's first-stage count everywhere
    # (a split backward frees them in W).
    assert activations(_run(p, m, "1f1b")) == pytest.approx([(p - r) * stage for r in range(p)])
    assert activations(_run(p, m, "zb-h1")) == pytest.approx([min(p, m) * stage] * p)
    for chunks in (2, 4):
        chunk = stage / chunks
        expected = [
            min(m * chunks, 2 * (p - r - 1) + (chunks - 1) * p + 1) * chunk for r in range(p)
        ]
        assert activations(_run(p, m, "interleaved-1f1b", chunks)) == pytest.approx(expected)


def test_a_stage_holds_what_it_received_until_its_backward() -> None:
    # The input a stage receives is no layer's output here, so no profile counts it: 1F1B's
    # rank r keeps p - r of them, each a micro-batch of the previous stage's hidden states.
    p, m = 4, 8
    received = syn.SEQ * syn.HIDDEN * 4.0
    with_input = _priced(p, m, "1f1b")
    without = _priced(p, m, "1f1b", sent=0.0)
    extra = [a.memory.activations - b.memory.activations
             for a, b in zip(with_input.stages, without.stages, strict=True)]  # fmt: skip
    assert extra == pytest.approx([0.0] + [(p - r) * received for r in range(1, p)])


def test_w_passes_run_the_weight_gradients_and_make_the_gradients() -> None:
    result = _run(2, 4, "zb-h1")
    names = [e.name for e in result.events if e.stage == 0 and e.stream == "compute"]
    assert names[:5] == ["F0", "F1", "B0", "W0", "F2"]
    by_name = {e.name: e.duration_s for e in result.events if e.stage == 0}
    # Each of the rank's 4 blocks: B = 2 s, of which W = 1 s (the weights' half).
    assert by_name["B0"] == pytest.approx(4.0) and by_name["W0"] == pytest.approx(4.0)


def test_selective_recompute_runs_the_attention_core_again_and_frees_its_memory() -> None:
    # Half of each block's forward FLOPs in the attention core (fused kernel: 1 element of
    # softmax statistics per query and head kept, 4 bytes each).
    model = syn.description(2)
    layers = tuple(
        dataclasses.replace(
            layer, attention_flops_per_sample=0.5, attention_kernel_flops_per_sample=0.5
        )
        for layer in model.layers
    )
    model = dataclasses.replace(model, layers=layers)
    profile, hardware = syn.model_profile(), syn.hardware(world=1)

    def run(ckpt: str):  # type: ignore[no-untyped-def]
        plan = syn.plan(
            world=1,
            stages=(2,),
            micro_batches=1,
            global_batch=1,
            strategy=LayerStrategy(ckpt=ckpt),  # type: ignore[arg-type]
        )
        return simulate(plan, hardware=hardware, model_profile=profile, model=model)

    none, attention, full = run("none"), run("attention"), run("full")
    # The backward recomputes half the forward (the core) per block: +0.5 s each.
    assert attention.iteration_time_s - none.iteration_time_s == pytest.approx(2 * 0.5)
    assert full.iteration_time_s - none.iteration_time_s == pytest.approx(2 * 1.0)
    # Each block keeps its activations less the core's statistics (4 heads x SEQ queries x
    # 4 bytes); the one whose backward runs has them back while it recomputes the core.
    saved = 4 * syn.SEQ * 4
    kept = [result.stages[0].memory for result in (none, attention)]
    assert kept[0].activations - kept[1].activations == pytest.approx(2 * saved)
    assert kept[1].transient - kept[0].transient == pytest.approx(saved)
    assert full.stages[0].memory.total < attention.stages[0].memory.total


def test_interleaved_stages_are_reported_per_rank_with_chunked_event_names() -> None:
    result = _run(2, 4, "interleaved-1f1b", 2)
    assert [s.stage for s in result.stages] == [0, 1]
    names = {e.name for e in result.events if e.stage == 1 and e.stream == "compute"}
    assert {"F0", "F0.1", "B0", "B0.1"} <= names


def test_vocab_sp_prices_the_embedding_and_head_exchanges_megatron_sp_style() -> None:
    # gpt-tiny on 2 devices, blocks under tp 2 Megatron-SP: with vocab SP the embedding
    # reduce-scatters its output instead of all-reducing it (about half the bytes), and the
    # first block receives its sequence shard as is (no gather at the boundary in backward).
    def priced(sp: bool):  # type: ignore[no-untyped-def]
        plan = Plan(
            world_size=2,
            mesh_axis_order=("pp", "dp", "tp"),
            global_batch_size=8,
            num_micro_batches=1,
            pipeline=PipelineConfig(degree=1, schedule="1f1b", stage_num_layers=(4,)),
            layers=tuple(LayerStrategy(tp=2, sp="megatron") for _ in range(4)),
            vocab=VocabStrategy(tp=2, sp=sp),
            precision="bf16",
        )
        (stage,), result = _gpt_tiny_priced(plan)
        return {w.name: w for w in stage.layers}, result.iteration_time_s

    plain, plain_s = priced(False)
    split, split_s = priced(True)
    assert split["embedding"].forward_s < plain["embedding"].forward_s
    assert split["blocks.0"].backward_s < plain["blocks.0"].backward_s  # no boundary gather
    assert split_s < plain_s


def test_zb_h1_prices_the_executors_whole_w_pass_where_it_runs_one() -> None:
    # With fully checkpointed layers (or FSDP ones) the executor's W runs the chunk's whole
    # backward again (partita.executor.split_backward): B = 1 + 0.5 (recompute) s, W = 3 s
    # per block and micro-batch, so ZB-H1 loses to 1F1B there; without, it wins.
    one_f = _run(4, 8, "1f1b", ckpt="full")
    zb = _run(4, 8, "zb-h1", ckpt="full")
    assert zb.iteration_time_s > one_f.iteration_time_s
    assert zb.stages[0].busy_s == pytest.approx(one_f.stages[0].busy_s + 8 * 4 * 2.0)
    assert _run(4, 8, "zb-h1").iteration_time_s < _run(4, 8, "1f1b").iteration_time_s


def test_a_split_backward_holds_the_gradients_b_keeps_until_w() -> None:
    # Between a micro-batch's B and its W the executor keeps the gradients at the weight
    # branches (gpt-tiny from the spec sheet, 2 stages, 4 micro-batches): ZB-H1's last stage
    # holds as many activations as 1F1B's first, plus those gradients; none where W runs the
    # whole backward again.
    def priced(schedule: str, ckpt: str):  # type: ignore[no-untyped-def]
        plan = Plan(
            world_size=2,
            mesh_axis_order=("pp", "dp", "tp"),
            global_batch_size=4,
            num_micro_batches=4,
            pipeline=PipelineConfig(degree=2, schedule=schedule, stage_num_layers=(2, 2)),  # type: ignore[arg-type]
            layers=tuple(LayerStrategy(ckpt=ckpt) for _ in range(4)),  # type: ignore[arg-type]
            precision="bf16",
        )
        return _gpt_tiny_priced(plan)

    stages, zb = priced("zb-h1", "none")
    kept = stages[1].split_kept_bytes
    assert kept > 0.1 * stages[1].activation_bytes  # the weight products' outputs
    _, one_f = priced("1f1b", "none")
    # The last stage holds 2 micro-batches' activations (1F1B: 1), and after its second B
    # both micro-batches' kept gradients (F0 B0 F1 B1 W0 ...), its peak here.
    extra = zb.stages[1].memory.activations - one_f.stages[1].memory.activations
    assert extra == pytest.approx(stages[1].activation_bytes + 2 * kept)
    whole_stages, _ = priced("zb-h1", "full")
    assert whole_stages[1].split_kept_bytes == 0.0


@pytest.mark.parametrize(
    ("schedule", "chunks"), [("gpipe", 1), ("1f1b", 1), ("interleaved-1f1b", 2), ("zb-h1", 1)]
)
def test_each_stage_splits_the_step_into_phases_that_add_up_to_it(
    schedule: str, chunks: int
) -> None:
    """4 ranks, 8 micro-batches, free communication: the first stage's last pass ends the
    step's schedule; the later stages end theirs earlier and wait at the step's end."""
    result = _priced(4, 8, schedule, chunks)
    ends = []
    for stage in result.stages:
        assert stage.phases is not None
        assert stage.phases.total_s == pytest.approx(result.iteration_time_s)
        assert stage.phases.grad_sync_s == pytest.approx(0.0)  # one replica: no gradient sync
        ends.append(stage.phases.schedule_s)
    assert ends[0] == pytest.approx(max(ends))
    assert result.stages[0].phases.step_end_s == pytest.approx(0.0)  # type: ignore[union-attr]
    if schedule != "zb-h1":  # ZB-H1's W passes fill the later stages' ends
        assert ends[-1] < ends[0]
        assert result.stages[-1].phases.step_end_s > 0.0  # type: ignore[union-attr]
