"""Plan validation: internal consistency, and fit to a world size and a model description.

Each check raises :class:`FormatError` naming the plan field at fault.
"""

from __future__ import annotations

from partita.formats.common import MESH_AXES
from partita.formats.errors import FormatError
from partita.formats.model_description import LayerDescription, ModelDescription
from partita.formats.plan import LayerStrategy, Plan

# Families whose embedding and head cannot take a sequence split (``vocab.sp``), and why.
NO_VOCAB_SEQUENCE_PARALLEL = {
    "vit": "patch embedding and pooled head",
    "swin": "patch embedding and pooled head",
}


def check_plan_structure(plan: Plan) -> None:
    """Checks that need nothing but the plan: degrees multiply out, stages cover the layers."""
    if sorted(plan.mesh_axis_order) != sorted(MESH_AXES):
        raise FormatError(
            f"expected each of {', '.join(MESH_AXES)} exactly once, "
            f"got [{', '.join(plan.mesh_axis_order)}]",
            path="mesh_axis_order",
        )
    pipeline = plan.pipeline
    if plan.world_size % pipeline.degree:
        raise FormatError(
            f"pipeline degree {pipeline.degree} does not divide world_size {plan.world_size}",
            path="pipeline.degree",
        )
    _check_chunks(plan)
    if len(pipeline.stage_num_layers) != pipeline.num_virtual_stages:
        expected = (
            f"{pipeline.degree} stages (pipeline.degree)"
            if pipeline.chunks == 1
            else f"{pipeline.num_virtual_stages} virtual stages (pipeline.degree "
            f"{pipeline.degree} x pipeline.chunks {pipeline.chunks})"
        )
        raise FormatError(
            f"expected {expected}, got {len(pipeline.stage_num_layers)}",
            path="pipeline.stage_num_layers",
        )
    if sum(pipeline.stage_num_layers) != len(plan.layers):
        raise FormatError(
            f"the stages hold {sum(pipeline.stage_num_layers)} layers "
            f"but the plan has {len(plan.layers)} (layers)",
            path="pipeline.stage_num_layers",
        )
    if plan.global_batch_size % plan.num_micro_batches:
        raise FormatError(
            f"{plan.num_micro_batches} micro-batches do not divide "
            f"global_batch_size {plan.global_batch_size}",
            path="num_micro_batches",
        )
    for index, layer in enumerate(plan.layers):
        _check_group_sizes(plan, layer.tp, path=f"layers[{index}].tp")
    _check_group_sizes(plan, plan.vocab.tp, path="vocab.tp")
    predictions = plan.predictions
    if predictions is not None and len(predictions.peak_memory_bytes_per_stage) != pipeline.degree:
        raise FormatError(
            f"expected one value per stage ({pipeline.degree}), "
            f"got {len(predictions.peak_memory_bytes_per_stage)}",
            path="predictions.peak_memory_bytes_per_stage",
        )


def _check_chunks(plan: Plan) -> None:
    pipeline = plan.pipeline
    if pipeline.schedule != "interleaved-1f1b":
        if pipeline.chunks != 1:
            raise FormatError(
                f"only the interleaved-1f1b schedule runs several chunks per rank, "
                f"got {pipeline.chunks} under {pipeline.schedule}",
                path="pipeline.chunks",
            )
        return
    if pipeline.chunks < 2:
        raise FormatError(
            f"interleaved-1f1b needs at least 2 chunks per rank, got {pipeline.chunks}",
            path="pipeline.chunks",
        )
    if pipeline.degree < 2:
        raise FormatError(
            "interleaved-1f1b needs at least 2 pipeline stages", path="pipeline.degree"
        )
    if plan.num_micro_batches % pipeline.degree:
        raise FormatError(
            f"interleaved-1f1b needs the micro-batches ({plan.num_micro_batches}) to be a "
            f"multiple of the pipeline degree {pipeline.degree}",
            path="num_micro_batches",
        )


def _check_group_sizes(plan: Plan, tp: int, *, path: str) -> None:
    per_stage = plan.devices_per_stage
    if per_stage % tp:
        raise FormatError(
            f"tp {tp} does not divide the {per_stage} devices of a pipeline stage "
            f"(world_size {plan.world_size} / pipeline degree {plan.pipeline.degree})",
            path=path,
        )
    dp = per_stage // tp
    if plan.micro_batch_size % dp:
        raise FormatError(
            f"the data-parallel degree {dp} (= {per_stage} devices per stage / tp {tp}) "
            f"does not divide the micro-batch size {plan.micro_batch_size}",
            path=path,
        )


def validate_plan(
    plan: Plan, *, world_size: int | None = None, model: ModelDescription | None = None
) -> None:
    """Raise :class:`FormatError` if ``plan`` does not fit ``world_size`` or ``model``."""
    check_plan_structure(plan)
    if world_size is not None and world_size != plan.world_size:
        raise FormatError(
            f"the plan is for {plan.world_size} devices but {world_size} are running",
            path="world_size",
        )
    if model is not None:
        _check_against_model(plan, model)


def _check_against_model(plan: Plan, model: ModelDescription) -> None:
    blocks = model.blocks
    if len(plan.layers) != len(blocks):
        raise FormatError(
            f"the plan has {len(plan.layers)} layer strategies "
            f"but model {model.name!r} has {len(blocks)} block layers",
            path="layers",
        )
    for index, (strategy, block) in enumerate(zip(plan.layers, blocks, strict=True)):
        problem = _layer_problem(strategy, block)
        if problem:
            raise FormatError(f"{problem} of layer {block.name!r}", path=f"layers[{index}].tp")
    vocab = plan.vocab
    reason = NO_VOCAB_SEQUENCE_PARALLEL.get(model.family)
    if vocab.sp and vocab.tp > 1 and reason is not None:
        raise FormatError(
            f"{model.family} models have no sequence-parallel embedding and head ({reason})",
            path="vocab.sp",
        )
    if vocab.tp > 1:
        outputs, what = (
            (model.vocab_size, "vocab_size")
            if model.vocab_size
            else (model.num_labels, "num_labels")
        )
        if outputs % vocab.tp:
            raise FormatError(
                f"vocab-parallel degree {vocab.tp} does not divide {what} {outputs} "
                f"of model {model.name!r}",
                path="vocab.tp",
            )
        if vocab.sp and model.seq_len % vocab.tp:
            raise FormatError(
                f"sequence-parallel degree {vocab.tp} does not divide seq_len {model.seq_len} "
                f"of model {model.name!r}",
                path="vocab.sp",
            )


def _layer_problem(strategy: LayerStrategy, block: LayerDescription) -> str | None:
    tp = strategy.tp
    if tp == 1:
        return None
    divided = {"num_heads": block.num_heads, "num_kv_heads": block.num_kv_heads}
    if strategy.sp == "ulysses":
        divided["seq_len"] = block.seq_len
    else:
        divided.update(hidden_size=block.hidden_size, ffn_size=block.ffn_size)
        if strategy.sp == "megatron":
            divided["seq_len"] = block.seq_len
    what = "Ulysses degree" if strategy.sp == "ulysses" else "tensor-parallel degree"
    for name, size in divided.items():
        if size and size % tp:
            return f"{what} {tp} does not divide {name} {size}"
    return None
