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
from partita.executor.trainer import Trainer, TrainSettings


def _skip_dp_sync_of_one_layer(trainer: Trainer) -> None:
    """Sabotage: the first data-parallel bucket of more than two parameters is summed over
    this rank alone (every rank creates the one-rank groups, in the same order)."""
    world = dist.get_world_size()
    alone = [dist.new_group([rank]) for rank in range(world)][dist.get_rank()]
    buckets = trainer.parallel.buckets
    for bucket in buckets.buckets + buckets.late:
        if dist.get_world_size(bucket.group) > 1 and len(bucket.params) > 2:
            bucket.group = alone
            return


def run_case(case: dict, groups: ParallelGroups) -> dict:
    settings = TrainSettings(steps=case["steps"], seed=case.get("seed", 0), adam_eps=ADAM_EPS)
    start = time.perf_counter()
    trainer = Trainer(plan=groups.plan, source=case["model"], settings=settings, groups=groups)
    if case.get("sabotage") == "skip_layer_dp_sync":
        _skip_dp_sync_of_one_layer(trainer)
    outcome = train_and_compare(case, trainer, settings)
    seconds = time.perf_counter() - start
    if dist.get_rank() != 0:
        return {}
    return {
        **outcome,
        "seconds": seconds,
    }


def main() -> None:
    run_cases(run_case)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
