"""``partita train``: run a plan on torch.distributed, launched with torchrun.

Outside torchrun it checks the plan against the model and the number of processes first
(nothing starts on a bad plan), then starts ``--nproc`` ranks with torchrun on this machine
and waits. Inside a torchrun the user started (multi-node), it runs as one of the ranks.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from partita.executor.launch import launch
from partita.formats.cli import Command


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plan", required=True, metavar="PLAN", help="plan file")
    parser.add_argument("--model", required=True, metavar="PRESET|HF_DIR")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--data", default="synthetic", metavar="synthetic|TEXT_FILE")
    parser.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="processes on this machine (default: the plan's world size)",
    )
    parser.add_argument("--run-dir", metavar="DIR", help="default: runs/train-<time>")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="seconds a collective may wait before the job is failed",
    )


def _run(args: argparse.Namespace) -> int:
    from partita.executor import worker

    if args.steps < 1:
        raise ValueError("--steps must be at least 1")
    run_dir = Path(args.run_dir or f"runs/train-{time.strftime('%Y%m%d-%H%M%S')}")
    forwarded = [
        "--plan",
        str(args.plan),
        "--model",
        str(args.model),
        "--steps",
        str(args.steps),
        "--data",
        args.data,
        "--lr",
        str(args.lr),
        "--seed",
        str(args.seed),
        "--run-dir",
        str(run_dir),
        "--timeout",
        str(args.timeout),
    ]
    if "LOCAL_RANK" in os.environ:  # already one rank of a torchrun job
        # The same checks as before a launch, against the job's world size: every rank
        # refuses a bad plan with the same line before any process group starts.
        _check_before_launch(args, world_size=int(os.environ.get("WORLD_SIZE", "1")))
        return worker.main(forwarded)
    nproc = _check_before_launch(args)
    run_dir.mkdir(parents=True, exist_ok=True)
    print(f"partita train: {nproc} processes, run folder {run_dir}", file=sys.stderr)
    return launch("partita.executor.worker", nproc, forwarded, prog="partita train")


def _check_before_launch(args: argparse.Namespace, *, world_size: int | None = None) -> int:
    from partita.executor.trainer import check_supported
    from partita.formats import Plan, load, validate_plan
    from partita.models.api import describe_model

    plan = load(args.plan, Plan)
    nproc = world_size or args.nproc or plan.world_size
    try:
        validate_plan(plan, world_size=nproc, model=describe_model(args.model))
        check_supported(plan)
    except ValueError as error:
        raise ValueError(f"{args.plan}: {error}") from None
    if args.data != "synthetic" and not Path(args.data).is_file():
        raise ValueError(f"--data: no such text file {args.data!r}")
    return nproc


COMMAND = Command(
    name="train",
    help="train a model under a plan on torch.distributed (gloo on CPU, NCCL on GPU)",
    add_arguments=_add_arguments,
    run=_run,
)
