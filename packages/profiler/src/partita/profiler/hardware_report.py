"""Turn the ranks' raw timings into a ``partita.hardware_profile`` (no torch).

* A collective's time in one group at one size and repeat is the **shortest** time of the
  group's ranks: ranks that arrived early also timed their wait for the last one (skew, not
  the collective's cost), while the last one waited for nobody. Over the groups of one
  placement and scope, which ran at the same time, the **slowest** group counts, as a training
  step waits for it. Each sample is the median over repeats, with its IQR/median.
* The samples of one (op, group size, placement, scope) are fitted by :func:`fitting.fit_line`.
* Matmul FLOP/s and the overlap loops pool the repeats of every rank (they ran at the same time).
* ``memory_bytes`` is the smallest any rank reported.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import cast

from partita.formats import (
    CollectiveProfile,
    ComputeThroughput,
    Device,
    HardwareProfile,
    Measurement,
    OverlapSlowdown,
    TimingSample,
)
from partita.formats.common import Precision
from partita.formats.hardware_profile import Scope
from partita.profiler.fitting import LineFit, fit_line, summarize
from partita.profiler.hardware_plan import Settings, Task, scope_of


@dataclass
class RankResults:
    """Raw per-repeat numbers of one rank (picklable, gathered by rank 0)."""

    rank: int
    node: int
    device_kind: str
    device_name: str
    memory_bytes: int
    collectives: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    matmul_flops: dict[str, list[float]] = field(default_factory=dict)
    overlap: dict[str, list[float]] = field(default_factory=dict)
    memory_bandwidth: list[float] = field(default_factory=list)  # bytes/s per repeat


@dataclass(frozen=True)
class Layout:
    backend: str
    num_nodes: int
    devices_per_node: int
    node_of_rank: tuple[int, ...]


def layout_of(results: Sequence[RankResults], *, backend: str, local_world_size: int) -> Layout:
    nodes = [r.node for r in sorted(results, key=lambda r: r.rank)]
    return layout_from_nodes(nodes, backend=backend, local_world_size=local_world_size)


def layout_from_nodes(nodes: Sequence[int], *, backend: str, local_world_size: int) -> Layout:
    """The cluster's shape from each rank's node; every node must run ``local_world_size``."""
    counts = {node: list(nodes).count(node) for node in set(nodes)}
    if any(count != local_world_size for count in counts.values()):
        raise ValueError(
            f"ranks per node {sorted(counts.values())} differ from LOCAL_WORLD_SIZE "
            f"{local_world_size}: every node must run the same number of ranks"
        )
    return Layout(backend, len(counts), local_world_size, tuple(nodes))


def build_profile(
    *,
    name: str,
    tasks: Sequence[Task],
    results: Sequence[RankResults],
    layout: Layout,
    settings: Settings,
    tools: dict[str, str],
) -> tuple[HardwareProfile, list[str]]:
    """The profile and the warnings met while building it."""
    warnings: list[str] = []
    if not tasks:
        warnings.append("one rank: no collectives and no overlap measured (overlap left at 1)")
    ordered = sorted(results, key=lambda r: r.rank)
    first = ordered[0]
    profile = HardwareProfile(
        name=name,
        origin="measured",
        backend="nccl" if layout.backend == "nccl" else "gloo",
        num_nodes=layout.num_nodes,
        devices_per_node=layout.devices_per_node,
        device=Device(
            kind="cuda" if first.device_kind == "cuda" else "cpu",
            name=first.device_name,
            memory_bytes=min(r.memory_bytes for r in ordered),
            memory_bandwidth_bytes_per_s=_memory_bandwidth(ordered),
        ),
        compute=tuple(_compute(ordered)),
        collectives=tuple(_collectives(tasks, ordered, layout, warnings)),
        overlap=_overlap(ordered),
        measurement=Measurement(warmup=settings.warmup, repeats=settings.repeats),
        tools=tools,
    )
    return profile, warnings


def _memory_bandwidth(results: Sequence[RankResults]) -> float | None:
    """The slowest rank's median copy bandwidth (every rank steps its optimizer at once)."""
    medians = [statistics.median(r.memory_bandwidth) for r in results if r.memory_bandwidth]
    return min(medians) if medians else None


def _compute(results: Sequence[RankResults]) -> Iterable[ComputeThroughput]:
    for dtype in results[0].matmul_flops:
        pooled = [v for r in results for v in r.matmul_flops.get(dtype, [])]
        if pooled:
            summary = summarize(pooled)
            yield ComputeThroughput(
                dtype=cast(Precision, dtype), flops_per_s=summary.median, spread=summary.spread
            )


def _overlap(results: Sequence[RankResults]) -> OverlapSlowdown:
    if not results[0].overlap:
        return OverlapSlowdown()

    def ratio(kind: str) -> float:
        together = [v for r in results for v in r.overlap[f"{kind}_together"]]
        alone = [v for r in results for v in r.overlap[f"{kind}_alone"]]
        value = statistics.median(together) / statistics.median(alone)
        return max(1.0, value) if math.isfinite(value) else 1.0

    return OverlapSlowdown(compute=ratio("compute"), communication=ratio("communication"))


def _collectives(
    tasks: Sequence[Task], results: Sequence[RankResults], layout: Layout, warnings: list[str]
) -> Iterable[CollectiveProfile]:
    for task in tasks:
        by_scope: dict[Scope, list[list[RankResults]]] = {}
        for group in task.groups:
            members = [results[r] for r in group]
            by_scope.setdefault(scope_of(group, layout.node_of_rank), []).append(members)
        for scope, groups in by_scope.items():
            samples = _samples(task, groups)
            if len(samples) < 2:
                warnings.append(f"{task.key} {scope}: fewer than two sizes measured, left out")
                continue
            fit = _fit(samples, f"{task.key} {scope}", warnings)
            yield CollectiveProfile(
                op=task.op,
                group_size=task.group_size,
                placement=task.placement,
                scope=scope,
                latency_s=fit.latency_s,
                bandwidth_bytes_per_s=fit.bandwidth_bytes_per_s,
                samples=tuple(samples),
            )


def _samples(task: Task, groups: Sequence[Sequence[RankResults]]) -> list[TimingSample]:
    sizes = sorted(nbytes for key, nbytes in groups[0][0].collectives if key == task.key)
    samples = []
    for nbytes in sizes:
        per_repeat = [
            max(_group_times(task, members, nbytes)[i] for members in groups)
            for i in range(len(groups[0][0].collectives[(task.key, nbytes)]))
        ]
        summary = summarize(per_repeat)
        samples.append(TimingSample(bytes=nbytes, time_s=summary.median, spread=summary.spread))
    return samples


def _group_times(task: Task, members: Sequence[RankResults], nbytes: int) -> list[float]:
    """Per repeat, the shortest time of the group's ranks: the rank that arrived last waited
    for nobody, so its time is the collective's own, without the others' arrival skew."""
    per_rank = [m.collectives[(task.key, nbytes)] for m in members]
    return [min(repeat) for repeat in zip(*per_rank, strict=True)]


def _fit(samples: Sequence[TimingSample], label: str, warnings: list[str]) -> LineFit:
    sizes = [s.bytes for s in samples]
    times = [max(s.time_s, 1e-12) for s in samples]
    try:
        return fit_line(sizes, times)
    except ValueError as error:
        # Keep the run: a line through the origin and the largest size (an upper bound).
        warnings.append(f"{label}: {error}; used bytes/time of the largest size instead")
        return LineFit(latency_s=0.0, bandwidth_bytes_per_s=sizes[-1] / times[-1], used=())
