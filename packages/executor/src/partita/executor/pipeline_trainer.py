"""Training under pipelined or layer-wise plans: one stage per rank, schedules as data.

Each rank owns one pipeline stage (``stage.StageModel``) and walks that stage's action list
from ``partita.formats.schedules.build_schedule`` (the list the simulator replays): ``F m``
receives micro-batch m's activations from the previous stage (the first stage slices the
batch, which every rank builds from the seed), runs the stage and sends the output on; ``B m``
receives the output gradients (the last stage differentiates the loss), runs backward and
sends the input gradients back. After all micro-batches, gradients are summed: the partial
gradients of sequence-parallel layers over their tp group, every layer's over its own
data-parallel group (FSDP2 does it in backward for ZeRO-2/3 layers), and a table tied across
stages (GPT's embedding and head, T5's shared vocabulary) between the stages holding a copy.

The loss of a micro-batch slice is weighted by its share of the global batch's labelled
tokens, so summing (not averaging) gradients gives one process's gradients on the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from partita.executor.data_parallel import (
    Optimizers,
    all_reduce_sum,
    layerwise_optimizers,
    shard_layer,
)
from partita.executor.groups import LayerGroups, rank_grid
from partita.executor.layout import Layout, SubGroups
from partita.executor.parallel_model import layer_setups
from partita.executor.pipeline import (
    Transfers,
    needing_grad,
    recv_activations,
    recv_gradients,
)
from partita.executor.sharded_state import canonical_names
from partita.executor.stage import StageModel, layer_stages
from partita.executor.trainer import Trainer, check_supported, gather_whole_parameters
from partita.formats.common import DDP_BUCKET_BYTES
from partita.formats.schedules import build_schedule
from partita.models.api import build_model, resolve_config
from partita.models.families import family_of
from partita.models.layered import Activations
from partita.models.losses import IGNORE_INDEX


def _nbytes(params: list[nn.Parameter]) -> int:
    return sum(p.numel() * p.element_size() for p in params)


@dataclass
class PipelineTrainer(Trainer):
    """A :class:`Trainer` for plans with pipeline stages or per-layer strategies."""

    def __post_init__(self) -> None:
        check_supported(self.plan)
        self.config = resolve_config(self.source)
        self.family = family_of(self.config)
        model = build_model(self.config, seed=self.settings.seed)
        # A tied table's copies are reported under the one-process model's (first) name.
        self.canonical = canonical_names(model)
        self.setups = layer_setups(model, self.plan, self.groups)
        sub = SubGroups(self.plan, self.groups.rank, {s.tp for s in self.setups})
        self.stages = layer_stages(model, self.plan)
        self._place(self.setups[0].tp)
        self.stage_model = StageModel(
            model, self.setups, stage=self.stage, stages=self.stages, sub=sub
        )
        tied = self._tie_groups(model)
        self.sharded = self._shard(tied)
        self.wrapped = self.stage_model
        self.optimizer = layerwise_optimizers(
            [
                (p, self.setups[i].dp, self.setups[i].groups)
                for i, params in self.stage_model.layer_parameters()
                for _, p in params
                if p.requires_grad
            ],
            lr=self.settings.lr,
            eps=self.settings.adam_eps,
        )
        named = dict(self.stage_model.named_parameters())
        self.partial = [
            (named[n], g) for n, g in self.stage_model.partial_names.items() if n in named
        ]
        pp = self.plan.pipeline.degree
        schedule = build_schedule(self.plan.pipeline.schedule, pp, self.plan.num_micro_batches)
        self.actions = schedule[self.stage]
        self.first, self.last = self.stage == 0, self.stage == pp - 1
        self._text = None  # text batches, made on first use as in Trainer

    # -- placement and groups ----------------------------------------------------------------

    def _place(self, tp: int) -> None:
        """My stage, my index inside it, and the ranks with my index in the stages next to it."""
        grid = rank_grid(self.plan, tp)
        self.stage_ranks = [[r for row in stage for r in row] for stage in grid]
        for stage, ranks in enumerate(self.stage_ranks):
            if self.groups.rank in ranks:
                self.stage, self.local_index = stage, ranks.index(self.groups.rank)
        pp = len(grid)
        self.prev_rank = self.stage_ranks[self.stage - 1][self.local_index] if self.stage else -1
        self.next_rank = (
            self.stage_ranks[self.stage + 1][self.local_index] if self.stage < pp - 1 else -1
        )

    def _tie_groups(self, model: nn.Module) -> dict[int, dist.ProcessGroup | None]:
        """id(my copy of a tied table) -> the group of the ranks holding a copy on other stages
        with my local index (None when only my stage holds it). Created on every rank."""
        named = dict(self.stage_model.named_parameters(remove_duplicate=False))
        tied: dict[int, dist.ProcessGroup | None] = {}
        for tie in model.tied:
            holders = sorted({self.stages[int(name.split(".")[1])] for name in tie.names})
            group = None
            if len(holders) > 1:
                for index in range(len(self.stage_ranks[0])):
                    members = [self.stage_ranks[s][index] for s in holders]
                    created = dist.new_group(members)
                    if self.groups.rank in members:
                        group = created
            mine = [named[n] for n in tie.names if n in named]
            if mine:
                tied[id(mine[0])] = group if self.stage in holders else None
        return tied

    def _shard(self, tied: dict[int, dist.ProcessGroup | None]) -> set[int]:
        """FSDP2 on ZeRO-2/3 layers; the ids of the parameters FSDP synchronises."""
        self.tied_groups = tied
        ignored = {p for p in self.stage_model.parameters() if id(p) in tied}
        sharded: set[int] = set()
        for i in self.stage_model.indices:
            layer = self.stage_model.layers[str(i)]
            setup = self.setups[i]
            if shard_layer(layer, mode=setup.dp, groups=setup.groups, ignored=ignored):
                sharded |= {id(p) for p in layer.parameters() if p not in ignored}
        return sharded

    # -- one step --------------------------------------------------------------------------

    def _slice(self, batch: Activations, layout: Layout) -> Activations:
        groups: LayerGroups = layout.groups
        size = self.plan.micro_batch_size // groups.dp_size
        start = groups.dp_rank * size
        return {k: v[start : start + size] for k, v in batch.items()}

    def step(self, batch: Activations) -> float:
        total = (batch["labels"] != IGNORE_INDEX).sum().to(torch.float64)
        self.optimizer.zero_grad(set_to_none=True)
        size = self.plan.micro_batch_size
        transfers = Transfers()
        saved: dict[int, tuple[Activations, object]] = {}
        logged = torch.zeros((), dtype=torch.float64)
        for action in self.actions:
            m = action.micro_batch
            if action.kind == "F":
                micro = {k: v[m * size : (m + 1) * size] for k, v in batch.items()}
                saved[m], part = self._forward(micro, total, transfers)
                logged += part
            else:
                self._backward(*saved.pop(m), transfers)
        transfers.wait()
        self._sync_gradients()
        self.optimizer.step()
        head = self.stage_model.output_layout.groups
        if not (self.last and head.tp_rank == 0):
            logged.zero_()
        dist.all_reduce(logged)
        return float(logged)

    def _forward(
        self, micro: Activations, total: torch.Tensor, transfers: Transfers
    ) -> tuple[tuple[Activations, object], torch.Tensor]:
        model = self.stage_model
        if self.first:
            inputs = self._slice(micro, model.input_layout)
        else:
            inputs = recv_activations(self.prev_rank)
        with self._autocast():
            outputs = model(inputs)
            if not self.last:
                transfers.send_activations(outputs, self.next_rank)
                return (inputs, outputs), torch.zeros((), dtype=torch.float64)
            local = self._slice(micro, model.output_layout)
            loss = model.loss_fn(outputs, local)
        count = (local["labels"] != IGNORE_INDEX).sum().to(torch.float64)
        scaled = loss * (count / total).to(loss.dtype)
        return (inputs, scaled), scaled.detach().to(torch.float64)

    def _backward(self, inputs: Activations, outputs: object, transfers: Transfers) -> None:
        if isinstance(outputs, torch.Tensor):  # the last stage: the scaled loss
            outputs.backward()
        else:
            assert isinstance(outputs, dict)
            tensors = [outputs[k] for k in needing_grad(outputs)]
            grads = recv_gradients(tensors, self.next_rank)
            torch.autograd.backward(tensors, grads)
        if not self.first:
            grads = [
                inputs[k].grad if inputs[k].grad is not None else torch.zeros_like(inputs[k])
                for k in needing_grad(inputs)
            ]
            transfers.send_gradients(grads, self.prev_rank)

    def _sync_gradients(self) -> None:
        self._sum_partial_gradients()
        # DDP and ZeRO-1 gradients in buckets of layers sharing a data-parallel group, from
        # the last layer back (as DDP buckets them): one collective per bucket, not per layer.
        buckets: dict[int, tuple[dist.ProcessGroup, list[list[nn.Parameter]]]] = {}
        for i, params in reversed(self.stage_model.layer_parameters()):
            unsynced = [p for _, p in params if id(p) not in self.sharded and p.grad is not None]
            group = self.setups[i].groups.dp
            _, bucket_list = buckets.setdefault(id(group), (group, [[]]))
            if bucket_list[-1] and _nbytes(bucket_list[-1]) + _nbytes(unsynced) > DDP_BUCKET_BYTES:
                bucket_list.append([])
            bucket_list[-1].extend(unsynced)
        for group, bucket_list in buckets.values():
            for bucket in bucket_list:
                all_reduce_sum(bucket, group)
        for param in self.stage_model.parameters():
            group = self.tied_groups.get(id(param))
            if group is not None and param.grad is not None:
                dist.all_reduce(param.grad, group=group)

    def _local_model(self) -> StageModel:
        return self.stage_model

    def _memory_baseline(self) -> list[object]:
        assert isinstance(self.optimizer, Optimizers)
        return [self.stage_model, *self.optimizer.optimizers]

    def full_parameters(self) -> dict[str, torch.Tensor]:
        """Every parameter gathered whole, under the one-process model's names, on rank 0
        (the others return their stage's)."""
        mine = gather_whole_parameters(self.stage_model, self.stage_model.shard_dims)
        everyone: list[dict[str, torch.Tensor] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, mine if self.local_index == 0 else {})
        full: dict[str, torch.Tensor] = {}
        for part in everyone:
            for name, tensor in (part or {}).items():
                full.setdefault(self.canonical.get(name, name), tensor)
        return full
