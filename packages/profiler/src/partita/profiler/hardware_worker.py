"""One rank of ``partita profile hardware``, started by torchrun (or by the user's torchrun).

Every rank runs the same measurement plan (``hardware_plan``); rank 0 shows the progress bar
on stderr, gathers everyone's timings, writes the profile atomically and prints a summary.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from importlib.metadata import PackageNotFoundError, version

import torch
import torch.distributed as dist

from partita.profiler import hardware_measure as measure
from partita.profiler.hardware_plan import QUICK, Settings, Task, build_tasks
from partita.profiler.hardware_report import (
    RankResults,
    build_profile,
    layout_from_nodes,
    layout_of,
)
from partita.profiler.hardware_timing import device_for, timer_for

PROG = "partita profile hardware"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="partita.profiler.hardware_worker")
    parser.add_argument("--backend", choices=("gloo", "nccl"), required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--sizes", type=lambda s: tuple(int(v) for v in s.split(",")))
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--name", default="")
    parser.add_argument("--timeout", type=float, default=60.0)
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    base = QUICK if args.quick else Settings()
    return Settings(
        sizes=tuple(sorted(set(args.sizes))) if args.sizes else base.sizes,
        warmup=base.warmup if args.warmup is None else args.warmup,
        repeats=base.repeats if args.repeats is None else args.repeats,
        matmul_repeats=base.matmul_repeats,
        overlap_calls=base.overlap_calls,
    )


def main(argv: list[str] | None = None, *, tear_down: bool = True) -> int:
    """Profile on this rank; ``tear_down=False`` leaves the process group to the process's
    end (the torchrun entry point, which then ends the process at once)."""
    args = parse(argv)
    settings = settings_from(args)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = device_for(args.backend, local_rank=local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(1)  # one thread per rank on shared cores, as torchrun sets
    dist.init_process_group(
        args.backend, timeout=timedelta(seconds=args.timeout), device_id=_device_id(device)
    )
    try:
        return _profile(args, settings, device)
    except ValueError as error:
        print(f"{PROG}: error: [rank {dist.get_rank()}] {error}", file=sys.stderr)
        return 2
    finally:
        if tear_down:
            dist.destroy_process_group()


def _device_id(device: torch.device) -> torch.device | None:
    return device if device.type == "cuda" else None


def _profile(args: argparse.Namespace, settings: Settings, device: torch.device) -> int:
    world = dist.group.WORLD
    assert world is not None
    rank, world_size = dist.get_rank(), dist.get_world_size()
    context = measure.Context(
        device=device, timer=timer_for(device), settings=settings, rank=rank, world=world
    )
    _check_layout(world, args.backend)
    tasks = build_tasks(world_size) if world_size > 1 else ()
    groups = dict(measure.make_groups(tasks, world, rank))
    steps = _steps(context, tasks, groups, quick=args.quick)
    results = RankResults(
        rank=rank,
        node=int(os.environ.get("GROUP_RANK", "0")),
        device_kind=device.type,
        device_name=measure.device_name(device),
        memory_bytes=measure.memory_bytes(device),
    )
    _run_steps(steps, results, enabled=rank == 0)
    gathered: list[RankResults | None] = [None] * world_size if rank == 0 else []
    dist.gather_object(results, gathered if rank == 0 else None, dst=0, group=world)
    if rank == 0:
        _write(args, settings, tasks, [r for r in gathered if r is not None])
    dist.barrier(group=world)
    return 0


def _check_layout(world: dist.ProcessGroup, backend: str) -> None:
    """Every rank learns every rank's node and fails alike if the nodes are uneven."""
    nodes: list[int] = [0] * dist.get_world_size(world)
    dist.all_gather_object(nodes, int(os.environ.get("GROUP_RANK", "0")), group=world)
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(len(nodes))))
    layout_from_nodes(nodes, backend=backend, local_world_size=local_world_size)


Step = tuple[str, Callable[[RankResults], None]]  # (what it measures, records into results)


def _steps(
    context: measure.Context,
    tasks: tuple[Task, ...],
    groups: dict[tuple[int, str], dist.ProcessGroup | None],
    *,
    quick: bool,
) -> list[Step]:
    steps: list[Step] = []
    for task in tasks:
        group = groups.get((task.group_size, task.placement))
        for nbytes in measure.task_sizes(task, context.settings.sizes):
            label = f"{task.op} {task.group_size} ranks {task.placement} {_size(nbytes)}"
            steps.append((label, _collective_step(context, task, group, nbytes)))
    for dtype in measure.matmul_dtypes(context.device):
        steps.append((f"matmul {dtype}", _matmul_step(context, dtype, quick)))
    steps.append(("memory bandwidth (copy)", _memory_bandwidth_step(context, quick)))
    steps.append(("optimizer step (AdamW)", _optimizer_step(context, quick)))
    if tasks:
        steps.append(("DDP and FSDP wrapped models", _wrapped_step(context, quick)))
        steps.append(("ranks meeting after compute", _sync_step(context, quick)))
        steps.append(("overlap of compute and all_reduce", _overlap_step(context, quick)))
    return steps


def _size(nbytes: int) -> str:
    for unit, scale in (("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:g} {unit}"
    return f"{nbytes} B"


def _collective_step(
    context: measure.Context, task: Task, group: dist.ProcessGroup | None, nbytes: int
) -> Callable[[RankResults], None]:
    def step(results: RankResults) -> None:
        times = measure.measure_task(context, task, group, nbytes)
        if times:
            results.collectives[(task.key, nbytes)] = times

    return step


def _matmul_step(
    context: measure.Context, dtype: str, quick: bool
) -> Callable[[RankResults], None]:
    def step(results: RankResults) -> None:
        results.matmul_flops[dtype] = measure.measure_matmul(context, dtype, quick=quick)

    return step


def _memory_bandwidth_step(context: measure.Context, quick: bool) -> Callable[[RankResults], None]:
    def step(results: RankResults) -> None:
        results.memory_bandwidth = measure.measure_memory_bandwidth(context, quick=quick)

    return step


def _optimizer_step(context: measure.Context, quick: bool) -> Callable[[RankResults], None]:
    def step(results: RankResults) -> None:
        results.optimizer = measure.measure_optimizer_step(context, quick=quick)

    return step


def _wrapped_step(context: measure.Context, quick: bool) -> Callable[[RankResults], None]:
    def step(results: RankResults) -> None:
        results.wrapped = measure.measure_wrapped_models(context, quick=quick)

    return step


def _sync_step(context: measure.Context, quick: bool) -> Callable[[RankResults], None]:
    def step(results: RankResults) -> None:
        results.sync = measure.measure_sync_cost(context, quick=quick)

    return step


def _overlap_step(context: measure.Context, quick: bool) -> Callable[[RankResults], None]:
    def step(results: RankResults) -> None:
        results.overlap = measure.measure_overlap(context, quick=quick)

    return step


def _run_steps(steps: list[Step], results: RankResults, *, enabled: bool) -> None:
    from partita.profiler.progress import MeasureProgress

    progress = MeasureProgress(len(steps), enabled=enabled)
    try:
        for label, step in steps:
            start = time.perf_counter()
            step(results)
            progress.update(label, f"{(time.perf_counter() - start) * 1e3:.0f} ms")
    finally:
        progress.close()


def _write(
    args: argparse.Namespace,
    settings: Settings,
    tasks: tuple[Task, ...],
    results: list[RankResults],
) -> None:
    from partita.formats import save
    from partita.formats.summaries import summarize

    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(len(results))))
    layout = layout_of(results, backend=args.backend, local_world_size=local_world_size)
    name = args.name or f"{layout.num_nodes}x{layout.devices_per_node} {args.backend} measured"
    profile, warnings = build_profile(
        name=name, tasks=tasks, results=results, layout=layout, settings=settings, tools=_tools()
    )
    for warning in warnings:
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    path = save(profile, args.out)
    print(summarize(profile, source=str(path)), file=sys.stderr)
    print(f"hardware profile: {path}", file=sys.stderr)


def _tools() -> dict[str, str]:
    tools = {"torch": torch.__version__}
    for distribution in ("partita-profiler", "partita-formats"):
        try:
            tools[distribution] = version(distribution)
        except PackageNotFoundError:
            tools[distribution] = "0+unknown"
    return tools


if __name__ == "__main__":
    code = main(tear_down=False)
    # On success every rank has passed the closing barrier and rank 0 has written the file: end
    # without gloo's teardown, which once aborted a rank here after the file was written
    # ("terminate called without an active exception"), failing a finished job.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
