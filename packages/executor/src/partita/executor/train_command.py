"""``partita train``: run a plan on torch.distributed, launched with torchrun.

Outside torchrun it checks the plan against the model and the number of processes first
(nothing starts on a bad plan), then starts ``--nproc`` ranks with torchrun on this machine
and waits. Inside a torchrun the user started (multi-node), it runs as one of the ranks.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

from partita.formats.cli import EXIT_OK, Command

EXIT_FAILED = 1


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
        return worker.main(forwarded)
    nproc = _check_before_launch(args)
    run_dir.mkdir(parents=True, exist_ok=True)
    print(f"partita train: {nproc} processes, run folder {run_dir}", file=sys.stderr)
    return _launch(nproc, forwarded)


def _check_before_launch(args: argparse.Namespace) -> int:
    from partita.executor.trainer import check_supported
    from partita.formats import Plan, load, validate_plan
    from partita.models.api import describe_model

    plan = load(args.plan, Plan)
    nproc = args.nproc or plan.world_size
    try:
        validate_plan(plan, world_size=nproc, model=describe_model(args.model))
        check_supported(plan)
    except ValueError as error:
        raise ValueError(f"{args.plan}: {error}") from None
    if args.data != "synthetic" and not Path(args.data).is_file():
        raise ValueError(f"--data: no such text file {args.data!r}")
    return nproc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _launch(nproc: int, forwarded: list[str]) -> int:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(nproc),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(_free_port()),
        "--max-restarts",
        "0",
        "-m",
        "partita.executor.worker",
        *forwarded,
    ]
    # One thread per rank; torch's C++ notices (e.g. from the memory profiler) stay quiet.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_CPP_LOG_LEVEL": "ERROR"}
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    assert process.stderr is not None
    tail: list[str] = []
    for line in process.stderr:  # rank 0's progress and messages pass through
        sys.stderr.write(line)
        tail = [*tail[-200:], line]
    code = process.wait()
    if code != 0:
        print(f"partita train: error: {_failure(''.join(tail), code)}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _failure(log: str, code: int) -> str:
    """One line naming the rank that was lost (a worker's own report of a rank that hung or
    died), else the first failure in torchrun's summary."""
    lost = re.search(r"\] (rank\(s\) [\d, ]+ did not reach step start.*)", log)
    if lost:
        return lost.group(1).strip()
    root = log[log.find("Root Cause") :] if "Root Cause" in log else log
    match = re.search(r"rank\s*:\s*(\d+)\s*\(local_rank:\s*\d+\)\s*exitcode\s*:\s*(-?\d+)", root)
    if match:
        rank, exit_code = int(match.group(1)), int(match.group(2))
        how = f"was killed by signal {-exit_code}" if exit_code < 0 else f"exited with {exit_code}"
        return f"rank {rank} {how}; the job was stopped (exit {code})"
    return f"the job failed (torchrun exit {code}); see the messages above"


COMMAND = Command(
    name="train",
    help="train a model under a plan on torch.distributed (gloo on CPU, NCCL on GPU)",
    add_arguments=_add_arguments,
    run=_run,
)
