"""Pipeline schedules as data: for each pipeline rank, the ordered compute actions it runs.

An action is a forward ``F``, a backward ``B`` or a weight-gradient pass ``W`` of one
micro-batch on one *chunk* of the rank's layers. With ``chunks`` v > 1 (interleaved 1F1B) a
rank holds v chunks; chunk c of rank r is *virtual stage* ``c * p + r`` of ``p * v`` (the
order Megatron-LM assigns them in: the layers run through every rank once per chunk). A
schedule whose actions include ``W`` splits the backward: ``B`` then computes only the input
gradient (what the previous stage waits for) and ``W`` the weight gradients, later, where the
rank would otherwise idle (Qi et al. 2023, "Zero Bubble Pipeline Parallelism"). Without ``W``
actions, ``B`` is the whole backward.

Only compute is listed; the point-to-point transfers follow from the dependencies: ``F`` of
micro-batch m on virtual stage s needs s-1's ``F`` of m; ``B`` of m on s needs s+1's ``B`` of
m (and s's own ``F``); ``W`` of m on s needs s's ``B`` of m. The simulator replays these lists
and the executor runs them, so what is predicted is what runs. :func:`replay` checks a
schedule by running it with given action times (sends never block, receives do: the
executor's semantics) and reports a deadlock naming the stuck ranks.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from partita.formats.common import SCHEDULES

ActionKind = Literal["F", "B", "W"]


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    micro_batch: int
    chunk: int = 0

    def __str__(self) -> str:
        return f"{self.kind}{self.micro_batch}" + (f".{self.chunk}" if self.chunk else "")


Schedule = tuple[tuple[Action, ...], ...]  # one tuple of actions per pipeline rank


# --- generators ------------------------------------------------------------------------------


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
        stages.append(
            _warmup_steady_cooldown(
                num_micro_batches, warmup, lambda k: Action("F", k), lambda k: Action("B", k)
            )
        )
    return tuple(stages)


def interleaved_one_f_one_b(num_stages: int, num_micro_batches: int, chunks: int) -> Schedule:
    """Megatron-LM's interleaved 1F1B: each rank holds ``chunks`` virtual stages.

    Forwards go through the micro-batches in groups of ``num_stages``: the k-th forward of a
    rank runs micro-batch ``(k // (p*v)) * p + k % p`` on chunk ``(k // p) % v``; backwards
    walk the chunks in reverse. Rank r runs ``2 (p - r - 1) + (v - 1) p`` warm-up forwards
    (at most all ``v M``), then alternates, so at most that many plus one chunk-micro-batches
    are in flight on it. The bubble shrinks v-fold: (p - 1) / (v M + p - 1) of the step.
    Needs M to be a multiple of p, as Megatron-LM does.
    """
    _check(num_stages, num_micro_batches)
    if chunks < 2:
        raise ValueError(f"interleaved 1F1B needs at least 2 chunks per rank, got {chunks}")
    if num_stages < 2:
        raise ValueError("interleaved 1F1B needs at least 2 pipeline stages")
    if num_micro_batches % num_stages:
        raise ValueError(
            f"interleaved 1F1B needs the micro-batches ({num_micro_batches}) to be a multiple "
            f"of the pipeline stages ({num_stages})"
        )
    p, v = num_stages, chunks
    total = num_micro_batches * v

    def micro_batch(k: int) -> int:
        return (k // (p * v)) * p + k % p

    def forward(k: int) -> Action:
        return Action("F", micro_batch(k), (k // p) % v)

    def backward(k: int) -> Action:
        return Action("B", micro_batch(k), v - 1 - (k // p) % v)

    stages = []
    for rank in range(p):
        warmup = min(2 * (p - rank - 1) + (v - 1) * p, total)
        stages.append(_warmup_steady_cooldown(total, warmup, forward, backward))
    return tuple(stages)


def zero_bubble_h1(num_stages: int, num_micro_batches: int) -> Schedule:
    """ZB-H1 of Qi et al. 2023: 1F1B's forwards and backwards, the backward split in B and W.

    Each stage keeps 1F1B's order of F and B; its W passes fill the time it would wait. The
    order comes from list scheduling in unit time (F = B = W = 1): at each step a stage runs
    its next F or B if that is ready (a forward only while fewer than p micro-batches hold
    activations on it: an F's are freed by its W), else its oldest pending W. Every stage then
    holds at most p micro-batches, 1F1B's first stage's count (its peak), and the bubble is
    (p - 1)(F + B - W) instead of 1F1B's (p - 1)(F + B + W): a third of it when F = B = W.
    """
    _check(num_stages, num_micro_batches)
    p, m = num_stages, num_micro_batches
    order = one_f_one_b(p, m)
    forward_end = [[-1] * m for _ in range(p)]  # unit time an action ended; -1: not yet
    backward_end = [[-1] * m for _ in range(p)]
    position, forwards, backwards, weights_done = [0] * p, [0] * p, [0] * p, [0] * p
    stages: list[list[Action]] = [[] for _ in range(p)]
    time = 0

    def ended(table: list[list[int]], stage: int, mb: int) -> bool:
        return 0 <= table[stage][mb] <= time

    while any(done < m for done in weights_done):
        for s in range(p):
            if position[s] < len(order[s]):
                action = order[s][position[s]]
                k = action.micro_batch
                if action.kind == "F":
                    ready = forwards[s] - weights_done[s] < p and (
                        s == 0 or ended(forward_end, s - 1, k)
                    )
                else:
                    ready = s == p - 1 or ended(backward_end, s + 1, k)
                if ready:
                    stages[s].append(action)
                    position[s] += 1
                    if action.kind == "F":
                        forward_end[s][k], forwards[s] = time + 1, forwards[s] + 1
                    else:
                        backward_end[s][k], backwards[s] = time + 1, backwards[s] + 1
                    continue
            if weights_done[s] < backwards[s]:
                stages[s].append(Action("W", weights_done[s]))
                weights_done[s] += 1
        time += 1
        assert time <= 3 * (m + p), "list scheduling made no progress"
    return tuple(tuple(actions) for actions in stages)


def _warmup_steady_cooldown(
    total: int,
    warmup: int,
    forward: Callable[[int], Action],
    backward: Callable[[int], Action],
) -> tuple[Action, ...]:
    actions = [forward(k) for k in range(warmup)]
    for k in range(total - warmup):
        actions += [forward(warmup + k), backward(k)]
    actions += [backward(k) for k in range(total - warmup, total)]
    return tuple(actions)


# Schedules whose backward is split in B and W.
SPLIT_SCHEDULES = ("zb-h1",)


@functools.lru_cache(maxsize=256)
def build_schedule(name: str, num_stages: int, num_micro_batches: int, chunks: int = 1) -> Schedule:
    """The schedule a plan's ``pipeline.schedule`` and ``pipeline.chunks`` name (cached: a
    schedule is immutable, and the simulator asks for the same ones many times)."""
    if name == "interleaved-1f1b":
        return interleaved_one_f_one_b(num_stages, num_micro_batches, chunks)
    if name not in SCHEDULES:
        raise ValueError(f"unknown pipeline schedule {name!r} (known: {', '.join(SCHEDULES)})")
    if chunks != 1:
        raise ValueError(f"the {name} schedule runs one chunk per rank, got {chunks}")
    if name == "gpipe":
        return gpipe(num_stages, num_micro_batches)
    if name == "1f1b":
        return one_f_one_b(num_stages, num_micro_batches)
    return zero_bubble_h1(num_stages, num_micro_batches)


# --- reading a schedule ----------------------------------------------------------------------


def num_chunks(schedule: Schedule) -> int:
    return 1 + max(a.chunk for actions in schedule for a in actions)


def splits_backward(schedule: Schedule) -> bool:
    """Whether ``B`` computes only input gradients (the weight gradients come in ``W``)."""
    return any(a.kind == "W" for actions in schedule for a in actions)


def frees_activations(schedule: Schedule) -> ActionKind:
    """The action after which a micro-batch's activations on a chunk are gone."""
    return "W" if splits_backward(schedule) else "B"


def max_in_flight(actions: tuple[Action, ...], *, split: bool | None = None) -> int:
    """Most (micro-batch, chunk) pairs whose forward ran and whose activations are still held
    on one rank: until their backward, or their W where the schedule splits the backward
    (``split`` None: where ``actions`` hold a W)."""
    release = "W" if (any(a.kind == "W" for a in actions) if split is None else split) else "B"
    live = peak = 0
    for action in actions:
        live += 1 if action.kind == "F" else -1 if action.kind == release else 0
        peak = max(peak, live)
    return peak


@dataclass(frozen=True)
class Replay:
    """When each action of a schedule ended, in a replay with given action times."""

    end: tuple[dict[Action, float], ...]  # per rank
    busy: tuple[float, ...]  # per rank

    @property
    def makespan(self) -> float:
        return max((max(e.values(), default=0.0) for e in self.end), default=0.0)

    def bubble_fraction(self, rank: int) -> float:
        return 1.0 - self.busy[rank] / self.makespan if self.makespan else 0.0


class DeadlockError(ValueError):
    """A schedule whose ranks wait on each other."""


def replay(
    schedule: Schedule,
    seconds: Mapping[str, float] | Callable[[int, Action], float] | None = None,
) -> Replay:
    """Run ``schedule`` with action times ``seconds`` (by kind, or a function of the rank and
    action; default F = B = W = 1, and B = 2 where it is the whole backward), with free and
    instant transfers: an action starts once its rank is free and its inputs have arrived.

    Raises :class:`DeadlockError` naming each stuck rank's next action and what it waits for,
    and ``ValueError`` where an action is missing or repeated.
    """
    p, v = len(schedule), num_chunks(schedule)
    split = splits_backward(schedule)
    _check_complete(schedule, v, split)
    if seconds is None:
        seconds = {"F": 1.0, "B": 1.0 if split else 2.0, "W": 1.0}
    duration = (lambda _rank, a: seconds[a.kind]) if isinstance(seconds, Mapping) else seconds
    ends: list[dict[Action, float]] = [{} for _ in range(p)]
    ended: dict[tuple[str, int, int], float] = {}  # (kind, micro-batch, virtual stage)
    position, free_at, busy = [0] * p, [0.0] * p, [0.0] * p
    last = p * v - 1
    progress = True
    while progress:
        progress = False
        for rank in range(p):
            while position[rank] < len(schedule[rank]):
                action = schedule[rank][position[rank]]
                needed = _needs(action, action.chunk * p + rank, last)
                if any(need not in ended for need in needed):
                    break
                start = max([free_at[rank], *(ended[need] for need in needed)])
                took = duration(rank, action)
                free_at[rank] = start + took
                busy[rank] += took
                ends[rank][action] = free_at[rank]
                ended[(action.kind, action.micro_batch, action.chunk * p + rank)] = free_at[rank]
                position[rank] += 1
                progress = True
    stuck = [r for r in range(p) if position[r] < len(schedule[r])]
    if stuck:
        waits = []
        for rank in stuck:
            action = schedule[rank][position[rank]]
            missing = [
                f"{kind}{mb} of virtual stage {stage}"
                for kind, mb, stage in _needs(action, action.chunk * p + rank, last)
                if (kind, mb, stage) not in ended
            ]
            waits.append(f"rank {rank} at {action} waits for {', '.join(missing)}")
        raise DeadlockError("the schedule deadlocks: " + "; ".join(waits))
    return Replay(end=tuple(ends), busy=tuple(busy))


def _needs(action: Action, stage: int, last: int) -> list[tuple[str, int, int]]:
    m = action.micro_batch
    if action.kind == "F":
        return [("F", m, stage - 1)] if stage > 0 else []
    if action.kind == "B":
        return [("F", m, stage)] + ([("B", m, stage + 1)] if stage < last else [])
    return [("B", m, stage)]


def _check_complete(schedule: Schedule, chunks: int, split: bool) -> None:
    kinds = ("F", "B", "W") if split else ("F", "B")
    for rank, actions in enumerate(schedule):
        if len(set(actions)) != len(actions):
            raise ValueError(f"rank {rank} runs an action twice")
        micro_batches = {a.micro_batch for a in actions}
        expected = {
            Action(kind, m, c)  # type: ignore[arg-type]
            for kind in kinds
            for m in micro_batches
            for c in range(chunks)
        }
        if set(actions) != expected:
            missing = sorted(str(a) for a in expected - set(actions))
            raise ValueError(f"rank {rank} misses {', '.join(missing[:4])}")


def _check(num_stages: int, num_micro_batches: int) -> None:
    if num_stages < 1 or num_micro_batches < 1:
        raise ValueError(
            f"a schedule needs at least one stage and one micro-batch, got {num_stages} stages "
            f"and {num_micro_batches} micro-batches"
        )
