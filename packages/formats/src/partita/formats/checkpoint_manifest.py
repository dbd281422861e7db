"""``partita.checkpoint``: the manifest of one training checkpoint directory.

The tensors (model parameters and optimizer states under the one-process model's names, in
whole-tensor coordinates, and each rank's random generator state) are written by
``torch.distributed.checkpoint`` beside this file; the manifest says where training stands:
how many steps are done, where the data stream is, what the run was asked to do, and the
losses so far. It is written last, so a directory with a manifest is a complete checkpoint.

Version 2 records every other file of the directory with its size and SHA-256, so a file cut
short or changed after the save is found before anything reads it. A version 1 manifest
loads with no files recorded: its checkpoint cannot be verified and is trusted as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from partita.formats.run_report import StepRecord, TrainingSettings
from partita.formats.schema import at_least, count_from

FORMAT = "partita.checkpoint"
VERSION = 3


@dataclass(frozen=True)
class CheckpointFile:
    name: str  # a file of the checkpoint directory, no directory part
    bytes: int = field(metadata=at_least(0))
    sha256: str  # hex digest of its bytes, as ``sha256sum`` prints it


@dataclass(frozen=True)
class CheckpointManifest:
    step: int = field(metadata=count_from(1))  # steps completed; training resumes at this index
    model: str
    plan_sha256: str  # content hash of the plan.json saved beside the manifest
    world_size: int = field(metadata=count_from(1))
    settings: TrainingSettings
    data_position: int = field(metadata=count_from(0))  # batches of the data stream consumed
    steps: tuple[StepRecord, ...]  # the record of steps 0 .. step - 1
    # Every file beside the manifest, by name; empty only in a version 1 manifest (unverifiable).
    files: tuple[CheckpointFile, ...]
    rng_ranks: int = field(default=0, metadata=count_from(0))  # ranks whose generators are saved
    tools: dict[str, str] = field(default_factory=dict)
