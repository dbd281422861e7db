"""``partita.run_report``: what the executor measured while training under a plan."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from partita.formats.schema import at_least

FORMAT = "partita.run_report"
VERSION = 1


@dataclass(frozen=True)
class StepRecord:
    step: int = field(metadata=at_least(0))
    loss: float | None  # None when the loss was not finite
    time_s: float = field(metadata=at_least(0))
    items: int = field(metadata=at_least(0))  # tokens (text) or samples (vision) in the step


@dataclass(frozen=True)
class RankMemory:
    rank: int = field(metadata=at_least(0))
    peak_bytes: int = field(metadata=at_least(0))


@dataclass(frozen=True)
class RunReport:
    model: str
    plan_sha256: str
    world_size: int = field(metadata=at_least(1))
    backend: Literal["gloo", "nccl"]
    device: str
    status: Literal["completed", "failed"]
    unit: Literal["tokens", "samples"]
    steps: tuple[StepRecord, ...]
    peak_memory: tuple[RankMemory, ...]
    memory_method: str
    throughput_per_s: float = field(default=0.0, metadata=at_least(0))
    error: str | None = None
    tools: dict[str, str] = field(default_factory=dict)
