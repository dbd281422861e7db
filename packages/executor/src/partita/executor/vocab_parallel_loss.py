"""Cross-entropy over logits split along the classes (a vocabulary-parallel head).

Megatron-style: the head's logits stay split over its tensor-parallel group and the loss is
computed from the shards with three all-reduces of ``[N]`` tensors (the row maximum, the sum
of exponentials and the target's logit), so no rank ever holds the whole ``[N, vocab]``
logits or their softmax. For 128K-152K vocabularies that is most of a small model's memory.

Every rank of the group ends with the same loss. The sums are all-reduced with an identity
backward (``comm.reduce_from_region``): each rank's loss is the whole loss, so the gradient
of its own shard is exactly the gradient of the total with respect to that shard. The row
maximum only shifts the exponentials for stability and cancels out of the loss, so it carries
no gradient.
"""

from __future__ import annotations

import functools

import torch
import torch.distributed as dist

from partita.executor import comm
from partita.models.layered import LossFn
from partita.models.losses import CrossEntropy


def vocab_parallel_cross_entropy(group: dist.ProcessGroup) -> CrossEntropy:
    """A ``CrossEntropy`` for this rank's consecutive shard of the classes in ``group``
    (rank r holds classes ``[r * C_local, (r + 1) * C_local)``, as ``ColumnParallelLinear``
    splits them)."""

    def cross_entropy(
        logits_nc: torch.Tensor, target_n: torch.Tensor, *, ignore_index: int
    ) -> torch.Tensor:
        local = logits_nc.shape[-1]
        first = dist.get_rank(group) * local
        with torch.no_grad():
            peak_n = logits_nc.max(dim=-1).values
            dist.all_reduce(peak_n, op=dist.ReduceOp.MAX, group=group)
        shifted_nc = logits_nc - peak_n.unsqueeze(-1)
        sum_exp_n = comm.reduce_from_region(shifted_nc.exp().sum(dim=-1), group)
        kept_n = target_n != ignore_index
        here_n = kept_n & (target_n >= first) & (target_n < first + local)
        index_n = torch.where(here_n, target_n - first, torch.zeros_like(target_n))
        picked_n = shifted_nc.gather(-1, index_n.unsqueeze(-1)).squeeze(-1)
        target_logit_n = comm.reduce_from_region(
            torch.where(here_n, picked_n, torch.zeros_like(picked_n)), group
        )
        losses_n = torch.where(kept_n, sum_exp_n.log() - target_logit_n, torch.zeros_like(picked_n))
        # F.cross_entropy's mean: over the targets kept (NaN when none is, as there).
        return losses_n.sum() / kept_n.sum()

    return cross_entropy


def loss_for_split_head(loss_fn: LossFn, group: dist.ProcessGroup) -> LossFn:
    """``loss_fn`` as a head split over ``group`` needs it: on the logits' shards when the
    group has several ranks (the head's ``ColumnParallelLinear`` leaves them split)."""
    if dist.get_world_size(group) == 1:
        return loss_fn
    return functools.partial(loss_fn, cross_entropy=vocab_parallel_cross_entropy(group))
