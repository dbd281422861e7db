"""A progress line per measurement, shared by ``partita profile hardware`` and ``model``."""

from __future__ import annotations

import sys
from typing import TextIO


class MeasureProgress:
    """``[ 3/16] gpt_block tp 2 megatron mb 2: fwd 0.412 ms bwd 0.830 ms`` on stderr.

    Redrawn in place on a terminal; one line per measurement anywhere else (logs, CI).
    """

    def __init__(self, total: int, *, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.total = total
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = _is_tty(self.stream)

    def update(self, what: str, result: str) -> None:
        self.done += 1
        if not self.enabled:
            return
        width = len(str(self.total))
        line = f"[{self.done:>{width}}/{self.total}] {what}: {result}"
        if self.tty:
            end = "\n" if self.done == self.total else ""
            self.stream.write(f"\r\x1b[2K{line}{end}")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty and 0 < self.done < self.total:
            self.stream.write("\n")
            self.stream.flush()


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
