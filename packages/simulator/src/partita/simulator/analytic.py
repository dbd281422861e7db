"""Closed-form iteration time, for the search (fast) and to check the event simulation.

A pipeline of p ranks holding v chunks each (v = 1 but under interleaved 1F1B) runs M
micro-batches. Rank k spends ``r_k = sum over its chunks of (f + b)`` per micro-batch; the
step takes ``M * max_k r_k`` plus the bubble: the other virtual stages' work, a v-th of it per
round (``(sum of every virtual stage's f + b - the slowest rank's) / v``). This is GPipe's and
1F1B's ``sum_s(f_s + b_s) + (M - 1) max_s(f_s + b_s)`` when v = 1, and Megatron's interleaved
bubble ``(p - 1) / v`` stage times when the stages are equal. A split backward (zero-bubble
schedules) takes each stage's W out of the bubble twice: ZB-H1's ``(p - 1)(F + B - W)``
against 1F1B's ``(p - 1)(F + B + W)`` (Qi et al. 2023); where W runs the whole backward again
(``StageWork.whole_weight_pass``) it also adds to every micro-batch. Added: the p2p
transfers on the critical path (one forward and one backward per boundary, which the sends
cannot hide since the receiver waits), the part of each rank's gradient sync that its last
backward does not hide, the optimizer step and what follows it.
"""

from __future__ import annotations

from collections.abc import Sequence

from partita.formats.schedules import Schedule, num_chunks, splits_backward
from partita.simulator.workload import StageWork


def iteration_time(
    stages: Sequence[StageWork], *, num_micro_batches: int, schedule: Schedule | None = None
) -> float:
    """``stages`` are the virtual stages in pipeline order; ``schedule`` (default: one chunk
    per rank, backward whole) says how they sit on the ranks."""
    chunks = num_chunks(schedule) if schedule is not None else 1
    split = splits_backward(schedule) if schedule is not None else False
    ranks = len(stages) // chunks
    per_rank = [sum(_time(s, split) for s in stages[rank::ranks]) for rank in range(ranks)]
    slowest = max(range(ranks), key=lambda rank: per_rank[rank])
    in_bubble = [_in_bubble(s) if split else _time(s, split) for s in stages]
    bubble = (sum(in_bubble) - sum(in_bubble[slowest::ranks])) / chunks
    pipeline = num_micro_batches * per_rank[slowest] + bubble
    transfers = sum(s.send_forward_s + s.send_backward_s for s in stages)
    tail = max(
        max(_exposed_sync(s) for s in stages[rank::ranks])
        + sum(s.tail_s for s in stages[rank::ranks])
        for rank in range(ranks)
    )
    return pipeline + transfers + tail


def _time(stage: StageWork, split: bool) -> float:
    """Per micro-batch: forward and backward, or forward, B and W where the backward is split
    (more than the backward where W runs it again: ``StageWork.whole_weight_pass``)."""
    if not split:
        return stage.forward_s + stage.backward_s
    weights = sum(layer.weight_backward_s for layer in stage.layers)
    return stage.forward_s + stage.backward_s - weights + _weight_pass(stage)


def _in_bubble(stage: StageWork) -> float:
    """A split backward's share of the bubble per stage: F + B - W, the waits its W passes
    fill (Qi et al.), but never under B: the warm-up wait for the input-gradient chain
    coming back, which no W of the stage can fill (a W larger than F + B, as where it runs
    the whole backward again)."""
    weights = sum(layer.weight_backward_s for layer in stage.layers)
    input_pass = stage.backward_s - weights
    return max(stage.forward_s + input_pass - _weight_pass(stage), input_pass)


def _weight_pass(stage: StageWork) -> float:
    return sum(stage.weight_pass_s(layer) for layer in stage.layers)


def _exposed_sync(stage: StageWork) -> float:
    """Gradient sync left after the stage's last backward (serial on one stream)."""
    finish = 0.0  # time since the last backward began
    elapsed = 0.0
    for layer in reversed(stage.layers):
        elapsed += layer.backward_s
        for _, seconds in layer.grad_sync:
            finish = max(finish, elapsed) + seconds
    return max(0.0, finish - elapsed)
