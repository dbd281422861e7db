"""Durations and sizes from profiles: one method per kind of operation.

Layer times come from the model profile: the least-squares line through the measured
micro-batch sizes (times on shared machines scatter; three sizes give a fit). A timing whose
origin is ``measured_tp_groups`` already contains the tensor-parallel communication; for
every other origin the workload adds it.
Collective times come from the hardware profile's fits, ``latency + bytes / bandwidth``; work
over a set of tensors (the optimizer step, FSDP's own work around its collectives) from its
``latency + tensors * per_tensor + bytes * per_byte`` fits.

A prediction that overflows, at or beyond 2^1023 (the bound of every number of a Partita file,
where a sum of two is no longer finite) or not a number at all, is refused
(:class:`ProfileOverflowError`), naming the profile entry behind it: a lookup that overflows
names its own entry, a sum that overflows the entry that gave the largest term of it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
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
from partita.formats.schema import MAX_MAGNITUDE

TP_COMM_INCLUDED = "measured_tp_groups"
TensorWorkKind = Literal["optimizer", "fsdp_gather", "fsdp_reduce_scatter", "ddp_reducer"]


class ProfileOverflowError(ValueError):
    """A profile entry's values (or a model description's sizes) make a prediction overflow:
    2^1023 or more, or not finite.

    Refused rather than predicted: an infinite time would be printed as such, and a NaN one
    (infinity minus infinity) is dropped by comparisons, as ``max(0.0, nan)`` is 0.0, so that
    the prediction looks fast. Callers that skip what the profiles cannot price (the search,
    a what-if point) let this one through: the profile itself is wrong.
    """


@dataclass(frozen=True)
class _Source:
    """A profile entry and the field of it behind a predicted value (for the message)."""

    entry: object
    field: str
    amount: float  # what the entry contributed: seconds, or bytes per sample


@dataclass(frozen=True)
class LayerTimes:
    forward_s: float
    backward_s: float
    includes_tp_comm: bool
    # Under activation checkpointing, where the profile measured it (the backward holds the
    # recomputed forward).
    checkpoint_forward_s: float | None = None
    checkpoint_backward_s: float | None = None
    # The attention core's forward alone, and the weight-gradient part of the backward, where
    # the profile has them (``workload`` estimates them otherwise).
    attention_forward_s: float | None = None
    weight_backward_s: float | None = None
    # Under ``ckpt: selective-op``: its forward, and what its backward runs again.
    selective_forward_s: float | None = None
    selective_recompute_s: float | None = None
    # Under ``ckpt: attention``, as run (the checkpoint's hooks included).
    attention_checkpoint_forward_s: float | None = None
    attention_checkpoint_backward_s: float | None = None


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
        # The largest time and memory a lookup gave, and from where: what a sum that
        # overflows names. One comparison per lookup.
        self._largest_time = _Source(None, "", 0.0)
        self._largest_memory = _Source(None, "", 0.0)

    # --- compute ---------------------------------------------------------------------------
    def layer_times(
        self, layer: LayerDescription, *, tp: int, sp: str, micro_batch: float
    ) -> LayerTimes:
        """Forward and backward seconds of ``layer`` on one device for its local micro-batch."""
        points = self._timings(layer, tp=tp, sp=sp)
        forward = self._fitted(points, "forward_s", micro_batch)
        backward = self._fitted(points, "backward_s", micro_batch)
        included = all(t.origin == TP_COMM_INCLUDED for t in points)

        def where_measured(name: str) -> float | None:
            if any(getattr(t, name) is None for t in points):
                return None
            return self._fitted(points, name, micro_batch)

        return LayerTimes(
            forward_s=forward,
            backward_s=backward,
            includes_tp_comm=included,
            checkpoint_forward_s=where_measured("checkpoint_forward_s"),
            checkpoint_backward_s=where_measured("checkpoint_backward_s"),
            attention_forward_s=where_measured("attention_forward_s"),
            weight_backward_s=where_measured("weight_backward_s"),
            selective_forward_s=where_measured("selective_forward_s"),
            selective_recompute_s=where_measured("selective_recompute_s"),
            attention_checkpoint_forward_s=where_measured("attention_checkpoint_forward_s"),
            attention_checkpoint_backward_s=where_measured("attention_checkpoint_backward_s"),
        )

    def _fitted(self, points: list[LayerTiming], name: str, micro_batch: float) -> float:
        """The line through the points' ``name`` seconds, at ``micro_batch``; checked."""
        seconds = _line_at([(t.micro_batch, getattr(t, name) or 0.0) for t in points], micro_batch)
        if not seconds <= self._largest_time.amount:  # larger, infinite or NaN: look closer
            largest = max(points, key=lambda t: getattr(t, name) or 0.0)
            self._note_time(
                seconds, _Source(largest, name, seconds), f"time at micro-batch {micro_batch:g}"
            )
        return seconds

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
            per_sample = max(
                entry.activation_bytes_per_sample,
                entry.checkpoint_activation_bytes_per_sample,
                entry.backward_peak_bytes_per_sample,
            )
            if per_sample > self._largest_memory.amount:
                self._largest_memory = _Source(entry, _per_sample_field(entry), per_sample)
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
        seconds = entry.latency_s + nbytes / entry.bandwidth_bytes_per_s
        if not seconds <= self._largest_time.amount:  # larger, infinite or NaN: look closer
            # A tiny bandwidth overflows as surely as a huge latency: name what weighs more.
            transfer = nbytes / entry.bandwidth_bytes_per_s
            name = "latency_s" if entry.latency_s >= transfer else "bandwidth_bytes_per_s"
            self._note_time(
                seconds, _Source(entry, name, seconds), f"time of an {op} of {nbytes:.6g} bytes"
            )
        return seconds

    # --- work over a set of tensors --------------------------------------------------------------
    def tensor_work(self, kind: TensorWorkKind, *, tensors: float, nbytes: float) -> float | None:
        """Seconds of the hardware profile's ``kind`` over ``tensors`` tensors of ``nbytes``
        in all; None when the profile does not have it."""
        work: TensorWork | None = getattr(self.hardware, kind)
        if work is None:
            return None
        seconds = work.latency_s + tensors * work.per_tensor_s + nbytes * work.per_byte_s
        if not seconds <= self._largest_time.amount:  # larger, infinite or NaN: look closer
            terms = {
                "latency_s": work.latency_s,
                "per_tensor_s": tensors * work.per_tensor_s,
                "per_byte_s": nbytes * work.per_byte_s,
            }
            name = max(terms, key=lambda n: terms[n])
            what = f"{kind} time over {tensors:g} tensors of {nbytes:.6g} bytes"
            self._note_time(seconds, _Source(work, name, seconds), what)
        return seconds

    # --- predictions that overflow -----------------------------------------------------------
    def _note_time(self, seconds: float, source: _Source, what: str) -> None:
        if overflows(seconds):
            raise self._overflow(source, f"predicted {what}")
        self._largest_time = source

    def check_prediction(self, *, seconds: Iterable[float], nbytes: Iterable[float]) -> None:
        """Refuse times or memory that overflow (a sum of profile values did), naming the
        entry behind the largest term of the sums."""
        if any(overflows(s) for s in seconds):
            raise self._overflow(self._largest_time_source(), "predicted iteration time")
        if any(overflows(b) for b in nbytes):
            raise self._overflow(self._largest_memory, "predicted peak memory")

    def memory_overflow(self, entry: LayerMemory, what: str) -> ProfileOverflowError:
        """The error for ``entry``'s bytes per sample overflowing ``what``."""
        name = _per_sample_field(entry)
        return self._overflow(_Source(entry, name, getattr(entry, name)), what)

    def time_overflow(self, what: str) -> ProfileOverflowError:
        """The error for a sum of times overflowing ``what``."""
        return self._overflow(self._largest_time_source(), what)

    def _largest_time_source(self) -> _Source:
        """The largest time a lookup gave, or what the hardware profile adds to times (a
        meeting's latency) or multiplies them by, whichever is larger: any of them can carry
        a sum over the top."""
        hardware = self.hardware
        candidates = [
            self._largest_time,
            _Source(hardware.overlap, "compute", hardware.overlap.compute),
            _Source(hardware.overlap, "communication", hardware.overlap.communication),
        ]
        if hardware.sync is not None:
            sync = hardware.sync
            candidates.append(_Source(sync, "compute_fraction", sync.compute_fraction))
            candidates.append(_Source(sync, "latency_s", sync.latency_s))
        return max(candidates, key=lambda source: source.amount)

    def _overflow(self, source: _Source, what: str) -> ProfileOverflowError:
        value = getattr(source.entry, source.field, None)
        if source.entry is None or not isinstance(value, int | float):
            return ProfileOverflowError(f"the {what} overflows (2^1023 or more)")
        return ProfileOverflowError(
            f"{self._where(source.entry)}: {source.field} {value:.6g} makes the {what} "
            "overflow (2^1023 or more)"
        )

    def _where(self, entry: object) -> str:
        """Where ``entry`` is in its profile, as a field path and what it is for."""
        for i, layer_type in enumerate(self.model_profile.layer_types):
            name = layer_type.layer_type
            for j, t in enumerate(layer_type.timings):
                if t is entry:
                    return (
                        f"model profile layer_types[{i}].timings[{j}] (layer type {name!r}, "
                        f"tp {t.tp}, sp {t.sp}, micro_batch {t.micro_batch}, seq_len {t.seq_len})"
                    )
            for j, m in enumerate(layer_type.memory):
                if m is entry:
                    return (
                        f"model profile layer_types[{i}].memory[{j}] (layer type {name!r}, "
                        f"tp {m.tp}, sp {m.sp}, seq_len {m.seq_len})"
                    )
        for i, c in enumerate(self.hardware.collectives):
            if c is entry:
                return (
                    f"hardware profile collectives[{i}] ({c.op}, group_size {c.group_size}, "
                    f"{c.placement}, {c.scope})"
                )
        for name in (
            "optimizer",
            "fsdp_gather",
            "fsdp_reduce_scatter",
            "ddp_reducer",
            "sync",
            "overlap",
        ):
            if getattr(self.hardware, name) is entry:
                return f"hardware profile {name}"
        return "a profile entry"

    def _warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)


def _best_entry(
    candidates: list[CollectiveProfile], *, placement: str, scope: str
) -> CollectiveProfile:
    def rank(entry: CollectiveProfile) -> tuple[int, int]:
        return (entry.scope != scope, entry.placement != placement)

    return min(candidates, key=rank)


def overflows(value: float) -> bool:
    """At or beyond 2^1023, infinite or NaN: no prediction, as the sum of two such values is
    no longer finite and a Partita file could not hold it."""
    return not abs(value) < MAX_MAGNITUDE


def _per_sample_field(entry: LayerMemory) -> str:
    return max(
        (
            "activation_bytes_per_sample",
            "checkpoint_activation_bytes_per_sample",
            "backward_peak_bytes_per_sample",
        ),
        key=lambda name: float(getattr(entry, name)),
    )


def _line_at(points: list[tuple[int, float]], x: float) -> float:
    """Value at ``x`` of the least-squares line through the measured (micro-batch, seconds)
    points: with three or more, a fit (times measured on shared machines scatter, and a
    layer's time grows steadily with its batch); through two, the line; one, proportional.

    The fit runs in units of a power of two near the largest time: the same result to the
    last bit (for times that are not subnormal), but sums of huge times cannot overflow on the
    way, where infinity minus
    infinity would give NaN and ``max`` below would turn it into 0.0 s. What is returned
    is infinite only if the line's value itself is beyond a double.
    """
    unit = math.ldexp(1.0, math.frexp(max(py for _, py in points))[1] - 1)
    return _fit_at([(px, py / unit) for px, py in points], x) * unit


def _fit_at(points: list[tuple[int, float]], x: float) -> float:
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
