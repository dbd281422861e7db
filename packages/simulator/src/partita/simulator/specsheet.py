"""Profiles of clusters one does not have, from spec-sheet numbers (no measurement, no torch).

A :class:`ClusterSpec` holds the few public numbers of a cluster: device memory and FLOP/s,
intra-node (NVLink) and inter-node (InfiniBand) bandwidth and latency. From it,
:func:`hardware_profile_from_spec` derives a ``partita.hardware_profile`` with ring-algorithm
collective costs, and :func:`model_profile_from_description` an analytic
``partita.model_profile`` of a model description. A what-if study changes the spec::

    spec = load_cluster_spec("h100-sxm").with_changes(num_nodes=16)
    faster = spec.with_changes(inter_node_bandwidth_bytes_per_s=2 * 50e9)

Spec file (JSON, one object) read by :func:`load_cluster_spec`; unknown keys are errors.
Required keys (unless ``preset`` is given):

- ``name``: human-readable cluster name
- ``device_name``: e.g. ``"NVIDIA H100 SXM5 80GB"``
- ``devices_per_node``, ``num_nodes``: integers >= 1
- ``memory_bytes``: integer > 0, memory of one device
- ``peak_flops_per_s``: object dtype (``fp32``, ``bf16``, ``fp16``) -> dense FLOP/s of one device
- ``intra_node_bandwidth_bytes_per_s``: number > 0, per device and direction (e.g. NVLink)
- ``intra_node_latency_s``: number >= 0, one ring step inside a node
- ``inter_node_bandwidth_bytes_per_s``: number > 0, per device and direction (its NIC)
- ``inter_node_latency_s``: number >= 0, one ring step across nodes

Optional keys:

- ``preset``: start from this preset (``PRESETS``); the other keys override its fields
- ``memory_bandwidth_bytes_per_s``: number > 0 or null (default null: unknown)
- ``device_kind``: ``"cuda"`` (default) or ``"cpu"``
- ``backend``: ``"nccl"`` (default, needs ``cuda``) or ``"gloo"``
- ``overlap_compute``, ``overlap_communication``: numbers >= 1 (defaults 1.1 and 1.2), the
  hardware profile's ``OverlapSlowdown``
- ``efficiencies``: object of shares in (0, 1] that override the calibration of the device
  kind (``compute_model``): ``gemm`` (the best GEMMs' share of the peak), ``attention`` (the
  attention kernel's), ``memory`` (streaming work's share of the memory bandwidth)

With ``preset``, only the keys to change are needed: ``{"preset": "h100-sxm", "num_nodes": 16}``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal, get_args

from partita.formats import (
    CollectiveProfile,
    ComputeThroughput,
    Device,
    HardwareProfile,
    LayerDescription,
    LayerMemory,
    LayerTiming,
    LayerTypeProfile,
    ModelDescription,
    ModelProfile,
    OverlapSlowdown,
)
from partita.formats.common import (
    ATTENTION_KERNELS,
    BYTES_PER_ELEMENT,
    AttentionKernel,
    Precision,
    SpMode,
)
from partita.formats.hardware_profile import CollectiveOp, Placement, Scope
from partita.simulator.compute_model import EFFICIENCY_KEYS, ComputeModel
from partita.simulator.selective_op import saved_elements_per_sample

# Estimates, not spec-sheet values: nothing public states how much slower a matmul runs while
# NCCL kernels share the SMs and memory; these are in the range profilers see on GPUs.
DEFAULT_OVERLAP_COMPUTE = 1.1
DEFAULT_OVERLAP_COMMUNICATION = 1.2

# The compute model's shares (``compute_model``) for a spec without a calibration of its own:
# a generic GPU, the A100's rates less a margin. Presets carry their device's calibration.
DEFAULT_EFFICIENCIES: Mapping[str, float] = {"gemm": 0.7, "attention": 0.5, "memory": 0.8}

# Per layer and per pass (forward, backward): a layer launches tens of kernels, so even a layer
# with almost no FLOPs takes some time. An estimate of launch and synchronisation cost.
LAYER_OVERHEAD_S = 20e-6

# Under plain tensor parallelism (sp "none") the norms, dropouts and residual stream outside the
# tensor-parallel regions keep full-size activations on every device. An estimate of their share
# of a block's activations; the rest is split over tp.
REPLICATED_ACTIVATION_SHARE = 0.25

# Adam keeps two fp32 moments (8 bytes per parameter); the parameters themselves are the fp32
# master copy under every precision (the executor autocasts the compute).
ADAM_MOMENT_BYTES = 8
MASTER_BYTES_PER_PARAM = 4  # fp32 parameters and gradients under every precision

COLLECTIVE_OPS: tuple[CollectiveOp, ...] = get_args(CollectiveOp)
_PLACEMENTS: tuple[Placement, ...] = get_args(Placement)
_DTYPES: tuple[Precision, ...] = get_args(Precision)
_SP_MODES: tuple[SpMode, ...] = get_args(SpMode)


@dataclass(frozen=True)
class ClusterSpec:
    """Public numbers of a homogeneous cluster; every bandwidth is per device and direction."""

    name: str
    device_name: str
    devices_per_node: int
    num_nodes: int
    memory_bytes: int
    peak_flops_per_s: Mapping[str, float]
    intra_node_bandwidth_bytes_per_s: float
    intra_node_latency_s: float
    inter_node_bandwidth_bytes_per_s: float
    inter_node_latency_s: float
    memory_bandwidth_bytes_per_s: float | None = None
    device_kind: Literal["cpu", "cuda"] = "cuda"
    backend: Literal["gloo", "nccl"] = "nccl"
    overlap_compute: float = DEFAULT_OVERLAP_COMPUTE
    overlap_communication: float = DEFAULT_OVERLAP_COMMUNICATION
    efficiencies: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_spec(self)
        # Copies, so that changing the caller's dict (or a preset's) cannot change this spec.
        object.__setattr__(self, "peak_flops_per_s", dict(self.peak_flops_per_s))
        object.__setattr__(self, "efficiencies", dict(self.efficiencies))

    @property
    def world_size(self) -> int:
        return self.num_nodes * self.devices_per_node

    def with_changes(self, **changes: Any) -> ClusterSpec:
        """A copy with some fields changed (and checked again), for what-if studies."""
        return dataclasses.replace(self, **changes)


# --- checks of a spec: ValueError("<field>: <what is wrong>") --------------------------------

_STRINGS = ("name", "device_name")
_POSITIVE_INTEGERS = ("devices_per_node", "num_nodes", "memory_bytes")
_POSITIVE = ("intra_node_bandwidth_bytes_per_s", "inter_node_bandwidth_bytes_per_s")
_NON_NEGATIVE = ("intra_node_latency_s", "inter_node_latency_s")
_AT_LEAST_ONE = ("overlap_compute", "overlap_communication")
_CHOICES: Mapping[str, tuple[str, ...]] = {
    "device_kind": ("cpu", "cuda"),
    "backend": ("gloo", "nccl"),
}


def _check_spec(spec: ClusterSpec) -> None:
    for name in _STRINGS:
        if not isinstance(getattr(spec, name), str):
            raise ValueError(f"{name}: expected a string, got {getattr(spec, name)!r}")
    for name, allowed in _CHOICES.items():
        if getattr(spec, name) not in allowed:
            raise ValueError(f"{name}: expected one of {allowed}, got {getattr(spec, name)!r}")
    for name in _POSITIVE_INTEGERS:
        _check_number(name, getattr(spec, name), minimum=1, integer=True)
    for name in _POSITIVE:
        _check_number(name, getattr(spec, name), minimum=0, strict=True)
    for name in _NON_NEGATIVE:
        _check_number(name, getattr(spec, name), minimum=0)
    for name in _AT_LEAST_ONE:
        _check_number(name, getattr(spec, name), minimum=1)
    if spec.memory_bandwidth_bytes_per_s is not None:
        _check_number(
            "memory_bandwidth_bytes_per_s",
            spec.memory_bandwidth_bytes_per_s,
            minimum=0,
            strict=True,
        )
    _check_peak_flops(spec.peak_flops_per_s)
    _check_efficiencies(spec.efficiencies)
    if spec.backend == "nccl" and spec.device_kind != "cuda":
        raise ValueError("backend: backend 'nccl' needs device_kind 'cuda'")


def _check_number(
    name: str, value: object, *, minimum: float, strict: bool = False, integer: bool = False
) -> None:
    # bool is an int in Python; JSON true is never meant as a number.
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        expected = "an integer" if integer else "a number"
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
    if not math.isfinite(value) or value < minimum or (strict and value == minimum):
        raise ValueError(f"{name}: must be {'>' if strict else '>='} {minimum}, got {value!r}")


def _check_efficiencies(given: object, where: str = "efficiencies") -> None:
    if not isinstance(given, Mapping):
        raise ValueError(f"{where}: expected an object of shares, got {given!r}")
    for key, share in given.items():
        if key not in EFFICIENCY_KEYS:
            raise ValueError(f"{where}.{key}: unknown (expected {', '.join(EFFICIENCY_KEYS)})")
        _check_number(f"{where}.{key}", share, minimum=0, strict=True)
        if share > 1:
            raise ValueError(f"{where}.{key}: a share of at most 1, got {share!r}")


def _check_peak_flops(peak: object) -> None:
    if not isinstance(peak, Mapping) or not peak:
        raise ValueError(f"peak_flops_per_s: expected an object dtype -> FLOP/s, got {peak!r}")
    for dtype, flops in peak.items():
        if dtype not in _DTYPES:
            raise ValueError(f"peak_flops_per_s.{dtype}: unknown dtype (expected one of {_DTYPES})")
        _check_number(f"peak_flops_per_s.{dtype}", flops, minimum=0, strict=True)


# --- presets -----------------------------------------------------------------------------------

PRESETS: Mapping[str, ClusterSpec] = {
    # NVIDIA H100 Tensor Core GPU datasheet, SXM5 column: FP32 67 TFLOPS (no tensor cores: TF32
    # is off by default in PyTorch matmuls); BF16/FP16 tensor core 1,979 TFLOPS "with sparsity",
    # so 989.5 dense; 80 GB HBM3 at 3.35 TB/s; NVLink 900 GB/s total = 450 GB/s per direction.
    # Inter-node: DGX H100 has one 400 Gb/s NDR InfiniBand NIC (ConnectX-7) per GPU = 50 GB/s.
    # Latencies per ring step are estimates (NVLink ~2 us, InfiniBand through NCCL ~5 us).
    "h100-sxm": ClusterSpec(
        name="h100-sxm",
        device_name="NVIDIA H100 SXM5 80GB",
        devices_per_node=8,
        num_nodes=1,
        memory_bytes=80 * 10**9,
        memory_bandwidth_bytes_per_s=3.35e12,
        peak_flops_per_s={"fp32": 67e12, "bf16": 989.5e12, "fp16": 989.5e12},
        intra_node_bandwidth_bytes_per_s=450e9,
        intra_node_latency_s=2e-6,
        inter_node_bandwidth_bytes_per_s=50e9,
        inter_node_latency_s=5e-6,
        # FlashAttention-3 (Shah et al. 2024, arXiv 2407.08608): FlashAttention-2, the kernel
        # behind PyTorch SDPA's flash backend, reaches "only 35% utilization on the H100".
        # cuBLAS bf16 GEMMs on an H100 SXM: 720-772 TFLOP/s reported in pytorch/pytorch#100850
        # (73-78% of the dense peak): 75%. Streaming work at 85% of the HBM bandwidth: an
        # estimate.
        efficiencies={"gemm": 0.75, "attention": 0.35, "memory": 0.85},
    ),
    # NVIDIA A100 Tensor Core GPU datasheet, "A100 80GB SXM" column: FP32 19.5 TFLOPS; BF16/FP16
    # tensor core 312 TFLOPS dense (624 with sparsity); 80 GB HBM2e at 2,039 GB/s; NVLink 600
    # GB/s total = 300 GB/s per direction. DGX A100: one 200 Gb/s HDR InfiniBand NIC per GPU.
    "a100-sxm-80g": ClusterSpec(
        name="a100-sxm-80g",
        device_name="NVIDIA A100 SXM4 80GB",
        devices_per_node=8,
        num_nodes=1,
        memory_bytes=80 * 10**9,
        memory_bandwidth_bytes_per_s=2.039e12,
        peak_flops_per_s={"fp32": 19.5e12, "bf16": 312e12, "fp16": 312e12},
        intra_node_bandwidth_bytes_per_s=300e9,
        intra_node_latency_s=2e-6,
        inter_node_bandwidth_bytes_per_s=25e9,
        inter_node_latency_s=5e-6,
        # FlashAttention-2 (Dao 2023, arXiv 2307.08691): "50-73% of the theoretical maximum
        # FLOPs/s on A100", "approaching the efficiency of GEMM operations": GEMMs at 80%,
        # the attention kernel at 60% (forward and backward together). Streaming work at 85%
        # of the HBM bandwidth: an estimate.
        efficiencies={"gemm": 0.8, "attention": 0.6, "memory": 0.85},
    ),
    # Loosely this development host: 2 cores, one gloo rank per core. Not a spec sheet: FLOP/s
    # and gloo link numbers are in the range of docs/examples/hardware_profile.json (42 GFLOP/s
    # fp32, ~2 GB/s and ~20 us per loopback step); bf16 uses AMX, fp16 has no fast path.
    "cpu-gloo-local": ClusterSpec(
        name="cpu-gloo-local",
        device_name="x86_64 CPU (1 thread per rank)",
        device_kind="cpu",
        backend="gloo",
        devices_per_node=2,
        num_nodes=1,
        memory_bytes=8 * 2**30,
        memory_bandwidth_bytes_per_s=10e9,
        peak_flops_per_s={"fp32": 40e9, "bf16": 80e9, "fp16": 10e9},
        intra_node_bandwidth_bytes_per_s=2e9,
        intra_node_latency_s=20e-6,
        inter_node_bandwidth_bytes_per_s=1.25e9,  # 10 Gb/s Ethernet
        inter_node_latency_s=50e-6,
        # Not measured for any CPU: one thread per rank reaches about half its peak.
        efficiencies={"gemm": 0.45, "attention": 0.45, "memory": 0.5},
    ),
}


# --- loading a spec ----------------------------------------------------------------------------

_FIELDS = tuple(f.name for f in dataclasses.fields(ClusterSpec))
_REQUIRED = tuple(
    f.name for f in dataclasses.fields(ClusterSpec) if f.default is dataclasses.MISSING
)


def load_cluster_spec(source: str | Path) -> ClusterSpec:
    """A preset by name (see ``PRESETS``), a JSON spec file (keys in the module docstring), or
    the JSON object itself (``'{"preset": "h100-sxm", "num_nodes": 16}'``).

    Every problem raises one ``ValueError`` naming the file and the field: ``spec.json: field:
    what is wrong``.
    """
    if isinstance(source, str) and source in PRESETS:
        return PRESETS[source]
    inline = isinstance(source, str) and source.lstrip().startswith("{")
    where = "--cluster (inline JSON)" if inline else str(source)
    data = _parse_json_object(str(source), where) if inline else _read_json_object(Path(source))
    try:
        return _spec_from_mapping(data)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        known = ", ".join(PRESETS)
        raise ValueError(f"{path}: not a preset ({known}) and cannot read: {error}") from None
    return _parse_json_object(text, str(path))


def _parse_json_object(text: str, where: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where}: not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object of spec fields")
    return data


def _spec_from_mapping(data: Mapping[str, Any]) -> ClusterSpec:
    fields = dict(data)
    base_name = fields.pop("preset", None)
    for key in sorted(fields):
        if key not in _FIELDS:
            raise ValueError(
                f"{key}: unknown field (expected one of: preset, {', '.join(_FIELDS)})"
            )
    if base_name is None:
        missing = [name for name in _REQUIRED if name not in fields]
        if missing:
            raise ValueError(f"missing required field {missing[0]!r}")
        return ClusterSpec(**fields)
    if not isinstance(base_name, str) or base_name not in PRESETS:
        raise ValueError(f"preset: unknown preset {base_name!r} (known: {', '.join(PRESETS)})")
    base = PRESETS[base_name]
    if isinstance(fields.get("efficiencies"), Mapping):  # a share given keeps the others
        fields["efficiencies"] = {**base.efficiencies, **fields["efficiencies"]}
    return base.with_changes(**fields)


# --- hardware profile --------------------------------------------------------------------------


def hardware_profile_from_spec(spec: ClusterSpec) -> HardwareProfile:
    """The hardware profile a spec sheet implies: peak FLOP/s and ring-algorithm collectives."""
    return HardwareProfile(
        name=spec.name,
        origin="spec_sheet",
        backend=spec.backend,
        num_nodes=spec.num_nodes,
        devices_per_node=spec.devices_per_node,
        device=Device(
            kind=spec.device_kind,
            name=spec.device_name,
            memory_bytes=spec.memory_bytes,
            memory_bandwidth_bytes_per_s=_float_or_none(spec.memory_bandwidth_bytes_per_s),
        ),
        # Peak, not achieved, throughput: nothing ran. Model profiles apply the efficiencies.
        compute=tuple(
            ComputeThroughput(dtype=dtype, flops_per_s=float(spec.peak_flops_per_s[dtype]))
            for dtype in _DTYPES
            if dtype in spec.peak_flops_per_s
        ),
        collectives=tuple(_collectives(spec)),
        overlap=OverlapSlowdown(
            compute=float(spec.overlap_compute), communication=float(spec.overlap_communication)
        ),
        tools=_tools(),
    )


def collective_group_sizes(spec: ClusterSpec) -> tuple[int, ...]:
    """Powers of two up to the world size, every divisor of it, and a node's devices.

    Every pipeline, data- and tensor-parallel group of a plan divides the world size, so a
    world of 96 still finds its groups of 3, 6, 12, 24 and 48.
    """
    world = spec.world_size
    powers = {2**k for k in range(1, world.bit_length())}
    divisors = {size for size in range(2, world + 1) if world % size == 0}
    sizes = powers | divisors | {spec.devices_per_node}
    return tuple(sorted(size for size in sizes if 2 <= size <= world))


def _collectives(spec: ClusterSpec) -> Iterator[CollectiveProfile]:
    for op in COLLECTIVE_OPS:
        sizes = (2,) if op == "p2p" else collective_group_sizes(spec)
        for size in sizes:
            if size > spec.world_size:
                continue
            for placement in _PLACEMENTS:
                for scope in _scopes(spec, op=op, group_size=size, placement=placement):
                    yield _ring_entry(
                        spec, op=op, group_size=size, placement=placement, scope=scope
                    )


def _scopes(
    spec: ClusterSpec, *, op: CollectiveOp, group_size: int, placement: Placement
) -> tuple[Scope, ...]:
    """Every scope a group of this size and placement can have on the cluster.

    Consecutive groups are aligned to multiples of their size, so they stay in a node when they
    fit and the node size is a multiple of theirs. A strided group (ranks ``stride >= 2``
    apart) spans nodes when the cluster has several, and stays in one node when its span
    ``(size - 1) * 2 + 1`` fits there. A p2p pair, e.g. between pipeline stages, can be
    anywhere. (``placement.group_placement`` decides the scope the same way.)
    """
    per_node, several = spec.devices_per_node, spec.num_nodes > 1
    if op == "p2p":
        intra, inter = per_node >= 2, several
    elif placement == "consecutive":
        intra = group_size <= per_node
        inter = several and (group_size > per_node or per_node % group_size != 0)
    else:
        intra = not several or 2 * group_size - 1 <= per_node
        inter = several
    found: list[Scope] = []
    if intra:
        found.append("intra_node")
    if inter:
        found.append("inter_node")
    return tuple(found)


def _ring_entry(
    spec: ClusterSpec, *, op: CollectiveOp, group_size: int, placement: Placement, scope: Scope
) -> CollectiveProfile:
    if scope == "inter_node":
        link = _inter_node_link(spec, group_size=group_size, placement=placement)
        step = spec.inter_node_latency_s
    else:
        link, step = spec.intra_node_bandwidth_bytes_per_s, spec.intra_node_latency_s
    latency_s, bandwidth = ring_cost(op, group_size, link_bandwidth=link, step_latency_s=step)
    return CollectiveProfile(
        op=op,
        group_size=group_size,
        placement=placement,
        scope=scope,
        latency_s=latency_s,
        bandwidth_bytes_per_s=bandwidth,
        origin="spec_sheet",
    )


def _inter_node_link(spec: ClusterSpec, *, group_size: int, placement: Placement) -> float:
    """Bandwidth of a ring that crosses nodes: the slower of a device's own link in the node
    and the NICs its node lends the ring.

    Every hop of a ring carries the same bytes, and the collective library runs one ring per
    NIC (NCCL's channels, one per rail) so that a node's share leaves through all of its
    members' NICs at once. A consecutive group spanning nodes holds whole nodes: each node
    lends ``devices_per_node`` NICs (FSDP over 64 GPUs on 8 DGX nodes leaves each node at 8 x
    200 Gb/s). A strided group's members per node depend on its stride, which a profile entry
    does not record: one NIC, the bound for the widest stride (a data-parallel group strided
    by a node-wide tensor-parallel group has one member per node).
    """
    nics = 1
    if placement == "consecutive" and group_size >= spec.devices_per_node:
        nics = spec.devices_per_node
    link = min(spec.intra_node_bandwidth_bytes_per_s, nics * spec.inter_node_bandwidth_bytes_per_s)
    return float(link)


def ring_cost(
    op: CollectiveOp, group_size: int, *, link_bandwidth: float, step_latency_s: float
) -> tuple[float, float]:
    """(latency_s, bandwidth_bytes_per_s) of the ring algorithm in the format's convention.

    With ``B`` the bytes of hardware_profile.py (one rank's input; all_gather: gathered output)
    and ``n`` ranks, every rank sends ``2(n-1)/n * B`` in ``2(n-1)`` steps for all_reduce
    (reduce-scatter then all-gather) and ``(n-1)/n * B`` in ``n-1`` steps for all_gather,
    reduce_scatter and all_to_all; p2p sends ``B`` in one step. ``time = latency_s + B /
    bandwidth`` then holds with ``bandwidth = link_bandwidth / (fraction of B sent)``.
    """
    if op == "p2p":
        return float(step_latency_s), float(link_bandwidth)
    steps = 2 * (group_size - 1) if op == "all_reduce" else group_size - 1
    sent_fraction = steps / group_size
    return float(steps * step_latency_s), float(link_bandwidth / sent_fraction)


# --- model profile -----------------------------------------------------------------------------


def model_profile_from_description(
    description: ModelDescription,
    spec: ClusterSpec,
    *,
    dtype: Precision = "bf16",
    efficiencies: Mapping[str, float] | None = None,
    tp_degrees: Sequence[int] = (1, 2, 4, 8),
    micro_batches: Sequence[int] = (1, 2, 4, 8, 16),
    layer_overhead_s: float = LAYER_OVERHEAD_S,
    attention: AttentionKernel = "sdpa",
) -> ModelProfile:
    """An analytic model profile: each layer's time by the kind of work in it
    (``compute_model``: GEMMs by shape, the attention kernel, memory-bound work) at the
    spec's rates and efficiencies, and estimated memory.

    ``efficiencies`` overrides the spec's (which override ``DEFAULT_EFFICIENCIES``). Timings
    hold computation only (plus ``layer_overhead_s`` per pass): tensor-parallel and Ulysses
    communication is not included. Blocks get every (tp, sp) the plan checks allow (tp 1
    only with sp "none"); embedding and head layer types get vocab-parallel degrees that
    divide the vocabulary (or the labels), with sp "none". ``attention`` is the kernel priced:
    fused (``sdpa``, ``flash``: what the executor selects on a GPU) or materialised
    (``eager``).
    """
    if attention not in ATTENTION_KERNELS:
        raise ValueError(f"attention: expected one of {', '.join(ATTENTION_KERNELS)}")
    chosen = _efficiencies({**spec.efficiencies, **(efficiencies or {})})
    tps, batches = _degrees("tp_degrees", tp_degrees), _degrees("micro_batches", micro_batches)
    _check_number("layer_overhead_s", layer_overhead_s, minimum=0)
    model = ComputeModel(
        peak_flops_per_s=_peak(spec, dtype),
        memory_bandwidth_bytes_per_s=spec.memory_bandwidth_bytes_per_s,
        element_bytes=BYTES_PER_ELEMENT[dtype],
        gemm=chosen["gemm"],
        attention=chosen["attention"],
        memory=chosen["memory"],
        overhead_s=layer_overhead_s,
        kernel=attention,
    )
    scale = BYTES_PER_ELEMENT[dtype] / description.activation_bytes_per_element
    layer_types = []
    for layer_type, shapes in _layer_shapes(description).items():
        timings: list[LayerTiming] = []
        memory: list[LayerMemory] = []
        for layer in shapes:
            for tp, sp in _configurations(layer, description, tps):
                entry = _memory(layer, tp, sp, dtype=dtype, activation_scale=scale)
                memory.append(entry)
                for batch in batches:
                    forward, backward = model.layer_seconds(
                        layer,
                        tp=tp,
                        sp=sp,
                        batch=batch,
                        activation_bytes=entry.activation_bytes_per_sample,
                    )
                    timing = _timing(layer, tp, sp, batch, forward, backward)
                    if entry.selective_saved_bytes_per_sample is not None:
                        again = model.selective_recompute_seconds(
                            layer,
                            tp=tp,
                            sp=sp,
                            batch=batch,
                            activation_bytes=entry.activation_bytes_per_sample,
                        )
                        timing = dataclasses.replace(timing, selective_recompute_s=again)
                    timings.append(timing)
        layer_types.append(
            LayerTypeProfile(layer_type=layer_type, timings=tuple(timings), memory=tuple(memory))
        )
    return ModelProfile(
        model=description.name,
        device=spec.device_name,
        dtype=dtype,
        origin="analytic",
        layer_types=tuple(layer_types),
        efficiencies=chosen,
        tools=_tools(),
        attention=attention,
    )


def _efficiencies(given: Mapping[str, float] | None) -> dict[str, float]:
    # Only keys the compute model uses: an ignored key would be stored as if it had an effect.
    _check_efficiencies(given or {})
    chosen = {**DEFAULT_EFFICIENCIES, **(given or {})}
    return {key: float(value) for key, value in chosen.items()}


def _peak(spec: ClusterSpec, dtype: str) -> float:
    if dtype not in spec.peak_flops_per_s:
        known = ", ".join(spec.peak_flops_per_s)
        raise ValueError(f"dtype: spec {spec.name!r} gives peak FLOP/s for {known}, not {dtype!r}")
    return float(spec.peak_flops_per_s[dtype])


def _degrees(name: str, values: Sequence[int]) -> tuple[int, ...]:
    for value in values:
        _check_number(name, value, minimum=1, integer=True)
    if not values:
        raise ValueError(f"{name}: expected at least one value")
    return tuple(sorted(set(values)))


# What layers of one type may differ in: their attention's reach (Qwen2 slides a window in
# some blocks of one type only). The profile keeps the costliest, so no layer is priced short.
_COSTS = (
    "forward_flops_per_sample",
    "backward_flops_per_sample",
    "attention_flops_per_sample",
    "attention_kernel_flops_per_sample",
)


def _layer_shapes(description: ModelDescription) -> dict[str, list[LayerDescription]]:
    """One layer per (layer_type, seq_len), in order; e.g. Swin reuses a type at several."""
    shapes: dict[str, dict[int, LayerDescription]] = {}
    for layer in description.layers:
        by_seq = shapes.setdefault(layer.layer_type, {})
        first = by_seq.setdefault(layer.seq_len, layer)
        # The profile keys entries by (layer_type, seq_len): two different shapes would collide.
        costs = {name: getattr(first, name) for name in _COSTS}
        if dataclasses.replace(layer, name=first.name, **costs) != first:
            raise ValueError(
                f"layers {first.name!r} and {layer.name!r} share layer_type "
                f"{layer.layer_type!r} and seq_len {layer.seq_len} but differ otherwise"
            )
        by_seq[layer.seq_len] = dataclasses.replace(
            first, **{name: max(getattr(first, name), getattr(layer, name)) for name in _COSTS}
        )
    return {layer_type: list(by_seq.values()) for layer_type, by_seq in shapes.items()}


def _configurations(
    layer: LayerDescription, description: ModelDescription, tps: tuple[int, ...]
) -> Iterator[tuple[int, SpMode]]:
    if layer.kind != "block":
        # As the plan checks: vocab.tp divides vocab_size, or num_labels without a vocabulary.
        outputs = description.vocab_size or description.num_labels
        yield from ((tp, "none") for tp in tps if outputs % tp == 0)
        return
    for tp in tps:
        modes = ("none",) if tp == 1 else _SP_MODES
        yield from ((tp, sp) for sp in modes if _divides_all(tp, _split_dims(layer, sp)))


def _split_dims(layer: LayerDescription, sp: SpMode) -> tuple[int, ...]:
    """The dimensions the plan checks (formats.md §7.2) require tp to divide."""
    heads = (layer.num_heads, layer.num_kv_heads)
    if sp == "ulysses":
        return (*heads, layer.seq_len)
    tensor = (*heads, layer.hidden_size, layer.ffn_size)
    return (*tensor, layer.seq_len) if sp == "megatron" else tensor


def _divides_all(tp: int, dims: tuple[int, ...]) -> bool:
    return all(dim % tp == 0 for dim in dims if dim > 0)  # 0: not applicable


def _timing(
    layer: LayerDescription, tp: int, sp: SpMode, batch: int, forward: float, backward: float
) -> LayerTiming:
    return LayerTiming(
        tp=tp,
        sp=sp,
        micro_batch=batch,
        seq_len=layer.seq_len,
        forward_s=forward,
        backward_s=backward,
        origin="analytic",
    )


def _memory(
    layer: LayerDescription, tp: int, sp: SpMode, *, dtype: Precision, activation_scale: float
) -> LayerMemory:
    """Per-device bytes; ``activation_scale`` converts the description's element size to dtype.

    Ulysses splits the sequence, not the parameters. Under sp "none" a share of the activations
    stays replicated (REPLICATED_ACTIVATION_SHARE) and the checkpointed input is whole; the
    sequence-parallel modes split both over tp.
    """
    shards = 1 if sp == "ulysses" else tp
    # The executor keeps fp32 parameters (the master weights) and their fp32 gradients under
    # every precision, autocasting the compute: gradients are summed and ZeRO-3 parameters
    # gathered in fp32, so bf16 and fp16 move as many bytes as fp32 does.
    weight_bytes = _ceil_div(layer.params * MASTER_BYTES_PER_PARAM, shards)
    activations = layer.activation_bytes_per_sample * activation_scale
    checkpoint = layer.output_bytes_per_sample * activation_scale
    if sp == "none":
        share = REPLICATED_ACTIVATION_SHARE
        activations *= share + (1 - share) / tp
    else:
        activations, checkpoint = activations / tp, checkpoint / tp
    # The loss keeps its softmax in fp32 whatever the compute precision, split with the
    # vocabulary (a head's tp is its vocab tp); backward holds two more of it at its peak
    # (the softmax's gradient and the logits').
    loss = layer.loss_bytes_per_sample / tp
    selective = saved_elements_per_sample(layer, tp=tp, sp=sp)
    if selective is not None:  # in the compute precision, never above what none keeps
        selective = min(activations, selective * BYTES_PER_ELEMENT[dtype])
    return LayerMemory(
        tp=tp,
        sp=sp,
        seq_len=layer.seq_len,
        param_bytes=weight_bytes,
        grad_bytes=weight_bytes,
        optimizer_bytes=_ceil_div(layer.params * ADAM_MOMENT_BYTES, shards),
        activation_bytes_per_sample=float(activations + loss),
        checkpoint_activation_bytes_per_sample=float(checkpoint),
        backward_peak_bytes_per_sample=float(2 * loss),
        origin="analytic",
        selective_saved_bytes_per_sample=None if selective is None else float(selective),
    )


# --- small helpers -----------------------------------------------------------------------------


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def _float_or_none(value: float | None) -> float | None:
    return None if value is None else float(value)


def _tools() -> dict[str, str]:
    try:
        return {"partita-simulator": version("partita-simulator")}
    except PackageNotFoundError:  # running from a source tree that is not installed
        return {"partita-simulator": "0+unknown"}
