"""Candidate assignments of consecutive block layers to pipeline stages."""

from __future__ import annotations

from collections.abc import Sequence


def even_partition(num_layers: int, num_stages: int) -> tuple[int, ...]:
    """As equal as possible; the extra layers go to the middle stages (the first and last
    also hold the embedding and the head)."""
    base, extra = divmod(num_layers, num_stages)
    sizes = [base] * num_stages
    order = sorted(range(num_stages), key=lambda s: (s in (0, num_stages - 1), s))
    for stage in order[:extra]:
        sizes[stage] += 1
    return tuple(sizes)


def balanced_partition(
    weights: Sequence[float], num_stages: int, *, first_extra: float = 0.0, last_extra: float = 0.0
) -> tuple[int, ...]:
    """Consecutive runs minimising the heaviest stage (stage 0 and the last carry extras)."""
    n = len(weights)
    prefix = [0.0]
    for w in weights:
        prefix.append(prefix[-1] + w)
    inf = float("inf")
    # cost[s][i]: best max-load placing the first i layers on stages 0..s
    cost = [[inf] * (n + 1) for _ in range(num_stages)]
    cut = [[0] * (n + 1) for _ in range(num_stages)]
    for i in range(1, n + 1):
        cost[0][i] = prefix[i] + first_extra + (last_extra if num_stages == 1 else 0.0)
    for s in range(1, num_stages):
        extra = last_extra if s == num_stages - 1 else 0.0
        for i in range(s + 1, n + 1):
            for j in range(s, i):
                load = max(cost[s - 1][j], prefix[i] - prefix[j] + extra)
                if load < cost[s][i]:
                    cost[s][i], cut[s][i] = load, j
    sizes = []
    end = n
    for s in range(num_stages - 1, 0, -1):
        start = cut[s][end]
        sizes.append(end - start)
        end = start
    sizes.append(end)
    return tuple(reversed(sizes))
