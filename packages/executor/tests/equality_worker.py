"""Runs under torchrun: trains each case under its plan and compares with one process.

argv: cases.json results.json. Each case: {"name", "model" (a preset name or a config
mapping), "plan" (a plan as JSON text), "steps"}; the plan's world size is torchrun's. Rank 0
trains the same model on the whole batch in one process and writes, per case, the largest
relative differences of the losses and the parameters.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from partita.executor.groups import ParallelGroups
from partita.executor.loss_scaling import LossScaler
from partita.executor.trainer import AUTOCAST_DTYPES, Trainer, TrainSettings, create_groups
from partita.formats import Plan, loads
from partita.models.api import build_model

# Some gradients are zero in exact arithmetic (a key bias shifts every score of a query
# equally); in floating point they are round-off of ~1e-9 that differs with the summation
# order, and AdamW with eps 1e-8 turns it into updates of up to lr / 10. eps 1e-6 keeps the
# comparison about parallelism rather than about the sign of round-off.
ADAM_EPS = 1e-6


def reference(
    trainer: Trainer, settings: TrainSettings, precision: str = "fp32"
) -> tuple[list[float], dict[str, torch.Tensor]]:
    """One process on the whole batch under ``precision``: autocast for bf16 and fp16, and for
    fp16 torch's ``GradScaler`` on the trainer's loss-scaling schedule."""
    model = build_model(trainer.config, seed=settings.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, eps=settings.adam_eps)
    dtype = AUTOCAST_DTYPES.get(precision)
    schedule = LossScaler(group=None, device=torch.device("cpu"))  # type: ignore[arg-type]
    scaler = torch.amp.GradScaler(
        "cpu",
        init_scale=schedule.scale,
        growth_interval=schedule.growth_interval,
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
    return losses, {k: v.detach() for k, v in model.named_parameters()}


# The one-process run depends on the model, seed, data, optimizer and precision, not on the
# strategy: rank 0 computes it once per model while the other ranks wait.
_REFERENCES: dict[str, tuple[list[float], dict[str, torch.Tensor]]] = {}


def cached_reference(
    case: dict, trainer: Trainer, settings: TrainSettings
) -> tuple[list[float], dict[str, torch.Tensor]]:
    precision = trainer.plan.precision
    key = json.dumps(
        [case["model"], settings.seed, settings.steps, trainer.plan.global_batch_size, precision]
    )
    if key not in _REFERENCES:
        _REFERENCES[key] = reference(trainer, settings, precision)
    return _REFERENCES[key]


RTOL, ATOL = 1e-5, 1e-5


def excess_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """How far ``ours`` is outside ``allclose(rtol=1e-5, atol=1e-5)``, in units of atol
    (<= 1 means equal). The atol covers parameters that start at zero and whose exact
    gradient is zero (attention key biases), which only round-off moves: about 1e-6 per
    step with eps 1e-6, so up to about 5e-6 after the suite's 5 steps. A sharding or
    synchronisation error moves parameters by ~lr = 1e-3 per step."""
    excess = (ours - reference).abs() - RTOL * reference.abs()
    return float(excess.max() / ATOL)


def run_case(case: dict, groups: ParallelGroups) -> dict:
    settings = TrainSettings(steps=case["steps"], seed=case.get("seed", 0), adam_eps=ADAM_EPS)
    trainer = Trainer(plan=groups.plan, source=case["model"], settings=settings, groups=groups)
    if case.get("sabotage") == "skip_partial_gradient_sum":
        # Proves the comparison can fail: sequence-parallel norms keep partial gradients.
        trainer.parallel.partial = []
    return train_and_compare(case, trainer, settings)


def train_and_compare(case: dict, trainer: Trainer, settings: TrainSettings) -> dict:
    """Train, then (on rank 0) compare every step's loss and the final parameters with the
    one-process reference; other ranks return an empty dict."""
    result = trainer.run()
    params = trainer.full_parameters()
    if dist.get_rank() != 0:
        return {}
    ref_losses, ref_params = cached_reference(case, trainer, settings)
    loss_error = max(abs(a - b) / abs(b) for a, b in zip(result.losses, ref_losses, strict=True))
    missing = sorted(set(ref_params) ^ set(params))
    param_error = max(
        (excess_error(params[k], ref_params[k]) for k in ref_params if k in params), default=0.0
    )
    return {
        "losses": result.losses,
        "reference": ref_losses,
        "loss_error": loss_error,
        "param_error": param_error,
        "missing": missing,
    }


def main() -> None:
    run_cases(run_case)


def run_cases(run: Callable[[dict, ParallelGroups], dict]) -> None:
    """Every case of ``argv[1]`` in this process group; rank 0 writes results to ``argv[2]``."""
    torch.set_num_threads(1)
    seconds = float(os.environ.get("PARTITA_CASE_TIMEOUT_S", "120"))
    dist.init_process_group("gloo", timeout=timedelta(seconds=seconds))
    cases = json.loads(Path(sys.argv[1]).read_text())
    results = {}
    for case in cases:
        plan = loads(case["plan"], Plan)
        groups = create_groups(
            plan, case["model"], rank=dist.get_rank(), device=torch.device("cpu")
        )
        if dist.get_rank() == 0:  # in the launch's stderr, so a hang names its case
            print(f"case {case['name']}", file=sys.stderr, flush=True)
        try:
            results[case["name"]] = run(case, groups)
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
