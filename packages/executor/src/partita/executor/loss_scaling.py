"""Dynamic loss scaling for fp16 compute, on gradients however they are sharded.

fp16's smallest normal number is 6e-5, so small gradients underflow to zero in the backward.
The loss is multiplied by a scale before the backward; once every gradient is summed (DDP
buckets, FSDP's reduce-scatter, sequence-parallel partial sums, tied tables), each rank
divides its own gradients (plain tensors or the local shards of FSDP's DTensors) by the scale
and checks them for inf and NaN. The verdict is combined over every rank (one all-reduce of a
flag over the world), since the ranks hold different shards and must all skip or all step:
an overflow skips the optimizer step and halves the scale; ``growth_interval`` clean steps
in a row double it. torch's ``GradScaler`` does the same for one unsharded model; its check
does not see other ranks' shards.

bf16 has fp32's exponent range and needs no scaling (:func:`needs_loss_scaling`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


def needs_loss_scaling(precision: str) -> bool:
    return precision == "fp16"


@dataclass
class LossScaler:
    group: dist.ProcessGroup  # every rank: they must agree to skip a step
    device: torch.device
    scale: float = 2.0**16
    growth_interval: int = 200
    _clean_steps: int = 0
    skipped_steps: int = 0

    def scaled(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.scale

    def unscale_and_check(self, params: Iterable[nn.Parameter]) -> bool:
        """Divide every gradient by the scale; whether all of them, on every rank, are finite."""
        found = torch.zeros((), dtype=torch.float32, device=self.device)
        inverse = 1.0 / self.scale
        for param in params:
            grad = param.grad
            if grad is None:
                continue
            local = grad.to_local() if hasattr(grad, "to_local") else grad
            local.mul_(inverse)
            found += (~torch.isfinite(local)).any().to(found.dtype)
        dist.all_reduce(found, op=dist.ReduceOp.MAX, group=self.group)
        return bool(found.item() == 0)

    def update(self, finite: bool) -> None:
        if not finite:
            self.scale /= 2.0
            self._clean_steps = 0
            self.skipped_steps += 1
            return
        self._clean_steps += 1
        if self._clean_steps >= self.growth_interval:
            self.scale *= 2.0
            self._clean_steps = 0
