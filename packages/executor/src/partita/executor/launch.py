"""Start a module as ``nproc`` local ranks with torchrun and turn a failure into one line.

Shared by every command that runs ranks on this machine (``partita train``, the profiler), so
they name a lost rank the same way.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

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
    on_interrupt: Callable[[str], None] | None = None,
    log_path: Path | None = None,
) -> int:
    """Run ``python -m module *arguments`` on ``nproc`` local ranks; rank output passes through.

    Returns :data:`EXIT_OK`, or prints ``{prog}: error: <one line>``, hands the line to
    ``on_failure`` (e.g. to mark a report failed) and returns :data:`EXIT_FAILED`. SIGINT and
    SIGTERM stop the ranks, hand ``interrupted by SIG...`` to ``on_interrupt`` and return
    128 + the signal's number, as a shell reports it.

    With ``log_path``, every line the job writes is kept there, and the terminal is spared the
    tracebacks: once a rank fails, the rest of the output (the other ranks' errors, torchrun's
    summary) goes to the log only, and the one error line names it.
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
    with _Output(log_path) as output, _StopSignals() as signals:
        process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
        assert process.stderr is not None
        try:
            for line in process.stderr:  # rank 0's progress and messages pass through
                output.write(line)
            code = process.wait()
        except _Stopped:
            _stop(process, output)
            line = f"interrupted by {signal.Signals(signals.received).name}"
            print(f"{prog}: {line}{output.where()}", file=sys.stderr)
            if on_interrupt is not None:
                on_interrupt(line)
            return 128 + signals.received
    if code != 0:
        line = failure_line(output.tail(), code)
        print(f"{prog}: error: {line}{output.where()}", file=sys.stderr)
        if on_failure is not None:
            on_failure(line)
        return EXIT_FAILED
    return EXIT_OK


# Where a failure's output starts: a rank's own one-line error, a Python traceback, or
# torchrun's report of a failed worker. Nothing after it is for the terminal.
_FAILURE_STARTS = re.compile(
    r"error: \[rank \d+\]|^Traceback \(most recent call last\)|\] failed \(exitcode"
)
# torchrun's own log lines (glog style: "W1206 23:11:38.373000 28298 file.py:1028] ...").
_AGENT_LOG = re.compile(r"^[DIWEF]\d{4} \d\d:\d\d:\d\d")


class _Output:
    """The job's stderr: to the terminal, and with a log file, everything to the log while
    the terminal gets the progress and messages up to the first failure."""

    def __init__(self, log_path: Path | None) -> None:
        self.log_path = log_path
        self._log: TextIO | None = None
        self._lines: collections.deque[str] = collections.deque(maxlen=200)
        self._quiet = False

    def __enter__(self) -> _Output:
        if self.log_path is not None:
            self._log = open(self.log_path, "a", encoding="utf-8")
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._log is not None:
            self._log.close()

    def write(self, line: str) -> None:
        self._lines.append(line)
        if self._log is None:
            sys.stderr.write(line)
            return
        self._log.write(line)
        self._log.flush()
        self._quiet = self._quiet or bool(_FAILURE_STARTS.search(line))
        if not self._quiet and not _AGENT_LOG.match(line):
            sys.stderr.write(line)

    def keep(self, text: str) -> None:
        """Output for the log only (nothing more for the terminal)."""
        self._quiet = True
        for line in text.splitlines(keepends=True):
            self.write(line)

    def tail(self) -> str:
        return "".join(self._lines)

    def where(self) -> str:
        return "" if self.log_path is None else f" (the ranks' output: {self.log_path})"


class _Stopped(BaseException):
    """SIGINT or SIGTERM reached the launcher (a BaseException, like KeyboardInterrupt, so
    that no ``except Exception`` on the way swallows it)."""


class _StopSignals:
    """While the job runs, SIGINT and SIGTERM end the launcher's wait instead of the
    launcher (its default for SIGTERM is to die without a word or a report)."""

    def __init__(self) -> None:
        self.received = 0
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: object) -> None:
        if not self.received:
            self.received = signum
            raise _Stopped

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():  # handlers live there only
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]


def _stop(process: subprocess.Popen[str], output: _Output, grace_s: float = 60.0) -> None:
    """End torchrun and its ranks: SIGTERM (it passes it on and waits for them), then SIGKILL
    if it has not ended within ``grace_s``. Its last output goes to the log only: read to
    the end, so that a full pipe cannot keep it from ending."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        rest, _ = process.communicate(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        rest, _ = process.communicate()
    output.keep(rest or "")


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
