"""Data-parallel gradient sums for DDP and ZeRO-1 layers, overlapping the backward.

The parameters of a stage's DDP and ZeRO-1 layers are put in buckets of about
``DDP_BUCKET_BYTES`` (whole layers, from the last layer back: the order the backward produces
their gradients), one bucket list per data-parallel group. Each bucket owns one flat buffer,
allocated once and kept between steps (as DDP's ``gradient_as_bucket_view``): at the start of
a step every parameter's ``.grad`` becomes a view of it (:meth:`GradientBuckets.attach`), so
autograd accumulates micro-batches into the buffer and the sum runs in place, with no copy.
During the step's last backward of the parameters' chunk (the last micro-batch's ``B`` of
that chunk on this stage, or its ``W`` where the schedule splits the backward: ``W`` computes
the weight gradients), a hook on each parameter notes its gradient; once every parameter of a
bucket has one, the bucket's sum over the group starts asynchronously while the backward goes
on. A bucket holds the layers of one chunk only (a rank of an interleaved schedule holds
several, whose last backwards come at different times: the last chunk's first, as the buckets
are ordered). Buckets start strictly in their order, so every rank of a group issues the same
collectives in the same order.
:meth:`GradientBuckets.finish` starts what did not fill (a parameter the backward did not
reach keeps a zero gradient), waits, and sums the late buckets: parameters used by several
layers of the stage (a tied table: its hook fires once per use).

The sum is a SUM, not DDP's average: the trainer scales each micro-batch's loss by its share
of the global batch's labelled tokens, so summing gives one process's gradients.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from partita.formats.common import DDP_BUCKET_BYTES


@dataclass
class _Bucket:
    group: dist.ProcessGroup
    params: list[nn.Parameter]
    chunk: int = 0
    flat: torch.Tensor = field(init=False)
    ready: int = 0
    work: dist.Work | None = None

    def __post_init__(self) -> None:
        first = self.params[0]
        assert all(p.dtype == first.dtype and p.device == first.device for p in self.params)
        self.flat = torch.zeros(
            sum(p.numel() for p in self.params), dtype=first.dtype, device=first.device
        )

    def attach(self) -> None:
        self.flat.zero_()
        offset = 0
        for param in self.params:
            param.grad = self.flat[offset : offset + param.numel()].view_as(param)
            offset += param.numel()
        self.ready, self.work = 0, None

    def start(self) -> None:
        self.work = dist.all_reduce(self.flat, group=self.group, async_op=True)


@dataclass
class GradientBuckets:
    """Buckets over ``layers``: ``(parameters of one layer, its data-parallel group)`` in
    forward order; parameters in ``after_backward`` are summed after the backward."""

    buckets: list[_Bucket] = field(default_factory=list)
    late: list[_Bucket] = field(default_factory=list)
    armed: set[int] = field(default_factory=set)  # the chunks whose last backward runs
    _next: int = 0

    @classmethod
    def over(
        cls,
        layers: list[tuple[list[nn.Parameter], dist.ProcessGroup]],
        *,
        after_backward: set[int] = frozenset(),  # type: ignore[assignment]
        bucket_bytes: int = DDP_BUCKET_BYTES,
        chunks: list[int] | None = None,
    ) -> GradientBuckets:
        """``chunks``: the chunk of each of ``layers`` (default: all in chunk 0)."""
        self = cls()
        chunk_of = chunks or [0] * len(layers)
        assert len(chunk_of) == len(layers)
        open_by_group: dict[tuple[int, int], list[nn.Parameter]] = {}
        late_by_group: dict[int, tuple[dist.ProcessGroup, list[nn.Parameter]]] = {}
        groups: dict[int, dist.ProcessGroup] = {}
        ordered: list[tuple[int, int, list[nn.Parameter]]] = []
        for (params, group), chunk in zip(reversed(layers), reversed(chunk_of), strict=True):
            if dist.get_world_size(group) == 1:
                continue
            groups[id(group)] = group
            late = [p for p in params if id(p) in after_backward]
            if late:
                late_by_group.setdefault(id(group), (group, []))[1].extend(late)
            early = [p for p in params if id(p) not in after_backward]
            if not early:
                continue
            # A layer's parameters share a bucket; a bucket closes before the layer that
            # would take it past the size (as the simulator prices them).
            bucket = open_by_group.get((id(group), chunk))
            if bucket is not None and _nbytes(bucket) + _nbytes(early) > bucket_bytes:
                bucket = None
            if bucket is None:
                bucket = open_by_group[(id(group), chunk)] = []
                ordered.append((id(group), chunk, bucket))
            bucket.extend(early)
        self.buckets = [_Bucket(groups[key], params, chunk) for key, chunk, params in ordered]
        self.late = [_Bucket(group, params) for group, params in late_by_group.values()]
        for index, bucket in enumerate(self.buckets):
            for param in bucket.params:
                param.register_post_accumulate_grad_hook(self._hook(index))  # type: ignore[arg-type]
        return self

    def attach(self) -> None:
        """Zero the buffers and make them the parameters' gradients (after the optimizer's
        ``zero_grad``, before the step's first backward)."""
        for bucket in (*self.buckets, *self.late):
            bucket.attach()
        self._next = 0
        self.armed.clear()

    def buffers(self) -> list[torch.Tensor]:
        return [bucket.flat for bucket in (*self.buckets, *self.late)]

    def arm(self, chunk: int | None = None) -> None:
        """The next backward is the step's last of ``chunk`` (None: of every chunk) on this
        stage: start sums as its buckets fill."""
        chunks = {b.chunk for b in self.buckets} if chunk is None else {chunk}
        self.armed |= chunks

    def _hook(self, index: int):  # type: ignore[no-untyped-def]
        def noted(_param: torch.Tensor) -> None:
            if self.buckets[index].chunk not in self.armed:
                return
            self.buckets[index].ready += 1
            while self._next < len(self.buckets) and self._full(self.buckets[self._next]):
                self.buckets[self._next].start()
                self._next += 1

        return noted

    @staticmethod
    def _full(bucket: _Bucket) -> bool:
        return bucket.ready >= len(bucket.params)

    def finish(self) -> None:
        """Start what did not fill (in order), wait for every sum, then sum the late
        buckets. Disarms until the next step's last backward."""
        for bucket in self.buckets[self._next :]:
            bucket.start()
        self._next = len(self.buckets)
        for bucket in self.buckets:
            assert bucket.work is not None
            bucket.work.wait()
        for bucket in self.late:
            dist.all_reduce(bucket.flat, group=bucket.group)
        self.armed.clear()


def all_reduce_flat(tensors: list[torch.Tensor], group: dist.ProcessGroup) -> None:
    """Sum ``tensors`` over ``group`` in place, as one flattened all-reduce (one collective
    instead of one per tensor: on gloo each costs a latency of hundreds of microseconds)."""
    if not tensors or dist.get_world_size(group) == 1:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, group=group)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


def _nbytes(params: list[nn.Parameter]) -> int:
    return sum(p.numel() * p.element_size() for p in params)
