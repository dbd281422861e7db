"""What-if studies: one plan and model on clusters and batches you may not have.

A study is the cartesian product of a few axes (world size, devices per node, device memory,
intra- and inter-node bandwidth factors, global batch, and the sequence lengths of the model
descriptions given). Each point is simulated; a point that cannot exist (a plan that does
not divide the new world size, a profile without a needed measurement) is kept with its
reason, so one bad corner does not hide the rest of the table. A profile whose values make a
prediction overflow is refused as a whole (``ProfileOverflowError``): it is wrong everywhere.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from partita.formats import (
    HardwareProfile,
    ModelDescription,
    ModelProfile,
    Plan,
)
from partita.formats.plan_checks import check_plan_structure
from partita.simulator.cost import ProfileOverflowError
from partita.simulator.result import bubble_fraction
from partita.simulator.simulation import simulate
from partita.simulator.specsheet import (
    ClusterSpec,
    hardware_profile_from_spec,
    model_profile_from_description,
)

AXES = (
    "world_size",
    "devices_per_node",
    "memory_gb",
    "intra_bandwidth_x",
    "inter_bandwidth_x",
    "global_batch",
    "seq_len",
)
GIB = 2**30


@dataclass(frozen=True)
class Prediction:
    iteration_time_s: float
    throughput_samples_per_s: float
    peak_memory_bytes: float  # the fullest device
    device_memory_bytes: float
    stage_peak_bytes: tuple[float, ...] = ()  # one device of each pipeline stage
    bubble_fraction: float = 0.0  # of the iteration, averaged over the stages
    warnings: tuple[str, ...] = ()  # the simulation's

    @property
    def fits(self) -> bool:
        return self.peak_memory_bytes <= self.device_memory_bytes


@dataclass(frozen=True)
class WhatIfPoint:
    settings: dict[str, float]
    world_size: int
    prediction: Prediction | None = None  # None when the point cannot exist
    error: str | None = None

    @property
    def fits(self) -> bool:
        return self.prediction is not None and self.prediction.fits


def scale_plan(
    plan: Plan, *, world_size: int | None = None, global_batch: int | None = None
) -> Plan:
    """The same pipeline and per-layer strategies with more or fewer data-parallel replicas
    (``world_size``) or another global batch (micro-batch count unchanged)."""
    world = world_size or plan.world_size
    if world % plan.pipeline.degree:
        raise ValueError(
            f"world size {world} is not a multiple of the pipeline degree {plan.pipeline.degree}"
        )
    scaled = dataclasses.replace(
        plan,
        world_size=world,
        global_batch_size=global_batch or plan.global_batch_size,
        predictions=None,
    )
    check_plan_structure(scaled)
    return scaled


@dataclass(frozen=True)
class Study:
    """Inputs of a study: a plan, one description per sequence length, and either a cluster
    spec (profiles derived from it) or measured profiles."""

    plan: Plan
    models: Sequence[ModelDescription]
    cluster: ClusterSpec | None = None
    hardware: HardwareProfile | None = None
    model_profile: ModelProfile | None = None
    dtype: str | None = None  # the plan's precision; another one is refused

    def run(self, axes: Mapping[str, Sequence[float]]) -> list[WhatIfPoint]:
        unknown = sorted(set(axes) - set(AXES))
        if unknown:
            raise ValueError(f"unknown what-if axis {unknown[0]!r} (known: {', '.join(AXES)})")
        if (self.cluster is None) == (self.hardware is None):
            raise ValueError("give either a cluster spec or a measured hardware profile")
        if self.hardware is not None and self.model_profile is None:
            raise ValueError("a measured hardware profile needs a measured model profile too")
        # Times and memory of one precision printed for a plan of another would be wrong.
        precision = self.plan.precision
        if self.dtype is not None and self.dtype != precision:
            raise ValueError(
                f"--dtype {self.dtype} differs from the plan's precision {precision}: "
                "give the plan's, or a plan of that precision"
            )
        if self.model_profile is not None and self.model_profile.dtype != precision:
            raise ValueError(
                f"the model profile was measured in {self.model_profile.dtype} but the plan "
                f"computes in {precision}"
            )
        names = [a for a in AXES if a in axes and a != "seq_len"]
        models = {m.seq_len: m for m in self.models}
        seqs = [int(s) for s in axes.get("seq_len", sorted(models))]
        points = []
        for values in itertools.product(*(axes[name] for name in names)):
            for seq in seqs:
                settings = {**dict(zip(names, values, strict=True)), "seq_len": float(seq)}
                points.append(self._point(settings, models))
        return points

    def _point(
        self, settings: dict[str, float], models: Mapping[int, ModelDescription]
    ) -> WhatIfPoint:
        world = int(settings.get("world_size", self.plan.world_size))
        try:
            model = models.get(int(settings["seq_len"]))
            if model is None:
                raise ValueError(f"no model description for seq_len {int(settings['seq_len'])}")
            plan = scale_plan(
                self.plan,
                world_size=world,
                global_batch=int(settings["global_batch"]) if "global_batch" in settings else None,
            )
            hardware, profile = self._profiles(settings, world, model)
            result = simulate(
                plan, hardware=hardware, model_profile=profile, model=model, record_events=False
            )
        except ProfileOverflowError:
            raise  # not a corner that cannot exist: the profile is wrong at every point
        except ValueError as error:
            return WhatIfPoint(settings=settings, world_size=world, error=str(error))
        prediction = Prediction(
            iteration_time_s=result.iteration_time_s,
            throughput_samples_per_s=result.throughput_samples_per_s,
            peak_memory_bytes=max(result.peak_memory_bytes),
            device_memory_bytes=hardware.device.memory_bytes,
            stage_peak_bytes=result.peak_memory_bytes,
            bubble_fraction=bubble_fraction(result),
            warnings=result.warnings,
        )
        return WhatIfPoint(settings=settings, world_size=world, prediction=prediction)

    def _profiles(
        self, settings: Mapping[str, float], world: int, model: ModelDescription
    ) -> tuple[HardwareProfile, ModelProfile]:
        if self.cluster is not None:
            spec = cluster_variant(self.cluster, settings, world)
            return hardware_profile_from_spec(spec), model_profile_from_description(
                model,
                spec,
                dtype=self.plan.precision,
            )
        assert self.hardware is not None and self.model_profile is not None
        return _measured_variant(self.hardware, settings, world), self.model_profile


def cluster_variant(spec: ClusterSpec, settings: Mapping[str, float], world: int) -> ClusterSpec:
    per_node = int(settings.get("devices_per_node", spec.devices_per_node))
    if world % per_node and world > per_node:
        raise ValueError(f"world size {world} is not a whole number of {per_node}-device nodes")
    return dataclasses.replace(
        spec,
        devices_per_node=min(per_node, world),
        num_nodes=max(1, world // per_node),
        memory_bytes=int(settings.get("memory_gb", spec.memory_bytes / GIB) * GIB),
        intra_node_bandwidth_bytes_per_s=spec.intra_node_bandwidth_bytes_per_s
        * settings.get("intra_bandwidth_x", 1.0),
        inter_node_bandwidth_bytes_per_s=spec.inter_node_bandwidth_bytes_per_s
        * settings.get("inter_bandwidth_x", 1.0),
    )


def _measured_variant(
    hardware: HardwareProfile, settings: Mapping[str, float], world: int
) -> HardwareProfile:
    if world != hardware.world_size or "devices_per_node" in settings:
        raise ValueError(
            "a measured hardware profile cannot change the number or grouping of devices; "
            "use a cluster spec for that"
        )
    factors = {
        "intra_node": settings.get("intra_bandwidth_x", 1.0),
        "inter_node": settings.get("inter_bandwidth_x", 1.0),
    }
    collectives = tuple(
        dataclasses.replace(c, bandwidth_bytes_per_s=c.bandwidth_bytes_per_s * factors[c.scope])
        for c in hardware.collectives
    )
    memory = int(settings.get("memory_gb", hardware.device.memory_bytes / GIB) * GIB)
    return dataclasses.replace(
        hardware,
        collectives=collectives,
        device=dataclasses.replace(hardware.device, memory_bytes=memory),
    )
