"""Runs under torchrun: trains each pipelined or layer-wise case and compares with one process.

argv: cases.json results.json. Each case: {"name", "model", "plan" (JSON text), "steps",
optional "sabotage"}; the plan's world size is torchrun's. Rank 0 trains the same model on
the whole batch in one process (once per model) and writes, per case, the largest relative
loss difference and the largest parameter excess over ``allclose(rtol=1e-5, atol=1e-5)`` in
units of atol (see ``equality_worker``).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))

from equality_worker import ADAM_EPS, train_and_compare

from partita.executor.groups import ParallelGroups
from partita.executor.trainer import TrainSettings, build_trainer
from partita.formats import Plan, loads


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
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    cases = json.loads(Path(sys.argv[1]).read_text())
    results = {}
    for case in cases:
        plan = loads(case["plan"], Plan)
        groups = ParallelGroups(plan=plan, rank=dist.get_rank(), device_type="cpu")
        if dist.get_rank() == 0:
            print(f"case {case['name']}", file=sys.stderr, flush=True)
        try:
            results[case["name"]] = run_case(case, groups)
        except Exception:  # reported per case, so one failure does not hide the others
            results[case["name"]] = {"error": traceback.format_exc(limit=8)}
            print(
                f"[rank {dist.get_rank()}] {case['name']}: {results[case['name']]['error']}",
                file=sys.stderr,
                flush=True,
            )
        dist.barrier()
    if dist.get_rank() == 0:
        with open(sys.argv[2], "w") as handle:
            json.dump(results, handle, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
