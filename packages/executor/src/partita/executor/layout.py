"""Activation layouts of layers, and the redistribution between two layouts.

A layer with tensor-parallel degree ``tp`` sees a slice of the batch: a stage's ``N`` ranks
form a ``dp x tp`` grid with tp innermost (mesh order ``(pp, dp, tp)``), so local rank ``r``
holds batch slice ``r // tp`` of ``N / tp`` and shares it with its tp group. Under sequence
parallelism (``tp > 1``) the per-token activations are also split along the sequence in the
tp group. T5's position biases (``*_position_bias``, ``[1, heads, seq, seq]``, the same for
every sample) are split along the heads in the tp group, except under Ulysses (whole).

Going from layout A to layout B (every step an autograd pair, so backward is the reverse):

1. A's sequence split is gathered in A's tp group (backward: this rank's chunk).
2. The batch moves from A's slicing to B's. With ``tp_a < tp_b`` (degrees nest) my slice under
   B is the concatenation of the slices of the ``tp_b / tp_a`` ranks of my tp_b group with
   the same ``r mod tp_a``: gather them (backward: my own chunk; gradients of values every
   rank of a tp group uses are the same on each). With ``tp_a > tp_b`` I take chunk
   ``(r mod tp_a) // tp_b`` of my slice; backward all-gathers over the same kind of sub-group
   (of my tp_a group, ranks with the same ``r mod tp_b``).
3. B's sequence split is taken in B's tp group (backward: all-gather).
4. Position biases: gathered over A's heads (backward: reduce-scatter, sum), then B's heads
   chunk taken (backward: zero elsewhere). The sums over every rank's gradient then still
   add up to the whole batch's, which the producing layer's data-parallel sum completes.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from partita.executor import comm
from partita.executor.groups import LayerGroups, ParallelGroups
from partita.executor.setups import SPLIT_KEYS  # what each sp mode keeps split
from partita.formats import Plan
from partita.models.layered import Activations

# Activations the same for every sample (``[1, ...]``): never split along the batch.
BROADCAST_SUFFIXES = ("_positions", "_position_bias")
HEAD_SPLIT_SUFFIX = "_position_bias"  # [1, heads, seq_q, seq_k], split along the heads


@dataclass(frozen=True)
class Layout:
    """How one layer's activations lie on the ranks of its stage."""

    tp: int
    sp: str
    groups: LayerGroups = field(compare=False)

    @property
    def split_keys(self) -> tuple[str, ...]:
        return SPLIT_KEYS[self.sp] if self.sp != "none" and self.tp > 1 else ()

    @property
    def head_shards(self) -> int:
        return 1 if self.sp == "ulysses" else self.tp

    @property
    def key(self) -> tuple[int, tuple[str, ...]]:
        return self.tp, self.split_keys


def check_nested(plan: Plan, degrees: set[int]) -> None:
    """Layer-wise plans with several tensor-parallel degrees: the degrees must divide each
    other and tp must be the innermost mesh axis, pp the outermost (a stage's ranks then stay
    the same whatever the degree, and batch slices nest)."""
    if len(degrees) <= 1:
        return
    if tuple(plan.mesh_axis_order) != ("pp", "dp", "tp"):
        raise ValueError(
            "mesh_axis_order: layers with different tp degrees "
            f"({', '.join(map(str, sorted(degrees)))}) need the order [pp, dp, tp], got "
            f"[{', '.join(plan.mesh_axis_order)}]"
        )
    ordered = sorted(degrees)
    for small, large in itertools.pairwise(ordered):
        if large % small:
            raise ValueError(
                f"layers[].tp: degrees {small} and {large} do not nest (each must divide the "
                "next), so batch slices cannot be redistributed between those layers"
            )


def redistribute(
    acts: Activations, src: Layout, dst: Layout, groups: ParallelGroups
) -> Activations:
    """``acts`` laid out for ``src`` -> laid out for ``dst`` (see the module docstring)."""
    if src.key == dst.key and src.head_shards == dst.head_shards:
        return acts
    out = dict(acts)
    for key in src.split_keys:
        if key in out:
            out[key] = comm.gather_from_region(out[key], src.groups.tp, dim=1)
    if src.tp != dst.tp:
        for key, x in out.items():
            if not key.endswith(BROADCAST_SUFFIXES):
                out[key] = _move_batch(x, src.tp, dst.tp, groups)
    for key in dst.split_keys:
        if key in out:
            out[key] = comm.split_sequence(out[key], dst.groups.tp, dim=1)
    if src.head_shards != dst.head_shards:
        for key, x in out.items():
            if key.endswith(HEAD_SPLIT_SUFFIX):
                out[key] = _move_heads(x, src, dst)
    return out


def _move_batch(x: torch.Tensor, tp_a: int, tp_b: int, groups: ParallelGroups) -> torch.Tensor:
    if tp_a < tp_b:
        return comm.gather_from_region(x, groups.sub_group(tp_a, tp_b), dim=0)
    return comm.scatter_to_region(x, groups.sub_group(tp_b, tp_a), dim=0)


def _move_heads(x: torch.Tensor, src: Layout, dst: Layout) -> torch.Tensor:
    if src.head_shards > 1:
        x = comm.gather_sequence(x, src.groups.tp, dim=1)  # all-gather; reduce-scatter back
    if dst.head_shards > 1:
        x = _TakeChunk.apply(x, dst.groups.tp, 1)
    return x


class _TakeChunk(torch.autograd.Function):
    """This rank's chunk along ``dim``; backward puts the gradient back, zero elsewhere."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: dist.ProcessGroup, dim: int) -> torch.Tensor:
        size, rank = dist.get_world_size(group), dist.get_rank(group)
        ctx.shape, ctx.dim, ctx.size, ctx.rank = x.shape, dim, size, rank
        return x.chunk(size, dim=dim)[rank].contiguous()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        full = grad.new_zeros(ctx.shape)
        full.chunk(ctx.size, dim=ctx.dim)[ctx.rank].copy_(grad)
        return full, None, None
