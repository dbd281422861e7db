"""One rank of ``partita train``, started by torchrun: train, measure, report.

Rank 0 shows the progress bar and writes ``run_report.json`` and a copy of the plan into the
run folder; nothing is written elsewhere.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from partita.executor.groups import ParallelGroups
from partita.executor.trainer import LostRankError, TrainSettings, build_trainer
from partita.executor.watchdog import EXIT_LOST_RANK, Watchdog
from partita.formats import Plan, RankMemory, StepRecord, content_hash, load, save


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="partita.executor.worker")
    parser.add_argument("--plan", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--data", default="synthetic")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--timeout", type=float, default=120.0)
    return parser.parse_args(argv)


def device_and_backend() -> tuple[torch.device, str]:
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local), "nccl"
    torch.set_num_threads(1)  # torchrun does it too; one thread per rank on shared cores
    return torch.device("cpu"), "gloo"


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    device, backend = device_and_backend()
    dist.init_process_group(backend, timeout=timedelta(seconds=args.timeout))
    rank = dist.get_rank()
    watchdogs: list[Watchdog] = []  # started by _train once the model is built
    try:
        return _train(args, device, backend, watchdogs)
    except LostRankError as error:
        print(f"partita train: error: [rank {rank}] {error}", file=sys.stderr)
        return EXIT_LOST_RANK
    except RuntimeError:
        # A collective that timed out because a peer hung races the watchdog: name the
        # silent rank the same way whichever notices first.
        if not watchdogs or not watchdogs[0].silent_ranks():
            raise
        print(f"partita train: error: [rank {rank}] {watchdogs[0].diagnosis()}", file=sys.stderr)
        return EXIT_LOST_RANK
    finally:
        for watchdog in watchdogs:
            watchdog.stop()
        dist.destroy_process_group()


def _train(
    args: argparse.Namespace, device: torch.device, backend: str, watchdogs: list[Watchdog]
) -> int:
    from partita.executor.progress import Progress
    from partita.executor.report import build_run_report

    plan = load(args.plan, Plan)
    rank = dist.get_rank()
    groups = ParallelGroups(plan=plan, rank=rank, device_type=device.type)
    settings = TrainSettings(
        steps=args.steps,
        lr=args.lr,
        seed=args.seed,
        data=args.data,
        rank_timeout=timedelta(seconds=args.timeout),
    )
    trainer = build_trainer(plan=plan, source=args.model, settings=settings, groups=groups)
    progress = Progress(args.steps, unit=trainer.family.unit, enabled=rank == 0)
    watchdog = Watchdog(rank=rank, world_size=dist.get_world_size(), timeout_s=args.timeout)
    watchdogs.append(watchdog)

    def on_step(step: int, loss: float, seconds: float, items: int) -> None:
        watchdog.beat()
        progress.update(step, loss, seconds, items)

    result = trainer.run(device, on_step=on_step)
    watchdog.stop()
    progress.close()
    peaks = [0] * dist.get_world_size()
    dist.all_gather_object(peaks, result.peak_memory_bytes)
    if rank == 0:
        folder = Path(args.run_dir)
        save(plan, folder / "plan.json")
        report = build_run_report(
            model=str(args.model),
            plan_sha256=content_hash(plan),
            world_size=dist.get_world_size(),
            backend=backend,
            device=device.type,
            unit=result.unit,
            steps=[
                StepRecord(step=i, loss=loss, time_s=t, items=result.items_per_step)
                for i, (loss, t) in enumerate(zip(result.losses, result.step_times_s, strict=True))
            ],
            peak_memory=[RankMemory(rank=r, peak_bytes=int(b)) for r, b in enumerate(peaks)],
            memory_method=result.memory_method,
        )
        path = save(report, folder / "run_report.json")
        print(f"run report: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
