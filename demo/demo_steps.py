"""Run one `partita` subcommand of the demo: a header, its own output live, and a log file.

A stage that fails ends the demo with one line naming the stage and its log (``StageFailed``);
``try_stage`` lets the caller handle an expected refusal (exit status 2, e.g. a search space in
which nothing fits the budget) instead.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

EXIT_BAD_INPUT = 2  # partita.formats.cli: a refusal with a one-line reason, not a crash


class StageFailed(Exception):
    """A stage that cannot go on; the message is the one line the demo ends with."""


@dataclass(frozen=True)
class StageResult:
    returncode: int | None  # None: timed out
    log: Path
    last_line: str  # the command's last non-empty output line (its error line on refusal)


def partita_cli() -> str:
    beside = Path(sys.executable).with_name("partita")
    found = str(beside) if beside.is_file() else shutil.which("partita")
    if found is None:
        raise StageFailed("demo: the `partita` command is not installed (run `nox -s demo`)")
    return found


def header(title: str) -> None:
    print(f"\n== {title}", flush=True)


def stage(title: str, args: list[str], *, log: Path, timeout_s: float = 600) -> StageResult:
    """Run ``partita ARGS`` under a header; any non-zero exit ends the demo."""
    result = try_stage(title, args, log=log, timeout_s=timeout_s)
    if result.returncode != 0:
        raise StageFailed(_failure_line(title, result))
    return result


def try_stage(title: str, args: list[str], *, log: Path, timeout_s: float = 600) -> StageResult:
    """Run ``partita ARGS``; exit status 2 (a refusal) is returned, anything else fails."""
    header(title)
    shown = " ".join(shlex.quote(a) for a in args)
    print(f"$ partita {shown}", flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    returncode, last = _run_teed([partita_cli(), *args], log=log, timeout_s=timeout_s)
    result = StageResult(returncode=returncode, log=log, last_line=last)
    if returncode not in (0, EXIT_BAD_INPUT):
        raise StageFailed(_failure_line(title, result))
    print(f"({time.monotonic() - started:.1f} s)", flush=True)
    return result


def _failure_line(title: str, result: StageResult) -> str:
    what = "timed out" if result.returncode is None else f"failed with exit {result.returncode}"
    reason = f": {result.last_line}" if result.last_line else ""
    return f"demo: stage '{title}' {what}{reason} (log: {result.log})"


def _run_teed(command: list[str], *, log: Path, timeout_s: float) -> tuple[int | None, str]:
    """Run ``command``, copying its stdout and stderr to our stdout and to ``log``."""
    last = [""]
    with log.open("wb") as sink:
        sink.write(f"$ {shlex.join(command)}\n".encode())
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        assert process.stdout is not None
        copier = threading.Thread(target=_copy, args=(process.stdout, sink, last), daemon=True)
        copier.start()
        try:
            returncode: int | None = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            returncode = None
        copier.join(timeout=10)
    return returncode, last[0]


def _copy(source: IO[bytes], sink: IO[bytes], last: list[str]) -> None:
    out = sys.stdout.buffer
    for line in iter(source.readline, b""):
        out.write(line)
        out.flush()
        sink.write(line)
        text = line.decode(errors="replace").strip()
        if text:
            last[0] = text
