"""``partita.hardware_profile``: what was measured (or a spec sheet states) about a cluster.

Collective times follow ``time_s = latency_s + bytes / bandwidth_bytes_per_s`` where ``bytes`` is
the size of the tensor handed to the operation on one rank: the input of ``all_reduce`` and
``all_to_all``, the gathered output of ``all_gather``, the input of ``reduce_scatter`` and the
message of ``p2p``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from partita.formats.common import Precision
from partita.formats.schema import at_least, count_from, greater_than

FORMAT = "partita.hardware_profile"
VERSION = 2

CollectiveOp = Literal["all_reduce", "all_gather", "reduce_scatter", "all_to_all", "p2p"]
Placement = Literal["consecutive", "strided"]
Scope = Literal["intra_node", "inter_node"]
Origin = Literal["measured", "spec_sheet", "galvatron"]


@dataclass(frozen=True)
class Device:
    kind: Literal["cpu", "cuda"]
    name: str
    memory_bytes: int = field(metadata=greater_than(0))
    memory_bandwidth_bytes_per_s: float | None = field(default=None, metadata=greater_than(0))


@dataclass(frozen=True)
class ComputeThroughput:
    dtype: Precision
    flops_per_s: float = field(metadata=greater_than(0))
    spread: float = field(default=0.0, metadata=at_least(0))


@dataclass(frozen=True)
class TimingSample:
    bytes: int = field(metadata=greater_than(0))
    time_s: float = field(metadata=at_least(0))
    spread: float = field(default=0.0, metadata=at_least(0))


@dataclass(frozen=True)
class CollectiveProfile:
    op: CollectiveOp
    group_size: int = field(metadata=count_from(2))
    placement: Placement
    scope: Scope
    latency_s: float = field(metadata=at_least(0))
    bandwidth_bytes_per_s: float = field(metadata=greater_than(0))
    origin: Origin = "measured"
    samples: tuple[TimingSample, ...] = ()


@dataclass(frozen=True)
class OverlapSlowdown:
    """How much longer compute and a collective take when they run at the same time."""

    compute: float = field(default=1.0, metadata=at_least(1))
    communication: float = field(default=1.0, metadata=at_least(1))


@dataclass(frozen=True)
class TensorWork:
    """Seconds of work over a set of tensors on one device: ``latency_s + tensors *
    per_tensor_s + bytes * per_byte_s`` (bytes: of the parameters the work is over)."""

    latency_s: float = field(metadata=at_least(0))
    per_tensor_s: float = field(metadata=at_least(0))
    per_byte_s: float = field(metadata=at_least(0))
    origin: Origin = "measured"


@dataclass(frozen=True)
class SyncCost:
    """What a blocking collective costs in training beyond its back-to-back time: the ranks
    arrive apart (the compute before it varies between them, and all wait for the last) and it
    starts cold. ``latency_s`` per collective, plus ``compute_fraction`` of the compute since
    the ranks last met."""

    latency_s: float = field(metadata=at_least(0))
    compute_fraction: float = field(metadata=at_least(0))
    origin: Origin = "measured"


@dataclass(frozen=True)
class Measurement:
    warmup: int = field(metadata=count_from(0))
    repeats: int = field(metadata=count_from(1))
    # What each sample's time is over its repeats: ``trimmed_mean`` (from partita-profiler
    # 0.1.0 on: the mean without the highest and lowest tenth) or ``median`` (earlier files).
    statistic: Literal["median", "trimmed_mean"] = "median"
    spread: Literal["iqr_over_median"] = "iqr_over_median"


@dataclass(frozen=True)
class HardwareProfile:
    name: str
    origin: Origin
    backend: Literal["gloo", "nccl"]
    num_nodes: int = field(metadata=count_from(1))
    devices_per_node: int = field(metadata=count_from(1))
    device: Device
    compute: tuple[ComputeThroughput, ...]
    collectives: tuple[CollectiveProfile, ...]
    overlap: OverlapSlowdown = OverlapSlowdown()
    # One AdamW step over a device's parameters (fp32 master weights).
    optimizer: TensorWork | None = None
    # FSDP (ZeRO-2/3) on one unit, beyond its collective: gathering the parameters before
    # forward (copies in and out, hooks), and reduce-scattering the gradients after backward.
    fsdp_gather: TensorWork | None = None
    fsdp_reduce_scatter: TensorWork | None = None
    # DDP's reducer over a device's parameters, once a step, beyond the all-reduce of its
    # buckets: its forward and backward hooks, bucket copies and, on shared CPU cores, the
    # all-reduce's contention with the backward.
    ddp_reducer: TensorWork | None = None
    sync: SyncCost | None = None
    measurement: Measurement | None = None
    tools: dict[str, str] = field(default_factory=dict)

    @property
    def world_size(self) -> int:
        return self.num_nodes * self.devices_per_node
