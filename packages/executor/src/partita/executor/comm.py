"""Megatron-style communication steps, each paired with its backward.

Every step is a ``torch.autograd.Function`` over plain tensors and takes the process group
explicitly: there is no default group, and ``group=None`` is refused, so a step can never
silently talk to the whole world when it meant one tensor-parallel or sequence-parallel group.

Tensor parallelism (Megatron-LM, no sequence parallelism):

========================  =============================  ==================================
step                      forward                        backward
========================  =============================  ==================================
``copy_to_region``        identity                       all-reduce (sum)
``reduce_from_region``    all-reduce (sum)               identity
``gather_from_region``    all-gather along ``dim``       this rank's chunk (no reduction)
``scatter_to_region``     this rank's chunk              all-gather
========================  =============================  ==================================

Sequence parallelism (Megatron-SP, sequence dim 1 of ``[batch, seq, hidden]`` by default):

================================  ==========================  =================================
step                              forward                     backward
================================  ==========================  =================================
``gather_sequence``               all-gather                  reduce-scatter (sum)
``reduce_scatter_sequence``       reduce-scatter (sum)        all-gather
``split_sequence``                this rank's chunk           all-gather
``all_gather_sequence_no_reduce`` all-gather                  this rank's chunk (no reduction)
``take_chunk``                    this rank's chunk           in place, zeros elsewhere
================================  ==========================  =================================

Ulysses sequence parallelism: ``seq_to_heads`` and ``heads_to_seq`` are all-to-alls between
``[b, h, s/P, d]`` (sequence-sharded) and ``[b, h/P, s, d]`` (head-sharded), each the other's
backward; ``ulysses_attention`` wraps an attention core with them.

Gathers concatenate in group-rank order; chunks are equal, so the sharded dimension must be
divisible by the group size. A group of size 1 communicates nothing.

Backends: the single-tensor collectives ``all_gather_into_tensor`` / ``reduce_scatter_tensor``
(``all_gather_single`` / ``reduce_scatter_single`` in torch 2.13) run on NCCL and, since torch
2.2 (the packages need 2.4), on gloo, which implements the reduce-scatter as an all-reduce
followed by a chunk.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from partita.models.attention import AttentionCore

__all__ = [
    "all_gather_sequence_no_reduce",
    "copy_to_region",
    "gather_from_region",
    "gather_sequence",
    "heads_to_seq",
    "reduce_from_region",
    "reduce_scatter_sequence",
    "scatter_to_region",
    "seq_to_heads",
    "split_sequence",
    "take_chunk",
    "ulysses_attention",
]

# torch 2.13 renamed the single-tensor collectives; the old names warn (FutureWarning).
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter_single = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


# ---------------------------------------------------------------------------------------------
# Plain collectives (no autograd).


def _group_rank_size(group: dist.ProcessGroup) -> tuple[int, int]:
    if group is None:
        raise TypeError("a process group is required (group=None would mean the default group)")
    rank = dist.get_rank(group)
    if rank < 0:
        raise ValueError("this process is not a member of the given process group")
    return rank, dist.get_world_size(group)


def _check_divisible(x: torch.Tensor, dim: int, size: int, what: str) -> None:
    if x.shape[dim] % size:
        raise ValueError(
            f"{what}: dim {dim} of a tensor shaped {tuple(x.shape)} is not divisible by the "
            f"group size {size}"
        )


def _all_reduce(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """Sum over the group into a new tensor (``x`` is left untouched)."""
    _, size = _group_rank_size(group)
    if size == 1:
        return x
    out = x.clone(memory_format=torch.contiguous_format)
    dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
    return out


def _all_gather(x: torch.Tensor, group: dist.ProcessGroup, dim: int) -> torch.Tensor:
    """Concatenate every rank's ``x`` along ``dim``, in group-rank order."""
    _, size = _group_rank_size(group)
    if size == 1:
        return x
    dim = dim % x.dim()
    x = x.contiguous()
    # Concatenation form along dim 0 (gloo rejects the stacked [size, *shape] form).
    flat = x.new_empty((size * x.shape[0], *x.shape[1:]))
    _all_gather_single(flat, x, group=group)
    if dim == 0:
        return flat
    return torch.cat(flat.chunk(size, dim=0), dim=dim)


def _reduce_scatter(x: torch.Tensor, group: dist.ProcessGroup, dim: int) -> torch.Tensor:
    """Sum over the group, keeping this rank's chunk along ``dim``."""
    _, size = _group_rank_size(group)
    if size == 1:
        return x
    dim = dim % x.dim()
    _check_divisible(x, dim, size, "reduce-scatter")
    # Concatenation form along dim 0: chunk r of ``dim`` becomes the r-th slab of rows.
    stacked = x if dim == 0 else torch.cat(x.chunk(size, dim=dim), dim=0)
    shard_shape = list(x.shape)
    shard_shape[dim] //= size
    out = x.new_empty(shard_shape)
    _reduce_scatter_single(out, stacked.contiguous(), op=dist.ReduceOp.SUM, group=group)
    return out


def _chunk(x: torch.Tensor, rank: int, size: int, dim: int) -> torch.Tensor:
    _check_divisible(x, dim, size, "split")
    return x.chunk(size, dim=dim)[rank].contiguous()


def _split(x: torch.Tensor, group: dist.ProcessGroup, dim: int) -> torch.Tensor:
    rank, size = _group_rank_size(group)
    if size == 1:
        return x
    return _chunk(x, rank, size, dim % x.dim())


def _all_to_all_heads_from_seq(x_bhsd: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """[b, h, s/P, d] (sequence chunk, all heads) -> [b, h/P, s, d] (all sequence, my heads)."""
    _, size = _group_rank_size(group)
    if size == 1:
        return x_bhsd
    _check_rank4(x_bhsd, "seq_to_heads")
    _check_divisible(x_bhsd, 1, size, "seq_to_heads (heads)")
    b, h, s, d = x_bhsd.shape
    # Head group j goes to rank j: put it on dim 0.
    send = x_bhsd.reshape(b, size, h // size, s, d).permute(1, 0, 2, 3, 4).contiguous()
    recv = torch.empty_like(send)  # [source rank (= sequence chunk), b, h/P, s/P, d]
    dist.all_to_all_single(recv, send, group=group)
    return recv.permute(1, 2, 0, 3, 4).reshape(b, h // size, size * s, d)


def _all_to_all_seq_from_heads(x_bhsd: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """[b, h/P, s, d] (all sequence, my heads) -> [b, h, s/P, d] (sequence chunk, all heads)."""
    _, size = _group_rank_size(group)
    if size == 1:
        return x_bhsd
    _check_rank4(x_bhsd, "heads_to_seq")
    _check_divisible(x_bhsd, 2, size, "heads_to_seq (sequence)")
    b, hp, s, d = x_bhsd.shape
    # Sequence chunk j goes to rank j: put it on dim 0.
    send = x_bhsd.reshape(b, hp, size, s // size, d).permute(2, 0, 1, 3, 4).contiguous()
    recv = torch.empty_like(send)  # [source rank (= head group), b, h/P, s/P, d]
    dist.all_to_all_single(recv, send, group=group)
    return recv.permute(1, 0, 2, 3, 4).reshape(b, size * hp, s // size, d)


def _check_rank4(x: torch.Tensor, what: str) -> None:
    if x.dim() != 4:
        raise ValueError(
            f"{what}: expected a [batch, heads, seq, head_dim] tensor, got {x.dim()}-D"
        )


# ---------------------------------------------------------------------------------------------
# Autograd Functions. ``ctx`` keeps the group and dim; non-tensor inputs get a None gradient.


class _CopyToRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        _group_rank_size(group)
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _all_reduce(grad, ctx.group), None


class _ReduceFromRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        return _all_reduce(x, group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class _GatherSplit(torch.autograd.Function):
    """Forward all-gather, backward this rank's chunk."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: dist.ProcessGroup, dim: int) -> torch.Tensor:
        ctx.group, ctx.dim = group, dim
        return _all_gather(x, group, dim)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return _split(grad, ctx.group, ctx.dim), None, None


class _SplitGather(torch.autograd.Function):
    """Forward this rank's chunk, backward all-gather."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: dist.ProcessGroup, dim: int) -> torch.Tensor:
        ctx.group, ctx.dim = group, dim
        return _split(x, group, dim)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return _all_gather(grad, ctx.group, ctx.dim), None, None


class _GatherReduceScatter(torch.autograd.Function):
    """Forward all-gather, backward reduce-scatter (sum)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: dist.ProcessGroup, dim: int) -> torch.Tensor:
        ctx.group, ctx.dim = group, dim
        return _all_gather(x, group, dim)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return _reduce_scatter(grad, ctx.group, ctx.dim), None, None


class _ReduceScatterGather(torch.autograd.Function):
    """Forward reduce-scatter (sum), backward all-gather."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: dist.ProcessGroup, dim: int) -> torch.Tensor:
        ctx.group, ctx.dim = group, dim
        return _reduce_scatter(x, group, dim)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return _all_gather(grad, ctx.group, ctx.dim), None, None


class _TakeChunkZeroFill(torch.autograd.Function):
    """Forward this rank's chunk, backward the gradient in its place and zeros elsewhere."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: dist.ProcessGroup, dim: int) -> torch.Tensor:
        rank, size = _group_rank_size(group)
        ctx.shape, ctx.dim, ctx.rank, ctx.size = x.shape, dim % x.dim(), rank, size
        return _chunk(x, rank, size, dim % x.dim())

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        full = grad.new_zeros(ctx.shape)
        full.chunk(ctx.size, dim=ctx.dim)[ctx.rank].copy_(grad)
        return full, None, None


class _SeqToHeads(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x_bhsd: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.group = group
        return _all_to_all_heads_from_seq(x_bhsd, group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _all_to_all_seq_from_heads(grad, ctx.group), None


class _HeadsToSeq(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x_bhsd: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.group = group
        return _all_to_all_seq_from_heads(x_bhsd, group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _all_to_all_heads_from_seq(grad, ctx.group), None


# ---------------------------------------------------------------------------------------------
# Public steps.


def copy_to_region(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """Identity forward, all-reduce (sum) of the gradient backward: a column-parallel input."""
    return _CopyToRegion.apply(x, group)


def reduce_from_region(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """All-reduce (sum) forward, identity backward: a row-parallel output."""
    return _ReduceFromRegion.apply(x, group)


def gather_from_region(x: torch.Tensor, group: dist.ProcessGroup, dim: int = -1) -> torch.Tensor:
    """All-gather along ``dim`` forward; backward keeps this rank's chunk of the gradient.

    For outputs every rank then uses identically (vocab-parallel logits into a replicated
    loss): the gradient is the same on every rank, so no reduction is needed.
    """
    return _GatherSplit.apply(x, group, dim)


def scatter_to_region(x: torch.Tensor, group: dist.ProcessGroup, dim: int = -1) -> torch.Tensor:
    """This rank's chunk along ``dim`` forward, all-gather of the gradient backward."""
    return _SplitGather.apply(x, group, dim)


def gather_sequence(x: torch.Tensor, group: dist.ProcessGroup, dim: int = 1) -> torch.Tensor:
    """Megatron-SP: all-gather the sequence forward, reduce-scatter (sum) the gradient back.

    Before a column-parallel layer: every rank's partial gradient of the gathered sequence
    is summed and each rank keeps its own chunk.
    """
    return _GatherReduceScatter.apply(x, group, dim)


def reduce_scatter_sequence(
    x: torch.Tensor, group: dist.ProcessGroup, dim: int = 1
) -> torch.Tensor:
    """Megatron-SP: reduce-scatter (sum) along the sequence forward, all-gather backward.

    After a row-parallel layer, in place of the all-reduce of ``reduce_from_region``.
    """
    return _ReduceScatterGather.apply(x, group, dim)


def split_sequence(x: torch.Tensor, group: dist.ProcessGroup, dim: int = 1) -> torch.Tensor:
    """Megatron-SP: this rank's sequence chunk forward, all-gather backward (entering SP)."""
    return _SplitGather.apply(x, group, dim)


def take_chunk(x: torch.Tensor, group: dist.ProcessGroup, dim: int) -> torch.Tensor:
    """This rank's chunk along ``dim`` forward; backward puts the gradient in its place and
    zeros elsewhere, with no communication.

    For a value every rank computes whole but uses only a part of (a position table's rows
    under a sequence-parallel embedding): each rank's gradient is then its part's, a partial
    sum that the caller sums over the group (``ParallelStage.partial``).
    """
    return _TakeChunkZeroFill.apply(x, group, dim)


def all_gather_sequence_no_reduce(
    x: torch.Tensor, group: dist.ProcessGroup, dim: int = 1
) -> torch.Tensor:
    """Megatron-SP: all-gather the sequence forward, this rank's chunk of the gradient back.

    Leaving SP into a computation every rank repeats identically (e.g. the final norm output
    before a replicated head), so the gradient needs no reduction.
    """
    return _GatherSplit.apply(x, group, dim)


def seq_to_heads(x_bhsd: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """Ulysses all-to-all: ``[b, h, s/P, d]`` (sequence chunk) -> ``[b, h/P, s, d]`` (my heads).

    Rank r ends up with heads ``[r*h/P, (r+1)*h/P)`` over the whole sequence, the sequence
    concatenated in group-rank order. The backward is ``heads_to_seq``.
    """
    return _SeqToHeads.apply(x_bhsd, group)


def heads_to_seq(x_bhsd: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """Ulysses all-to-all: ``[b, h/P, s, d]`` -> ``[b, h, s/P, d]``; inverse of ``seq_to_heads``."""
    return _HeadsToSeq.apply(x_bhsd, group)


def _bias_for_local_heads(bias: torch.Tensor, group: dist.ProcessGroup, heads: int) -> torch.Tensor:
    """This rank's heads of an additive bias broadcastable to ``[b, h, seq_q, seq_k]``.

    The head axis is the third from last; a bias with a single head there (or with fewer
    than three dims) applies to every head and is passed through unchanged.
    """
    if bias.dim() < 3:
        return bias
    axis = bias.dim() - 3
    if bias.shape[axis] == 1:
        return bias
    if bias.shape[axis] != heads:
        raise ValueError(
            f"ulysses_attention: bias shaped {tuple(bias.shape)} has {bias.shape[axis]} heads, "
            f"q has {heads}"
        )
    rank, size = _group_rank_size(group)
    return bias.chunk(size, dim=axis)[rank]


def ulysses_attention(core: AttentionCore, group: dist.ProcessGroup) -> AttentionCore:
    """An attention core over sequence-sharded q, k, v (``[b, h, s/P, d]``) for ``group``.

    q, k and v are exchanged to ``[b, h/P, s, d]`` (``seq_to_heads``), ``core`` attends over
    the whole sequence for this rank's heads, and the output goes back to the sequence
    shards (``heads_to_seq``). ``bias`` must cover the full sequence in its query and key
    dims; a per-head bias is sliced to this rank's heads. Its gradient on each rank is then
    that rank's share: like every parameter replicated over the sequence-parallel group, it
    is summed over the group (the data-parallel reduction does this when the group is folded
    into it). The number of heads of q, k and v must be divisible by the group size.
    """
    _group_rank_size(group)

    def attend(
        q_bhsd: torch.Tensor,
        k_bhsd: torch.Tensor,
        v_bhsd: torch.Tensor,
        *,
        bias: torch.Tensor | None = None,
        causal: bool = False,
        scale: float | None = None,
        dropout_p: float = 0.0,
        window: int | None = None,
    ) -> torch.Tensor:
        heads = q_bhsd.shape[1]
        q = seq_to_heads(q_bhsd, group)
        k = seq_to_heads(k_bhsd, group)
        v = seq_to_heads(v_bhsd, group)
        local_bias = None if bias is None else _bias_for_local_heads(bias, group, heads)
        # The window counts whole-sequence positions, which the exchange has restored.
        out = core(
            q,
            k,
            v,
            bias=local_bias,
            causal=causal,
            scale=scale,
            dropout_p=dropout_p,
            window=window,
        )
        return heads_to_seq(out, group)

    # The same exchange around ``wrap(core)``: what selective recompute checkpoints is the
    # core inside the exchange (the profiler measures it so, as the executor wraps it before).
    attend.rewrapped = lambda wrap: ulysses_attention(wrap(core), group)  # type: ignore[attr-defined]
    return attend
