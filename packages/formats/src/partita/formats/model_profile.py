"""``partita.model_profile``: measured (or estimated) time and memory of each layer type.

``tp`` is the layer's tensor-parallel (or, with ``sp = "ulysses"``, Ulysses) group size; for
embedding and head layer types it is the vocab-parallel degree. ``origin`` says how each value
was obtained, so the simulator and the user know what was measured and what was not.

Version 2 added the times under activation checkpointing, and per memory entry the number of
parameter tensors of the shard (what an optimizer step costs per tensor) and the memory a
backward pass needs beyond the saved activations. A head layer type is measured together
with the loss that follows it. Version 3 added the attention kernel the layers were measured
with. Version 4 added what the pipeline schedules and selective recompute need: the attention
core's forward time and saved bytes (what ``ckpt: attention`` runs again and frees), and the
weight-gradient share of the backward (what a zero-bubble schedule's W pass runs). Version 5
added the times and kept bytes under ``ckpt: selective-op``; version 6 the passes under ``ckpt:
attention`` as run (the checkpoint's own work around the core is not in the core's time).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from partita.formats.common import AttentionKernel, Precision, SpMode
from partita.formats.schema import at_least, count_from

FORMAT = "partita.model_profile"
VERSION = 6

Origin = Literal[
    "measured_tp_groups",  # measured with real tensor-parallel process groups
    "measured_tp1_plus_comm",  # measured at tp 1; communication measured separately
    "fitted",  # from a fit over measured points
    "extrapolated",  # outside the measured range
    "analytic",  # from FLOPs and bytes with stated efficiencies
    "galvatron",  # imported from a Galvatron profile
]


@dataclass(frozen=True)
class LayerTiming:
    tp: int = field(metadata=count_from(1))
    sp: SpMode
    micro_batch: int = field(metadata=count_from(1))
    seq_len: int = field(metadata=count_from(1))
    forward_s: float = field(metadata=at_least(0))
    backward_s: float = field(metadata=at_least(0))
    spread: float = field(default=0.0, metadata=at_least(0))
    origin: Origin = "measured_tp_groups"
    # The same passes with the layer under activation checkpointing (the backward includes
    # the recomputed forward); None when not measured.
    checkpoint_forward_s: float | None = field(default=None, metadata=at_least(0))
    checkpoint_backward_s: float | None = field(default=None, metadata=at_least(0))
    # The attention core's forward alone (scores, softmax, mixing: what ``ckpt: attention``
    # runs again in the backward), and the part of ``backward_s`` that computes weight
    # gradients (a split backward's W pass); None when not measured. Added in version 4.
    attention_forward_s: float | None = field(default=None, metadata=at_least(0))
    weight_backward_s: float | None = field(default=None, metadata=at_least(0))
    # Under ``ckpt: selective-op``: the forward (its policy sees every op: slower than
    # forward_s where ops are small), and the forward work the backward runs again (every
    # second matmul and the elementwise ops); None when not measured. Added in version 5.
    selective_forward_s: float | None = field(default=None, metadata=at_least(0))
    selective_recompute_s: float | None = field(default=None, metadata=at_least(0))
    # The forward and backward with the attention cores under ``ckpt: attention``, timed as
    # run: the checkpoint's hooks and the core's recomputation included (the hooks cost more
    # than the core where the core is small); None when not measured. Added in version 6.
    attention_checkpoint_forward_s: float | None = field(default=None, metadata=at_least(0))
    attention_checkpoint_backward_s: float | None = field(default=None, metadata=at_least(0))


@dataclass(frozen=True)
class LayerMemory:
    tp: int = field(metadata=count_from(1))
    sp: SpMode
    seq_len: int = field(metadata=count_from(1))
    param_bytes: int = field(metadata=at_least(0))
    grad_bytes: int = field(metadata=at_least(0))
    optimizer_bytes: int = field(metadata=at_least(0))
    activation_bytes_per_sample: float = field(metadata=at_least(0))
    checkpoint_activation_bytes_per_sample: float = field(metadata=at_least(0))
    origin: Origin = "measured_tp_groups"
    # Tensors holding the shard's parameters (0: not known).
    param_tensors: int = field(default=0, metadata=count_from(0))
    # Working memory of the backward pass above the saved activations and the parameter
    # gradients (input and output gradients, temporaries), per sample.
    backward_peak_bytes_per_sample: float = field(default=0.0, metadata=at_least(0))
    # Of activation_bytes_per_sample, what the attention core keeps for its backward beyond
    # its inputs (the scores of an eager kernel; a fused kernel's softmax statistics): what
    # ``ckpt: attention`` frees. None when not measured. Added in version 4.
    attention_saved_bytes_per_sample: float | None = field(default=None, metadata=at_least(0))
    # What the layer keeps for its backward under ``ckpt: selective-op``, per sample: as
    # checkpoint_activation_bytes_per_sample its output (its input is the layer before's),
    # plus the outputs of every other matmul and of the attention kernel. None when not
    # measured. Added in version 5.
    selective_saved_bytes_per_sample: float | None = field(default=None, metadata=at_least(0))


@dataclass(frozen=True)
class LayerTypeProfile:
    layer_type: str
    timings: tuple[LayerTiming, ...] = ()
    memory: tuple[LayerMemory, ...] = ()


@dataclass(frozen=True)
class ModelProfile:
    model: str
    device: str
    dtype: Precision
    origin: Literal["measured", "analytic", "galvatron"]
    layer_types: tuple[LayerTypeProfile, ...]
    efficiencies: dict[str, float] = field(default_factory=dict)
    tools: dict[str, str] = field(default_factory=dict)
    # The kernel selected for the measurement, as in RunReport.attention ("": not recorded,
    # or not measured: analytic and Galvatron profiles).
    attention: AttentionKernel = ""

    def layer_type(self, name: str) -> LayerTypeProfile | None:
        return next((lt for lt in self.layer_types if lt.layer_type == name), None)
