"""``partita.plan``: how to split one training iteration over the devices.

Per block layer: ``tp`` is the size of the layer's model-parallel group inside its pipeline
stage (tensor parallel for ``sp`` "none" and "megatron", the Ulysses group for "ulysses"); the
rest of the stage's devices form the layer's data-parallel group, run in mode ``dp``;
``ckpt`` recomputes nothing, the attention core, every other matmul and the elementwise work
(``selective-op``) or the whole block in the backward. The
embedding and head follow ``vocab``.

``pipeline.stage_num_layers`` gives each virtual stage a run of consecutive block layers, in
pipeline order. A rank holds ``pipeline.chunks`` virtual stages (more than one only under
``interleaved-1f1b``): virtual stage k runs on pipeline rank ``k % degree`` as its chunk
``k // degree``, so the layers go round the ranks ``chunks`` times (Megatron-LM's
assignment). The embedding lives on the first virtual stage, the head on the last.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from partita.formats.common import CKPT_MODES, Ckpt, DpMode, MeshAxis, Precision, Schedule, SpMode
from partita.formats.schema import at_least, count_from

FORMAT = "partita.plan"
VERSION = 4


@dataclass(frozen=True)
class LayerStrategy:
    tp: int = field(default=1, metadata=count_from(1))
    sp: SpMode = "none"
    dp: DpMode = "ddp"
    ckpt: Ckpt = "none"

    def __post_init__(self) -> None:
        # ``ckpt`` was a bool before plan version 3: "none" is truthy, so an old call site
        # passing True or False must fail here rather than checkpoint everything.
        if self.ckpt not in CKPT_MODES:
            raise ValueError(f"ckpt: expected one of {', '.join(CKPT_MODES)}, got {self.ckpt!r}")

    @property
    def recomputes(self) -> bool:
        return self.ckpt != "none"


@dataclass(frozen=True)
class VocabStrategy:
    """Strategy of the embedding and the head: vocab-parallel degree, SP, data-parallel mode."""

    tp: int = field(default=1, metadata=count_from(1))
    sp: bool = False
    dp: DpMode = "ddp"


@dataclass(frozen=True)
class PipelineConfig:
    degree: int = field(metadata=count_from(1))
    schedule: Schedule
    stage_num_layers: tuple[int, ...] = field(metadata=count_from(1))  # per virtual stage
    chunks: int = field(default=1, metadata=count_from(1))

    @property
    def num_virtual_stages(self) -> int:
        return self.degree * self.chunks

    def rank_of_virtual_stage(self, stage: int) -> int:
        return stage % self.degree

    def virtual_stages_of_rank(self, rank: int) -> tuple[int, ...]:
        """The virtual stages pipeline rank ``rank`` holds, by chunk."""
        return tuple(chunk * self.degree + rank for chunk in range(self.chunks))

    def layer_ranges(self) -> tuple[range, ...]:
        """The block layers of each virtual stage."""
        ranges, start = [], 0
        for count in self.stage_num_layers:
            ranges.append(range(start, start + count))
            start += count
        return tuple(ranges)


@dataclass(frozen=True)
class Provenance:
    model: str = ""
    model_description_sha256: str | None = None
    hardware_profile_sha256: str | None = None
    model_profile_sha256: str | None = None
    tools: dict[str, str] = field(default_factory=dict)
    created_by: str = ""


@dataclass(frozen=True)
class Predictions:
    iteration_time_s: float = field(metadata=at_least(0))
    throughput_samples_per_s: float = field(metadata=at_least(0))
    peak_memory_bytes_per_stage: tuple[int, ...] = field(metadata=at_least(0))


@dataclass(frozen=True)
class Plan:
    world_size: int = field(metadata=count_from(1))
    mesh_axis_order: tuple[MeshAxis, ...]
    global_batch_size: int = field(metadata=count_from(1))
    num_micro_batches: int = field(metadata=count_from(1))
    pipeline: PipelineConfig
    layers: tuple[LayerStrategy, ...]
    vocab: VocabStrategy = VocabStrategy()
    precision: Precision = "fp32"
    provenance: Provenance = Provenance()
    predictions: Predictions | None = None

    @property
    def devices_per_stage(self) -> int:
        return self.world_size // self.pipeline.degree

    @property
    def micro_batch_size(self) -> int:
        return self.global_batch_size // self.num_micro_batches

    def dp_degree(self, tp: int) -> int:
        """Data-parallel group size of a layer whose model-parallel group has ``tp`` devices."""
        return self.devices_per_stage // tp

    def virtual_stage_of_layer(self, index: int) -> int:
        end = 0
        for stage, count in enumerate(self.pipeline.stage_num_layers):
            end += count
            if index < end:
                return stage
        raise IndexError(f"layer {index} is outside the plan's {len(self.layers)} layers")

    def stage_of_layer(self, index: int) -> int:
        """The pipeline rank (physical stage) that runs block layer ``index``."""
        return self.pipeline.rank_of_virtual_stage(self.virtual_stage_of_layer(index))
