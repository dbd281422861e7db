"""Tensor and sequence parallelism applied to one layer, from its family's ``TPLayout``.

Megatron-style, on plain tensors: column-parallel projections keep a slice of the output
features, row-parallel ones a slice of the input features; every communication is an
autograd pair from :mod:`partita.executor.comm`, with the layer's group passed explicitly.

- ``sp="none"``: column-parallel inputs are copied into the group (gradient all-reduced),
  row-parallel outputs all-reduced. Layer inputs and outputs are whole.
- ``sp="megatron"``: the layer's input and output are split along the sequence; column-
  parallel inputs are all-gathered along the sequence, row-parallel outputs reduce-scattered.
- ``sp="ulysses"``: weights stay whole; the sequence is split; the attention core is wrapped
  to trade sequence for heads with all-to-alls around it, or, where the layout names
  ``ulysses_exchange`` modules (Swin's shifted windows, which need the whole feature map), those
  modules are wrapped instead (:class:`UlyssesExchange`).

The embedding and head (``vocab_embedding``, ``vocab_head``) are split along the vocabulary.
With ``sp="megatron"`` (``plan.vocab.sp``) they take the Megatron-SP layout of the blocks: the
embedding reduce-scatters its partial lookups along the sequence instead of all-reducing
them, and the layer's other tables (GPT's and BERT's positions, BERT's token types: looked up
per token, whole on every rank) keep only this rank's sequence chunk of their lookups, so the
layer's output leaves split along the sequence; the head all-gathers its sequence-split input
(backward: reduce-scatter) before its vocab-parallel matmul, so its logits cover the whole
sequence, split along the vocabulary as without SP.

Under sequence parallelism every parameter that stays whole sees only part of the sequence,
so its gradient is a partial sum: ``parallelize`` lists them (``ParallelStage.partial``) for
the trainer to all-reduce over the group after backward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from partita.executor import comm
from partita.models.attention import set_attention_core
from partita.models.tp_layout import TPLayout


class ColumnParallelLinear(nn.Module):
    def __init__(self, full: nn.Linear, *, group: dist.ProcessGroup, sp: str, gather: bool) -> None:
        super().__init__()
        self.group, self.sp, self.gather = group, sp, gather
        self.weight = nn.Parameter(_chunk(full.weight, 0, group))
        self.bias = None if full.bias is None else nn.Parameter(_chunk(full.bias, 0, group))
        self.shard_dims = {"weight": 0, "bias": 0}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.sp == "megatron":
            x = comm.gather_sequence(x, self.group, dim=1)
        else:
            x = comm.copy_to_region(x, self.group)
        y = F.linear(x, self.weight, self.bias)
        return comm.gather_from_region(y, self.group, dim=-1) if self.gather else y


class RowParallelLinear(nn.Module):
    def __init__(self, full: nn.Linear, *, group: dist.ProcessGroup, sp: str) -> None:
        super().__init__()
        self.group, self.sp = group, sp
        self.weight = nn.Parameter(_chunk(full.weight, 1, group))
        # The bias is added once, after the partial products are summed.
        self.bias = None if full.bias is None else nn.Parameter(full.bias.detach().clone())
        self.shard_dims = {"weight": 1}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight)
        if self.sp == "megatron":
            y = comm.reduce_scatter_sequence(y, self.group, dim=1)
        else:
            y = comm.reduce_from_region(y, self.group)
        return y if self.bias is None else y + self.bias


class VocabParallelEmbedding(nn.Module):
    """Rows split by vocabulary: ids outside this rank's range look up zeros, then the
    partial embeddings are summed over the group: all-reduced, or with ``sp="megatron"``
    reduce-scattered along the sequence (the dim before the features), each rank keeping its
    chunk of the sum. The ids are whole along the sequence either way: every token's row
    lies on one rank of the group."""

    def __init__(self, full: nn.Embedding, *, group: dist.ProcessGroup, sp: str = "none") -> None:
        super().__init__()
        self.group, self.sp = group, sp
        self.weight = nn.Parameter(_chunk(full.weight, 0, group))
        self.start = dist.get_rank(group) * self.weight.shape[0]
        self.shard_dims = {"weight": 0}
        # The padding row gets no gradient, as in the whole embedding.
        pad = None if full.padding_idx is None else full.padding_idx - self.start
        self.padding_idx = pad if pad is not None and 0 <= pad < self.weight.shape[0] else None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        local = ids - self.start
        outside = (local < 0) | (local >= self.weight.shape[0])
        rows = F.embedding(local.masked_fill(outside, 0), self.weight, padding_idx=self.padding_idx)
        rows = rows.masked_fill(outside.unsqueeze(-1), 0.0)
        if self.sp == "megatron":
            return comm.reduce_scatter_sequence(rows, self.group, dim=-2)
        return comm.reduce_from_region(rows, self.group)


def _chunk(tensor: torch.Tensor, dim: int, group: dist.ProcessGroup) -> torch.Tensor:
    size, rank = dist.get_world_size(group), dist.get_rank(group)
    if tensor.shape[dim] % size:
        raise ValueError(
            f"tensor-parallel degree {size} does not divide dimension {dim} "
            f"({tensor.shape[dim]}) of a {tuple(tensor.shape)} weight"
        )
    return tensor.detach().chunk(size, dim=dim)[rank].clone().contiguous()


@dataclass
class ShardRecord:
    """Which parameters were split, along which dimension, over which group; and which
    parameter each new one (a shard, or a whole copy such as a row-parallel bias) stands for."""

    shards: dict[int, nn.Parameter] = field(default_factory=dict)  # id(original) -> shard
    dims: dict[int, tuple[int, dist.ProcessGroup]] = field(default_factory=dict)  # id(shard)
    sources: dict[int, nn.Parameter] = field(default_factory=dict)  # id(new) -> original

    def add(
        self, original: nn.Parameter, shard: nn.Parameter, dim: int, group: dist.ProcessGroup
    ) -> None:
        self.shards[id(original)] = shard
        self.dims[id(shard)] = (dim, group)
        self.sources[id(shard)] = original


def apply_tensor_parallel(
    layer: nn.Module,
    layout: TPLayout,
    *,
    group: dist.ProcessGroup,
    sp: str,
    record: ShardRecord,
) -> None:
    """Shard ``layer`` in place. ``record`` remembers shards of earlier layers, so tied
    weights (an embedding and a head) stay one parameter."""
    size = dist.get_world_size(group)
    if sp == "ulysses":
        _apply_ulysses(layer, layout, group=group)
        return
    if size == 1:
        return
    for path in layout.colwise:
        make_column = lambda m: ColumnParallelLinear(m, group=group, sp=sp, gather=False)  # noqa: E731
        _replace(layer, path, make_column, group, record)
    for path in layout.rowwise:
        _replace(layer, path, lambda m: RowParallelLinear(m, group=group, sp=sp), group, record)
    for path in layout.vocab_embedding:
        make_embedding = lambda m: VocabParallelEmbedding(m, group=group, sp=sp)  # noqa: E731
        _replace(layer, path, make_embedding, group, record)
    if sp == "megatron" and layout.vocab_embedding:
        _keep_sequence_chunk_of_other_tables(layer, layout, group=group)
    for path in layout.vocab_head:
        # The logits stay split: the loss is computed from the shards (vocab_parallel_loss).
        # Under Megatron-SP the head's input comes split along the sequence and is gathered.
        make_head = lambda m: ColumnParallelLinear(m, group=group, sp=sp, gather=False)  # noqa: E731
        _replace(layer, path, make_head, group, record)
    for path in layout.head_parameters:
        owner_path, _, name = path.rpartition(".")
        owner = layer.get_submodule(owner_path) if owner_path else layer
        full = getattr(owner, name)
        if id(full) not in record.shards:
            dim = full.dim() - 1
            record.add(full, nn.Parameter(_chunk(full, dim, group)), dim, group)
        setattr(owner, name, record.shards[id(full)])


def _keep_sequence_chunk_of_other_tables(
    layer: nn.Module, layout: TPLayout, *, group: dist.ProcessGroup
) -> None:
    """A sequence-parallel embedding layer: its tables other than the vocabulary's (position
    and token-type tables) stay whole and look up every token, and are added to the
    vocabulary lookup, which leaves reduce-scattered along the sequence; a forward hook keeps
    this rank's sequence chunk of their lookups (``[..., seq, features]``) so the sum lines
    up, and what follows them in the layer (norms, dropout) runs per token on the chunk. A
    hook, not a wrapper, so that the parameters keep their names. Their gradients are then
    this rank's chunk's, summed over the group as every whole parameter of a sequence-
    parallel layer (``ParallelStage.partial``)."""
    vocabulary = {id(layer.get_submodule(path)) for path in layout.vocab_embedding}
    for module in layer.modules():
        if isinstance(module, nn.Embedding) and id(module) not in vocabulary:
            module.register_forward_hook(lambda _m, _args, out: comm.take_chunk(out, group, dim=-2))


def _apply_ulysses(layer: nn.Module, layout: TPLayout, *, group: dist.ProcessGroup) -> None:
    if not layout.ulysses_exchange:
        set_attention_core(layer, comm.ulysses_attention(_current_core(layer), group))
        return
    for path in layout.ulysses_exchange:
        parent_path, _, name = path.rpartition(".")
        parent = layer.get_submodule(parent_path) if parent_path else layer
        setattr(parent, name, UlyssesExchange(getattr(parent, name), group=group))


class UlyssesExchange(nn.Module):
    """Runs ``inner``, an attention over q, k, v ``[b, h, s, d]`` of the whole sequence, on
    sequence-split q, k, v ``[b, h, s/P, d]``: they are exchanged for this rank's heads of the
    whole sequence (``seq_to_heads``) and the output goes back (``heads_to_seq``).

    Keyword tensors (or None) index heads in dim 1 and are cut to this rank's heads (a single
    head there applies to all and passes whole). What they derive from (Swin's position table,
    the key and value biases) stays whole and gets only this rank's heads' share of the
    gradient: a partial gradient, summed over the group like those of the projections.
    """

    def __init__(self, inner: nn.Module, *, group: dist.ProcessGroup) -> None:
        super().__init__()
        self.inner, self.group = inner, group

    def forward(
        self,
        q_bhsd: torch.Tensor,
        k_bhsd: torch.Tensor,
        v_bhsd: torch.Tensor,
        **per_head: torch.Tensor | None,
    ) -> torch.Tensor:
        q, k, v = (comm.seq_to_heads(t, self.group) for t in (q_bhsd, k_bhsd, v_bhsd))
        local = {name: _local_heads(t, self.group) for name, t in per_head.items()}
        return comm.heads_to_seq(self.inner(q, k, v, **local), self.group)


def _local_heads(x: torch.Tensor | None, group: dist.ProcessGroup) -> torch.Tensor | None:
    """This rank's heads (dim 1) of ``x``; autograd's chunk, so the gradient stays local."""
    if x is None or x.shape[1] == 1:
        return x
    size, rank = dist.get_world_size(group), dist.get_rank(group)
    if x.shape[1] % size:
        raise ValueError(
            f"Ulysses degree {size} does not divide the {x.shape[1]} heads of a "
            f"{tuple(x.shape)} per-head tensor"
        )
    return x.chunk(size, dim=1)[rank]


def _replace(
    layer: nn.Module,
    path: str,
    make: Callable[[nn.Module], nn.Module],
    group: dist.ProcessGroup,
    record: ShardRecord,
) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = layer.get_submodule(parent_path) if parent_path else layer
    full = getattr(parent, name)
    originals = {
        n: getattr(full, n) for n in ("weight", "bias") if getattr(full, n, None) is not None
    }
    replacement = make(full)
    for attr, original in originals.items():
        dim = replacement.shard_dims.get(attr)
        if dim is None:
            record.sources[id(getattr(replacement, attr))] = original
            continue
        if id(original) in record.shards:  # tied to a weight sharded earlier: reuse that shard
            setattr(replacement, attr, record.shards[id(original)])
        else:
            record.add(original, getattr(replacement, attr), dim, group)
    setattr(parent, name, replacement)


def _current_core(layer: nn.Module):  # type: ignore[no-untyped-def]
    from partita.models.attention import Attends, sdpa_attention

    cores = [m.core for m in layer.modules() if isinstance(m, Attends)]
    return cores[0] if cores else sdpa_attention
