"""The one place that applies a plan's parallelism to the layers a rank holds.

Every plan runs the same way: a whole-model plan is the one-stage, one-micro-batch case of a
pipelined one. :func:`parallelize_stage` turns the one-process model into this rank's stage,
in this order (each step reads each layer's ``setups.LayerSetup``):

1. keep the layers of this rank's pipeline stage (``stage.StageModel``);
2. the attention kernel (``partita.models.attention``), before step 3 so that Ulysses wraps
   the chosen kernel;
3. tensor and sequence parallelism (``tensor_parallel.apply_tensor_parallel``): each layer
   keeps its shard, and a table tied between layers stays one parameter;
4. placement on the rank's device (only what this rank holds moves there);
5. activation checkpointing (``StageModel.forward`` wraps the layers whose setup asks);
6. data parallelism: FSDP2 on each ZeRO-2/3 layer (``data_parallel.shard_layer``); the
   gradients of DDP and ZeRO-1 layers are summed in buckets that overlap the backward
   (``grad_sync.GradientBuckets``); a table tied across stages is summed between its copies
   after the backward;
7. the optimizers (``data_parallel.layerwise_optimizers``: AdamW, ZeRO-1's sharded one).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from partita.executor.data_parallel import Optimizers, layerwise_optimizers, shard_layer
from partita.executor.grad_sync import GradientBuckets, all_reduce_flat
from partita.executor.groups import ParallelGroups
from partita.executor.setups import (
    LayerSetup,
    check_sequence_parallel,
    layer_setups,
    layer_stages,
)
from partita.executor.stage import StageModel
from partita.executor.tensor_parallel import ShardRecord, apply_tensor_parallel
from partita.formats import Plan
from partita.models.attention import apply_attention
from partita.models.families import family_of
from partita.models.layered import LayeredModel


@dataclass
class ParallelStage:
    """This rank's stage with its parallelism applied, and what its step synchronises."""

    model: StageModel
    setups: list[LayerSetup]
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
    attention: str = "auto",
    lr: float,
    eps: float,
) -> ParallelStage:
    """This rank's stage of ``model`` under ``plan`` (collective only through FSDP's setup)."""
    setups = layer_setups(model, plan, groups)
    stage, _ = groups.stage_of()
    indices = [i for i, s in enumerate(layer_stages(model, plan)) if s == stage]
    stage_model = StageModel(model, setups, indices=indices, groups=groups)
    kernel = apply_attention(stage_model, attention, device)
    _apply_tensor_parallel(model, stage_model, setups)
    stage_model.to(device)
    tables = _tied_tables(model, stage_model)
    sharded = _shard_data_parallel(stage_model, setups, ignored=tables)
    named = dict(stage_model.named_parameters())
    partial = [(named[n], g) for n, g in stage_model.partial_names.items() if n in named]
    # A tied table stays whole under FSDP and is summed over its data-parallel group after
    # the backward (its hook fires once per use), whatever its layers' data-parallel mode.
    buckets = GradientBuckets.over(
        [
            (
                [p for _, p in params if p.requires_grad and id(p) not in sharded],
                setups[i].groups.dp,
            )
            for i, params in stage_model.layer_parameters()
            if setups[i].dp in ("ddp", "zero1") or any(id(p) in tables for _, p in params)
        ],
        after_backward=tables | stage_model.shared_parameters(),
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
        setups=setups,
        stage=stage,
        attention=kernel,
        buckets=buckets,
        partial=partial,
        tied=_tied_across_stages(model, stage_model, plan, groups),
        optimizer=optimizer,
    )


def _apply_tensor_parallel(
    model: LayeredModel, stage_model: StageModel, setups: list[LayerSetup]
) -> None:
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
    partial = {}
    for i in stage_model.indices:
        setup = setups[i]
        if setup.sp == "none" or setup.tp == 1:
            continue
        for name, _ in stage_model.layers[str(i)].named_parameters(prefix=f"layers.{i}"):
            if name not in stage_model.shard_dims:
                partial[name] = setup.groups.tp
    stage_model.partial_names = partial


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


def _shard_data_parallel(
    stage_model: StageModel, setups: list[LayerSetup], *, ignored: set[int]
) -> set[int]:
    """FSDP2 on ZeRO-2/3 layers; the ids of the parameters FSDP synchronises."""
    ignored_params = {p for p in stage_model.parameters() if id(p) in ignored}
    sharded: set[int] = set()
    for i in stage_model.indices:
        layer = stage_model.layers[str(i)]
        setup = setups[i]
        if shard_layer(layer, mode=setup.dp, groups=setup.groups, ignored=ignored_params):
            sharded |= {id(p) for p in layer.parameters() if p not in ignored_params}
    return sharded
