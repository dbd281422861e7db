"""One rank of ``partita train``, started by torchrun: train, checkpoint, measure, report.

Rank 0 shows the progress bar and writes into the run folder: the plan in effect
(``plan.json``), the run report (``run_report.json``: "running" from the start and after
every checkpoint, "completed" at the end), the step log (``steps.jsonl``); every rank takes
part in the checkpoints (``checkpoints/``). Nothing is written elsewhere.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.api import CheckpointException

from partita.executor.step_phases import median_phases
from partita.executor.trainer import (
    LostRankError,
    Trainer,
    TrainResult,
    TrainSettings,
    create_groups,
)
from partita.executor.training_run import TrainingRun
from partita.executor.watchdog import EXIT_LOST_RANK, Watchdog
from partita.formats import (
    Plan,
    RankMemory,
    RankPhases,
    TrainingSettings,
    content_hash,
    load,
    save,
)

REPORT = "run_report.json"
EXIT_BAD_INPUT = 2
EXIT_UNEXPECTED = 1


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
    parser.add_argument("--checkpoint-every", type=int, default=0)
    parser.add_argument("--no-final-checkpoint", action="store_true")
    parser.add_argument("--keep-checkpoints", type=int, default=2)
    parser.add_argument("--resume-from", metavar="CHECKPOINT_DIR")
    parser.add_argument("--attention", default="auto")
    parser.add_argument("--init", choices=("random", "pretrained"), default="random")
    return parser.parse_args(argv)


def device_and_backend() -> tuple[torch.device, str]:
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local), "nccl"
    torch.set_num_threads(1)  # torchrun does it too; one thread per rank on shared cores
    return torch.device("cpu"), "gloo"


def main(argv: list[str] | None = None, *, tear_down: bool = True) -> int:
    """Train on this rank; ``tear_down=False`` leaves the process group to the process's end
    (the torchrun entry point below, which then ends the process at once)."""
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
    except ValueError as error:  # e.g. a checkpoint that does not fit this model
        print(f"partita train: error: [rank {rank}] {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RuntimeError as error:
        # A collective that timed out because a peer hung races the watchdog: name the
        # silent rank the same way whichever notices first.
        silent = watchdogs[0].wait_for_silent_ranks() if watchdogs else []
        if not silent:
            return _unexpected(rank, error)
        diagnosis = watchdogs[0].diagnosis(silent)
        print(f"partita train: error: [rank {rank}] {diagnosis}", file=sys.stderr)
        return EXIT_LOST_RANK
    except (Exception, CheckpointException) as error:  # DCP's is a BaseException
        return _unexpected(rank, error)
    finally:
        for watchdog in watchdogs:
            watchdog.stop()
        if tear_down:
            dist.destroy_process_group()


def _unexpected(rank: int, error: Exception) -> int:
    """A failure nobody foresaw: its traceback for the run's log (the launcher keeps the
    ranks' output there), then the one line the launcher shows."""
    traceback.print_exc()
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    print(
        f"partita train: error: [rank {rank}] {type(error).__name__}: {first[:300]}",
        file=sys.stderr,
    )
    return EXIT_UNEXPECTED


def training_settings(args: argparse.Namespace) -> TrainingSettings:
    return TrainingSettings(
        steps=args.steps,
        lr=args.lr,
        adam_eps=TrainSettings.adam_eps,
        seed=args.seed,
        data=args.data,
        checkpoint_every=args.checkpoint_every,
        checkpoint_at_end=not args.no_final_checkpoint,
        init=args.init,
    )


def _train(
    args: argparse.Namespace, device: torch.device, backend: str, watchdogs: list[Watchdog]
) -> int:
    from partita.executor.progress import Progress

    plan = load(args.plan, Plan)
    rank, world = dist.get_rank(), dist.get_world_size()
    settings = training_settings(args)
    groups = create_groups(plan, args.model, rank=rank, device=device)
    trainer = Trainer(
        plan=plan,
        source=args.model,
        settings=TrainSettings(
            steps=args.steps,
            lr=args.lr,
            seed=args.seed,
            data=args.data,
            rank_timeout=timedelta(seconds=args.timeout),
            attention=args.attention,
            # A resumed run's weights come from its checkpoint: nothing to read here.
            init="random" if args.resume_from else args.init,
        ),
        groups=groups,
        device=device,
    )
    folder = Path(args.run_dir)
    progress = Progress(args.steps, unit=trainer.family.unit, enabled=rank == 0)
    run = TrainingRun(
        trainer=trainer,
        model=str(args.model),
        settings=settings,
        run_dir=folder,
        rank=rank,
        world_size=world,
        keep_checkpoints=args.keep_checkpoints,
    )
    resumed = None
    if args.resume_from:
        resumed = run.resume(args.resume_from).step
        progress.note(f"resumed from {args.resume_from} (after step {resumed})")
    watchdog = Watchdog(rank=rank, world_size=world, timeout_s=args.timeout)
    watchdogs.append(watchdog)
    writer = _ReportWriter(
        args, plan, backend, device, trainer.family.unit, settings, resumed, trainer.attention
    )
    if rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        save(plan, folder / "plan.json")
        writer.write(run, status="running")

    def on_step(step: int, loss: float, seconds: float, items: int) -> None:
        watchdog.beat()
        progress.update(step, loss, seconds, items)

    def on_checkpoint(path: Path) -> None:
        watchdog.beat()  # a save is progress too
        if rank == 0:
            writer.write(run, status="running")
            progress.note(f"checkpoint: {path}")

    run.on_checkpoint = on_checkpoint
    result = run.train(on_step=on_step)
    watchdog.stop()
    progress.close()
    # Each rank's peak and phases, in one gather.
    phases = median_phases(rank, result.step_phases_s) if result.step_phases_s else None
    gathered: list[tuple[int, RankPhases | None]] = [(0, None)] * world
    dist.all_gather_object(gathered, (result.peak_memory_bytes, phases), group=groups.world)
    if rank == 0:
        path = writer.write(
            run,
            status="completed",
            result=result,
            peaks=[peak for peak, _ in gathered],
            phases=[p for _, p in gathered if p is not None],
        )
        print(f"run report: {path}", file=sys.stderr)
    dist.barrier(group=groups.world)  # every rank ends after the report is written
    return 0


class _ReportWriter:
    """Rank 0's run report: the same header each time, the steps and status of the moment."""

    def __init__(
        self,
        args: argparse.Namespace,
        plan: Plan,
        backend: str,
        device: torch.device,
        unit: str,
        settings: TrainingSettings,
        resumed: int | None,
        attention: str,
    ) -> None:
        self.args, self.plan, self.backend, self.device = args, plan, backend, device
        self.unit, self.settings, self.resumed = unit, settings, resumed
        self.attention = attention
        self.world_size = dist.get_world_size()

    def write(
        self,
        run: TrainingRun,
        *,
        status: str,
        result: TrainResult | None = None,
        peaks: list[int] | None = None,
        phases: list[RankPhases] | None = None,
    ) -> Path:
        from partita.executor.report import build_run_report

        report = build_run_report(
            model=str(self.args.model),
            plan_sha256=content_hash(self.plan),
            world_size=self.world_size,
            backend=self.backend,  # type: ignore[arg-type]
            device=self.device.type,
            unit=self.unit,  # type: ignore[arg-type]
            steps=run.history,
            peak_memory=[RankMemory(rank=r, peak_bytes=int(b)) for r, b in enumerate(peaks or [])],
            memory_method=result.memory_method if result is not None else "",
            status=status,
            settings=self.settings,
            resumed_from_step=self.resumed,
            num_nodes=_num_nodes(),
            attention=self.attention,
            phases=phases or [],
        )
        return save(report, Path(self.args.run_dir) / REPORT)


def _num_nodes() -> int:
    """Nodes of the job: torchrun's agents (``GROUP_WORLD_SIZE``), one when not set."""
    return int(os.environ.get("GROUP_WORLD_SIZE", "1") or 1)


if __name__ == "__main__":
    code = main(tear_down=False)
    # Every rank has passed the closing barrier and rank 0 has written the report: end without
    # gloo's teardown, which sometimes aborts a rank after a finished run ("terminate called
    # without an active exception"), failing the job (seen in the fidelity run of 2026-12-06).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
