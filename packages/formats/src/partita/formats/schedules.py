"""Pipeline schedules as data: for each stage, the ordered compute actions it runs.

A schedule lists only forwards and backwards; the point-to-point transfers follow from the
dependencies (forward of micro-batch m on stage s needs stage s-1's forward of m; backward of m
on stage s needs stage s+1's backward of m). The simulator replays these lists and the
executor runs them, so what is predicted is what runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from partita.formats.common import SCHEDULES

ActionKind = Literal["F", "B"]


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    micro_batch: int

    def __str__(self) -> str:
        return f"{self.kind}{self.micro_batch}"


Schedule = tuple[tuple[Action, ...], ...]  # one tuple of actions per stage


def gpipe(num_stages: int, num_micro_batches: int) -> Schedule:
    """All forwards, then all backwards (in micro-batch order)."""
    _check(num_stages, num_micro_batches)
    forwards = tuple(Action("F", m) for m in range(num_micro_batches))
    backwards = tuple(Action("B", m) for m in range(num_micro_batches))
    return tuple(forwards + backwards for _ in range(num_stages))


def one_f_one_b(num_stages: int, num_micro_batches: int) -> Schedule:
    """PipeDream-flush: warm-up forwards, then alternate one forward and one backward.

    Stage s runs ``min(num_stages - s - 1, M)`` warm-up forwards, so at most
    ``num_stages - s`` micro-batches are in flight on it (GPipe: all M).
    """
    _check(num_stages, num_micro_batches)
    stages = []
    for stage in range(num_stages):
        warmup = min(num_stages - stage - 1, num_micro_batches)
        actions = [Action("F", m) for m in range(warmup)]
        next_forward, next_backward = warmup, 0
        while next_backward < num_micro_batches:
            if next_forward < num_micro_batches:
                actions.append(Action("F", next_forward))
                next_forward += 1
            actions.append(Action("B", next_backward))
            next_backward += 1
        stages.append(tuple(actions))
    return tuple(stages)


def build_schedule(name: str, num_stages: int, num_micro_batches: int) -> Schedule:
    if name == "gpipe":
        return gpipe(num_stages, num_micro_batches)
    if name == "1f1b":
        return one_f_one_b(num_stages, num_micro_batches)
    raise ValueError(f"unknown pipeline schedule {name!r} (known: {', '.join(SCHEDULES)})")


def max_in_flight(actions: tuple[Action, ...]) -> int:
    """Most micro-batches whose forward ran but whose backward has not, on one stage."""
    live = peak = 0
    for action in actions:
        live += 1 if action.kind == "F" else -1
        peak = max(peak, live)
    return peak


def _check(num_stages: int, num_micro_batches: int) -> None:
    if num_stages < 1 or num_micro_batches < 1:
        raise ValueError(
            f"a schedule needs at least one stage and one micro-batch, got {num_stages} stages "
            f"and {num_micro_batches} micro-batches"
        )
