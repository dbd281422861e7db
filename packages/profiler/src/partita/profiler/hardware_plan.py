"""What ``partita profile hardware`` measures: groups, placements, scopes and sizes (no torch).

Group sizes are the powers of two up to the world size, its divisors and the world size
itself. For a size ``g`` on a world of ``n`` ranks:

* **consecutive** groups are ``[0..g-1], [g..2g-1], ...`` (the innermost mesh axis);
* **strided** groups have stride ``s = n // g``: ``{r, r+s, r+2s, ...}`` for ``r < s`` (an
  outer mesh axis). When ``s`` is 1 they are the consecutive groups and are not measured twice.

Ranks left over when ``g`` does not divide ``n`` sit the measurement out. Every group of one
placement runs at the same time, as the data-parallel groups of a training step do. A group's
scope is ``inter_node`` when its ranks are on more than one node. p2p is measured between the
pairs of ``g = 2``, by ping-pong.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import get_args

from partita.formats.hardware_profile import CollectiveOp, Placement, Scope

COLLECTIVE_OPS: tuple[CollectiveOp, ...] = get_args(CollectiveOp)

KiB = 1024
MiB = 1024 * KiB
# Geometric ladders (factor 4): small sizes fix the latency, large ones the bandwidth.
DEFAULT_SIZES = tuple(KiB * 4**k for k in range(8))  # 1 KiB .. 16 MiB
# Up to 16 MiB even when quick: a few milliseconds per call stand above scheduler ticks.
QUICK_SIZES = tuple(4 * KiB * 8**k for k in range(5))  # 4 KiB .. 16 MiB


@dataclass(frozen=True)
class Settings:
    sizes: tuple[int, ...] = DEFAULT_SIZES
    warmup: int = 3
    repeats: int = 15
    matmul_repeats: int = 10
    overlap_calls: int = 20

    def __post_init__(self) -> None:
        if not self.sizes or any(size < 1 for size in self.sizes):
            raise ValueError(f"--sizes: expected sizes in bytes >= 1, got {list(self.sizes)}")
        if len(set(self.sizes)) < 2:
            raise ValueError("--sizes: a latency/bandwidth fit needs at least two distinct sizes")
        if self.warmup < 0:
            raise ValueError(f"--warmup must be >= 0, got {self.warmup}")
        if self.repeats < 3:
            raise ValueError(f"--repeats must be >= 3 (for quartiles), got {self.repeats}")


QUICK = Settings(sizes=QUICK_SIZES, warmup=1, repeats=7, matmul_repeats=5, overlap_calls=8)

# (tensors, elements per tensor) of each unit of the wrapped models timed (weights and biases
# of linear layers, so half the tensors are small), and how many units a model has: several,
# because FSDP's per-unit cost inside a model (hooks, the root's pre-forward, the wait on the
# previous unit's reduce-scatter) is about twice what one lone unit shows.
WRAPPED_UNITS = ((2, 64), (16, 64), (4, 256), (16, 256))
UNITS_PER_MODEL = 4
# Compute between the ranks' meetings when timing what a meeting costs in training (matmuls
# of SYNC_MATMUL_SIZE; on this CPU about 0, 0.7, 2.8 and 8 ms), and the meetings per timing.
SYNC_MATMULS = (0, 2, 8, 24)
SYNC_MATMUL_SIZE = 256
SYNC_MEETINGS = 20
# Rounds of (compute alone, all_reduce alone, both at once) when timing their overlap: one
# ratio per round, the median of them recorded, so that a drift of the host's speed between
# the parts of one round does not become the profile's slowdown.
OVERLAP_ROUNDS = 7


@dataclass(frozen=True)
class Task:
    """One entry of the plan: an op over all groups of one size and placement."""

    op: CollectiveOp
    group_size: int
    placement: Placement
    groups: tuple[tuple[int, ...], ...]

    @property
    def key(self) -> str:
        return f"{self.op}/{self.group_size}/{self.placement}"


def group_sizes(world_size: int) -> tuple[int, ...]:
    powers = {2**k for k in range(1, world_size.bit_length())}
    divisors = {size for size in range(2, world_size + 1) if world_size % size == 0}
    return tuple(sorted(size for size in powers | divisors if 2 <= size <= world_size))


def groups_of(world_size: int, size: int, placement: Placement) -> tuple[tuple[int, ...], ...]:
    count = world_size // size
    if placement == "consecutive":
        return tuple(tuple(range(i * size, (i + 1) * size)) for i in range(count))
    stride = count
    return tuple(tuple(r + k * stride for k in range(size)) for r in range(stride))


def placements(world_size: int, size: int) -> tuple[Placement, ...]:
    return ("consecutive",) if world_size // size == 1 else ("consecutive", "strided")


def build_tasks(world_size: int) -> tuple[Task, ...]:
    tasks: list[Task] = []
    for op in COLLECTIVE_OPS:
        sizes = (2,) if op == "p2p" else group_sizes(world_size)
        for size in sizes:
            if size > world_size:
                continue
            for placement in placements(world_size, size):
                groups = groups_of(world_size, size, placement)
                tasks.append(Task(op=op, group_size=size, placement=placement, groups=groups))
    return tuple(tasks)


def scope_of(group: Sequence[int], node_of_rank: Sequence[int]) -> Scope:
    return "inter_node" if len({node_of_rank[r] for r in group}) > 1 else "intra_node"


def element_count(nbytes: int, group_size: int, element_size: int = 4) -> int:
    """Elements of the per-rank tensor: ``nbytes`` rounded down to whole chunks of the group
    (all_gather, reduce_scatter and all_to_all split it evenly), at least one chunk."""
    chunk = group_size
    return max(chunk, (nbytes // element_size) // chunk * chunk)
