"""The progress line: redrawn on a terminal, whole lines in logs."""

from __future__ import annotations

import io
import math

import pytest

from partita.executor.progress import Progress, format_duration, format_rate


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run(progress: Progress, steps: int, *, items: int = 256, time_s: float = 0.05) -> None:
    for step in range(steps):
        progress.update(step, 6.0 - 0.1 * step, time_s, items)
    progress.close()


def test_a_log_gets_whole_lines_for_the_first_every_nth_and_last_step() -> None:
    stream = io.StringIO()
    _run(Progress(10, stream=stream, every=4), 10)
    lines = stream.getvalue().splitlines()
    assert [line.split(" | ")[0] for line in lines] == [
        "step 1/10",
        "step 4/10",
        "step 8/10",
        "step 10/10",
    ]
    assert "\r" not in stream.getvalue()


def test_a_line_shows_loss_step_time_throughput_and_eta() -> None:
    stream = io.StringIO()
    progress = Progress(10, stream=stream, every=1)
    progress.update(0, 6.25, 0.5, 256)  # warm-up, left out of throughput and ETA
    progress.update(1, 6.14, 0.047, 256)
    second = stream.getvalue().splitlines()[1]
    assert second == "step 2/10 | loss 6.1400 | 47.0 ms/step | 5.45k tokens/s | ETA 0:00:00"


def test_eta_counts_the_remaining_steps_at_the_mean_step_time() -> None:
    stream = io.StringIO()
    progress = Progress(1000, unit="samples", stream=stream, every=1)
    progress.update(0, 1.0, 9.0, 8)
    progress.update(1, 1.0, 2.0, 8)
    progress.update(2, 1.0, 4.0, 8)
    last = stream.getvalue().splitlines()[-1]
    assert last.endswith("2.67 samples/s | ETA 0:49:51")  # 997 steps x 3 s
    assert "4.00 s/step" in last


def test_the_first_step_alone_gives_its_own_throughput() -> None:
    stream = io.StringIO()
    Progress(3, stream=stream).update(0, 2.0, 0.5, 100)
    assert "200 tokens/s | ETA 0:00:01" in stream.getvalue()


def test_a_log_gets_about_twenty_lines_by_default() -> None:
    stream = io.StringIO()
    _run(Progress(1000, stream=stream), 1000)
    assert 20 <= len(stream.getvalue().splitlines()) <= 22


def test_close_logs_the_last_update_when_it_was_not_due() -> None:
    stream = io.StringIO()
    _run(Progress(10, stream=stream, every=5), 7)  # stopped early, e.g. on an error
    assert stream.getvalue().splitlines()[-1].startswith("step 7/10")


def test_a_terminal_line_is_redrawn_in_place_and_ended_on_close() -> None:
    stream = _Terminal()
    progress = Progress(3, stream=stream)
    progress.update(0, 10.5, 1.5, 100)
    progress.update(1, 2.0, 0.02, 100)
    text = stream.getvalue()
    assert text.count("\r") == 2
    assert "\n" not in text
    first, second = text.split("\r")[1:]
    # The shorter second line is padded to cover the first.
    assert len(second) == len(first)
    assert second.rstrip().startswith("step 2/3 | loss 2.0000 | 20.0 ms/step")
    progress.close()
    assert stream.getvalue().endswith("\n")


def test_non_finite_and_missing_losses_show_as_not_available() -> None:
    stream = io.StringIO()
    progress = Progress(2, stream=stream, every=1)
    progress.update(0, math.nan, 0.1, 1)
    progress.update(1, None, 0.1, 1)
    assert stream.getvalue().count("loss n/a") == 2


def test_disabled_progress_writes_nothing() -> None:
    stream = _Terminal()
    _run(Progress(5, stream=stream, enabled=False), 5)
    assert stream.getvalue() == ""


def test_close_is_idempotent_and_updates_after_it_are_silent() -> None:
    stream = io.StringIO()
    with Progress(2, stream=stream) as progress:
        progress.update(0, 1.0, 0.1, 1)
    progress.close()
    progress.update(1, 1.0, 0.1, 1)
    assert len(stream.getvalue().splitlines()) == 1


def test_zero_time_gives_an_unknown_rate_rather_than_an_error() -> None:
    stream = io.StringIO()
    Progress(4, stream=stream).update(0, 1.0, 0.0, 10)
    assert "? tokens/s | ETA ?" in stream.getvalue()


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="total_steps"):
        Progress(-1)
    with pytest.raises(ValueError, match="every"):
        Progress(3, every=0)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0:00:00"), (59.6, "0:01:00"), (3725, "1:02:05"), (math.inf, "?"), (-1, "?")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("rate", "text"), [(0.5, "0.5"), (999, "999"), (5446.8, "5.45k"), (2.5e6, "2.5M"), (3e9, "3G")]
)
def test_format_rate(rate: float, text: str) -> None:
    assert format_rate(rate) == text
