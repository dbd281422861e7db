"""A one-line training progress display: step, loss, step time, throughput and ETA.

On a terminal the line is redrawn in place with a carriage return. Anywhere else (a log file,
a CI console) redrawing would leave a mess of ``\\r`` characters, so whole lines are written
instead: for the first step, every ``every``-th step and the last one.
"""

from __future__ import annotations

import math
import sys
from typing import Literal, TextIO

__all__ = ["Progress", "format_duration", "format_rate"]

Unit = Literal["tokens", "samples"]

# Lines a log gets for a whole run when ``every`` is not given.
_LOG_LINES = 20


def format_duration(seconds: float) -> str:
    """``0:00:07`` style, or ``?`` when unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def format_rate(per_second: float) -> str:
    """Three significant digits with a k/M/G suffix: ``5.45k``."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if per_second >= scale:
            return f"{per_second / scale:.3g}{suffix}"
    return f"{per_second:.3g}"


def _format_step_time(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _format_loss(loss: float | None) -> str:
    return "n/a" if loss is None or not math.isfinite(loss) else f"{loss:.4f}"


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class Progress:
    """Progress of ``total_steps`` training steps written to ``stream`` (default stderr).

    ``update(step, ...)`` takes the 0-based index of the step just finished, as in the run
    report, and shows it as ``step {step + 1}/{total_steps}``. Throughput and ETA leave the
    first step out once there is another, like ``RunReport.throughput_per_s``: it carries the
    warm-up.
    """

    def __init__(
        self,
        total_steps: int,
        *,
        unit: Unit = "tokens",
        stream: TextIO | None = None,
        enabled: bool = True,
        every: int | None = None,
    ) -> None:
        if total_steps < 0:
            raise ValueError(f"total_steps must be >= 0, got {total_steps}")
        if every is not None and every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.total_steps = total_steps
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = _is_tty(self.stream)
        self.every = every or max(1, total_steps // _LOG_LINES)
        self._first: tuple[int, float] | None = None  # (items, seconds) of the first step
        self._items = 0  # of the steps after the first
        self._seconds = 0.0
        self._steps_seen = 0
        self._last_line = ""
        self._written = ""  # the line the stream shows last
        self._closed = False

    def update(self, step: int, loss: float | None, step_time_s: float, items: int) -> None:
        """Record the step that just finished and show it if it is due."""
        self._record(step_time_s, items)
        if not self.enabled or self._closed:
            return
        self._last_line = self._line(step, loss, step_time_s)
        if self.tty:
            self._redraw(self._last_line)
        elif self._due(step):
            self._write_line(self._last_line)

    def close(self) -> None:
        """End the display: finish the terminal line, or log the last update if it was skipped."""
        if self._closed:
            return
        self._closed = True
        if not self.enabled:
            return
        if self.tty and self._written:
            self.stream.write("\n")
        elif not self.tty and self._last_line != self._written:
            self.stream.write(self._last_line + "\n")
        self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _record(self, step_time_s: float, items: int) -> None:
        self._steps_seen += 1
        if self._first is None:
            self._first = (items, step_time_s)
        else:
            self._items += items
            self._seconds += step_time_s

    def _rate_and_mean_time(self) -> tuple[float, float]:
        items, seconds, steps = self._items, self._seconds, self._steps_seen - 1
        if steps == 0 and self._first is not None:  # only the warm-up step so far
            (items, seconds), steps = self._first, 1
        if seconds <= 0:
            return math.nan, math.nan
        return items / seconds, seconds / steps

    def _line(self, step: int, loss: float | None, step_time_s: float) -> str:
        rate, mean_time = self._rate_and_mean_time()
        remaining = max(self.total_steps - (step + 1), 0)
        eta = 0.0 if remaining == 0 else remaining * mean_time
        throughput = "?" if math.isnan(rate) else format_rate(rate)
        return (
            f"step {step + 1}/{self.total_steps} | loss {_format_loss(loss)} | "
            f"{_format_step_time(step_time_s)}/step | {throughput} {self.unit}/s | "
            f"ETA {format_duration(eta)}"
        )

    def note(self, text: str) -> None:
        """Write a line of its own (e.g. a checkpoint saved) without breaking the display."""
        if not self.enabled or self._closed:
            return
        if self.tty and self._written:
            self.stream.write("\n")
            self._written = ""
        self.stream.write(text + "\n")
        self.stream.flush()

    def _due(self, step: int) -> bool:
        # The first step shown is the first this process runs (a resumed run starts later).
        first = self._steps_seen == 1
        return first or (step + 1) % self.every == 0 or step + 1 >= self.total_steps

    def _redraw(self, line: str) -> None:
        # Spaces wipe what is left of a longer previous line; no terminal escape codes needed.
        padding = " " * max(len(self._written) - len(line), 0)
        self.stream.write("\r" + line + padding)
        self.stream.flush()
        self._written = line

    def _write_line(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()
        self._written = line
