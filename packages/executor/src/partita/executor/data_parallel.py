"""Data-parallel wrapping of the whole (tensor-parallel) model: DDP, ZeRO-1, ZeRO-2, ZeRO-3.

- ``ddp``: DistributedDataParallel over the layers' data-parallel group;
- ``zero1``: DDP plus ZeroRedundancyOptimizer (optimizer states sharded);
- ``zero2``: FSDP2 ``fully_shard`` keeping parameters gathered from forward to backward
  (gradients and optimizer states sharded);
- ``zero3``: FSDP2 resharding after forward (parameters sharded too).

FSDP units are the layers; layers that share a parameter (GPT's tied embedding and head, T5's
shared table) form one unit together, gathered for each member's forward.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.nn.parallel import DistributedDataParallel

from partita.executor.groups import LayerGroups


def wrap_data_parallel(
    model: nn.Module, layers: Iterable[nn.Module], *, mode: str, groups: LayerGroups
) -> nn.Module:
    if groups.dp_size == 1:
        return model
    if mode in ("ddp", "zero1"):
        return DistributedDataParallel(model, process_group=groups.dp)
    reshard = mode == "zero3"
    for unit in _units_sharing_parameters(list(layers)):
        # Layers that share a parameter (a tied embedding and head) must be one FSDP group;
        # as a list, FSDP gathers it for each member's forward and frees it in between.
        fully_shard(
            unit if len(unit) > 1 else unit[0], mesh=groups.dp_mesh, reshard_after_forward=reshard
        )
    fully_shard(model, mesh=groups.dp_mesh, reshard_after_forward=reshard)
    return model


def _units_sharing_parameters(layers: list[nn.Module]) -> list[list[nn.Module]]:
    """The layers, grouped so that layers sharing any parameter are in one group (in order)."""
    owner: dict[int, int] = {}  # id(parameter) -> index of the first group holding it
    units: list[list[nn.Module]] = []
    for layer in layers:
        joined = sorted({owner[id(p)] for p in layer.parameters() if id(p) in owner})
        if not joined:
            joined = [len(units)]
            units.append([])
        index = joined[0]
        for other in joined[1:]:  # this layer ties two earlier groups together
            units[index] += units[other]
            units[other] = []
            owner.update({key: index for key, value in owner.items() if value == other})
        units[index].append(layer)
        owner.update({id(p): index for p in layer.parameters()})
    return [unit for unit in units if unit]


def make_optimizer(
    model: nn.Module, *, mode: str, groups: LayerGroups, lr: float, eps: float
) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if mode == "zero1" and groups.dp_size > 1:
        return ZeroRedundancyOptimizer(
            params, optimizer_class=torch.optim.AdamW, process_group=groups.dp, lr=lr, eps=eps
        )
    return torch.optim.AdamW(params, lr=lr, eps=eps)


# ---------------------------------------------------------------------------------------------
# Layer-wise plans: each layer synchronises in its own data-parallel group, as a SUM (the loss
# is already divided by the global number of labelled tokens).


def shard_layer(layer: nn.Module, *, mode: str, groups: LayerGroups, ignored: set) -> bool:
    """FSDP2 on one layer for ZeRO-2/3, reducing gradients as a sum; whether it was sharded.
    ``ignored`` parameters (tied across layers) stay whole and are summed by hand."""
    if mode not in ("zero2", "zero3") or groups.dp_size == 1:
        return False
    own = {p for p in layer.parameters() if p in ignored}
    fully_shard(
        layer,
        mesh=groups.dp_mesh,
        reshard_after_forward=mode == "zero3",
        ignored_params=own or None,
    )
    layer.set_gradient_divide_factor(1.0)  # type: ignore[operator]
    # Plain SUM collectives (gloo has no PREMUL_SUM; a factor of 1 needs no scaling anyway).
    layer.set_force_sum_reduction_for_comms(True)  # type: ignore[operator]
    return True


def all_reduce_sum(params: list[nn.Parameter], group: dist.ProcessGroup) -> None:
    """Sum the gradients of ``params`` over ``group`` in one flattened bucket."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads or dist.get_world_size(group) == 1:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, group=group)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


class Optimizers:
    """Several optimizers stepped as one (ZeRO-1 shards per data-parallel group)."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        self.optimizers = optimizers

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()

    def state_dict(self) -> list[dict]:
        return [o.state_dict() for o in self.optimizers]


def layerwise_optimizers(
    params: list[tuple[nn.Parameter, str, LayerGroups]], *, lr: float, eps: float
) -> Optimizers:
    """AdamW over ``(parameter, dp mode, groups)``; ZeRO-1 parameters get one
    ZeroRedundancyOptimizer per data-parallel group."""
    plain: list[nn.Parameter] = []
    zero: dict[int, tuple[dist.ProcessGroup, list[nn.Parameter]]] = {}
    for param, mode, groups in params:
        if mode == "zero1" and groups.dp_size > 1:
            zero.setdefault(id(groups.dp), (groups.dp, []))[1].append(param)
        else:
            plain.append(param)
    optimizers: list[torch.optim.Optimizer] = []
    if plain:
        optimizers.append(torch.optim.AdamW(plain, lr=lr, eps=eps))
    for group, members in zero.values():
        optimizers.append(
            ZeroRedundancyOptimizer(
                members, optimizer_class=torch.optim.AdamW, process_group=group, lr=lr, eps=eps
            )
        )
    return Optimizers(optimizers)
