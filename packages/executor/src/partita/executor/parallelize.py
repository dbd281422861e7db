"""The one place that applies a plan's parallelism to the layers a rank holds.

Every plan runs the same way: a whole-model plan is the one-stage, one-micro-batch case of a
pipelined one. :func:`parallelize_stage` turns the one-process model into this rank's stage,
in this order (each step reads each layer's ``setups.LayerSetup``):

1. keep the layers of this rank's pipeline stage (``stage.StageModel``), grouped in chunks:
   its virtual stages, more than one under an interleaved schedule;
2. the attention kernel (``partita.models.attention``), checkpointed in the layers whose
   ``ckpt`` is ``attention`` (``recompute``), before step 3 so that Ulysses wraps the chosen
   kernel;
3. tensor and sequence parallelism (``tensor_parallel.apply_tensor_parallel``): each layer
   keeps its shard, and a table tied between layers stays one parameter;
4. materialisation, layer by layer: the model comes built on the ``meta`` device
   (``partita.models.init.build_empty``), and each parameter this rank holds (its tensor-
   parallel shard) is allocated on the rank's device and filled with what the same part of
   the one-process model holds (``partita.models.init.Materializer``), or, starting from
   pretrained weights, with that piece of the checkpoint (``partita.models.weights``: only
   its bytes are read where the tensor is a rename); nothing else is ever allocated;
5. full and selective-op activation checkpointing (``StageModel.forward`` wraps the layers
   whose setup asks);
6. data parallelism: FSDP2 on each ZeRO-2/3 layer right after it is materialised
   (``data_parallel.shard_layer``), so at most one layer's tensor-parallel shard is whole at a
   time; the gradients of DDP and ZeRO-1 layers are summed in buckets that overlap the
   backward (``grad_sync.GradientBuckets``, a chunk's own buckets during its last backward);
   a table tied across stages is summed between its copies after the backward;
7. the optimizers (``data_parallel.layerwise_optimizers``: AdamW, ZeRO-1's sharded one).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

from partita.executor.data_parallel import (
    Optimizers,
    layerwise_optimizers,
    shard_layer,
    share_fsdp_root,
)
from partita.executor.grad_sync import GradientBuckets, all_reduce_flat
from partita.executor.groups import ParallelGroups
from partita.executor.recompute import recompute_attention_cores
from partita.executor.setups import (
    LayerSetup,
    check_sequence_parallel,
    layer_setups,
    layer_stages,
    layer_virtual_stages,
)
from partita.executor.sharded_state import canonical_names
from partita.executor.stage import StageModel
from partita.executor.tensor_parallel import ShardRecord, apply_tensor_parallel
from partita.executor.vocab_parallel_loss import loss_for_split_head
from partita.formats import Plan
from partita.models.attention import apply_attention
from partita.models.families import family_of
from partita.models.init import Box, Materializer, WeightsSource, init_specs, one_process_names
from partita.models.layered import LayeredModel

# The dtype each mixed precision computes in: autocast's, and what FSDP gathers in.
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class ParallelStage:
    """This rank's stage with its parallelism applied, and what its step synchronises."""

    model: StageModel
    stage: int
    attention: str  # the kernel selected ("flash", "sdpa" or "eager")
    buckets: GradientBuckets  # DDP and ZeRO-1 gradients, overlapping the backward
    partial: list[tuple[nn.Parameter, dist.ProcessGroup]]  # sequence-parallel partial sums
    tied: list[tuple[nn.Parameter, dist.ProcessGroup]]  # tables tied across stages
    optimizer: Optimizers

    def sync_after_backward(self) -> None:
        """What the step sums once the last backward is done: the buckets still in flight,
        sequence-parallel partial gradients over their tp group (one bucket a group), then
        the tied tables' gradients between the stages holding a copy."""
        self.buckets.finish()
        by_group: dict[int, tuple[dist.ProcessGroup, list[torch.Tensor]]] = {}
        for param, group in self.partial:
            if param.grad is None:
                continue
            grad = param.grad.to_local() if hasattr(param.grad, "to_local") else param.grad
            by_group.setdefault(id(group), (group, []))[1].append(grad)
        for group, grads in by_group.values():
            all_reduce_flat(grads, group)
        for param, group in self.tied:
            if param.grad is not None:
                dist.all_reduce(param.grad, group=group)


def parallelize_stage(
    model: LayeredModel,
    plan: Plan,
    groups: ParallelGroups,
    *,
    device: torch.device,
    seed: int,
    attention: str = "auto",
    lr: float,
    eps: float,
    weights: WeightsSource | None = None,
) -> ParallelStage:
    """This rank's stage of ``model`` (built by ``build_empty``: parameters on ``meta``)
    under ``plan``, initialised as ``build_model(..., seed=seed)`` initialises one process,
    or with ``weights`` (pretrained: each piece read from it, this rank's pieces only)."""
    setups = layer_setups(model, plan, groups)
    stage, _ = groups.stage_of()
    virtual = layer_virtual_stages(model, plan)
    chunks = [
        [i for i, s in enumerate(virtual) if s == vs]
        for vs in plan.pipeline.virtual_stages_of_rank(stage)
    ]
    indices = [i for chunk in chunks for i in chunk]
    names = one_process_names(model)
    stage_model = StageModel(model, setups, chunks=chunks, groups=groups)
    kernel = apply_attention(stage_model, attention, device)
    for i in indices:
        if setups[i].ckpt == "attention":
            recompute_attention_cores(model.layers[i])
    record = _apply_tensor_parallel(model, stage_model, setups)
    specs = {} if weights is not None else init_specs(model.config)
    materializer = Materializer(specs, seed, device, canonical_names(model), weights)
    compute_dtype = AUTOCAST_DTYPES.get(plan.precision)
    sharded = _materialize_and_shard(
        stage_model, setups, model, record, names, materializer, compute_dtype
    )
    share_fsdp_root(stage_model)
    tables = _tied_tables(model, stage_model)
    named = dict(stage_model.named_parameters())
    partial = [(named[n], g) for n, g in stage_model.partial_names.items() if n in named]
    # A tied table stays whole under FSDP and is summed over its data-parallel group after
    # the backward (its hook fires once per use), whatever its layers' data-parallel mode.
    synced = [
        (i, [p for _, p in params if p.requires_grad and id(p) not in sharded])
        for i, params in stage_model.layer_parameters()
        if setups[i].dp in ("ddp", "zero1") or any(id(p) in tables for _, p in params)
    ]
    chunk_of = stage_model.chunk_of_layer()
    buckets = GradientBuckets.over(
        [(params, setups[i].groups.dp) for i, params in synced],
        after_backward=tables | stage_model.shared_parameters(),
        chunks=[chunk_of[i] for i, _ in synced],
    )
    optimizer = layerwise_optimizers(
        [
            (p, setups[i].dp, setups[i].groups)
            for i, params in stage_model.layer_parameters()
            for _, p in params
            if p.requires_grad
        ],
        lr=lr,
        eps=eps,
    )
    return ParallelStage(
        model=stage_model,
        stage=stage,
        attention=kernel,
        buckets=buckets,
        partial=partial,
        tied=_tied_across_stages(model, stage_model, plan, groups),
        optimizer=optimizer,
    )


def _apply_tensor_parallel(
    model: LayeredModel, stage_model: StageModel, setups: list[LayerSetup]
) -> ShardRecord:
    family = family_of(model.config)
    check_sequence_parallel(family.name, [setups[i] for i in stage_model.indices])
    layouts = family.tp_layouts(model.config)
    record = ShardRecord()
    for i in stage_model.indices:
        apply_tensor_parallel(
            model.layers[i],
            layouts[model.layer_types[i]],
            group=setups[i].groups.tp,
            sp=setups[i].sp,
            record=record,
        )
    # By name: FSDP replaces the parameter objects.
    stage_model.shard_dims = {
        name: record.dims[id(p)]
        for name, p in stage_model.named_parameters(remove_duplicate=False)
        if id(p) in record.dims
    }
    # A split head leaves its logits split: the loss works on the shards.
    for i in stage_model.indices:
        if layouts[model.layer_types[i]].vocab_head:
            stage_model.loss_fn = loss_for_split_head(model.loss_fn, setups[i].groups.tp)
    # Whole parameters that see part of the sequence (sequence parallelism) or part of the
    # heads (a layout's head_local modules) hold partial gradients, summed over the tp group.
    partial = {}
    for i in stage_model.indices:
        setup = setups[i]
        if setup.tp == 1:
            continue
        layer = stage_model.layers[str(i)]
        if setup.sp == "none":
            paths = [
                f"{module}.{name}"
                for module in layouts[model.layer_types[i]].head_local
                for name, _ in layer.get_submodule(module).named_parameters()
            ]
        else:
            paths = [name for name, _ in layer.named_parameters()]
        for path in paths:
            name = f"layers.{i}.{path}"
            if name not in stage_model.shard_dims:
                partial[name] = setup.groups.tp
    stage_model.partial_names = partial
    return record


def _materialize_and_shard(
    stage_model: StageModel,
    setups: list[LayerSetup],
    model: LayeredModel,
    record: ShardRecord,
    names: dict[int, str],
    materializer: Materializer,
    compute_dtype: torch.dtype | None,
) -> set[int]:
    """Materialise the stage layer by layer and shard ZeRO-2/3 layers with FSDP2; the ids of
    the parameters FSDP syncs. A ZeRO-2/3 layer is sharded while still on ``meta`` and only
    its FSDP shards are allocated and filled, so a rank never holds more than its shard of a
    parameter. Tied tables stay whole under FSDP (summed by hand)."""
    pieces = _tensor_parallel_pieces(record, names)
    tied_names = {name for tie in model.tied for name in tie.names}
    tables: dict[str, nn.Parameter] = {}  # a tied table's first name -> this stage's copy
    sharded: set[int] = set()
    for i in stage_model.indices:
        layer = stage_model.layers[str(i)]
        prefix = f"layers.{i}"
        # Where each parameter lies in the one-process model, by its path in the layer (FSDP
        # replaces the parameter objects, not their paths).
        where = {
            path: pieces.get(id(p), (names.get(id(p), f"{prefix}.{path}"), None))
            for path, p in layer.named_parameters(remove_duplicate=False)
        }
        ignored = {p for path, p in layer.named_parameters() if f"{prefix}.{path}" in tied_names}
        setup = setups[i]
        shard_layer(
            layer,
            mode=setup.dp,
            groups=setup.groups,
            ignored=ignored,
            compute_dtype=compute_dtype,
        )
        buffers = {name: b for name, b in layer.named_buffers()}
        layer.to_empty(device=materializer.device)  # this rank's pieces only, unfilled
        for name, buffer in buffers.items():
            owner, attr = _owner(layer, name)
            owner._buffers[attr] = buffer.to(materializer.device)
        for path, param in layer.named_parameters(remove_duplicate=False):
            name, box = where[path]
            if name in tied_names:  # one parameter for every layer of the stage using it
                first = materializer.canonical.get(name, name)
                if first in tables:
                    owner, attr = _owner(layer, path)
                    owner._parameters[attr] = tables[first]
                    continue
                tables[first] = param
            local, box = _fsdp_piece(param, box)
            materializer.fill(local, name, box)
        # FSDP's parameters are its DTensors, read after ``to_empty`` (which may replace them).
        sharded |= {id(p) for p in layer.parameters() if isinstance(p, DTensor)}
    return sharded


def _owner(module: nn.Module, path: str) -> tuple[nn.Module, str]:
    """The submodule holding the parameter or buffer at ``path``, and its attribute name."""
    owner_path, _, attr = path.rpartition(".")
    return (module.get_submodule(owner_path) if owner_path else module), attr


def _tensor_parallel_pieces(
    record: ShardRecord, names: dict[int, str]
) -> dict[int, tuple[str, Box | None]]:
    """id(new parameter) -> (the one-process name it stands for, its tensor-parallel box)."""
    shards = {id(p): p for p in record.shards.values()}
    pieces: dict[int, tuple[str, Box | None]] = {}
    for new, original in record.sources.items():
        box = None
        if new in record.dims:
            dim, group = record.dims[new]
            shard = shards[new]
            whole = list(shard.shape)
            whole[dim] *= dist.get_world_size(group)
            offsets = [0] * shard.dim()
            offsets[dim] = dist.get_rank(group) * shard.shape[dim]
            box = Box(tuple(offsets), tuple(whole))
        pieces[new] = (names[id(original)], box)
    return pieces


def _fsdp_piece(param: torch.Tensor, box: Box | None) -> tuple[torch.Tensor, Box]:
    """The tensor to fill for ``param`` and where it lies in the whole parameter: an FSDP
    DTensor's local shard, placed inside the tensor-parallel ``box`` (default: whole)."""
    if not isinstance(param, DTensor):
        return param, box or Box.whole(param.shape)
    outer = box or Box.whole(param.shape)
    _, offset = compute_local_shape_and_global_offset(
        param.shape, param.device_mesh, param.placements
    )
    offsets = tuple(a + b for a, b in zip(outer.offsets, offset, strict=True))
    return param.to_local(), Box(offsets, outer.whole_shape)


def _tied_across_stages(
    model: LayeredModel, stage_model: StageModel, plan: Plan, groups: ParallelGroups
) -> list[tuple[nn.Parameter, dist.ProcessGroup]]:
    """My copy of each table tied across stages, with the group of its holders."""
    named = dict(stage_model.named_parameters(remove_duplicate=False))
    stages = layer_stages(model, plan)
    tied = []
    for tie in model.tied:
        holders = tuple(sorted({stages[int(name.split(".")[1])] for name in tie.names}))
        group = groups.tied_group(holders)
        mine = [named[n] for n in tie.names if n in named]
        if mine and group is not None:
            tied.append((mine[0], group))
    return tied


def _tied_tables(model: LayeredModel, stage_model: StageModel) -> set[int]:
    """ids of this stage's copies of the tables tied between layers."""
    named = dict(stage_model.named_parameters(remove_duplicate=False))
    return {id(named[n]) for tie in model.tied for n in tie.names if n in named}
