"""What the demo needs to know about a plan: a short name, and whether the executor runs it."""

from __future__ import annotations

from collections.abc import Callable

from partita.formats import LayerStrategy, PipelineConfig, Plan

Check = Callable[[Plan], None]


def describe_plan(plan: Plan) -> str:
    """``tp2 ddp`` for a uniform plan; ``layer-wise (3 strategies), pp2 1f1b x8`` otherwise."""
    parts = []
    if len(set(plan.layers)) == 1:
        parts.append(_strategy(plan.layers[0]))
    else:
        parts.append(f"layer-wise ({len(set(plan.layers))} strategies)")
    if plan.pipeline.degree > 1:
        chunks = plan.pipeline.chunks
        parts.append(
            f"pp{plan.pipeline.degree} {plan.pipeline.schedule}"
            + (f" ({chunks} chunks per rank)" if chunks > 1 else "")
        )
    if plan.num_micro_batches > 1:
        parts.append(f"x{plan.num_micro_batches} micro-batches")
    if plan.vocab.tp > 1:
        parts.append(f"vocab tp{plan.vocab.tp}")
    if {layer.dp for layer in plan.layers} != {plan.vocab.dp}:
        parts.append(f"vocab {plan.vocab.dp}")
    return ", ".join(parts)


def _strategy(layer: LayerStrategy) -> str:
    words = [f"tp{layer.tp}"] if layer.tp > 1 else []
    if layer.sp != "none":
        words.append(f"sp {layer.sp}")
    words.append(layer.dp)
    if layer.ckpt != "none":
        words.append("ckpt" if layer.ckpt == "full" else f"ckpt-{layer.ckpt}")
    return " ".join(words)


def is_uniform(plan: Plan) -> bool:
    return plan.pipeline.degree == 1 and len(set(plan.layers)) == 1


def same_strategy(a: Plan, b: Plan) -> bool:
    """The same parallel layout (predictions and provenance aside)."""
    return (a.pipeline, a.num_micro_batches, a.layers, a.vocab, a.mesh_axis_order) == (
        b.pipeline,
        b.num_micro_batches,
        b.layers,
        b.vocab,
        b.mesh_axis_order,
    )


def executor_refusal(plan: Plan) -> str | None:
    """Why the installed executor would not run ``plan`` as planned, or None if it would."""
    check = _executor_check()
    if check is None:
        return None  # an executor without the check: `partita train` itself will say
    try:
        check(plan)
    except ValueError as error:
        return str(error)
    if plan.num_micro_batches > 1 and not _runs_pipelines(check):
        # Until pipelines land, the executor takes the whole local batch in one pass, so a plan
        # with several micro-batches would run with other memory than predicted.
        return (
            f"num_micro_batches: the executor runs one micro-batch per step until pipelines "
            f"land; the plan has {plan.num_micro_batches}"
        )
    return None


def _executor_check() -> Check | None:
    try:
        from partita.executor.trainer import check_supported
    except ImportError:
        return None
    return check_supported


def _runs_pipelines(check: Check) -> bool:
    probe = Plan(
        world_size=2,
        mesh_axis_order=("pp", "dp", "tp"),
        global_batch_size=2,
        num_micro_batches=2,
        pipeline=PipelineConfig(degree=2, schedule="gpipe", stage_num_layers=(1, 1)),
        layers=(LayerStrategy(), LayerStrategy()),
    )
    try:
        check(probe)
    except (ValueError, TypeError):
        return False
    return True


def stage_of_rank(plan: Plan, rank: int) -> int:
    """The pipeline stage ``rank`` belongs to, by ``mesh_axis_order`` (outermost first)."""
    tp = plan.layers[0].tp
    sizes = {"pp": plan.pipeline.degree, "dp": plan.dp_degree(tp), "tp": tp}
    stride = 1
    for axis in reversed(plan.mesh_axis_order):
        if axis == "pp":
            return (rank // stride) % plan.pipeline.degree
        stride *= sizes[axis]
    return 0
