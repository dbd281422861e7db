"""Runs under torchrun: trains each pipelined or layer-wise case and compares with one process.

argv: cases.json results.json. Each case: {"name", "model", "plan" (JSON text), "steps",
optional "sabotage"}; the plan's world size is torchrun's. Rank 0 trains the same model on
the whole batch in one process (once per model) and writes, per case, the largest relative
loss difference and the largest parameter excess over ``allclose(rtol=1e-5, atol=1e-5)`` in
units of atol (see ``equality_worker``).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))

from equality_worker import ADAM_EPS, run_cases, train_and_compare

from partita.executor.groups import ParallelGroups
from partita.executor.trainer import TrainSettings, build_trainer


def _skip_dp_sync_of_one_layer(trainer: object) -> None:
    """Sabotage: the first block of the stage skips its data-parallel gradient sum."""
    import partita.executor.pipeline_trainer as module

    original = module.all_reduce_sum
    skipped: dict[str, bool] = {}

    def skipping(params: list, group: dist.ProcessGroup) -> None:
        if not skipped and dist.get_world_size(group) > 1 and len(params) > 2:
            skipped["done"] = True  # once per step is enough
            return
        original(params, group)

    def sync() -> None:
        skipped.clear()
        module.all_reduce_sum = skipping
        try:
            type(trainer)._sync_gradients(trainer)  # type: ignore[arg-type]
        finally:
            module.all_reduce_sum = original

    trainer._sync_gradients = sync  # type: ignore[attr-defined]


def run_case(case: dict, groups: ParallelGroups) -> dict:
    settings = TrainSettings(steps=case["steps"], seed=case.get("seed", 0), adam_eps=ADAM_EPS)
    start = time.perf_counter()
    trainer = build_trainer(
        plan=groups.plan, source=case["model"], settings=settings, groups=groups
    )
    if case.get("sabotage") == "skip_layer_dp_sync":
        _skip_dp_sync_of_one_layer(trainer)
    outcome = train_and_compare(case, trainer, settings)
    seconds = time.perf_counter() - start
    if dist.get_rank() != 0:
        return {}
    return {
        **outcome,
        "seconds": seconds,
        "trainer": type(trainer).__name__,
    }


def main() -> None:
    run_cases(run_case)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
