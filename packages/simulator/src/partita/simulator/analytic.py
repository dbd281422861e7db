"""Closed-form iteration time, for the search (fast) and to check the event simulation.

For a pipeline of P stages and M micro-batches where the slowest stage takes ``f + b`` per
micro-batch, both GPipe and 1F1B take ``sum_s(f_s + b_s) + (M - 1) * max_s(f_s + b_s)`` plus
the p2p transfers on the critical path (one forward and one backward per boundary, which
the sends cannot hide since the receiver waits), plus the part of each stage's gradient sync
that the last backward does not hide (all of it for the buckets the pipeline trainer sums
after the backward), plus the optimizer step and what follows it.
"""

from __future__ import annotations

from collections.abc import Sequence

from partita.simulator.workload import StageWork


def iteration_time(stages: Sequence[StageWork], *, num_micro_batches: int) -> float:
    per_micro_batch = [s.forward_s + s.backward_s for s in stages]
    pipeline = sum(per_micro_batch) + (num_micro_batches - 1) * max(per_micro_batch)
    transfers = sum(s.send_forward_s + s.send_backward_s for s in stages)
    tail = max(_exposed_sync(s, num_micro_batches) + s.tail_s for s in stages)
    return pipeline + transfers + tail


def _exposed_sync(stage: StageWork, num_micro_batches: int) -> float:
    """Gradient sync left after the stage's last backward (serial on one stream)."""
    finish = 0.0  # time since the last backward began
    elapsed = 0.0
    for layer in reversed(stage.layers):
        elapsed += layer.backward_s
        for _, seconds in layer.grad_sync:
            finish = max(finish, elapsed) + seconds
    return max(0.0, finish - elapsed)
