"""One run of training in a run folder: steps, their record, checkpoints and resuming.

:class:`TrainingRun` keeps the record of every step done (those before a resume come from
the checkpoint's manifest), appends each new step to ``steps.jsonl`` (a live log: ``tail -f``
it), and saves a checkpoint when one is due: every ``checkpoint_every`` steps and after the
last step. Rank 0 writes the files; every rank takes part in a checkpoint.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from partita.executor.checkpoint import load_checkpoint, save_checkpoint
from partita.executor.report import tool_versions
from partita.executor.trainer import Trainer, TrainResult
from partita.formats import CheckpointManifest, StepRecord, TrainingSettings, content_hash

STEP_LOG = "steps.jsonl"


@dataclass
class TrainingRun:
    trainer: Trainer
    model: str  # the model source as the user named it (a preset or a directory)
    settings: TrainingSettings
    run_dir: Path
    rank: int
    world_size: int
    keep_checkpoints: int = 2
    history: list[StepRecord] = field(default_factory=list)
    start_step: int = 0
    on_checkpoint: Callable[[Path], None] | None = None

    def __post_init__(self) -> None:
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)

    def resume(self, folder: str | Path) -> CheckpointManifest:
        """Continue from a checkpoint (written under any plan): the state, the step record and
        the data position."""
        manifest = load_checkpoint(folder, self.trainer.train_state())
        if manifest.model != self.model:
            raise ValueError(
                f"{folder}: the checkpoint is of model {manifest.model!r}, not {self.model!r}"
            )
        self.history = list(manifest.steps)
        self.start_step = manifest.step
        return manifest

    def train(self, on_step: Callable[[int, float, float, int], None] | None = None) -> TrainResult:
        def after(step: int, loss: float, seconds: float, items: int) -> None:
            finite = loss if math.isfinite(loss) else None  # a Partita file holds no NaN
            self._record(StepRecord(step=step, loss=finite, time_s=seconds, items=items))
            if on_step is not None:
                on_step(step, loss, seconds, items)
            if self._checkpoint_due(step + 1):
                path = self.checkpoint()
                if self.on_checkpoint is not None:
                    self.on_checkpoint(path)

        return self.trainer.run(on_step=after, start_step=self.start_step)

    def checkpoint(self) -> Path:
        done = len(self.history)
        manifest = CheckpointManifest(
            step=done,
            model=self.model,
            plan_sha256=content_hash(self.trainer.plan),
            world_size=self.world_size,
            settings=self.settings,
            data_position=done,  # one global batch per step, every rank the same
            steps=tuple(self.history),
            files=(),  # recorded by save_checkpoint once they are written
            rng_ranks=self.world_size,
            tools=tool_versions(),
        )
        return save_checkpoint(
            self.trainer.train_state(),
            run_dir=self.run_dir,
            manifest=manifest,
            plan=self.trainer.plan,
            keep=self.keep_checkpoints,
        )

    def _checkpoint_due(self, done: int) -> bool:
        every, last = self.settings.checkpoint_every, self.settings.steps
        return (every > 0 and done % every == 0) or (
            self.settings.checkpoint_at_end and done == last
        )

    def _record(self, record: StepRecord) -> None:
        # A step replayed after a resume replaces nothing: history ends where the checkpoint did.
        assert record.step == len(self.history), (record.step, len(self.history))
        self.history.append(record)
        if self.rank == 0:
            with open(self.run_dir / STEP_LOG, "a", encoding="utf-8") as log:
                log.write(
                    json.dumps(
                        {
                            "step": record.step,
                            "loss": record.loss,
                            "time_s": record.time_s,
                            "items": record.items,
                        }
                    )
                    + "\n"
                )
