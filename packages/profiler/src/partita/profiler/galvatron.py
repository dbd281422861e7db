"""Galvatron's profile JSON files -> ``partita.hardware_profile`` and ``partita.model_profile``.

Torch-free: only the standard library and ``partita.formats``. Units, as Galvatron writes them
(docs/profiler.md, "Galvatron import", explains every conversion):

- bandwidths (all-reduce, p2p) are nccl-tests' "Avg bus bandwidth" in GB/s = MB/ms, 1 MB = 1e6
  bytes; sequence-parallel times are milliseconds for messages of ``M`` MiB (2**20 bytes);
- computation is forward milliseconds per layer and per sample; backward is twice the forward;
- memory is in MiB (2**20 bytes); ``parameter_size`` is one whole layer's parameters (fp32) and
  Galvatron's model states are four times the parameters (parameters, gradients, two Adam
  moments).

Galvatron's memory file also keeps the raw measurements it reduced into ``layertype_*`` and
``other_memory_*``: one section per profiled strategy (``1_1_8_sp``, ``1_2_4_vtp_sp``,
``1_1_8_c_sp``: pp_tp_dp, ``_c`` checkpointing, ``_vtp`` vocabulary tp, ``_sp`` sequence
parallelism). Its own search engine never reads them again, and neither does Partita: they are
checked for shape and skipped with a note.

The precision is Galvatron's ``--mixed_precision``, which it writes into both file names
(``computation_profiling_{precision}_{model}[_{unit}].json``); it becomes the model profile's
``dtype``.

Every problem raises :class:`GalvatronError`, whose text is one line naming the file and key.
A value too large for a Partita file once converted (see docs/formats.md §1.2) is such a
problem: each converted entry is checked by ``partita.formats`` where its key is known.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from partita.formats import (
    CollectiveProfile,
    Device,
    FormatError,
    HardwareProfile,
    LayerMemory,
    LayerTiming,
    LayerTypeProfile,
    ModelProfile,
    OverlapSlowdown,
    TimingSample,
    dumps,
)
from partita.formats.common import FAMILIES, PRECISIONS
from partita.formats.hardware_profile import CollectiveOp, Placement, Scope
from partita.formats.schema import MAX_INTEGER, decode, encode

T = TypeVar("T")

MIB = 2**20
BUS_BANDWIDTH_BYTES_PER_S = 1e9  # one nccl-tests GB/s (= Galvatron's MB/ms) in bytes/s
BACKWARD_OVER_FORWARD = 2.0  # Galvatron's cost model: backward = 2 x forward
MODEL_STATES_OVER_PARAMS = 4  # parameters + gradients + two Adam moments, same element size
DEFAULT_DEVICE_MEMORY_BYTES = 80 * 10**9

# Galvatron's file names; discovery is by these patterns, anywhere under the directory.
FILE_PATTERNS: Mapping[str, str] = {
    "allreduce": "allreduce_bandwidth*.json",
    "p2p": "p2p_bandwidth*.json",
    "overlap": "overlap_coefficient*.json",
    "sp_time": "sp_time*.json",
    "computation": "computation_profiling*.json",
    "memory": "memory_profiling*.json",
}
REQUIRED_HARDWARE = ("allreduce", "p2p", "overlap")
REQUIRED_MODEL = ("computation", "memory")

_ALLREDUCE_KEY = re.compile(r"allreduce_size_(\d+)_consec_([01])")
_P2P_KEY = re.compile(r"pp_size_(\d+)")
_SP_KEY = re.compile(r"(allreduce|all2all)_size_(\d+)_(\d+)MB_time")
_COMPUTE_KEY = re.compile(r"layertype_(\w+?)_bsz(\d+)_seq(\d+)")
_LAYER_MEMORY_KEY = re.compile(r"layertype_(\w+?)(_sp)?")
_OTHER_MEMORY_KEY = re.compile(r"other_memory_pp_(off|on_first|on_last)(_sp)?")
# Galvatron's raw memory runs: pp_tp_dp, then _c (checkpoint), _vtp (vocabulary tp), _sp.
_RAW_STRATEGY_KEY = re.compile(r"(\d+)_(\d+)_(\d+)(_c)?(_vtp)?(_sp)?")
_SHAPE_IN_NAME = re.compile(r"(\d+)nodes_(\d+)gpus_per_node")
_IGNORED_KEYS = ("layernum[", "model_config")  # Galvatron's raw totals and model settings


class GalvatronError(ValueError):
    """A missing or malformed Galvatron file: ``<file>: <key>: <what is wrong>``."""

    def __init__(self, file: str, key: str, message: str) -> None:
        super().__init__(f"{file}: {key}: {message}")


@dataclass(frozen=True)
class ImportOptions:
    """What Galvatron's files do not say; ``None`` means: from the file names, or a default."""

    num_nodes: int | None = None
    gpus_per_node: int | None = None
    device_name: str = "GPU (imported from Galvatron)"
    device_memory_bytes: int = DEFAULT_DEVICE_MEMORY_BYTES
    name: str | None = None
    model: str | None = None
    dtype: str | None = None
    family: str | None = None
    layer_types: Mapping[str, tuple[str, ...]] | None = None
    embedding_share: float = 0.0


@dataclass
class ImportReport:
    """What was converted, and what could not be (one line each)."""

    hardware: HardwareProfile | None = None
    model: ModelProfile | None = None
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# --- files ----------------------------------------------------------------------------------


def find_files(directory: Path) -> dict[str, Path]:
    """The Galvatron file of each kind under ``directory`` (kinds absent when not found)."""
    found: dict[str, Path] = {}
    for kind, pattern in FILE_PATTERNS.items():
        matches = sorted(directory.rglob(pattern))
        if len(matches) > 1:
            names = ", ".join(str(m) for m in matches)
            raise GalvatronError(str(directory), pattern, f"several files match ({names})")
        if matches:
            found[kind] = matches[0]
    return found


def read_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise GalvatronError(str(path), "-", f"cannot read: {error}") from None
    except json.JSONDecodeError as error:
        raise GalvatronError(str(path), "-", f"not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise GalvatronError(str(path), "-", "expected a JSON object")
    return data


def _number(path: Path, key: str, value: object, *, positive: bool = True) -> float:
    number = _as_float(value)
    if number is None or not math.isfinite(number):
        raise GalvatronError(str(path), key, f"expected a number, got {_short(value)}")
    if number < 0 or (positive and number == 0):
        raise GalvatronError(str(path), key, f"expected a number > 0, got {value!r}")
    return number


def _as_float(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return float(value)
    except OverflowError:  # an integer literal beyond any double
        return math.inf


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@contextmanager
def _converting(path: Path, key: str, value: float | None = None) -> Iterator[None]:
    """A ``value`` at ``key`` that converts to something a Partita file cannot hold (beyond
    its bounds, docs/formats.md §1.2) is an error naming the key."""
    try:
        yield
    except FormatError as error:
        what = "" if value is None else f"{value:g} is "
        where = f"{error.path}: " if error.path else ""
        message = f"{what}out of range once converted ({where}{error.message})"
        raise GalvatronError(str(path), key, message) from None


def _valid(entry: T) -> T:
    """``entry`` if a Partita file can hold it; FormatError otherwise (see _converting)."""
    decode(type(entry), encode(entry))
    return entry


def _whole(path: Path, profile: T) -> T:
    """The converted part, with the checks its file gets on saving (a safety net: each entry
    was checked where its key was known)."""
    try:
        dumps(profile)
    except FormatError as error:
        message = f"{error.message} (in the converted {type(profile).__name__})"
        raise GalvatronError(str(path), error.path or "-", message) from None
    return profile


def _match(pattern: re.Pattern[str], path: Path, key: str, expected: str) -> re.Match[str]:
    found = pattern.fullmatch(key)
    if found is None:
        raise GalvatronError(str(path), key, f"unexpected key (expected {expected})")
    return found


def _items(path: Path, data: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    for key, value in data.items():
        if not key.startswith(_IGNORED_KEYS):
            yield key, value


# --- hardware -------------------------------------------------------------------------------


def cluster_shape(files: Mapping[str, Path], options: ImportOptions) -> tuple[int, int]:
    """(nodes, GPUs per node): the options, else the ``{N}nodes_{G}gpus_per_node`` file names."""
    named = [m for p in files.values() if (m := _SHAPE_IN_NAME.search(p.name))]
    shape = (int(named[0].group(1)), int(named[0].group(2))) if named else None
    nodes = options.num_nodes or (shape[0] if shape else None)
    per_node = options.gpus_per_node or (shape[1] if shape else None)
    if nodes is None or per_node is None:
        path = files.get("allreduce")
        raise GalvatronError(
            str(path or "-"),
            "-",
            "cannot tell the cluster's shape from the file name; give --nodes and --gpus-per-node",
        )
    return nodes, per_node


def _scope(group_size: int, stride: int, *, nodes: int, per_node: int) -> Scope:
    """As ``partita.simulator.placement``: a group crosses nodes when its span exceeds one."""
    span = (group_size - 1) * stride + 1
    return "inter_node" if nodes > 1 and span > per_node else "intra_node"


def _entry(
    op: CollectiveOp,
    group_size: int,
    placement: Placement,
    scope: Scope,
    latency_s: float,
    bandwidth: float,
    samples: tuple[TimingSample, ...] = (),
) -> CollectiveProfile:
    return CollectiveProfile(
        op=op,
        group_size=group_size,
        placement=placement,
        scope=scope,
        latency_s=latency_s,
        bandwidth_bytes_per_s=bandwidth,
        origin="galvatron",
        samples=samples,
    )


def all_reduce_entries(
    path: Path, data: Mapping[str, Any], *, nodes: int, per_node: int
) -> list[CollectiveProfile]:
    """``allreduce_size_{G}_consec_{0|1}`` bus bandwidth -> bandwidth for the input's bytes.

    nccl-tests' bus bandwidth is ``bytes * 2(G-1)/G / time``, so ``time = bytes / bandwidth``
    with ``bandwidth = busbw * G / (2(G-1))``. Galvatron gives no latency: 0.
    """
    world = nodes * per_node
    entries = []
    for key, value in _items(path, data):
        found = _match(_ALLREDUCE_KEY, path, key, "allreduce_size_{G}_consec_{0|1}")
        size, consecutive = int(found.group(1)), found.group(2) == "1"
        if not 2 <= size <= world:
            raise GalvatronError(str(path), key, f"group size must be 2..{world} (world size)")
        gb_per_s = _number(path, key, value)
        busbw = gb_per_s * BUS_BANDWIDTH_BYTES_PER_S
        stride = 1 if consecutive else world // size  # Galvatron's strided groups: i, i+W/G, ...
        scope = _scope(size, stride, nodes=nodes, per_node=per_node)
        placement: Placement = "consecutive" if consecutive else "strided"
        bandwidth = busbw * size / (2 * (size - 1))
        with _converting(path, key, gb_per_s):
            entries.append(
                _with_derived(_entry("all_reduce", size, placement, scope, 0.0, bandwidth))
            )
    if not entries:
        raise GalvatronError(str(path), "-", "no allreduce_size_{G}_consec_{0|1} entries")
    return entries


def p2p_entries(path: Path, data: Mapping[str, Any], *, nodes: int) -> list[CollectiveProfile]:
    """``pp_size_{P}`` -> p2p; every P measures neighbour stages over the whole cluster.

    sendrecv's bus bandwidth is its algorithm bandwidth (bytes / time). Galvatron's p2p groups
    span every node, so they are inter-node on several nodes; where several P give the same
    scope, the lowest bandwidth (the pace of a pipeline) is kept, for both placements.
    """
    bandwidths = []
    for key, value in _items(path, data):
        _match(_P2P_KEY, path, key, "pp_size_{P}")
        gb_per_s = _number(path, key, value)
        bandwidth = gb_per_s * BUS_BANDWIDTH_BYTES_PER_S
        with _converting(path, key, gb_per_s):
            _valid(_entry("p2p", 2, "consecutive", "intra_node", 0.0, bandwidth))
        bandwidths.append(bandwidth)
    if not bandwidths:
        raise GalvatronError(str(path), "-", "no pp_size_{P} entries")
    scope: Scope = "inter_node" if nodes > 1 else "intra_node"
    placements: tuple[Placement, ...] = ("consecutive", "strided")
    return [_entry("p2p", 2, placement, scope, 0.0, min(bandwidths)) for placement in placements]


def overlap_slowdown(path: Path, data: Mapping[str, Any]) -> OverlapSlowdown:
    """Galvatron's one ``overlap_coe`` slows both compute and communication when they overlap."""
    for key in data:
        if key != "overlap_coe":
            raise GalvatronError(str(path), key, "unexpected key (expected overlap_coe)")
    if "overlap_coe" not in data:
        raise GalvatronError(str(path), "overlap_coe", "missing")
    value = _number(path, "overlap_coe", data["overlap_coe"])
    if value < 1:
        raise GalvatronError(str(path), "overlap_coe", f"a slowdown must be >= 1, got {value}")
    with _converting(path, "overlap_coe", value):
        return _valid(OverlapSlowdown(compute=value, communication=value))


def sp_time_entries(
    path: Path, data: Mapping[str, Any], *, nodes: int, per_node: int
) -> list[CollectiveProfile]:
    """``{allreduce|all2all}_size_{G}_{M}MB_time`` ms -> a least-squares latency + bandwidth.

    ``M`` MiB is the per-rank buffer nccl-tests hands to the operation (its input); Galvatron
    measures consecutive groups only.
    """
    points: dict[tuple[str, int], list[tuple[TimingSample, str]]] = {}
    for key, value in _items(path, data):
        found = _match(_SP_KEY, path, key, "{allreduce|all2all}_size_{G}_{M}MB_time")
        op = "all_reduce" if found.group(1) == "allreduce" else "all_to_all"
        size, mib = int(found.group(2)), int(found.group(3))
        if not 2 <= size <= nodes * per_node or mib < 1:
            raise GalvatronError(str(path), key, "group size or message size out of range")
        ms = _number(path, key, value)
        with _converting(path, key, ms):
            sample = _valid(TimingSample(bytes=mib * MIB, time_s=ms / 1000))
        points.setdefault((op, size), []).append((sample, key))
    entries = []
    for (op, size), keyed in sorted(points.items()):
        ordered = tuple(sorted((sample for sample, _ in keyed), key=lambda s: s.bytes))
        latency, bandwidth = fit_line(path, f"{op} x{size}", ordered)
        scope = _scope(size, 1, nodes=nodes, per_node=per_node)
        # A fit out of range comes from the times: name the largest.
        slowest = max(keyed, key=lambda sample_key: sample_key[0].time_s)[1]
        with _converting(path, slowest, data[slowest]):
            entry = _entry(op, size, "consecutive", scope, latency, bandwidth, ordered)  # type: ignore[arg-type]
            entries.append(_with_derived(entry))
    return entries


def fit_line(path: Path, what: str, samples: tuple[TimingSample, ...]) -> tuple[float, float]:
    """(latency_s, bytes/s) of ``time = latency + bytes / bandwidth``; latency clamped at 0."""
    xs = [float(s.bytes) for s in samples]
    ys = [s.time_s for s in samples]
    if len(set(xs)) < 2:
        return 0.0, xs[0] / ys[0] if ys[0] > 0 else _bad_fit(path, what)
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mean_x) ** 2 for x in xs
    )
    latency = mean_y - slope * mean_x
    if latency < 0:  # noise at small sizes: a line through the origin instead
        latency = 0.0
        slope = sum(x * y for x, y in zip(xs, ys, strict=True)) / sum(x * x for x in xs)
    if slope <= 0:
        _bad_fit(path, what)
    return latency, 1.0 / slope


def _bad_fit(path: Path, what: str) -> float:
    raise GalvatronError(str(path), what, "times do not grow with the message size")


def _with_derived(measured: CollectiveProfile) -> CollectiveProfile:
    """``measured``, checked with what derived_entries makes of it (twice its bandwidth)."""
    for derived in [measured, *derived_entries([measured])]:
        _valid(derived)
    return measured


def derived_entries(measured: list[CollectiveProfile]) -> list[CollectiveProfile]:
    """all_gather and reduce_scatter as half an all_reduce (all_reduce = reduce_scatter +
    all_gather): latency / 2, bandwidth x 2 for the same bytes; all_to_all the same way where
    Galvatron measured none (an estimate: nccl-tests' bus bandwidths of the three agree)."""
    have = {(e.op, e.group_size, e.placement, e.scope) for e in measured}
    derived = []
    for entry in measured:
        if entry.op != "all_reduce":
            continue
        for op in ("all_gather", "reduce_scatter", "all_to_all"):
            if (op, entry.group_size, entry.placement, entry.scope) in have:
                continue
            derived.append(
                _entry(
                    op,  # type: ignore[arg-type]
                    entry.group_size,
                    entry.placement,
                    entry.scope,
                    entry.latency_s / 2,
                    entry.bandwidth_bytes_per_s * 2,
                )
            )
    return derived


def import_hardware(files: Mapping[str, Path], options: ImportOptions) -> HardwareProfile:
    for kind in REQUIRED_HARDWARE:
        if kind not in files:
            raise GalvatronError(FILE_PATTERNS[kind], "-", "no such file in the directory")
    nodes, per_node = cluster_shape(files, options)
    all_reduce = all_reduce_entries(
        files["allreduce"], read_object(files["allreduce"]), nodes=nodes, per_node=per_node
    )
    fitted = []
    if "sp_time" in files:
        data = read_object(files["sp_time"])
        fitted = sp_time_entries(files["sp_time"], data, nodes=nodes, per_node=per_node)
    # A fitted all-reduce (latency and bandwidth) replaces the bus bandwidth of the same group.
    replaced = {(e.op, e.group_size, e.placement, e.scope) for e in fitted}
    kept = [e for e in all_reduce if (e.op, e.group_size, e.placement, e.scope) not in replaced]
    measured = sorted([*kept, *fitted], key=lambda e: (e.op, e.group_size, e.placement))
    p2p = p2p_entries(files["p2p"], read_object(files["p2p"]), nodes=nodes)
    profile = HardwareProfile(
        name=options.name or f"galvatron-{nodes}x{per_node}",
        origin="galvatron",
        backend="nccl",
        num_nodes=nodes,
        devices_per_node=per_node,
        device=Device(
            kind="cuda", name=options.device_name, memory_bytes=options.device_memory_bytes
        ),
        compute=(),  # Galvatron measures no FLOP/s
        collectives=(*measured, *derived_entries(measured), *p2p),
        overlap=overlap_slowdown(files["overlap"], read_object(files["overlap"])),
        tools={"galvatron-files": ", ".join(sorted(p.name for p in files.values()))},
    )
    return _whole(files["allreduce"], profile)


# --- model ----------------------------------------------------------------------------------

# Galvatron names its model files {kind}_profiling_{--mixed_precision}_{model}[_{unit}].json
# (precision fp32, fp16 or bf16); recent versions add the profiled unit: "all" (whole layers),
# "attention" or "mlp".
_NAME_IN_FILE = re.compile(
    r"(?:computation|memory)_profiling_(?:(fp32|fp16|bf16)_)?(.+?)(?:_(all|attention|mlp))?\.json"
)
DEFAULT_DTYPE = "bf16"


@dataclass(frozen=True)
class LayerTypeNames:
    """Our layer type names for each Galvatron layer type, and for its "other" part."""

    blocks: Mapping[str, tuple[str, ...]]
    embedding: tuple[str, ...]
    head: tuple[str, ...]


def default_names(family: str | None) -> LayerTypeNames:
    """The layer types ``partita.models`` gives a family (T5: encoder 0, decoder 1)."""
    if family == "t5":
        return LayerTypeNames(
            blocks={
                "0": ("t5_encoder_first_block", "t5_encoder_block"),
                "1": ("t5_decoder_first_block", "t5_decoder_block"),
            },
            embedding=("t5_embedding", "t5_decoder_embedding"),
            head=("t5_head",),
        )
    if family in ("gpt", "llama", "bert", "vit"):
        return LayerTypeNames(
            blocks={"0": (f"{family}_block",)},
            embedding=(f"{family}_embedding",),
            head=(f"{family}_head",),
        )
    return LayerTypeNames(blocks={}, embedding=("embedding",), head=("head",))


def layer_type_names(options: ImportOptions, model: str) -> tuple[LayerTypeNames, str | None]:
    """The names, and a note when they are guesses: ``--layer-types`` over the family's."""
    family = options.family or next((f for f in FAMILIES if model.lower().startswith(f)), None)
    names = default_names(family)
    mapping = dict(options.layer_types or {})
    embedding = mapping.pop("embedding", names.embedding)
    head = mapping.pop("head", names.head)
    blocks = {**names.blocks, **mapping}
    note = None
    if family is None and not options.layer_types:
        note = (
            f"no family known for model {model!r}: layer types named layertype_<T>, embedding "
            "and head (give --family or --layer-types)"
        )
    return LayerTypeNames(blocks=blocks, embedding=embedding, head=head), note


@dataclass(frozen=True)
class Identity:
    model: str
    dtype: str
    dtype_note: str  # where the precision came from, for the command's output


def model_identity(files: Mapping[str, Path], options: ImportOptions) -> Identity:
    """The options, else ``{computation|memory}_profiling_{precision}_{model}[_{unit}].json``.

    The precision in the two names must agree: a plan searched from profiles of different
    precisions would be neither. A per-sublayer profile (unit attention or mlp) times half a
    layer, which Partita cannot use as a layer type.
    """
    named = {kind: _NAME_IN_FILE.fullmatch(files[kind].name) for kind in REQUIRED_MODEL}
    for kind, found in named.items():
        if found and found.group(3) in ("attention", "mlp"):
            raise GalvatronError(
                str(files[kind]),
                "-",
                f"a per-{found.group(3)} profile (Galvatron's --profile_unit {found.group(3)}); "
                "Partita needs whole layers (unit all)",
            )
    precisions = {kind: found.group(1) for kind, found in named.items() if found and found.group(1)}
    if len(set(precisions.values())) > 1 and not options.dtype:
        raise GalvatronError(
            str(files["memory"]),
            "-",
            f"precision {precisions['memory']!r} in the name, but {precisions['computation']!r} "
            f"in {files['computation'].name} (give --dtype to choose)",
        )
    computation = named["computation"]
    model = options.model or (computation.group(2) if computation else "galvatron-model")
    if options.dtype:
        dtype, note = options.dtype, f"dtype {options.dtype} (--dtype)"
    elif precisions:
        kind = "computation" if "computation" in precisions else "memory"
        dtype = precisions[kind]
        note = f"dtype {dtype}: Galvatron's precision, from the file name {files[kind].name}"
    else:
        dtype = DEFAULT_DTYPE
        note = f"dtype {dtype} assumed: no precision in the file names (give --dtype)"
    if dtype not in PRECISIONS:
        raise GalvatronError(
            str(files["computation"]), "-", f"precision {dtype!r} is not one of {PRECISIONS}"
        )
    return Identity(model=model, dtype=dtype, dtype_note=note)


def computation_times(
    path: Path, data: Mapping[str, Any]
) -> dict[str, dict[tuple[int, int], float]]:
    """Galvatron layer type (or "other") -> (micro-batch, seq) -> forward ms per sample."""
    times: dict[str, dict[tuple[int, int], float]] = {}
    for key, value in _items(path, data):
        found = _match(_COMPUTE_KEY, path, key, "layertype_{T}_bsz{B}_seq{S}")
        batch, seq = int(found.group(2)), int(found.group(3))
        if batch < 1 or seq < 1:
            raise GalvatronError(str(path), key, "batch size and sequence length must be >= 1")
        ms = _number(path, key, value)
        with _converting(path, key, ms):  # at tp 1 and the whole share, its largest times
            _valid(_timing(ms, batch=batch, seq=seq, tp=1, sp="none", share=1.0))
        times.setdefault(found.group(1), {})[(batch, seq)] = ms
    if not any(name != "other" for name in times):
        raise GalvatronError(str(path), "-", "no layertype_{T}_bsz{B}_seq{S} entries")
    if "other" not in times:
        raise GalvatronError(str(path), "layertype_other_bsz{B}_seq{S}", "missing")
    return times


def _object(path: Path, key: str, value: object) -> Mapping[str, Any]:
    if not isinstance(value, dict) or not value:
        raise GalvatronError(str(path), key, f"expected a non-empty JSON object, got {value!r}")
    return value


def _seq(path: Path, key: str, text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise GalvatronError(str(path), key, f"expected sequence lengths as keys, got {text!r}")
    return int(text)


def _per_tp(path: Path, key: str, value: object) -> dict[int, float]:
    """``{tp: MiB}``; a lone number (Galvatron's older files, no vocabulary tp) is tp 1.

    Zero is a value Galvatron writes: it clamps what it derives at 0.
    """
    if not isinstance(value, dict):
        return {1: _number(path, key, value, positive=False)}
    result = {}
    for tp, mib in _object(path, key, value).items():
        if tp == "checkpoint":
            continue
        if not tp.isdigit() or int(tp) < 1:
            raise GalvatronError(str(path), f"{key}.{tp}", "expected a tensor-parallel degree")
        result[int(tp)] = _number(path, f"{key}.{tp}", mib, positive=False)
    return result


@dataclass(frozen=True)
class BlockMemory:
    parameter_mib: float
    activation_mib: Mapping[int, float]  # per sample, by tp
    checkpoint_mib: float | None  # per sample, the layer's input; None: not profiled


@dataclass(frozen=True)
class OtherMemory:
    model_states_mib: Mapping[int, float]
    activation_mib: Mapping[int, float]


@dataclass
class MemoryFile:
    blocks: dict[tuple[str, bool], dict[int, BlockMemory]] = field(default_factory=dict)
    other: dict[tuple[str, bool], dict[int, OtherMemory]] = field(default_factory=dict)


def memory_profile(
    path: Path, data: Mapping[str, Any], *, seqs: set[int]
) -> tuple[MemoryFile, list[str]]:
    """``layertype_{T}[_sp]`` and ``other_memory_pp_{off|on_first|on_last}[_sp]`` by seq, and
    notes on what was skipped. ``seqs``: the computation profile's, for sections that older
    Galvatron files do not key by sequence length."""
    parsed = MemoryFile()
    raw: list[str] = []
    notes: list[str] = []
    for key, value in _items(path, data):
        if _RAW_STRATEGY_KEY.fullmatch(key):
            _raw_measurements(path, key, value)
            raw.append(key)
            continue
        other = _OTHER_MEMORY_KEY.fullmatch(key)
        block = None if other else _LAYER_MEMORY_KEY.fullmatch(key)
        if other is None and block is None:
            expected = (
                "layertype_{T}[_sp], other_memory_pp_{off|on_first|on_last}[_sp] or "
                "{pp}_{tp}_{dp}[_c][_vtp][_sp]"
            )
            raise GalvatronError(str(path), key, f"unexpected key (expected {expected})")
        marker = "model_states" if other else "parameter_size"
        for seq, where, entry in _by_seq(path, key, value, marker, seqs):
            if other is not None:
                table = parsed.other.setdefault((other.group(1), bool(other.group(2))), {})
                table[seq] = _other_memory(path, where, entry)
                with _converting(path, where):  # the whole of it, its largest share
                    for converted in other_memory(table[seq], seq=seq, share=1.0):
                        _valid(converted)
            else:
                assert block is not None
                split = bool(block.group(2))
                table_b = parsed.blocks.setdefault((block.group(1), split), {})
                table_b[seq] = _block_memory(path, where, entry)
                if table_b[seq].checkpoint_mib is None:
                    notes.append(
                        f"{path.name}: {where}: checkpoint not profiled (-1): a recomputed "
                        "layer is given its whole activation"
                    )
                with _converting(path, where):
                    for converted in block_memory(table_b[seq], sp=split, seq=seq):
                        _valid(converted)
    if not parsed.blocks:
        raise GalvatronError(str(path), "layertype_{T}", "missing")
    if not parsed.other:
        raise GalvatronError(str(path), "other_memory_pp_{off|on_first|on_last}", "missing")
    if raw:
        shown = ", ".join(raw[:3]) + (", ..." if len(raw) > 3 else "")
        notes.append(
            f"{path.name}: skipped {len(raw)} raw per-strategy runs ({shown}): Galvatron's "
            "totals for its small profiling models, which it already reduced into layertype_* "
            "and other_memory_* (read instead)"
        )
    return parsed, notes


def _raw_measurements(path: Path, key: str, value: object) -> None:
    """A raw run is skipped, but only when it has the shape Galvatron writes: MiB by name."""
    for name, mib in _object(path, key, value).items():
        _number(path, f"{key}.{name}", mib, positive=False)


def _by_seq(
    path: Path, key: str, value: object, marker: str, seqs: set[int]
) -> Iterator[tuple[int, str, Mapping[str, Any]]]:
    """(seq, where, entry) of a section; older files hold one entry, not keyed by seq."""
    section = _object(path, key, value)
    if marker not in section:
        for seq_text, entry in section.items():
            where = f"{key}.{seq_text}"
            yield _seq(path, key, seq_text), where, _object(path, where, entry)
        return
    if len(seqs) != 1:
        measured = ", ".join(map(str, sorted(seqs)))
        raise GalvatronError(
            str(path),
            key,
            f"not keyed by sequence length, and the computation profile has several ({measured})",
        )
    yield next(iter(seqs)), key, section


def _field(path: Path, where: str, entry: Mapping[str, Any], name: str) -> Any:
    if name not in entry:
        raise GalvatronError(str(path), f"{where}.{name}", "missing")
    return entry[name]


def _block_memory(path: Path, where: str, entry: Mapping[str, Any]) -> BlockMemory:
    activations_key = f"{where}.tp_activation_per_bsz_dict"
    activations = _object(
        path, activations_key, _field(path, where, entry, "tp_activation_per_bsz_dict")
    )
    checkpoint = _field(path, activations_key, activations, "checkpoint")
    return BlockMemory(
        parameter_mib=_number(
            path,
            f"{where}.parameter_size",
            _field(path, where, entry, "parameter_size"),
            positive=False,
        ),
        activation_mib=_per_tp(path, activations_key, activations),
        # Galvatron starts the checkpointed size at -1 and keeps it without a checkpoint run.
        checkpoint_mib=None
        if checkpoint == -1
        else _number(path, f"{activations_key}.checkpoint", checkpoint, positive=False),
    )


def _other_memory(path: Path, where: str, entry: Mapping[str, Any]) -> OtherMemory:
    states = _per_tp(path, f"{where}.model_states", _field(path, where, entry, "model_states"))
    activations = _per_tp(path, f"{where}.activation", _field(path, where, entry, "activation"))
    for tp in sorted(set(states) ^ set(activations)):
        part = "activation" if tp in states else "model_states"
        raise GalvatronError(str(path), f"{where}.{part}.{tp}", "missing")
    return OtherMemory(model_states_mib=states, activation_mib=activations)


def _bytes(mib: float) -> int:
    nbytes = mib * MIB
    if not nbytes <= MAX_INTEGER:  # an infinite product too, which round() cannot take
        raise FormatError(f"{mib:g} MiB is more than 2^53 bytes")
    return round(nbytes)


def block_memory(memory: BlockMemory, *, sp: bool, seq: int) -> list[LayerMemory]:
    """Per-device entries: parameters / tp (Ulysses: whole), Galvatron's 4x model states."""
    entries = []
    for tp, activation in sorted(memory.activation_mib.items()):
        modes = ("none",) if not sp or tp == 1 else ("megatron", "ulysses")
        for mode in modes:
            shards = 1 if mode == "ulysses" else tp
            params = _bytes(memory.parameter_mib / shards)
            if memory.checkpoint_mib is None:
                checkpoint = activation
            else:
                checkpoint = memory.checkpoint_mib / (tp if sp else 1)
            entries.append(
                LayerMemory(
                    tp=tp,
                    sp=mode,  # type: ignore[arg-type]
                    seq_len=seq,
                    param_bytes=params,
                    grad_bytes=params,
                    optimizer_bytes=(MODEL_STATES_OVER_PARAMS - 2) * params,
                    activation_bytes_per_sample=activation * MIB,
                    checkpoint_activation_bytes_per_sample=checkpoint * MIB,
                    origin="galvatron",
                )
            )
    return entries


def other_memory(memory: OtherMemory, *, seq: int, share: float) -> list[LayerMemory]:
    """``share`` of the embedding and head's model states and activations, per tp."""
    entries = []
    for tp, states in sorted(memory.model_states_mib.items()):
        params = _bytes(states * share / MODEL_STATES_OVER_PARAMS)
        activation = memory.activation_mib[tp] * share * MIB
        entries.append(
            LayerMemory(
                tp=tp,
                sp="none",
                seq_len=seq,
                param_bytes=params,
                grad_bytes=params,
                optimizer_bytes=(MODEL_STATES_OVER_PARAMS - 2) * params,
                activation_bytes_per_sample=activation,
                checkpoint_activation_bytes_per_sample=activation,  # nothing saved by recompute
                origin="galvatron",
            )
        )
    return entries


def timings(
    forward_ms: Mapping[tuple[int, int], float],
    configurations: list[tuple[int, str, int]],
    share: float,
) -> list[LayerTiming]:
    """Forward = ms per sample x micro-batch x ``share`` / tp; backward = 2 x forward."""
    result = []
    for (batch, seq), ms in sorted(forward_ms.items(), key=lambda item: (item[0][1], item[0][0])):
        for tp, sp, config_seq in configurations:
            if config_seq != seq:
                continue
            result.append(_timing(ms, batch=batch, seq=seq, tp=tp, sp=sp, share=share))
    return result


def _timing(ms: float, *, batch: int, seq: int, tp: int, sp: str, share: float) -> LayerTiming:
    forward = ms * batch / 1000 * share / tp
    return LayerTiming(
        tp=tp,
        sp=sp,  # type: ignore[arg-type]
        micro_batch=batch,
        seq_len=seq,
        forward_s=forward,
        backward_s=BACKWARD_OVER_FORWARD * forward,
        origin="galvatron",
    )


def _with_defaults(memory: list[LayerMemory], seqs: set[int]) -> list[tuple[int, str, int]]:
    """Every (tp, sp, seq) with a memory entry, and tp 1 at every measured seq."""
    configurations = {(m.tp, m.sp, m.seq_len) for m in memory}
    configurations |= {(1, "none", seq) for seq in seqs}
    return sorted(configurations)


def block_profiles(
    galvatron_type: str,
    times: Mapping[tuple[int, int], float],
    memory: MemoryFile,
) -> tuple[list[LayerTiming], list[LayerMemory]]:
    plain = memory.blocks.get((galvatron_type, False), {})
    split = memory.blocks.get((galvatron_type, True), {})
    entries: list[LayerMemory] = []
    for seq in sorted(set(plain) | set(split)):
        if seq in plain:
            entries += block_memory(plain[seq], sp=False, seq=seq)
        if seq in split:
            from_split = block_memory(split[seq], sp=True, seq=seq)
            entries += [m for m in from_split if not (m.tp == 1 and seq in plain)]
    configurations = _with_defaults(entries, {seq for _, seq in times})
    return timings(times, configurations, 1.0), entries


def other_sources(
    path: Path, memory: MemoryFile
) -> tuple[dict[int, OtherMemory], dict[int, OtherMemory], float]:
    """(embedding's, head's, share of each): pipeline first/last stage, else half of pp off."""

    def pick(stage: str) -> dict[int, OtherMemory] | None:
        return memory.other.get((stage, False)) or memory.other.get((stage, True))

    first, last = pick("on_first"), pick("on_last")
    if first is not None and last is not None:
        return first, last, 1.0
    whole = pick("off")
    if whole is None:
        raise GalvatronError(str(path), "other_memory_pp_on_first/on_last", "missing")
    return whole, whole, 0.5


def import_model(
    files: Mapping[str, Path], options: ImportOptions
) -> tuple[ModelProfile, list[str]]:
    for kind in REQUIRED_MODEL:
        if kind not in files:
            raise GalvatronError(FILE_PATTERNS[kind], "-", "no such file in the directory")
    if not 0 <= options.embedding_share <= 1:
        raise ValueError("--embedding-share must be between 0 and 1")
    identity = model_identity(files, options)
    model, dtype = identity.model, identity.dtype
    names, note = layer_type_names(options, model)
    notes = [identity.dtype_note]
    notes += [note] if note else []
    times = computation_times(files["computation"], read_object(files["computation"]))
    seqs = {seq for by_shape in times.values() for _, seq in by_shape}
    memory, memory_notes = memory_profile(files["memory"], read_object(files["memory"]), seqs=seqs)
    notes += memory_notes
    profiles: list[LayerTypeProfile] = []
    for galvatron_type in sorted(t for t in times if t != "other"):
        if not any(key[0] == galvatron_type for key in memory.blocks):
            raise GalvatronError(str(files["memory"]), f"layertype_{galvatron_type}", "missing")
        timing, entries = block_profiles(galvatron_type, times[galvatron_type], memory)
        ours = names.blocks.get(galvatron_type, (f"layertype_{galvatron_type}",))
        profiles += [LayerTypeProfile(n, tuple(timing), tuple(entries)) for n in ours]
    first, last, share = other_sources(files["memory"], memory)
    if share != 1.0:
        notes.append("no other_memory_pp_on_first/on_last: embedding and head get half of pp_off")
    for ours, source, time_share in (
        (names.embedding, first, options.embedding_share),
        (names.head, last, 1 - options.embedding_share),
    ):
        entries = [
            m
            for seq, mem in sorted(source.items())
            for m in other_memory(mem, seq=seq, share=share)
        ]
        configurations = _with_defaults(entries, {seq for _, seq in times["other"]})
        timing = timings(times["other"], configurations, time_share)
        profiles += [LayerTypeProfile(n, tuple(timing), tuple(entries)) for n in ours]
    profile = ModelProfile(
        model=model,
        device=options.device_name,
        dtype=dtype,  # type: ignore[arg-type]
        origin="galvatron",
        layer_types=tuple(profiles),
        tools={"galvatron-files": f"{files['computation'].name}, {files['memory'].name}"},
    )
    return _whole(files["computation"], profile), notes


# --- both -----------------------------------------------------------------------------------


def import_directory(directory: Path, options: ImportOptions) -> ImportReport:
    """Convert what can be converted; one error line for each part that cannot."""
    report = ImportReport()
    if not directory.is_dir():
        report.errors.append(f"{directory}: -: not a directory")
        return report
    try:
        files = find_files(directory)
    except GalvatronError as error:
        report.errors.append(str(error))
        return report
    try:
        report.hardware = import_hardware(files, options)
    except GalvatronError as error:
        report.errors.append(str(error))
    try:
        report.model, notes = import_model(files, options)
        report.notes += notes
    except GalvatronError as error:
        report.errors.append(str(error))
    return report
