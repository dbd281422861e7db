"""Runs under torchrun: checkpoints saved under one plan and resumed under another.

argv: cases.json results.json; cases run in order, every rank the same list. Roles:

- ``save``: train ``STEPS`` steps under the case's plan in ``<root>/<name>``, checkpointing
  every ``SAVE_AFTER`` steps; rank 0 compares losses and final parameters with one process
  (as ``equality_worker``) and keeps them (also in ``final_params.pt``) for the cases after.
- ``load``: resume the checkpoint after ``SAVE_AFTER`` steps of the ``source`` case (written by
  this launch or an earlier one, any world size) under the case's plan and train to ``STEPS``;
  compared with one process, and, with ``same_as`` (a case of this launch with the same
  plan), bit for bit with the run that was not interrupted.
- ``one_process``: rank 0 reads the checkpoint into the plain one-process model and AdamW
  (no process group) and trains on; compared with one process.

``scramble_rng`` (load): overwrite the random generators after resuming, as a run that did
not save them would start; with dropout on, its losses must differ from the uninterrupted run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))

from equality_worker import ADAM_EPS, cached_reference, excess_error, run_cases

from partita.executor.checkpoint import checkpoint_folder, load_checkpoint
from partita.executor.groups import ParallelGroups
from partita.executor.sharded_state import TrainState, canonical_names
from partita.executor.trainer import Trainer, TrainSettings
from partita.executor.training_run import TrainingRun
from partita.formats import TrainingSettings
from partita.models.api import build_model

STEPS, SAVE_AFTER = 4, 2
# Rank 0's record of this launch's save cases: name -> (losses, final parameters).
_SAVED: dict[str, tuple[list[float], dict[str, torch.Tensor]]] = {}


def run_case(case: dict, groups: ParallelGroups) -> dict:
    settings = TrainSettings(steps=STEPS, seed=0, adam_eps=ADAM_EPS)
    trainer = Trainer(plan=groups.plan, source=case["model"], settings=settings, groups=groups)
    if case["role"] == "one_process":
        return _one_process(case, trainer, settings) if dist.get_rank() == 0 else {}
    run = TrainingRun(
        trainer=trainer,
        model=case["label"],
        settings=TrainingSettings(
            steps=STEPS, lr=settings.lr, adam_eps=ADAM_EPS, checkpoint_every=SAVE_AFTER
        ),
        run_dir=Path(case["root"]) / case["name"],
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        keep_checkpoints=STEPS,
    )
    if case["role"] == "load":
        run.resume(checkpoint_folder(Path(case["root"]) / case["source"], SAVE_AFTER))
        if case.get("scramble_rng"):
            torch.manual_seed(12345)
    result = run.train()
    params = trainer.full_parameters()
    if dist.get_rank() != 0:
        return {}
    first = STEPS - len(result.losses)
    outcome = _compare(case, trainer, settings, result.losses, params, first)
    if case["role"] == "save":
        _SAVED[case["name"]] = (result.losses, params)
        torch.save(params, run.run_dir / "final_params.pt")
    elif "same_as" in case:
        losses, final = _SAVED[case["same_as"]]
        outcome["bitwise_losses"] = result.losses == losses[first:]
        outcome["bitwise_params"] = sorted(final) == sorted(params) and all(
            torch.equal(final[k], params[k]) for k in final
        )
    return outcome


def _compare(
    case: dict,
    trainer: object,
    settings: TrainSettings,
    losses: list[float],
    params: dict[str, torch.Tensor],
    first: int,
) -> dict:
    ref_losses, ref_params = cached_reference(case, trainer, settings)  # type: ignore[arg-type]
    ref = ref_losses[first:]
    return {
        "losses": losses,
        "reference": ref,
        "loss_error": max(abs(a - b) / abs(b) for a, b in zip(losses, ref, strict=True)),
        "param_error": max(excess_error(params[k], ref_params[k]) for k in ref_params),
        "missing": sorted(set(ref_params) ^ set(params)),
    }


def _one_process(case: dict, trainer: object, settings: TrainSettings) -> dict:
    """Read a checkpoint of any plan into the plain model and AdamW, then train on."""
    model = build_model(case["model"], seed=123)  # other values: the checkpoint must set them
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, eps=settings.adam_eps)
    state = TrainState(
        module=model, shard_dims={}, canonical=canonical_names(model), optimizers=[optimizer]
    )
    folder = checkpoint_folder(Path(case["root"]) / case["source"], SAVE_AFTER)
    manifest = load_checkpoint(folder, state, restore_rng=False, no_dist=True)
    losses = []
    for step in range(manifest.step, STEPS):
        batch = trainer.global_batch(step)  # type: ignore[attr-defined]
        optimizer.zero_grad(set_to_none=True)
        loss = model.loss(model(batch), batch)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    params = {k: v.detach() for k, v in model.named_parameters()}
    return _compare(case, trainer, settings, losses, params, manifest.step)


def main() -> None:
    run_cases(run_case)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
