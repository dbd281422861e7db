"""Per-stage strategy choice: minimum total time under a memory budget (vectorised DP).

Layer i may take any of its candidates c, costing ``times[i][c]`` seconds and
``memories[i][c]`` bytes. Memory is counted in ``bins`` equal units of the budget, rounded up,
so any assignment found fits. The DP table holds, for every memory use, the least time; each
layer is one numpy operation over (candidates x bins).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

DEFAULT_BINS = 256


def cheapest_assignment(
    times: Sequence[NDArray[np.float64]],
    memories: Sequence[NDArray[np.float64]],
    *,
    budget_bytes: float,
    bins: int = DEFAULT_BINS,
) -> list[int] | None:
    """The candidate index per layer minimising total time; None if nothing fits."""
    if budget_bytes <= 0:
        return None
    unit = budget_bytes / bins
    best = np.full(bins + 1, np.inf)
    best[0] = 0.0
    choices = []
    positions = np.arange(bins + 1)
    for layer_times, layer_memories in zip(times, memories, strict=True):
        # Anything over the budget (an infinite memory too, which no integer holds) cannot fit.
        units = np.ceil(np.minimum(layer_memories / unit, bins + 1) - 1e-9).astype(np.int64)  # [C]
        source = positions[None, :] - units[:, None]  # [C, bins+1]
        totals = best[np.maximum(source, 0)] + layer_times[:, None]
        totals[source < 0] = np.inf
        pick = np.argmin(totals, axis=0)
        best = totals[pick, positions]
        choices.append((pick, units))
    if not np.isfinite(best).any():
        return None
    at = int(np.argmin(best))
    assignment = []
    for pick, units in reversed(choices):
        candidate = int(pick[at])
        assignment.append(candidate)
        at -= int(units[candidate])
    assert at == 0
    return assignment[::-1]
