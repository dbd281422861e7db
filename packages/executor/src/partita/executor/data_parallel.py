"""Data-parallel wrapping of the whole (tensor-parallel) model: DDP, ZeRO-1, ZeRO-2, ZeRO-3.

- ``ddp``: DistributedDataParallel over the layers' data-parallel group;
- ``zero1``: DDP plus ZeroRedundancyOptimizer (optimizer states sharded);
- ``zero2``: FSDP2 ``fully_shard`` keeping parameters gathered from forward to backward
  (gradients and optimizer states sharded);
- ``zero3``: FSDP2 resharding after forward (parameters sharded too).

FSDP units are the layers, unless the model ties parameters across layers (GPT's embedding
and head), which must live in one unit: then the whole model is one unit.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.nn.parallel import DistributedDataParallel

from partita.executor.groups import LayerGroups


def wrap_data_parallel(
    model: nn.Module, layers: Iterable[nn.Module], *, mode: str, groups: LayerGroups, tied: bool
) -> nn.Module:
    if groups.dp_size == 1:
        return model
    if mode in ("ddp", "zero1"):
        return DistributedDataParallel(model, process_group=groups.dp)
    reshard = mode == "zero3"
    if not tied:
        for layer in layers:
            fully_shard(layer, mesh=groups.dp_mesh, reshard_after_forward=reshard)
    fully_shard(model, mesh=groups.dp_mesh, reshard_after_forward=reshard)
    return model


def make_optimizer(
    model: nn.Module, *, mode: str, groups: LayerGroups, lr: float, eps: float
) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if mode == "zero1" and groups.dp_size > 1:
        return ZeroRedundancyOptimizer(
            params, optimizer_class=torch.optim.AdamW, process_group=groups.dp, lr=lr, eps=eps
        )
    return torch.optim.AdamW(params, lr=lr, eps=eps)
