"""Start a module as ``nproc`` local ranks with torchrun and turn a failure into one line.

Shared by every command that runs ranks on this machine (``partita train``, the profiler), so
they name a lost rank the same way.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence

EXIT_OK = 0
EXIT_FAILED = 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(
    module: str,
    nproc: int,
    arguments: Sequence[str],
    *,
    prog: str,
    on_failure: Callable[[str], None] | None = None,
) -> int:
    """Run ``python -m module *arguments`` on ``nproc`` local ranks; rank output passes through.

    Returns :data:`EXIT_OK`, or prints ``{prog}: error: <one line>``, hands the line to
    ``on_failure`` (e.g. to mark a report failed) and returns :data:`EXIT_FAILED`.
    """
    if nproc < 1:
        raise ValueError(f"--nproc must be at least 1, got {nproc}")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(nproc),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        "--max-restarts",
        "0",
        "-m",
        module,
        *arguments,
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
        line = failure_line("".join(tail), code)
        print(f"{prog}: error: {line}", file=sys.stderr)
        if on_failure is not None:
            on_failure(line)
        return EXIT_FAILED
    return EXIT_OK


def failure_line(log: str, code: int) -> str:
    """One line naming the rank that was lost (a worker's own report of a rank that hung or
    died), else the first failure in torchrun's summary."""
    lost = re.search(r"\] (rank\(s\) [\d, ]+ did not reach step start.*)", log)
    if lost:
        return lost.group(1).strip()
    refused = re.search(r"error: \[rank (\d+)\] (.+)", log)  # a rank's own one-line error
    if refused:
        return f"rank {refused.group(1)}: {refused.group(2).strip()}"
    root = log[log.find("Root Cause") :] if "Root Cause" in log else log
    match = re.search(r"rank\s*:\s*(\d+)\s*\(local_rank:\s*\d+\)\s*exitcode\s*:\s*(-?\d+)", root)
    if match:
        rank, exit_code = int(match.group(1)), int(match.group(2))
        how = f"was killed by signal {-exit_code}" if exit_code < 0 else f"exited with {exit_code}"
        return f"rank {rank} {how}; the job was stopped (exit {code})"
    return f"the job failed (torchrun exit {code}); see the messages above"
