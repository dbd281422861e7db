"""Runs under torchrun: each case trains under its plan with every step after the first run
while torch's default device is ``meta``, and compares with one process.

Any tensor the step creates without naming the rank's device then lands on ``meta`` and
mixing it with the rank's tensors fails, so a case passes only if every batch slice, pipeline
receive, loss count and logged value is made on the device the trainer was given. The first
step runs plainly: AdamW creates its step counters there on the host, as it does on a GPU.

Mixed-precision cases compare with one process under the same precision (autocast, and for
fp16 torch's ``GradScaler`` with the trainer's scaling schedule); see ``test_device_gloo``
for the tolerances.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

sys.path.insert(0, str(Path(__file__).resolve().parent))

from equality_worker import ADAM_EPS, run_cases, train_and_compare

from partita.executor.groups import ParallelGroups
from partita.executor.trainer import Trainer, TrainSettings


def run_case(case: dict, groups: ParallelGroups) -> dict:
    settings = TrainSettings(steps=case["steps"], seed=0, adam_eps=ADAM_EPS)
    trainer = Trainer(plan=groups.plan, source=case["model"], settings=settings, groups=groups)
    plain_step = trainer.step
    calls = []

    def guarded(batch: dict) -> float:
        calls.append(1)
        if len(calls) == 1:
            return plain_step(batch)
        with torch.device("meta"):
            return plain_step(batch)

    trainer.step = guarded  # type: ignore[method-assign]
    if case.get("sabotage") == "receive_without_device":
        # The pipeline's receive as it was before it took the rank's device: its buffers
        # land on the default device.
        from partita.executor import trainer as module

        original = module.Inbox
        module.Inbox = lambda device: original(torch.get_default_device())  # type: ignore[assignment,misc]
        try:
            return _train_and_compare(case, trainer, settings)
        finally:
            module.Inbox = original  # type: ignore[misc]
    return _train_and_compare(case, trainer, settings)


def _train_and_compare(case: dict, trainer: Trainer, settings: TrainSettings) -> dict:
    gathered = _record_gathered_dtypes(trainer)
    outcome = train_and_compare(case, trainer, settings)
    if outcome:  # rank 0
        outcome["skipped_steps"] = 0 if trainer.scaler is None else trainer.scaler.skipped_steps
        outcome["gathered_dtypes"] = sorted(gathered)
    return outcome


def _record_gathered_dtypes(trainer: Trainer) -> set[str]:
    """The dtypes of the weights FSDP layers compute with: the first FSDP-sharded linear of
    every FSDP layer records its weight's dtype at each forward (FSDP has gathered it)."""
    seen: set[str] = set()

    def record(module: nn.Module, *_: object) -> None:
        seen.add(str(module.weight.dtype).removeprefix("torch."))

    for layer in trainer.parallel.model.layers.values():
        if isinstance(layer, FSDPModule):
            # FSDP's own parameters are its sharded DTensors until gathered; a tied table it
            # ignores stays a whole fp32 tensor.
            first = next(
                (
                    m
                    for m in layer.modules()
                    if isinstance(m, nn.Linear) and isinstance(m.weight, DTensor)
                ),
                None,
            )
            if first is not None:
                first.register_forward_hook(record)
    return seen


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    run_cases(run_case)
