"""Turn the ranks' raw timings into a ``partita.hardware_profile`` (no torch).

* A collective's time in one group at one size and repeat is the **shortest** time of the
  group's ranks: ranks that arrived early also timed their wait for the last one (skew, not
  the collective's cost), while the last one waited for nobody. Over the groups of one
  placement and scope, which ran at the same time, the **slowest** group counts, as a training
  step waits for it. Each sample is the trimmed mean over repeats (``fitting``), with its
  IQR/median.
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
    SyncCost,
    TensorWork,
    TimingSample,
)
from partita.formats.common import DDP_BUCKET_BYTES, Precision
from partita.formats.hardware_profile import Scope
from partita.profiler.fitting import LineFit, fit_line, summarize, trimmed_mean
from partita.profiler.hardware_plan import UNITS_PER_MODEL, Settings, Task, scope_of


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
    # (tensors, elements per tensor) -> seconds per repeat of an AdamW step
    optimizer: dict[tuple[int, int], list[float]] = field(default_factory=dict)
    # (tensors, elements per tensor) of each unit of a wrapped model -> plain/ddp/fsdp
    # forward/backward -> seconds per repeat
    wrapped: dict[tuple[int, int], dict[str, list[float]]] = field(default_factory=dict)
    # matmuls between meetings -> rounds/compute/collective -> seconds per meeting per repeat
    sync: dict[int, dict[str, list[float]]] = field(default_factory=dict)


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
    collectives = tuple(_collectives(tasks, ordered, layout, warnings))
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
        collectives=collectives,
        overlap=_overlap(ordered),
        optimizer=_optimizer(ordered, warnings),
        **_wrappers(ordered, collectives, layout.num_nodes * layout.devices_per_node, warnings),
        sync=_sync(ordered, warnings),
        measurement=Measurement(
            warmup=settings.warmup, repeats=settings.repeats, statistic="trimmed_mean"
        ),
        tools=tools,
    )
    return profile, warnings


def _memory_bandwidth(results: Sequence[RankResults]) -> float | None:
    """The slowest rank's median copy bandwidth (every rank steps its optimizer at once)."""
    medians = [statistics.median(r.memory_bandwidth) for r in results if r.memory_bandwidth]
    return min(medians) if medians else None


def _optimizer(results: Sequence[RankResults], warnings: list[str]) -> TensorWork | None:
    """The AdamW step's cost, fitted to the slowest timing rank's (trimmed) mean time of each
    measured set of tensors (every rank steps at once)."""
    timed = [r for r in results if r.optimizer]  # the ranks the host's cores let time it
    if not timed:
        return None
    points = {
        shape: max(trimmed_mean(r.optimizer[shape]) for r in timed) for shape in timed[0].optimizer
    }
    return _tensor_work(points, "optimizer step", warnings, relative=True)


def _extra(results: Sequence[RankResults], shape: tuple[int, int], kind: str, passes: str) -> float:
    """The slowest rank's (trimmed) mean seconds that wrapping (``kind``) adds to a pass (or
    both): repeat by repeat against the plain model timed in the same repeat."""
    names = ("forward", "backward") if passes == "both" else (passes,)

    def added(r: RankResults) -> float:
        times = r.wrapped[shape]
        per_repeat = zip(
            *(times[f"{kind}_{name}"] for name in names),
            *(times[f"plain_{name}"] for name in names),
            strict=True,
        )
        return trimmed_mean([sum(row[: len(names)]) - sum(row[len(names) :]) for row in per_repeat])

    return max(added(r) for r in results)


def _wrappers(
    results: Sequence[RankResults],
    collectives: Sequence[CollectiveProfile],
    world: int,
    warnings: list[str],
) -> dict[str, TensorWork | None]:
    """What DDP adds to a step and FSDP to a unit's gather (forward) and reduce-scatter
    (backward) beyond the compute (the unwrapped model's time) and the collectives (the
    profile's fits over all ranks): the slowest rank's (trimmed) means. FSDP's points are per unit;
    DDP's are per model (its reducer works once a step, over every parameter, in buckets of
    ``DDP_BUCKET_BYTES`` as the simulator prices them)."""
    fits = {c.op: c for c in collectives if c.group_size == world and c.scope == "intra_node"}
    found: dict[str, TensorWork | None] = {
        "ddp_reducer": None,
        "fsdp_gather": None,
        "fsdp_reduce_scatter": None,
    }
    if not results[0].wrapped:
        return found

    def collective(op: str, nbytes: float) -> float:
        fit = fits[op]
        return fit.latency_s + nbytes / fit.bandwidth_bytes_per_s

    units = UNITS_PER_MODEL
    for name, op, passes in (
        ("fsdp_gather", "all_gather", "forward"),
        ("fsdp_reduce_scatter", "reduce_scatter", "backward"),
    ):
        if op not in fits:
            continue
        points = {
            shape: max(
                _extra(results, shape, "fsdp", passes) / units
                - collective(op, shape[0] * shape[1] * 4),
                0.0,
            )
            for shape in results[0].wrapped
        }
        found[name] = _tensor_work(points, name.replace("_", " "), warnings, relative=False)
    if "all_reduce" in fits:
        points = {}
        for tensors, elements in results[0].wrapped:
            nbytes = units * tensors * elements * 4
            buckets = max(1, math.ceil(nbytes / DDP_BUCKET_BYTES))
            all_reduce = buckets * collective("all_reduce", nbytes / buckets)
            extra = _extra(results, (tensors, elements), "ddp", "both") - all_reduce
            points[(units * tensors, elements)] = max(extra, 0.0)
        found["ddp_reducer"] = _tensor_work(points, "DDP reducer", warnings, relative=False)
    return found


def _sync(results: Sequence[RankResults], warnings: list[str]) -> SyncCost | None:
    """``latency + fraction x compute`` through the excess of (compute, then meet) rounds over
    compute alone and meeting alone, against the compute: the slowest rank's (trimmed) means."""
    if not results[0].sync:
        return None
    points = []
    for count in sorted(results[0].sync):
        compute = max(trimmed_mean(r.sync[count]["compute"]) for r in results)
        # The three parts of one repeat were timed one after the other: their difference,
        # repeat by repeat, is steadier than the difference of their means on a drifting host.
        excess = max(
            trimmed_mean(
                [
                    rounds - alone - meeting
                    for rounds, alone, meeting in zip(
                        r.sync[count]["rounds"],
                        r.sync[count]["compute"],
                        r.sync[count]["collective"],
                        strict=True,
                    )
                ]
            )
            for r in results
        )
        points.append((compute, max(excess, 0.0)))
    fit = _nonnegative_least_squares(
        [(1.0, compute) for compute, _ in points],
        [max(excess, 1e-9) for _, excess in points],
        relative=False,
    )
    if fit is None:
        warnings.append("ranks meeting after compute: no cost fits; not recorded")
        return None
    latency, fraction = fit
    return SyncCost(latency_s=latency, compute_fraction=fraction)


def _tensor_work(
    points: dict[tuple[int, int], float], what: str, warnings: list[str], *, relative: bool
) -> TensorWork | None:
    """``latency + tensors * per_tensor + bytes * per_byte`` through (tensors, elements per
    tensor) -> seconds (fp32 tensors) by least squares with every term at least 0; in
    absolute error for residuals beyond a collective's fit, which may be near 0 (in relative
    error such a point alone would decide the fit)."""
    if len(points) < 3:
        return None
    shapes = sorted(points)
    rows = [(1.0, float(t), float(t * e * 4)) for t, e in shapes]
    values = [max(points[s], 1e-9) for s in shapes]
    coefficients = _nonnegative_least_squares(rows, values, relative=relative)
    if coefficients is None:
        warnings.append(f"{what}: no cost that grows with tensors or bytes fits; not recorded")
        return None
    latency, per_tensor, per_byte = coefficients
    return TensorWork(latency_s=latency, per_tensor_s=per_tensor, per_byte_s=per_byte)


def _nonnegative_least_squares(
    rows: list[tuple[float, ...]], values: list[float], *, relative: bool = True
) -> tuple[float, ...] | None:
    """The best fit of ``rows @ x = values`` in relative error with ``x >= 0``: among the
    fits over every subset of the columns, the best one whose coefficients are all >= 0
    (three columns: eight fits); None when none is."""
    import itertools

    import torch

    matrix = torch.tensor(rows, dtype=torch.float64)
    target = torch.tensor(values, dtype=torch.float64)
    # Relative: small and large times weigh alike. Absolute: scaled to the largest value.
    weights = target if relative else torch.full_like(target, float(target.abs().max()) or 1.0)
    scaled = matrix / weights[:, None]
    goal = target / weights
    best: tuple[float, tuple[float, ...]] | None = None
    columns = range(matrix.shape[1])
    for size in range(1, len(columns) + 1):
        for subset in itertools.combinations(columns, size):
            fit = torch.linalg.lstsq(scaled[:, list(subset)], goal).solution
            if bool((fit < 0).any()):
                continue
            residual = float(((scaled[:, list(subset)] @ fit - goal) ** 2).sum())
            full = [0.0] * len(columns)
            for column, value in zip(subset, fit.tolist(), strict=True):
                full[column] = value
            if best is None or residual < best[0]:
                best = (residual, tuple(full))
    return None if best is None else best[1]


def _compute(results: Sequence[RankResults]) -> Iterable[ComputeThroughput]:
    for dtype in results[0].matmul_flops:
        pooled = [v for r in results for v in r.matmul_flops.get(dtype, [])]
        if pooled:
            summary = summarize(pooled)
            yield ComputeThroughput(
                dtype=cast(Precision, dtype), flops_per_s=summary.median, spread=summary.spread
            )


def _overlap(results: Sequence[RankResults]) -> OverlapSlowdown:
    """Each rank's together/alone ratio round by round (the parts of a round were timed close
    together), the median over ranks and rounds."""
    if not results[0].overlap:
        return OverlapSlowdown()

    def ratio(kind: str) -> float:
        ratios = [
            together / alone
            for r in results
            for together, alone in zip(
                r.overlap[f"{kind}_together"], r.overlap[f"{kind}_alone"], strict=True
            )
            if alone > 0
        ]
        value = statistics.median(ratios) if ratios else 1.0
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
        samples.append(TimingSample(bytes=nbytes, time_s=summary.mean, spread=summary.spread))
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
