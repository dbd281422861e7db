"""Data parallelism per layer: ZeRO-2/3 sharding and the optimizers of every mode.

- ``ddp``: whole parameters; gradients summed over the layer's data-parallel group in
  buckets overlapping the backward (``grad_sync``);
- ``zero1``: the same, plus ZeroRedundancyOptimizer (optimizer states sharded);
- ``zero2``: FSDP2 ``fully_shard`` on the layer, keeping parameters gathered from forward to
  backward (gradients and optimizer states sharded);
- ``zero3``: FSDP2 resharding after forward (parameters sharded too).

Each layer synchronises in its own data-parallel group, as a SUM (the loss is already divided
by the global number of labelled tokens).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.distributed.tensor import DTensor

from partita.executor.groups import LayerGroups


class LocalShardAdamW(torch.optim.AdamW):
    """AdamW that steps FSDP's sharded parameters (DTensors) through their local shards.

    The update is the same, element by element; what goes is DTensor's dispatch around every
    operation (gpt-tiny under ZeRO-2 on CPU: a 21 ms step against 3 ms on plain tensors).
    Each DTensor parameter is stepped through a plain parameter over its local shard (the
    same storage); its gradient is the DTensor gradient's local shard. Plain parameters are
    stepped as they are. :attr:`owners` maps a stand-in to its DTensor parameter.
    """

    def __init__(self, params: list[nn.Parameter], **defaults: float) -> None:
        self.owners: dict[int, nn.Parameter] = {}
        self._pairs: list[tuple[nn.Parameter, nn.Parameter]] = []
        stepped = []
        for param in params:
            if isinstance(param, DTensor):
                local = nn.Parameter(param.to_local().detach(), requires_grad=param.requires_grad)
                self.owners[id(local)] = param
                self._pairs.append((local, param))
                param = local
            stepped.append(param)
        super().__init__(stepped, **defaults)  # type: ignore[arg-type]

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[no-untyped-def]
        for local, owner in self._pairs:
            local.data = owner.to_local()  # the shard FSDP holds now (it does not move)
            local.grad = None if owner.grad is None else owner.grad.to_local()
        return super().step(closure)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for local, owner in self._pairs:
            owner.grad = local.grad = None
        super().zero_grad(set_to_none=set_to_none)


def shard_layer(
    layer: nn.Module,
    *,
    mode: str,
    groups: LayerGroups,
    ignored: set,
    compute_dtype: torch.dtype | None = None,
) -> bool:
    """FSDP2 on one layer for ZeRO-2/3, reducing gradients as a sum; whether it was sharded.
    ``ignored`` parameters (tied across layers) stay whole and are summed by hand.

    Under bf16 or fp16 (``compute_dtype``) FSDP gathers the parameters in that dtype, as the
    autocast compute would cast them anyway: half the bytes of the fp32 master shards on the
    wire and in the gathered copy. Gradients are reduced in fp32 into the fp32 shards. A layer
    holding a tied table gathers in fp32 (see below)."""
    if mode not in ("zero2", "zero3") or groups.dp_size == 1:
        return False
    own = {p for p in layer.parameters() if p in ignored}
    # A layer that also computes with a whole fp32 table (tied, left to us) keeps fp32
    # gathers: its ops would otherwise mix dtypes that autocast does not reconcile on every
    # device (a CPU layer norm refuses an fp32 input with fp16 weights).
    policy = (
        MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
        if compute_dtype is not None and not own
        else MixedPrecisionPolicy()
    )
    fully_shard(
        layer,
        mesh=groups.dp_mesh,
        reshard_after_forward=mode == "zero3",
        ignored_params=own or None,
        mp_policy=policy,
    )
    layer.set_gradient_divide_factor(1.0)  # type: ignore[operator]
    # Plain SUM collectives (gloo has no PREMUL_SUM; a factor of 1 needs no scaling anyway).
    layer.set_force_sum_reduction_for_comms(True)  # type: ignore[operator]
    return True


def share_fsdp_root(stage: nn.Module) -> bool:
    """Make ``stage`` the one FSDP root over its ZeRO-2/3 layers (each already an FSDP unit
    of its own data-parallel mesh); whether there were any. The root manages no parameter
    (every one outside the units is ignored: DDP, ZeRO-1 and tensor-parallel layers, tied
    tables), but gives the units one communication context: each layer's reduce-scatter is
    then awaited, and its fp32 input freed, when the next layer's is issued, and the units
    are finalised together after the backward. As separate roots, every unit kept its
    unsharded gradient and reduce-scatter buffers until the whole backward ended: two whole
    copies of every ZeRO-2/3 layer at the peak."""
    meshes = [p.device_mesh for p in stage.parameters() if isinstance(p, DTensor)]
    if not meshes:
        return False
    ignored = {p for p in stage.parameters() if not isinstance(p, DTensor)}
    fully_shard(stage, mesh=meshes[0], ignored_params=ignored or None)
    return True


@contextlib.contextmanager
def gathered_after_backward(stage: nn.Module) -> Iterator[None]:
    """Keep the ZeRO-2/3 layers of ``stage`` (an FSDP root, or nothing to do) gathered after
    the backward run inside: the input-gradient pass of a split backward, whose weight pass
    needs the parameters again (the weight pass reshards them, or a ZeRO-3 layer's next
    forward does). Resharding in between cost every ZeRO-2/3 layer one more all-gather per
    micro-batch (gpt-tiny, 2 stages of 2 ranks, 4 micro-batches: 24 all-gathers instead of
    12 on the second stage under ZeRO-2, 36 instead of 24 under ZeRO-3)."""
    if not isinstance(stage, FSDPModule):
        yield
        return
    stage.set_reshard_after_backward(False)
    try:
        yield
    finally:
        stage.set_reshard_after_backward(True)


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
        optimizers.append(LocalShardAdamW(plain, lr=lr, eps=eps))
    for group, members in zero.values():
        optimizers.append(_zero1(members, group, lr=lr, eps=eps))
    return Optimizers(optimizers)


def _zero1(
    params: list[nn.Parameter], group: dist.ProcessGroup, *, lr: float, eps: float
) -> ZeroRedundancyOptimizer:
    # Parameters as bucket views: after its step each rank broadcasts its shard as one
    # bucket, not one broadcast per parameter (gpt-tiny: 68 broadcasts, ~30 ms on gloo).
    return ZeroRedundancyOptimizer(
        params,
        optimizer_class=torch.optim.AdamW,
        process_group=group,
        parameters_as_bucket_view=True,
        lr=lr,
        eps=eps,
    )
