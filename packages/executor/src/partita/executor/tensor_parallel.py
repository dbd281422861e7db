"""Tensor and sequence parallelism applied to one layer, from its family's ``TPLayout``.

Megatron-style, on plain tensors: column-parallel projections keep a slice of the output
features, row-parallel ones a slice of the input features; every communication is an
autograd pair from :mod:`partita.executor.comm`, with the layer's group passed explicitly.

- ``sp="none"``: column-parallel inputs are copied into the group (gradient all-reduced),
  row-parallel outputs all-reduced. Layer inputs and outputs are whole.
- ``sp="megatron"``: the layer's input and output are split along the sequence; column-
  parallel inputs are all-gathered along the sequence, row-parallel outputs reduce-scattered.
  A ``whole_sequence`` stretch of the layout (Swin's shifted windows) gets its input
  all-gathered and its output split again; the projections inside it communicate as with
  ``sp="none"``.
- ``sp="ulysses"``: weights stay whole; the sequence is split; the attention core is wrapped
  to trade sequence for heads with all-to-alls around it.

Under sequence parallelism every parameter that stays whole sees only part of the sequence,
so its gradient is a partial sum: ``ParallelModel.partial_gradient_params`` lists them for
the trainer to all-reduce over the group after backward. Whole parameters inside a
``whole_sequence`` stretch see the whole sequence: ``ShardRecord.complete`` names them.
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
from partita.models.tp_layout import TPLayout, WholeSequence


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
    partial embeddings are summed over the group."""

    def __init__(self, full: nn.Embedding, *, group: dist.ProcessGroup) -> None:
        super().__init__()
        self.group = group
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
        return comm.reduce_from_region(rows, self.group)


class GatheredInput(nn.Module):
    """Runs ``inner`` on the whole sequence: its first input (``[batch, seq shard, ...]``) is
    all-gathered along dim 1. The gradient keeps this rank's chunk without a reduction: the
    tensor-parallel projections after it all-reduce their input gradients already."""

    def __init__(self, inner: nn.Module, *, group: dist.ProcessGroup) -> None:
        super().__init__()
        self.inner, self.group = inner, group

    def forward(self, x: torch.Tensor, *args: object) -> object:
        return self.inner(comm.all_gather_sequence_no_reduce(x, self.group, dim=1), *args)


class SplitOutput(nn.Module):
    """Runs ``inner`` and keeps this rank's sequence shard of its output (dim 1); the gradient
    is all-gathered (every rank's shard of it)."""

    def __init__(self, inner: nn.Module, *, group: dist.ProcessGroup) -> None:
        super().__init__()
        self.inner, self.group = inner, group

    def forward(self, *args: object) -> torch.Tensor:
        return comm.split_sequence(self.inner(*args), self.group, dim=1)


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
    """Which parameters were split, along which dimension, over which group."""

    shards: dict[int, nn.Parameter] = field(default_factory=dict)  # id(original) -> shard
    dims: dict[int, tuple[int, dist.ProcessGroup]] = field(default_factory=dict)  # id(shard)
    # ids of whole parameters of sequence-parallel layers that see the whole sequence anyway
    # (inside a ``whole_sequence`` stretch): their gradients are complete on every rank.
    complete: set[int] = field(default_factory=set)

    def add(
        self, original: nn.Parameter, shard: nn.Parameter, dim: int, group: dist.ProcessGroup
    ) -> None:
        self.shards[id(original)] = shard
        self.dims[id(shard)] = (dim, group)


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
        set_attention_core(layer, comm.ulysses_attention(_current_core(layer), group))
        return
    if size == 1:
        return
    regions = layout.whole_sequence if sp == "megatron" else ()
    inside = tuple(path for region in regions for path in region.inside)
    for path in layout.colwise:
        mode = "none" if _under(path, inside) else sp
        _replace(
            layer,
            path,
            lambda m, mode=mode: ColumnParallelLinear(m, group=group, sp=mode, gather=False),
            group,
            record,
        )
    for path in layout.rowwise:
        mode = "none" if _under(path, inside) else sp
        make_row = lambda m, mode=mode: RowParallelLinear(m, group=group, sp=mode)  # noqa: E731
        _replace(layer, path, make_row, group, record)
    for path in layout.vocab_embedding:
        _replace(layer, path, lambda m: VocabParallelEmbedding(m, group=group), group, record)
    for path in layout.vocab_head:
        make_head = lambda m: ColumnParallelLinear(m, group=group, sp="none", gather=True)  # noqa: E731
        _replace(layer, path, make_head, group, record)
    for path in layout.head_parameters:
        owner_path, _, name = path.rpartition(".")
        owner = layer.get_submodule(owner_path) if owner_path else layer
        full = getattr(owner, name)
        if id(full) not in record.shards:
            dim = full.dim() - 1
            record.add(full, nn.Parameter(_chunk(full, dim, group)), dim, group)
        setattr(owner, name, record.shards[id(full)])
    for region in regions:
        _wrap_whole_sequence(layer, region, group=group, record=record)


def _under(path: str, prefixes: tuple[str, ...]) -> bool:
    return any(path == p or path.startswith(p + ".") for p in prefixes)


def _wrap_whole_sequence(
    layer: nn.Module, region: WholeSequence, *, group: dist.ProcessGroup, record: ShardRecord
) -> None:
    for path, wrapper in ((region.enter, GatheredInput), (region.leave, SplitOutput)):
        parent_path, _, name = path.rpartition(".")
        parent = layer.get_submodule(parent_path) if parent_path else layer
        setattr(parent, name, wrapper(getattr(parent, name), group=group))
    for path in region.inside:
        for param in layer.get_submodule(path).parameters():
            if id(param) not in record.dims:
                record.complete.add(id(param))


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
