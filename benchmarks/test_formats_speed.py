"""Loading cost of the largest files the planner writes: an 80-layer plan, a big profile.

The simulator's search loads these once per run, so the target is loose: load and full
validation stay within 50x of bare ``json.loads`` of the same text (checked on the ratio of
medians measured in this run, never on absolute time).
"""

from __future__ import annotations

import json
import statistics
import time

from partita.formats import (
    LayerStrategy,
    PipelineConfig,
    Plan,
    VocabStrategy,
    dumps,
    loads,
)

NUM_LAYERS = 80


def _big_plan() -> Plan:
    layers = tuple(
        LayerStrategy(
            tp=(1, 2, 4, 8)[i % 4],
            sp=("none", "megatron", "ulysses")[i % 3],
            dp=("ddp", "zero1", "zero2", "zero3")[i % 4],
            ckpt=("none", "attention", "full")[i % 3],
        )
        for i in range(NUM_LAYERS)
    )
    return Plan(
        world_size=1024,
        mesh_axis_order=("pp", "dp", "tp"),
        global_batch_size=8192,
        num_micro_batches=128,
        pipeline=PipelineConfig(degree=16, schedule="1f1b", stage_num_layers=(5,) * 16),
        layers=layers,
        vocab=VocabStrategy(tp=8, sp=True, dp="zero1"),
    )


def _median_seconds(fn, repeats: int = 30) -> float:  # type: ignore[no-untyped-def]
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def test_load_80_layer_plan(benchmark) -> None:  # type: ignore[no-untyped-def]
    text = dumps(_big_plan())
    plan = benchmark(loads, text, Plan)
    assert len(plan.layers) == NUM_LAYERS
    validation = _median_seconds(lambda: loads(text, Plan))
    parsing = _median_seconds(lambda: json.loads(text))
    ratio = validation / parsing
    benchmark.extra_info["load_over_json_ratio"] = round(ratio, 2)
    assert ratio <= 50, f"loading a plan costs {ratio:.1f}x json.loads (target <= 50x)"


def test_dump_80_layer_plan(benchmark) -> None:  # type: ignore[no-untyped-def]
    plan = _big_plan()
    text = benchmark(dumps, plan)
    assert loads(text, Plan) == plan
