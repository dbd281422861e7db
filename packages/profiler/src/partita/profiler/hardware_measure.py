"""The measurements one rank takes: collectives, matmul throughput, overlap, memory.

Every measurement starts with a barrier of all ranks so they start together; ranks outside the
measured groups wait at the next barrier. Each rank keeps its own per-repeat times in a
:class:`RankResults`; rank 0 gathers them at the end (``hardware_report`` turns them into the
profile). Tensors are zeros, so repeated reductions never overflow into slower values.
"""

from __future__ import annotations

import os
import platform
import statistics
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from partita.executor.grad_sync import GradientBuckets
from partita.profiler import hardware_plan as plan
from partita.profiler.hardware_plan import Settings, Task, element_count
from partita.profiler.hardware_timing import TORCH_DTYPES, Timer, matmul_dtypes

ELEMENT_SIZE = 4  # float32 payloads
CPU_MATMUL_SIZE = 512
CUDA_MATMUL_SIZE = 4096
OVERLAP_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Context:
    device: torch.device
    timer: Timer
    settings: Settings
    rank: int
    world: dist.ProcessGroup


# --- device facts --------------------------------------------------------------------------


def memory_bytes(device: torch.device) -> int:
    """CUDA: the device's total memory. CPU: physical RAM divided by the ranks on this node."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(physical // max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{_cpu_model()} (1 thread per rank)"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine() or "CPU"


# --- collectives ---------------------------------------------------------------------------


def task_sizes(task: Task, sizes: tuple[int, ...]) -> tuple[int, ...]:
    """The bytes actually moved for each requested size (rounded to whole chunks), distinct."""
    actual = {element_count(s, task.group_size, ELEMENT_SIZE) * ELEMENT_SIZE for s in sizes}
    return tuple(sorted(actual))


def measure_task(
    context: Context, task: Task, group: dist.ProcessGroup | None, nbytes: int
) -> list[float]:
    """Per-repeat seconds of ``task.op`` at ``nbytes`` on this rank ([] if not in a group)."""
    dist.barrier(group=context.world)
    mine = next((g for g in task.groups if context.rank in g), None)
    if mine is None:
        return []
    call = _collective_call(context, task, mine, group, nbytes)
    settings = context.settings
    for _ in range(settings.warmup):
        call()
    times = [context.timer.seconds(call) for _ in range(settings.repeats)]
    if task.op == "p2p":
        times = [t / 2 for t in times]  # a ping-pong is two messages
    return times


def _collective_call(
    context: Context,
    task: Task,
    members: tuple[int, ...],
    group: dist.ProcessGroup | None,
    nbytes: int,
) -> Callable[[], object]:
    count = nbytes // ELEMENT_SIZE
    device = context.device
    full = torch.zeros(count, device=device)
    if task.op == "p2p":
        return _ping_pong(full, me=context.rank, pair=members)
    assert group is not None, task
    chunk = torch.zeros(count // task.group_size, device=device)
    if task.op == "all_reduce":
        return lambda: dist.all_reduce(full, group=group)
    if task.op == "all_gather":  # bytes: the gathered output
        return lambda: _all_gather(full, chunk, group=group)
    if task.op == "reduce_scatter":  # bytes: the input
        return lambda: _reduce_scatter(chunk, full, group=group)
    out = torch.zeros_like(full)
    return lambda: dist.all_to_all_single(out, full, group=group)


# torch 2.13 renamed these two (the old names warn on every call); older torch has only those.
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def _ping_pong(message: torch.Tensor, *, me: int, pair: tuple[int, ...]) -> Callable[[], None]:
    first, second = pair

    def call() -> None:
        if me == first:
            dist.send(message, dst=second)
            dist.recv(message, src=second)
        else:
            dist.recv(message, src=first)
            dist.send(message, dst=first)

    return call


def make_groups(
    tasks: tuple[Task, ...], world: dist.ProcessGroup, rank: int
) -> Iterator[tuple[tuple[int, str], dist.ProcessGroup | None]]:
    """This rank's process group for every (size, placement) of the plan (None: not a member).

    Every rank creates every group, in the same order, as ``new_group`` requires.
    """
    seen: set[tuple[int, str]] = set()
    world_size = dist.get_world_size(world)
    for task in tasks:
        key = (task.group_size, task.placement)
        if task.op == "p2p" or key in seen:
            continue
        seen.add(key)
        mine: dist.ProcessGroup | None = None
        for members in task.groups:
            created = world if len(members) == world_size else dist.new_group(list(members))
            if rank in members:
                mine = created
        yield key, mine


# --- compute, overlap ----------------------------------------------------------------------


def _matmul(device: torch.device, dtype: str, quick: bool) -> tuple[Callable[[], object], float]:
    n = CUDA_MATMUL_SIZE if device.type == "cuda" else CPU_MATMUL_SIZE
    if quick:
        n //= 2
    a = torch.randn(n, n, device=device).to(TORCH_DTYPES[dtype])
    b = torch.randn(n, n, device=device).to(TORCH_DTYPES[dtype])
    return (lambda: torch.mm(a, b)), 2.0 * n**3


def measure_matmul(context: Context, dtype: str, *, quick: bool) -> list[float]:
    """FLOP/s of each repeat of a square matmul, all ranks at once (as in training)."""
    call, flops = _matmul(context.device, dtype, quick)
    dist.barrier(group=context.world)
    for _ in range(2):
        call()
    times = [context.timer.seconds(call) for _ in range(context.settings.matmul_repeats)]
    return [flops / t for t in times if t > 0]


# Large enough to leave every cache; the copy reads and writes it once each.
COPY_BYTES = 64 * 2**20


def measure_memory_bandwidth(context: Context, *, quick: bool) -> list[float]:
    """Bytes/s of each repeat of a large tensor copy (read + write), all ranks at once: what
    an optimizer step, which streams parameters, gradients and states, runs at."""
    elements = (COPY_BYTES // (4 if quick else 1)) // 4
    source = torch.ones(elements, device=context.device)
    target = torch.empty_like(source)

    def copy() -> None:
        target.copy_(source)

    dist.barrier(group=context.world)
    for _ in range(2):
        copy()
    times = [context.timer.seconds(copy) for _ in range(context.settings.matmul_repeats)]
    return [2 * source.numel() * source.element_size() / t for t in times if t > 0]


# (tensors, elements per tensor) of the AdamW steps timed: few and many tensors, of the sizes
# of norms and biases and of weight matrices, so that a fixed, a per-tensor and a per-byte
# cost can be told apart (the same with --quick: the fit depends on the sizes).
OPTIMIZER_SHAPES = ((4, 1024), (64, 1024), (16, 1 << 14), (64, 1 << 14), (4, 1 << 18))


# Bytes written before each timed optimizer step, so that it finds its tensors in memory, not
# in the caches the previous repeat warmed: in training the step's passes went through the
# activations since, and the moments were last touched a step ago. Well past a core's L2 (2
# MiB on the 2-core CI host) and a GPU's (50 MiB on H100, 126 MiB on B200). On gpt-tiny's
# 68 tensors the host measured 1.96 ms warm and 2.42 ms so, where the fidelity benchmark's
# trainings ran theirs 0.47 ms (median) slower than the warm profile priced.
EVICT_BYTES = {"cpu": 64 << 20, "cuda": 256 << 20}


def cache_evictor(device: torch.device) -> Callable[[], None]:
    """A call that reads and writes ``EVICT_BYTES`` on ``device``."""
    size = EVICT_BYTES["cuda" if device.type == "cuda" else "cpu"] // 4
    buffer = torch.zeros(size, dtype=torch.float32, device=device)

    def evict() -> None:
        buffer.add_(1.0)

    return evict


def measure_optimizer_step(context: Context, *, quick: bool) -> dict[tuple[int, int], list[float]]:
    """Seconds of each repeat of an AdamW step (fp32, gradients set) over each set of
    ``OPTIMIZER_SHAPES``, all ranks at once (as in training), each after the caches were
    written over (``EVICT_BYTES``; outside the time). Where gloo ranks outnumber the host's
    cores, only as many as it has time theirs and the rest wait (empty results), as the model
    profiler's layers: 4 ranks on 2 cores stepped at once in 2.2 times what a training rank's
    step took, whose neighbours were waiting by then."""
    from partita.profiler.model_measure import host_cores

    cores = host_cores(context.device)
    timing = cores is None or context.rank < cores
    results = {}
    evict = cache_evictor(context.device) if timing else None
    for tensors, elements in OPTIMIZER_SHAPES:
        params = [
            torch.nn.Parameter(torch.randn(elements, device=context.device)) for _ in range(tensors)
        ]
        for param in params:
            param.grad = torch.randn_like(param)
        optimizer = torch.optim.AdamW(params, lr=1e-3)
        dist.barrier(group=context.world)
        for _ in range(2 if timing else 0):
            optimizer.step()
        times = []
        for _ in range(context.settings.matmul_repeats):
            if evict is not None:
                evict()
            # Every rank has written its caches over before any times its step: a rank still
            # writing slows the others' steps.
            dist.barrier(group=context.world)
            if timing:
                times.append(context.timer.seconds(optimizer.step))
        if timing:
            results[(tensors, elements)] = times
    return results


class _Stack(torch.nn.Module):
    def __init__(self, layers: int, width: int) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(width, width) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class _Model(torch.nn.Module):
    def __init__(self, units: int, layers: int, width: int) -> None:
        super().__init__()
        self.units = torch.nn.ModuleList(_Stack(layers, width) for _ in range(units))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for unit in self.units:
            x = unit(x)
        return x


def _time_passes(
    context: Context,
    module: torch.nn.Module,
    x: torch.Tensor,
    buckets: GradientBuckets | None = None,
) -> tuple[float, float]:
    """One forward and one backward; with ``buckets``, the backward sums the gradients in
    them as the executor's last backward of a step does (the wait for the sums included)."""
    out: list[torch.Tensor] = []
    if buckets is not None:
        buckets.attach()
        buckets.arm()
    forward = context.timer.seconds(lambda: out.append(module(x).sum()))

    def backward() -> None:
        out[0].backward()
        if buckets is not None:
            buckets.finish()

    return forward, context.timer.seconds(backward)


def measure_wrapped_models(
    context: Context, *, quick: bool
) -> dict[tuple[int, int], dict[str, list[float]]]:
    """Forward and backward seconds of a model of ``UNITS_PER_MODEL`` units of each shape of
    ``WRAPPED_UNITS`` (tensors, width) over the world, wrapped as the executor wraps a model:
    ``plain`` (not wrapped), ``ddp`` (the executor's gradient buckets, ``grad_sync``, summing
    while the backward runs) and ``fsdp`` (each unit and the
    root ``fully_shard``-ed without resharding after forward, as ZeRO-2: the forward gathers,
    the backward reduce-scatters). What DDP and FSDP add beyond compute and their collectives
    is fitted from these when the profile is built."""
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.fsdp import fully_shard

    ranks = list(range(dist.get_world_size(context.world)))
    mesh = DeviceMesh.from_group(context.world, context.device.type, mesh=ranks)
    repeats = context.settings.matmul_repeats
    results = {}
    for tensors, width in plan.WRAPPED_UNITS:
        width //= 2 if quick else 1
        x = torch.randn(4, width, device=context.device)
        modules: dict[str, torch.nn.Module] = {}
        buckets: dict[str, GradientBuckets] = {}
        for kind in ("plain", "ddp", "fsdp"):
            torch.manual_seed(0)
            module: torch.nn.Module = _Model(plan.UNITS_PER_MODEL, tensors // 2, width).to(
                context.device
            )
            if kind == "ddp":
                units = module.units  # type: ignore[union-attr]
                buckets[kind] = GradientBuckets.over(
                    [(list(unit.parameters()), context.world) for unit in units]
                )
            elif kind == "fsdp":
                for unit in module.units:  # type: ignore[union-attr]
                    fully_shard(unit, mesh=mesh, reshard_after_forward=False)
                fully_shard(module, mesh=mesh, reshard_after_forward=False)
            modules[kind] = module
        times: dict[str, list[float]] = {
            f"{kind}_{name}": [] for kind in modules for name in ("forward", "backward")
        }
        # The kinds take turns repeat by repeat, so that what wrapping adds is measured as the
        # difference within a repeat, which a drift of the host's speed reaches alike.
        for repeat in range(2 + repeats):
            for kind, module in modules.items():
                dist.barrier(group=context.world)
                forward, backward = _time_passes(context, module, x, buckets.get(kind))
                if repeat >= 2:
                    times[f"{kind}_forward"].append(forward)
                    times[f"{kind}_backward"].append(backward)
        results[(tensors, width * width + width)] = times  # elements: one weight and bias
    return results


def measure_sync_cost(context: Context, *, quick: bool) -> dict[int, dict[str, list[float]]]:
    """Seconds per meeting of ``SYNC_MEETINGS`` rounds of (some matmuls, then a small world
    all_reduce, where the ranks meet), of the matmuls alone (all ranks at once, not meeting)
    and of the all_reduces alone (back to back), per count of ``SYNC_MATMULS``.

    In training a blocking collective costs more than back to back: the ranks arrive apart,
    as the compute before it varies between them, and it starts cold. The excess of the
    rounds over their parts is fitted against the compute when the profile is built.
    """
    # --quick meets half as often but keeps the compute: the fraction is a slope over it, and
    # matmuls of half the size (1/8 the time) left a range the excess's scatter swamped (on
    # the 2-core host 0.0 to 0.63 within minutes, where full profiles read 0.077-0.093).
    n = plan.SYNC_MATMUL_SIZE
    a = torch.randn(n, n, device=context.device)
    small = torch.zeros(2, device=context.device)
    meetings = plan.SYNC_MEETINGS // (2 if quick else 1)

    def compute(count: int) -> None:
        for _ in range(count):
            torch.mm(a, a)

    def rounds(count: int, meet: bool) -> Callable[[], None]:
        def run() -> None:
            for _ in range(meetings):
                compute(count)
                if meet:
                    dist.all_reduce(small, group=context.world)

        return run

    def per_meeting(call: Callable[[], None]) -> float:
        dist.barrier(group=context.world)
        return context.timer.seconds(call) / meetings

    results = {
        count: {"rounds": [], "compute": [], "collective": []} for count in plan.SYNC_MATMULS
    }
    compute(2)
    # The parts of one count are timed one after the other, repeat by repeat, so that a drift
    # of the host's speed (shared cores) reaches them alike.
    for _ in range(context.settings.matmul_repeats):
        for count, parts in results.items():
            parts["rounds"].append(per_meeting(rounds(count, meet=True)))
            parts["compute"].append(per_meeting(rounds(count, meet=False)))
            parts["collective"].append(per_meeting(rounds(0, meet=True)))
    return results


def measure_overlap(context: Context, *, quick: bool) -> dict[str, list[float]]:
    """Per-call seconds (the median of each round's calls, one value per round) of a matmul
    loop and a world all_reduce loop, alone and together, in ``OVERLAP_ROUNDS`` rounds.

    Together: the all_reduce loop runs on a second thread (on CUDA, on a side stream) while the
    main thread runs matmuls until that loop ends.
    """
    calls = context.settings.overlap_calls
    compute, _ = _matmul(context.device, "fp32", quick)
    nbytes = OVERLAP_BYTES // (4 if quick else 1)
    payload = torch.zeros(nbytes // ELEMENT_SIZE, device=context.device)

    def communicate() -> None:
        dist.all_reduce(payload, group=context.world)

    parts = ("compute_alone", "communication_alone", "compute_together", "communication_together")
    results: dict[str, list[float]] = {name: [] for name in parts}
    rounds = max(1, plan.OVERLAP_ROUNDS // (2 if quick else 1))
    for _ in range(rounds):
        for name, call in (("compute_alone", compute), ("communication_alone", communicate)):
            dist.barrier(group=context.world)
            call()
            results[name].append(
                statistics.median(context.timer.seconds(call) for _ in range(calls))
            )
        dist.barrier(group=context.world)
        together_compute, together_comm = _run_together(context, compute, communicate, calls)
        results["compute_together"].append(statistics.median(together_compute))
        results["communication_together"].append(statistics.median(together_comm))
    return results


def _run_together(
    context: Context, compute: Callable[[], object], communicate: Callable[[], None], calls: int
) -> tuple[list[float], list[float]]:
    comm_times: list[float] = []
    errors: list[BaseException] = []
    side = torch.cuda.Stream(context.device) if context.device.type == "cuda" else None

    def loop() -> None:
        try:
            if side is not None:
                torch.cuda.set_device(context.device)  # the current device is per thread
                with torch.cuda.stream(side):
                    comm_times.extend(context.timer.seconds(communicate) for _ in range(calls))
            else:
                comm_times.extend(context.timer.seconds(communicate) for _ in range(calls))
        except BaseException as error:  # re-raised on the main thread
            errors.append(error)

    thread = threading.Thread(target=loop, name="partita-overlap-comm", daemon=True)
    thread.start()
    compute_times: list[float] = []
    while thread.is_alive() or not compute_times:
        compute_times.append(context.timer.seconds(compute))
        if len(compute_times) >= 50 * calls:
            break
    thread.join()
    if errors:
        raise errors[0]
    return compute_times, comm_times


def all_matmul(context: Context, *, quick: bool) -> dict[str, list[float]]:
    return {
        dtype: measure_matmul(context, dtype, quick=quick)
        for dtype in matmul_dtypes(context.device)
    }
