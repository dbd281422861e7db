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

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))

from equality_worker import ADAM_EPS, excess_error, run_cases

from partita.executor.groups import ParallelGroups
from partita.executor.loss_scaling import LossScaler
from partita.executor.trainer import AUTOCAST_DTYPES, Trainer, TrainSettings
from partita.models.api import build_model

_REFERENCES: dict[str, tuple[list[float], dict[str, torch.Tensor]]] = {}


def reference(
    trainer: Trainer, settings: TrainSettings, precision: str
) -> tuple[list[float], dict[str, torch.Tensor]]:
    """One process on the whole batch under ``precision`` (cached per model and precision)."""
    key = json.dumps([str(trainer.source), precision, trainer.plan.global_batch_size])
    if key in _REFERENCES:
        return _REFERENCES[key]
    model = build_model(trainer.config, seed=settings.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, eps=settings.adam_eps)
    dtype = AUTOCAST_DTYPES.get(precision)
    defaults = LossScaler(group=None, device=torch.device("cpu"))  # type: ignore[arg-type]
    scaler = torch.amp.GradScaler(
        "cpu",
        init_scale=defaults.scale,
        growth_interval=defaults.growth_interval,
        enabled=precision == "fp16",
    )
    losses = []
    for step in range(settings.steps):
        batch = trainer.global_batch(step)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = model.loss(model(batch), batch)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        losses.append(float(loss.detach()))
    _REFERENCES[key] = (losses, {k: v.detach() for k, v in model.named_parameters()})
    return _REFERENCES[key]


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

        original = module.recv_activations
        module.recv_activations = lambda src, *, device: original(  # type: ignore[assignment]
            src, device=torch.get_default_device()
        )
        try:
            return _train_and_compare(trainer, settings, groups)
        finally:
            module.recv_activations = original
    return _train_and_compare(trainer, settings, groups)


def _train_and_compare(trainer: Trainer, settings: TrainSettings, groups: ParallelGroups) -> dict:
    result = trainer.run()
    params = trainer.full_parameters()
    if dist.get_rank() != 0:
        return {}
    ref_losses, ref_params = reference(trainer, settings, groups.plan.precision)
    loss_error = max(abs(a - b) / abs(b) for a, b in zip(result.losses, ref_losses, strict=True))
    param_error = max(excess_error(params[k], ref_params[k]) for k in ref_params)
    return {
        "losses": result.losses,
        "reference": ref_losses,
        "loss_error": loss_error,
        "param_error": param_error,
        "missing": sorted(set(ref_params) ^ set(params)),
        "skipped_steps": 0 if trainer.scaler is None else trainer.scaler.skipped_steps,
    }


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    run_cases(run_case)
