"""Tiny presets must stay tiny: one forward and backward of a batch of 2 well under a second.

The parallel-correctness suites run hundreds of such steps on 2 CPU cores; this benchmark
records the per-family cost so a slow-down shows up here first. Target: median <= 0.25 s.
"""

from __future__ import annotations

import pytest
import torch

from partita.models.api import build_model, synthetic_batch
from partita.models.families import FAMILIES

TARGET_S = 0.25


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_tiny_forward_backward(benchmark, family: str) -> None:  # type: ignore[no-untyped-def]
    torch.set_num_threads(1)
    preset = f"{family}-tiny"
    model = build_model(preset, seed=0)
    batch = synthetic_batch(preset, batch_size=2)

    def step() -> float:
        model.zero_grad(set_to_none=True)
        loss = model.loss(model(batch), batch)
        loss.backward()
        return float(loss)

    loss = benchmark(step)
    assert loss > 0
    median = benchmark.stats.stats.median
    assert median <= TARGET_S, f"{preset}: {median:.3f} s per step (target <= {TARGET_S} s)"
