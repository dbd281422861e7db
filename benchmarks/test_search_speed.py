"""Search speed on this machine (Galvatron's search takes about 95 s for the first case here):

- a 32-layer 7B-class model on 8 devices, one global batch: target <= 1 s;
- an 80-layer model on 1024 devices over 8 global batch sizes: target <= 30 s.

Both on spec-sheet H100 profiles, with the full layer-wise space and both schedules.
"""

from __future__ import annotations

import time

from partita.simulator.search.engine import SearchProblem, search
from partita.simulator.specsheet import (
    hardware_profile_from_spec,
    load_cluster_spec,
    model_profile_from_description,
)

GIB = 2**30


def _problem(model, *, nodes: int, batch: int) -> SearchProblem:  # type: ignore[no-untyped-def]
    spec = load_cluster_spec("h100-sxm").with_changes(num_nodes=nodes)
    return SearchProblem(
        hardware=hardware_profile_from_spec(spec),
        model_profile=model_profile_from_description(model, spec),
        model=model,
        world_size=8 * nodes,
        memory_bytes=80 * GIB,
        global_batch=batch,
        precision="bf16",
    )


def test_search_7b_on_8_devices(benchmark, llama_7b_shaped) -> None:  # type: ignore[no-untyped-def]
    problem = _problem(llama_7b_shaped, nodes=1, batch=64)
    outcome = benchmark.pedantic(search, args=(problem,), rounds=3, iterations=1)
    assert outcome.best is not None
    assert max(outcome.best.peak_memory_bytes) <= problem.memory_bytes
    median = benchmark.stats.stats.median
    assert median <= 1.0, f"{median:.2f} s (target <= 1 s)"


def test_search_80_layers_on_1024_devices_8_batches(benchmark, llama_70b_shaped) -> None:  # type: ignore[no-untyped-def]
    batches = [256, 512, 768, 1024, 1280, 1536, 1792, 2048]
    problems = [_problem(llama_70b_shaped, nodes=128, batch=b) for b in batches]

    def run_all() -> list[float]:
        times = []
        for problem in problems:
            outcome = search(problem)
            assert outcome.best is not None, problem.global_batch
            times.append(outcome.best.throughput)
        return times

    start = time.perf_counter()
    throughputs = benchmark.pedantic(run_all, rounds=1, iterations=1)
    elapsed = time.perf_counter() - start
    benchmark.extra_info["throughput_by_batch"] = dict(zip(batches, throughputs, strict=True))
    assert all(t > 0 for t in throughputs)
    assert elapsed <= 30.0, f"{elapsed:.1f} s for 8 batch sizes (target <= 30 s)"
