"""Measure this machine (or cluster) into a ``partita.hardware_profile``.

Times all_reduce, all_gather, reduce_scatter, all_to_all and p2p over a ladder of message
sizes, for every group size (powers of two, divisors of the world size) and placement
(consecutive, strided), fits latency and bandwidth, and measures matmul throughput, the
slowdown of overlapped compute and communication, and each device's memory.
See docs/profiler.md, "Hardware profile".

Outside torchrun it starts ``--nproc`` ranks on this machine. For several nodes, start it with
torchrun on each node instead, e.g.
``torchrun --nnodes 2 --nproc-per-node 8 --rdzv-endpoint HOST:PORT $(which partita) profile
hardware --out hw.json``; it then runs as one rank and rank 0 writes the file.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

PROG = "partita profile hardware"
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nproc", type=int, metavar="N", help="ranks on this machine")
    parser.add_argument(
        "--backend",
        default="auto",
        metavar="auto|gloo|nccl",
        help="auto: nccl when CUDA is available, else gloo (default auto)",
    )
    parser.add_argument("--out", required=True, metavar="FILE", help="hardware profile to write")
    parser.add_argument(
        "--sizes",
        metavar="LIST",
        help="message sizes in bytes, comma-separated, K/M/G suffixes allowed "
        "(default 1K..16M by factors of 4; --quick 4K..16M by 8)",
    )
    parser.add_argument("--repeats", type=int, help="timed repeats per point (default 15)")
    parser.add_argument("--warmup", type=int, help="untimed calls before timing (default 3)")
    parser.add_argument(
        "--quick", action="store_true", help="fewer sizes and repeats (tests, smoke checks)"
    )
    parser.add_argument("--name", default="", help="profile name (default: from the layout)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds a rank waits for the others before failing (default 60)",
    )


def parse_sizes(text: str) -> tuple[int, ...]:
    """``"4K,64K,1M"`` -> bytes; a user error raises ValueError naming the bad item."""
    sizes = []
    for item in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*([KMG]?)(?:i?B)?\s*", item, flags=re.IGNORECASE)
        if not match or int(match.group(1)) < 1:
            raise ValueError(
                f"--sizes: {item.strip()!r} is not a size in bytes (e.g. 4096, 64K, 1M)"
            )
        sizes.append(int(match.group(1)) * _UNITS[match.group(2).upper()])
    return tuple(sorted(set(sizes)))


def run(args: argparse.Namespace) -> int:
    import torch

    from partita.profiler.hardware_plan import QUICK, Settings
    from partita.profiler.hardware_timing import choose_backend

    backend = choose_backend(args.backend, cuda_available=torch.cuda.is_available())
    sizes = parse_sizes(args.sizes) if args.sizes else None
    base = QUICK if args.quick else Settings()
    Settings(  # checks the numbers before anything starts
        sizes=sizes or base.sizes,
        warmup=base.warmup if args.warmup is None else args.warmup,
        repeats=base.repeats if args.repeats is None else args.repeats,
    )
    if args.timeout <= 0:
        raise ValueError(f"--timeout must be > 0, got {args.timeout}")
    check_writable(Path(args.out))
    forwarded = _forwarded(args, backend, sizes)
    if "LOCAL_RANK" in os.environ:  # already one rank of a torchrun job
        return _as_rank(args, forwarded)
    nproc = _check_nproc(args.nproc, backend, torch.cuda.device_count())
    print(f"{PROG}: {nproc} {backend} ranks, writing {args.out}", file=sys.stderr)
    from partita.executor.launch import launch

    return launch("partita.profiler.hardware_worker", nproc, forwarded, prog=PROG)


def _as_rank(args: argparse.Namespace, forwarded: list[str]) -> int:
    from partita.profiler import hardware_worker

    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if args.nproc is not None and args.nproc != local_world:
        raise ValueError(
            f"--nproc {args.nproc} differs from torchrun's {local_world} ranks on this node "
            "(leave --nproc out under torchrun)"
        )
    return hardware_worker.main(forwarded)


def _check_nproc(nproc: int | None, backend: str, cuda_devices: int) -> int:
    if nproc is None:
        raise ValueError("--nproc is required outside torchrun (the ranks to start here)")
    if nproc < 1:
        raise ValueError(f"--nproc must be at least 1, got {nproc}")
    if backend == "nccl" and nproc > cuda_devices:
        raise ValueError(f"--nproc {nproc} exceeds the {cuda_devices} CUDA devices here (NCCL)")
    return nproc


def check_writable(out: Path) -> None:
    """Fail before measuring if ``out`` cannot be written (``save`` creates missing folders)."""
    if out.is_dir():
        raise ValueError(f"--out: {out} is a directory")
    folder = out.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(f"--out: {folder} is not a directory")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise ValueError(f"--out: cannot write in {folder}: {error.strerror}") from None


def _forwarded(args: argparse.Namespace, backend: str, sizes: tuple[int, ...] | None) -> list[str]:
    forwarded = ["--backend", backend, "--out", str(args.out), "--timeout", str(args.timeout)]
    if sizes:
        forwarded += ["--sizes", ",".join(str(s) for s in sizes)]
    if args.warmup is not None:
        forwarded += ["--warmup", str(args.warmup)]
    if args.repeats is not None:
        forwarded += ["--repeats", str(args.repeats)]
    if args.quick:
        forwarded.append("--quick")
    if args.name:
        forwarded += ["--name", args.name]
    return forwarded
