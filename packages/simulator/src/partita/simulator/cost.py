"""Durations and sizes from profiles: one method per kind of operation.

Layer times come from the model profile: the least-squares line through the measured
micro-batch sizes (times on shared machines scatter; three sizes give a fit). A timing whose
origin is ``measured_tp_groups`` already contains the tensor-parallel communication; for
every other origin the workload adds it.
Collective times come from the hardware profile's fits, ``latency + bytes / bandwidth``; work
over a set of tensors (the optimizer step, FSDP's own work around its collectives) from its
``latency + tensors * per_tensor + bytes * per_byte`` fits.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Literal

from partita.formats import (
    CollectiveProfile,
    HardwareProfile,
    LayerDescription,
    LayerMemory,
    LayerTiming,
    ModelProfile,
    TensorWork,
)

TP_COMM_INCLUDED = "measured_tp_groups"
TensorWorkKind = Literal["optimizer", "fsdp_gather", "fsdp_reduce_scatter", "ddp_reducer"]


@dataclass(frozen=True)
class LayerTimes:
    forward_s: float
    backward_s: float
    includes_tp_comm: bool
    # Under activation checkpointing, where the profile measured it (the backward holds the
    # recomputed forward).
    checkpoint_forward_s: float | None = None
    checkpoint_backward_s: float | None = None


@dataclass
class CostModel:
    hardware: HardwareProfile
    model_profile: ModelProfile
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._collectives: dict[tuple[str, int], list[CollectiveProfile]] = defaultdict(list)
        for entry in self.hardware.collectives:
            self._collectives[(entry.op, entry.group_size)].append(entry)
        # The search asks for the same few entries thousands of times: index them once.
        self._timing_index: dict[tuple[str, int, str, int], list[LayerTiming]] = defaultdict(list)
        self._memory_index: dict[tuple[str, int, str, int], LayerMemory] = {}
        for layer_type in self.model_profile.layer_types:
            for t in layer_type.timings:
                self._timing_index[(layer_type.layer_type, t.tp, t.sp, t.seq_len)].append(t)
            for m in layer_type.memory:
                self._memory_index[(layer_type.layer_type, m.tp, m.sp, m.seq_len)] = m

    # --- compute ---------------------------------------------------------------------------
    def layer_times(
        self, layer: LayerDescription, *, tp: int, sp: str, micro_batch: float
    ) -> LayerTimes:
        """Forward and backward seconds of ``layer`` on one device for its local micro-batch."""
        points = self._timings(layer, tp=tp, sp=sp)
        forward = _line_at([(t.micro_batch, t.forward_s) for t in points], micro_batch)
        backward = _line_at([(t.micro_batch, t.backward_s) for t in points], micro_batch)
        included = all(t.origin == TP_COMM_INCLUDED for t in points)
        checkpointed = [t for t in points if t.checkpoint_forward_s is not None]
        if len(checkpointed) != len(points):
            return LayerTimes(forward_s=forward, backward_s=backward, includes_tp_comm=included)
        return LayerTimes(
            forward_s=forward,
            backward_s=backward,
            includes_tp_comm=included,
            checkpoint_forward_s=_line_at(
                [(t.micro_batch, t.checkpoint_forward_s or 0.0) for t in points], micro_batch
            ),
            checkpoint_backward_s=_line_at(
                [(t.micro_batch, t.checkpoint_backward_s or 0.0) for t in points], micro_batch
            ),
        )

    def _timings(self, layer: LayerDescription, *, tp: int, sp: str) -> list[LayerTiming]:
        matching = self._timing_index.get((layer.layer_type, tp, sp, layer.seq_len))
        if matching:
            return matching
        profile = self.model_profile.layer_type(layer.layer_type)
        if profile is None:
            raise ValueError(
                f"the model profile has no layer type {layer.layer_type!r} "
                f"(needed by layer {layer.name!r})"
            )
        if not matching:
            have = sorted({f"tp {t.tp}/{t.sp}/seq {t.seq_len}" for t in profile.timings})
            raise ValueError(
                f"the model profile has no timing for layer type {layer.layer_type!r} at tp {tp}, "
                f"sp {sp}, seq {layer.seq_len} (it has: {', '.join(have) or 'none'})"
            )
        return matching

    # --- memory ------------------------------------------------------------------------------
    def layer_memory(self, layer: LayerDescription, *, tp: int, sp: str) -> LayerMemory:
        entry = self._memory_index.get((layer.layer_type, tp, sp, layer.seq_len))
        if entry is not None:
            return entry
        raise ValueError(
            f"the model profile has no memory entry for layer type {layer.layer_type!r} at tp "
            f"{tp}, sp {sp}, seq {layer.seq_len}"
        )

    # --- communication -------------------------------------------------------------------------
    def collective(
        self, op: str, nbytes: float, *, group_size: int, placement: str, scope: str
    ) -> float:
        """Seconds for one ``op`` of ``nbytes`` (per rank) over ``group_size`` ranks."""
        if group_size <= 1 or nbytes <= 0:
            return 0.0
        candidates = self._collectives.get((op, group_size), [])
        if not candidates:
            have = sorted(g for (o, g) in self._collectives if o == op)
            raise ValueError(
                f"the hardware profile has no {op} measurement for groups of {group_size} "
                f"(it has: {', '.join(map(str, have)) or 'none'})"
            )
        entry = _best_entry(candidates, placement=placement, scope=scope)
        if (entry.placement, entry.scope) != (placement, scope):
            self._warn(
                f"no {op} x{group_size} {placement}/{scope} in the hardware profile; used "
                f"{entry.placement}/{entry.scope}"
            )
        return entry.latency_s + nbytes / entry.bandwidth_bytes_per_s

    # --- work over a set of tensors --------------------------------------------------------------
    def tensor_work(self, kind: TensorWorkKind, *, tensors: float, nbytes: float) -> float | None:
        """Seconds of the hardware profile's ``kind`` over ``tensors`` tensors of ``nbytes``
        in all; None when the profile does not have it."""
        work: TensorWork | None = getattr(self.hardware, kind)
        if work is None:
            return None
        return work.latency_s + tensors * work.per_tensor_s + nbytes * work.per_byte_s

    def _warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)


def _best_entry(
    candidates: list[CollectiveProfile], *, placement: str, scope: str
) -> CollectiveProfile:
    def rank(entry: CollectiveProfile) -> tuple[int, int]:
        return (entry.scope != scope, entry.placement != placement)

    return min(candidates, key=rank)


def _line_at(points: list[tuple[int, float]], x: float) -> float:
    """Value at ``x`` of the least-squares line through the measured (micro-batch, seconds)
    points: with three or more, a fit (times measured on shared machines scatter, and a
    layer's time grows steadily with its batch); through two, the line; one, proportional."""
    if len(points) == 1:
        px, py = points[0]
        return py * x / px
    mean_x = sum(px for px, _ in points) / len(points)
    mean_y = sum(py for _, py in points) / len(points)
    variance = sum((px - mean_x) ** 2 for px, _ in points)
    slope = sum((px - mean_x) * (py - mean_y) for px, py in points) / variance
    # A noisy fit may fall: never below the fastest measurement, nor under zero.
    return max(
        0.0, mean_y + slope * (x - mean_x), min(py for _, py in points) if slope < 0 else 0.0
    )
