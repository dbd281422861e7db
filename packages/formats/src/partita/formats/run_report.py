"""``partita.run_report``: what the executor measured while training under a plan.

Version 2 added the run's settings (so ``partita train --resume`` can continue it), the
``running`` status (the report is written when training starts and at every checkpoint), the
step a resumed run started from, and the number of nodes. Version 3 added the attention kernel
the run trained with. Version 4 added the status ``interrupted`` (stopped by SIGINT or SIGTERM;
its last checkpoint resumes it). Version 6 added each rank's step split into phases
(``phases``), to set against the simulator's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from partita.formats.common import AttentionKernel
from partita.formats.schema import at_least, count_from, greater_than

FORMAT = "partita.run_report"
VERSION = 6


@dataclass(frozen=True)
class StepRecord:
    step: int = field(metadata=count_from(0))
    loss: float | None  # None when the loss was not finite
    time_s: float = field(metadata=at_least(0))
    items: int = field(metadata=at_least(0))  # tokens (text) or samples (vision) in the step


@dataclass(frozen=True)
class RankMemory:
    rank: int = field(metadata=count_from(0))
    peak_bytes: int = field(metadata=at_least(0))


@dataclass(frozen=True)
class RankPhases:
    """Where one rank's training step went: medians over the timed steps (the first left
    out when there are more), in seconds; the four add up to the step's time.

    ``schedule_s``: every micro-batch's forward and backward passes by the plan's schedule,
    with the pipeline's transfers and the waits between passes (the bubble).
    ``grad_sync_s``: the wait, after the last pass, for the data-parallel gradient
    synchronisation that did not overlap the passes.
    ``optimizer_s``: the optimizer step (with ZeRO-1's gather of the updated parameters).
    ``step_end_s``: the rest: the loss all-reduce and the barrier every rank meets, so the
    wait for the slowest rank too.
    """

    rank: int = field(metadata=count_from(0))
    schedule_s: float = field(metadata=at_least(0))
    grad_sync_s: float = field(metadata=at_least(0))
    optimizer_s: float = field(metadata=at_least(0))
    step_end_s: float = field(metadata=at_least(0))


@dataclass(frozen=True)
class TrainingSettings:
    """What a run was asked to do. A resumed run keeps them (its ``--steps`` may extend it)."""

    steps: int = field(metadata=count_from(1))
    lr: float = field(metadata=greater_than(0))
    adam_eps: float = field(default=1e-8, metadata=greater_than(0))
    seed: int = 0
    data: str = "synthetic"  # or the path of a UTF-8 text file
    checkpoint_every: int = field(default=0, metadata=count_from(0))  # 0: no periodic saves
    checkpoint_at_end: bool = True
    # Where step 0's weights came from: a Hugging Face folder's safetensors, or drawn.
    init: Literal["random", "pretrained"] = "random"


@dataclass(frozen=True)
class RunReport:
    model: str
    plan_sha256: str
    world_size: int = field(metadata=count_from(1))
    backend: Literal["gloo", "nccl"]
    device: str
    status: Literal["running", "completed", "failed", "interrupted"]
    unit: Literal["tokens", "samples"]
    steps: tuple[StepRecord, ...]
    peak_memory: tuple[RankMemory, ...]
    memory_method: str
    throughput_per_s: float = field(default=0.0, metadata=at_least(0))
    error: str | None = None
    tools: dict[str, str] = field(default_factory=dict)
    settings: TrainingSettings | None = None
    resumed_from_step: int | None = field(default=None, metadata=count_from(0))
    num_nodes: int = field(default=1, metadata=count_from(1))
    # The kernel selected (partita.models.attention.select_attention), not one observed per
    # call: a "flash" run still ran the calls flash-attn cannot take (a bias, fp32) on SDPA.
    attention: AttentionKernel = ""
    phases: tuple[RankPhases, ...] = ()  # one per rank, once the run completed
