"""Runs under torchrun: trains each case from its pretrained folder and reports, on rank 0,
the losses and the bytes every rank read from the checkpoint.

argv: cases.json results.json. Each case: {"name", "model" (a Hugging Face folder holding
model.safetensors), "plan" (a plan as JSON text), "steps"}.
"""

from __future__ import annotations

import os

import torch.distributed as dist
from equality_worker import run_cases

from partita.executor.groups import ParallelGroups
from partita.executor.trainer import Trainer, TrainSettings


def run_case(case: dict, groups: ParallelGroups) -> dict:
    settings = TrainSettings(steps=case["steps"], init="pretrained")
    trainer = Trainer(plan=groups.plan, source=case["model"], settings=settings, groups=groups)
    assert trainer.weights is not None
    read = [0] * dist.get_world_size()
    dist.all_gather_object(read, trainer.weights.bytes_read, group=groups.world)
    result = trainer.run()
    return {"losses": result.losses, "bytes": read} if dist.get_rank() == 0 else {}


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    run_cases(run_case)
